#!/usr/bin/env python3
"""Compile small C++ programs against the same static llama.cpp build the extension links.

Used by the tests (llama.cpp's own ``examples/simple``, the reference for greedy generation)
and by the benchmarks (a plain C loop to compare against). Programs are cached next to the
llama.cpp build and rebuilt when their source or the libraries change.

    python scripts/build_native.py llama-simple      # prints the executable's path
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import build_llama_cpp  # noqa: E402

ROOT = HERE.parent


def _known_sources(source_dir: Path) -> dict[str, Path]:
    return {
        "llama-simple": source_dir / "examples" / "simple" / "simple.cpp",
        "c-generate-loop": ROOT / "benchmarks" / "native" / "generate_loop.cpp",
        "c-embed-loop": ROOT / "benchmarks" / "native" / "embed_loop.cpp",
        "c-tokenize-loop": ROOT / "benchmarks" / "native" / "tokenize_loop.cpp",
        "c-batch-loop": ROOT / "benchmarks" / "native" / "batch_loop.cpp",
        "c-score-loop": ROOT / "benchmarks" / "native" / "score_loop.cpp",
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (file descriptor 1: child processes too) to stderr
    inside the block, so that a benchmark's stdout holds only its results."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def build_program_quietly(name: str) -> Path:
    """:func:`build_program` with the build tools' output sent to stderr."""
    with stdout_to_stderr():
        return build_program(name)


def build_program(name: str, source: Path | None = None) -> Path:
    """Return the path of executable ``name`` built from ``source`` (or a known program)."""
    lib = build_llama_cpp.build()
    src = source or _known_sources(lib.source_dir)[name]
    if not src.is_file():
        raise FileNotFoundError(src)
    h = hashlib.sha256(src.read_bytes())
    for a in lib.static_libs():
        st = a.stat()
        h.update(f"{a}:{st.st_size}:{st.st_mtime_ns}".encode())
    out_dir = lib.build_dir / "native"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / name
    stamp = out_dir / f"{name}.stamp"
    if exe.is_file() and stamp.is_file() and stamp.read_text() == h.hexdigest():
        return exe
    cxx = os.environ.get("CXX") or shutil.which("g++") or "c++"
    cmd = [cxx, "-O2", "-std=c++17", str(src), "-o", str(exe) + ".tmp"]
    cmd += [f"-I{d}" for d in lib.include_dirs]
    cmd += build_llama_cpp.link_args(lib)
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)
    os.replace(str(exe) + ".tmp", exe)
    stamp.write_text(h.hexdigest())
    return exe


if __name__ == "__main__":
    print(build_program(sys.argv[1] if len(sys.argv) > 1 else "llama-simple"))
