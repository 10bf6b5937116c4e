#!/usr/bin/env python3
"""Create (or reuse) the venv of the embedding benchmark's peers: ``build/peers-venv``.

The peers (llama-cpp-python, sentence-transformers on a CPU build of torch, ONNX Runtime and
onnx for its export) are not dependencies of llama_cython, so they get a venv of their own,
pinned in ``benchmarks/requirements-peers.txt``:

* everything but llama-cpp-python is installed from wheels (torch==2.13.0 is the CPU build
  that pip finds on this machine's disk; another version would pull a CUDA build);
* llama-cpp-python is built from its sdist (``--no-binary``), which vendors llama.cpp at the
  same commit as ``vendor/llama.cpp``: several minutes on two cores. ``CMAKE_ARGS`` ask for a
  native CPU build (``GGML_NATIVE=ON``) with ``GGML_OPENMP=OFF``, ggml's own thread pool as in
  llama_cython's build (llama-cpp-python's default is OpenMP, whose spinning workers would be
  a difference between the two that has nothing to do with the bindings). Where the CPU
  reports AMX, ``-mno-amx-*`` keeps ggml's AMX kernels out, as scripts/build_llama_cpp.py does
  (they die with SIGILL on virtual machines that report AMX without enabling it);
  ``LLAMA_CYTHON_AMX=1`` keeps them. The multimodal library (``LLAVA_BUILD``) is not built.

A stamp file records what was installed (requirements + CMake arguments); a second run with
the same inputs only checks that the peers import. Finally the peers are imported and their
versions printed, with the time the whole setup took.

    .venv/bin/python benchmarks/setup_peers.py            # prints the venv's python
    .venv/bin/python benchmarks/setup_peers.py --force    # reinstall everything
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "requirements-peers.txt"
VENV = ROOT / "build" / "peers-venv"
STAMP = VENV / ".peers-stamp"
LLAMA_CPP_PYTHON = "llama-cpp-python"

CHECK = """
import importlib.metadata as md
import llama_cpp
import onnx
import onnxruntime
import sentence_transformers
import torch
print("llama-cpp-python", llama_cpp.__version__)
print("sentence-transformers", sentence_transformers.__version__)
print("torch", torch.__version__, "cuda" if torch.version.cuda else "cpu")
print("transformers", md.version("transformers"))
print("onnx", onnx.__version__)
print("onnxruntime", onnxruntime.__version__, ",".join(onnxruntime.get_available_providers()))
"""


def venv_python(path: Path = VENV) -> Path:
    return path / "bin" / "python"


def _requirements() -> list[str]:
    lines = []
    for raw in REQUIREMENTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def _is_llama_cpp_python(req: str) -> bool:
    name = req.split("==", 1)[0].strip().lower().replace("_", "-")
    return name == LLAMA_CPP_PYTHON


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return False


def cmake_args() -> str:
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DGGML_NATIVE=ON",
        "-DGGML_OPENMP=OFF",
        "-DLLAVA_BUILD=OFF",
    ]
    if _cpu_has_amx() and os.environ.get("LLAMA_CYTHON_AMX", "").lower() not in {"1", "true", "on", "yes"}:
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return " ".join(f'"{a}"' if " " in a else a for a in args)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, env=env)


def _stamp_value() -> str:
    h = hashlib.sha256(REQUIREMENTS.read_bytes())
    h.update(cmake_args().encode())
    return h.hexdigest()


def check(python: Path) -> str:
    out = subprocess.run([str(python), "-c", CHECK], check=True, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return out.stdout.strip()


def setup(force: bool = False) -> Path:
    """Create or reuse the peers venv; return its python."""
    py = venv_python()
    if not force and py.is_file() and STAMP.is_file() and STAMP.read_text() == _stamp_value():
        try:
            check(py)
            return py
        except subprocess.CalledProcessError:
            pass
    if not py.is_file():
        print(f"creating {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
    STAMP.unlink(missing_ok=True)
    reqs = _requirements()
    wheels = [r for r in reqs if not _is_llama_cpp_python(r)]
    llama = [r for r in reqs if _is_llama_cpp_python(r)]
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    _run([*pip, *wheels])
    env = {**os.environ, "CMAKE_ARGS": cmake_args(), "FORCE_CMAKE": "1",
           "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL",
                                                        str(os.cpu_count() or 2))}
    print(f"CMAKE_ARGS={env['CMAKE_ARGS']}", file=sys.stderr)
    extra = ["--force-reinstall", "--no-deps"] if force else []
    _run([*pip, "--no-binary", LLAMA_CPP_PYTHON, "--no-cache-dir", *extra, *llama], env=env)
    STAMP.write_text(_stamp_value())
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="reinstall everything")
    args = ap.parse_args()
    t0 = time.perf_counter()
    py = setup(force=args.force)
    print(check(py), file=sys.stderr)
    print(f"peers venv ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(py)


if __name__ == "__main__":
    main()
