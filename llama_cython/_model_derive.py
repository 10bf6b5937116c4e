"""Models of :mod:`llama_cython.models` made from another registry model, not downloaded.

A derived model is written by llama.cpp's quantizer (``llama_cython.quantize_model``)
from its base model, then checked against its pinned sha256 and placed in the cache
folder like a downloaded one (:func:`llama_cython._model_download._install`).  The
quantizer is in the compiled extension, which the registry never imports, so it runs in
a child process of this Python that imports the ``llama_cython`` package this file
belongs to; that needs the extension built.

Standard library only, and no import of the compiled extension: see
:mod:`llama_cython.models` for how it is loaded from a checkout.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import _model_convert, _model_download
from .errors import ModelFetchError

if TYPE_CHECKING:
    from .models import Derivation, ModelSource

# The registry's logger: these messages are part of fetching a model.
logger = logging.getLogger(f"{__package__}.models")

# The folder holding the llama_cython package folder: the child imports the package from it.
_PACKAGE_PARENT = Path(__file__).resolve().parent.parent

# The child's exit status when it cannot import llama_cython (extension not built).
_NO_PACKAGE = 3

# Run as ``python -c _CHILD SRC DST FTYPE``.
_CHILD = f"""\
import sys
try:
    import llama_cython
except ImportError as exc:
    print(f"cannot import llama_cython: {{exc}}", file=sys.stderr)
    sys.exit({_NO_PACKAGE})
src, dst, ftype = sys.argv[1:]
try:
    llama_cython.quantize_model(src, dst, ftype, allow_requantize=True)
except Exception as exc:
    print(f"{{type(exc).__name__}}: {{exc}}", file=sys.stderr)
    sys.exit(1)
"""


def _child_env() -> dict[str, str]:
    """This process's environment with the package's parent folder first on PYTHONPATH."""
    env = dict(os.environ)
    paths = [str(_PACKAGE_PARENT), *filter(None, [env.get("PYTHONPATH")])]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _quantize(source: ModelSource, derivation: Derivation, base: Path, out: Path) -> None:
    """Write ``base`` to ``out`` at ``derivation.ftype`` with llama_cython.quantize_model."""
    what = f"{source.name}: quantize_model({derivation.base}, {derivation.ftype!r})"
    # Run in the package's parent folder: "-c" puts the working folder first on sys.path,
    # so elsewhere another llama_cython folder could shadow this one.
    proc = _model_convert._run_captured(
        [sys.executable, "-c", _CHILD, str(base), str(out), derivation.ftype],
        what,
        _child_env(),
        runner="Python",
        cwd=_PACKAGE_PARENT,
    )
    if proc.returncode == _NO_PACKAGE:
        raise ModelFetchError(
            f"{source.name} is derived from {derivation.base} with the built extension "
            "(llama_cython.quantize_model), which could not be imported: build it first "
            "(`pip install -e .` or `python scripts/test.py`).\n"
            f"{_model_convert._tail(proc.stdout or '')}"
        )
    if proc.returncode != 0:
        raise _model_convert._failed(proc, what)


def _derive(source: ModelSource, derivation: Derivation, base: Path, dest: Path) -> None:
    """Derive ``source`` from the verified file ``base`` of its base model; verify it and
    atomically install it at ``dest``."""
    logger.info(
        "deriving %s from %s: quantize_model to %s", source.name, derivation.base,
        derivation.ftype,
    )
    start = time.perf_counter()

    def produce(fd: int, tmp: Path) -> tuple[int, str, os.stat_result]:
        os.close(fd)
        _quantize(source, derivation, base, tmp)
        return _model_download._hash_and_sync(tmp)

    _model_download._install(source, dest, produce, start)
