#!/usr/bin/env python3
"""Fill ``vendor/llama.cpp`` from the pinned, hash-checked source.

The pin (package, version, sha256, llama.cpp commit) lives in ``scripts/llama_cpp_pin.json``
and nowhere else. The llama.cpp sources come from the source distribution of
``llama-cpp-python`` on PyPI, whose ``vendor/llama.cpp`` is the pinned llama.cpp commit. The
archive is fetched with ``pip download``, checked against the pinned sha256, and only its
``vendor/llama.cpp`` folder is extracted.

Running it again is free: a stamp file inside ``vendor/llama.cpp`` records the hash it came
from. ``LLAMA_CPP_DIR=/path/to/llama.cpp`` makes the build use that checkout instead, and this
script then only checks that the folder looks like llama.cpp.

Usage::

    python scripts/fetch_llama_cpp.py            # fetch if missing, print the folder
    python scripts/fetch_llama_cpp.py --force    # fetch again
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIN_FILE = Path(__file__).resolve().parent / "llama_cpp_pin.json"
VENDOR_DIR = ROOT / "vendor" / "llama.cpp"
STAMP_NAME = ".llama_cython_pin"
ENV_DIR = "LLAMA_CPP_DIR"

# The part of the llama.cpp tree that its ``llama`` target builds from: what the sdist carries
# (MANIFEST.in grafts the same list; tests/test_packaging.py keeps the two equal) and what the
# build copies into its cache. Not models, docs, tools, examples or the HTTP client.
BUILD_TREE = ["CMakeLists.txt", "LICENSE", "cmake", "include", "src", "ggml", "vendor", "licenses"]
BUILD_TREE_EXCLUDE = ["vendor/cpp-httplib"]


class FetchError(RuntimeError):
    """The pinned llama.cpp could not be fetched or did not match its pin."""


def load_pin() -> dict[str, str]:
    with open(PIN_FILE, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(archive: Path, expected: str) -> None:
    """Raise FetchError unless ``archive`` has the pinned sha256."""
    got = sha256_file(archive)
    if got != expected:
        raise FetchError(
            f"sha256 mismatch for {archive.name}: expected {expected}, got {got}. "
            "The archive is not the pinned one; refusing to use it."
        )


def _check_tree(path: Path) -> Path:
    if not (path / "include" / "llama.h").is_file():
        raise FetchError(f"{path} does not look like a llama.cpp checkout (include/llama.h is missing)")
    return path


def cache_dir() -> Path:
    """Where downloads and builds are cached (``LLAMA_CYTHON_CACHE``, default ``~/.cache/llama_cython``)."""
    base = os.environ.get("LLAMA_CYTHON_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "llama_cython"


def _pip() -> list[str]:
    """A pip to download with: this Python's, else one on PATH.

    pip's isolated build environments have no pip module (pyproject.toml asks for one, but a
    frontend may not honour that); any pip can download a file.
    """
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        exe = shutil.which(name)
        if exe:
            return [exe]
    raise FetchError(
        "pip is needed to fetch llama.cpp's pinned sources and none was found; install pip, "
        "or build from the sdist (which carries the sources), or set LLAMA_CPP_DIR"
    )


def _download_sdist(pin: dict[str, str], dest: Path) -> Path:
    """Return the pinned archive, from the cache folder or from PyPI through pip."""
    cached = cache_dir() / "sdist" / pin["sdist"]
    if cached.is_file() and sha256_file(cached) == pin["sha256"]:
        return cached
    cmd = [
        *_pip(), "download", "--no-deps", "--disable-pip-version-check",
        # Only this package as source; its build tools (needed by pip to read the metadata)
        # come as wheels, which is seconds instead of compiling cmake from source.
        "--no-binary", pin["source"],
        f"{pin['source']}=={pin['version']}", "-d", str(dest),
    ]
    print("fetching llama.cpp: pip", " ".join(cmd[cmd.index("download"):]), file=sys.stderr)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    archive = dest / pin["sdist"]
    if proc.returncode != 0 or not archive.is_file():
        raise FetchError(f"pip download of {pin['source']}=={pin['version']} failed:\n{proc.stdout[-3000:]}")
    verify_archive(archive, pin["sha256"])
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(archive, cached)
    except OSError:
        pass  # the cache is an optimisation only
    return archive


def _extract(pin: dict[str, str], archive: Path, target: Path) -> None:
    prefix = archive.name[: -len(".tar.gz")] + "/" + pin["subdir"].strip("/") + "/"
    staging = Path(tempfile.mkdtemp(prefix="llama.cpp.", dir=target.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for m in tar.getmembers():
                if not m.name.startswith(prefix) or not (m.isfile() or m.isdir() or m.issym()):
                    continue
                m.name = m.name[len(prefix):]
                if not m.name or m.name.startswith("/") or ".." in Path(m.name).parts:
                    continue
                members.append(m)
            if not members:
                raise FetchError(f"{archive.name} has no {pin['subdir']} folder")
            if hasattr(tarfile, "tar_filter"):   # Python >= 3.10.12 / 3.11.4
                tar.extractall(staging, members=members, filter="tar")
            else:
                tar.extractall(staging, members=members)
        (staging / STAMP_NAME).write_text(pin["sha256"] + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def ensure_llama_cpp(force: bool = False) -> Path:
    """Return the llama.cpp source folder, fetching the pinned one if needed."""
    override = os.environ.get(ENV_DIR)
    if override:
        return _check_tree(Path(override).expanduser().resolve())
    pin = load_pin()
    stamp = VENDOR_DIR / STAMP_NAME
    if not force and stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == pin["sha256"]:
        return _check_tree(VENDOR_DIR)
    VENDOR_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_cython_sdist_") as tmp:
        archive = _download_sdist(pin, Path(tmp))
        _extract(pin, archive, VENDOR_DIR)
    return _check_tree(VENDOR_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="fetch again even if present")
    args = parser.parse_args(argv)
    try:
        path = ensure_llama_cpp(force=args.force)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
