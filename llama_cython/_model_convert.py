"""Conversion of Hugging Face model folders to GGUF for :mod:`llama_cython.models`.

llama.cpp's ``convert_hf_to_gguf.py`` needs torch, which is no dependency of this
package, so it runs in a virtual environment of its own (``convert-venv`` in the
model cache folder) created on first use with exact pins.  Also here: running a
program with its output tail in the ModelFetchError when it fails, which the
downloader uses for pip and the deriver (:mod:`llama_cython._model_derive`) for
the quantizer.

Standard library only, and no import of the compiled extension: see
:mod:`llama_cython.models` for how it is loaded from a checkout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .errors import ModelFetchError

if TYPE_CHECKING:
    from .models import Conversion, ModelSource

# The registry's logger: these messages are part of fetching a model.
logger = logging.getLogger(f"{__package__}.models")

_CONVERT_VENV = "convert-venv"
_CONVERT_STAMP = ".llama_cython-requirements"
# The repository root when this file lives in a checkout (scripts/ next to llama_cython/).
_CHECKOUT = Path(__file__).resolve().parent.parent


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


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


def _run_captured(cmd: list[str], what: str, env: dict[str, str] | None,
                  runner: str | None = None,
                  cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (in ``env``, or this process's environment) with its stdout and stderr
    captured together; ModelFetchError when it cannot be started. ``runner`` names the
    program in messages (default: cmd[0])."""
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            cwd=cwd,
            check=False,
        )
    except OSError as exc:
        raise ModelFetchError(f"{what}: could not run {runner or cmd[0]}: {exc}") from exc


def _failed(proc: subprocess.CompletedProcess[str], what: str) -> ModelFetchError:
    """The error for a program that exited with a failure, with its output tail."""
    return ModelFetchError(
        f"{what} failed with exit status {proc.returncode}:\n{_tail(proc.stdout or '')}"
    )


def _run_logged(cmd: list[str], what: str, env: dict[str, str] | None,
                runner: str | None = None) -> None:
    """Run ``cmd`` (in ``env``, or this process's environment); ModelFetchError with its
    output tail when it fails. ``runner`` names the program in messages (default: cmd[0])."""
    proc = _run_captured(cmd, what, env, runner)
    if proc.returncode != 0:
        raise _failed(proc, what)


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


def _converter_python(requirements: tuple[str, ...], cache: Path) -> Path:
    """The python of ``<cache>/convert-venv`` holding exactly ``requirements``.

    Created on first use (and again when the pins change) in a staging folder
    that is renamed into place once complete, so an interrupted or concurrent
    creation never leaves a half-made environment in use.
    """
    folder = cache / _CONVERT_VENV
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
    cache: Path,
) -> None:
    """Run llama.cpp's convert_hf_to_gguf.py on ``model_dir``, writing ``out``.

    The converter runs in ``<cache>/convert-venv`` (see :func:`_converter_python`).
    """
    python = _converter_python(conversion.requirements, cache)
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
