#!/usr/bin/env python3
"""Build llama.cpp's ``llama`` target (static, PIC, Release) in a reusable folder.

Only the libraries the extension links are built: ``llama``, ``ggml``, ``ggml-base``,
``ggml-cpu`` (and ``ggml-cuda`` with ``LLAMA_CYTHON_CUDA=1``). The build folder is keyed on the
llama.cpp commit, the options and the compiler, and lives in ``~/.cache/llama_cython/build/``
(``LLAMA_CYTHON_BUILD_DIR`` overrides it), so a second ``pip install``, a clean clone or an
editable install on the same machine reuses it. ccache is used when it is on PATH.

Environment switches:

By default the build targets this machine's CPU (on x86 its instruction-set flags, AMX
excepted; elsewhere ``GGML_NATIVE``).

``LLAMA_CYTHON_PORTABLE=1``
    no ``-march=native``; an x86-64-v3 baseline (AVX2, FMA, F16C, BMI2) for wheels.
``LLAMA_CYTHON_CUDA=1``
    build the CUDA backend too (``CMAKE_CUDA_ARCHITECTURES`` from ``LLAMA_CYTHON_CUDA_ARCH``,
    default ``native``).
``LLAMA_CYTHON_JOBS=N``
    parallel compile jobs (default: all cores).

Usage::

    python scripts/build_llama_cpp.py                 # build the libraries, print the folder
    python scripts/build_llama_cpp.py --target llama-simple-ref   # see tests/reference.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_llama_cpp import ensure_llama_cpp, load_pin  # noqa: E402

# Order matters for static linking: users before what they use.
CPU_LIBS = ["llama", "ggml", "ggml-cpu", "ggml-base"]


@dataclass
class LlamaBuild:
    """Where a finished build lies and what to link."""

    source_dir: Path
    build_dir: Path
    static_libs: list[Path]
    include_dirs: list[Path]
    extra_link_args: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


# /proc/cpuinfo flag -> ggml CMake option (x86 only).
_X86_FLAG_OPTIONS = [
    ("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"), ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"),
]


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64"}


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cmake_options() -> dict[str, str]:
    opts = {
        "CMAKE_BUILD_TYPE": "Release",  # NDEBUG: the *_ith getters return NULL instead of aborting
        "BUILD_SHARED_LIBS": "OFF",
        "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        "LLAMA_BUILD_COMMON": "OFF",
        "LLAMA_BUILD_TESTS": "OFF",
        "LLAMA_BUILD_EXAMPLES": "OFF",
        "LLAMA_BUILD_TOOLS": "OFF",
        "LLAMA_BUILD_SERVER": "OFF",
        "LLAMA_BUILD_APP": "OFF",
        "LLAMA_BUILD_UI": "OFF",
        "LLAMA_BUILD_MTMD": "OFF",
        "LLAMA_OPENSSL": "OFF",
        "GGML_BUILD_TESTS": "OFF",
        "GGML_BUILD_EXAMPLES": "OFF",
        # ggml's own thread pool: no libgomp clash with torch/MKL in the same process.
        "GGML_OPENMP": "OFF",
    }
    if _truthy("LLAMA_CYTHON_PORTABLE"):
        opts.update({"GGML_NATIVE": "OFF"})
        if _is_x86():
            opts.update({"GGML_AVX": "ON", "GGML_AVX2": "ON", "GGML_FMA": "ON",
                         "GGML_F16C": "ON", "GGML_BMI2": "ON", "GGML_SSE42": "ON"})
    elif _is_x86() and _cpu_flags():
        # "Native" spelled out from the CPU's flags instead of -march=native, so that AMX stays
        # off: on virtual machines that report AMX without enabling its tile state (this
        # project's CI machines among them) ggml's AMX kernels die with SIGILL, llama.cpp's
        # own programs included. LLAMA_CYTHON_AMX=1 turns it back on.
        flags = _cpu_flags()
        opts["GGML_NATIVE"] = "OFF"
        for cpu_flag, option in _X86_FLAG_OPTIONS:
            opts[option] = "ON" if cpu_flag in flags else "OFF"
        if _truthy("LLAMA_CYTHON_AMX"):
            opts.update({"GGML_AMX_TILE": "ON", "GGML_AMX_INT8": "ON", "GGML_AMX_BF16": "ON"})
    else:
        opts["GGML_NATIVE"] = "ON"
    if _truthy("LLAMA_CYTHON_CUDA"):
        opts.update({"GGML_CUDA": "ON", "GGML_CUDA_NCCL": "OFF",
                     "CMAKE_CUDA_ARCHITECTURES": os.environ.get("LLAMA_CYTHON_CUDA_ARCH", "native")})
    return opts


def _compiler_id() -> str:
    cc = os.environ.get("CC", "cc")
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        out = cc
    return out.splitlines()[0] if out else cc


def build_dir_for(source_dir: Path, opts: dict[str, str]) -> Path:
    override = os.environ.get("LLAMA_CYTHON_BUILD_DIR")
    if override:
        return Path(override).expanduser().resolve()
    pin = load_pin()
    commit = pin["commit"] if not os.environ.get("LLAMA_CPP_DIR") else str(source_dir)
    key_src = json.dumps([commit, opts, _compiler_id(), platform.machine()], sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    base = os.environ.get("LLAMA_CYTHON_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "llama_cython"
    return root / "build" / f"llama.cpp-{commit[:10] if len(commit) == 40 else 'custom'}-{key}"


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def _cmake() -> str:
    exe = shutil.which("cmake")
    if exe:
        return exe
    try:
        import cmake  # type: ignore[import-not-found]
        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError as exc:
        raise RuntimeError("cmake is required to build llama.cpp (pip install cmake)") from exc


def build(targets: tuple[str, ...] = ("llama",)) -> LlamaBuild:
    """Configure (once) and build ``targets``; return what the extension links."""
    source_dir = ensure_llama_cpp()
    opts = cmake_options()
    bdir = build_dir_for(source_dir, opts)
    bdir.mkdir(parents=True, exist_ok=True)
    cmake = _cmake()
    if not (bdir / "CMakeCache.txt").is_file():
        cmd = [cmake, "-S", str(source_dir), "-B", str(bdir)]
        if shutil.which("ninja"):
            cmd += ["-G", "Ninja"]
        if shutil.which("ccache"):
            cmd += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        cmd += [f"-D{k}={v}" for k, v in sorted(opts.items())]
        _run(cmd)
    jobs = os.environ.get("LLAMA_CYTHON_JOBS") or str(os.cpu_count() or 2)
    _run([cmake, "--build", str(bdir), "--target", *targets, "-j", jobs])

    libs = list(CPU_LIBS)
    extra_link: list[str] = []
    libraries: list[str] = []
    library_dirs: list[str] = []
    if opts.get("GGML_CUDA") == "ON":
        libs.insert(3, "ggml-cuda")
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        library_dirs += [str(Path(cuda_home) / "lib64"), str(Path(cuda_home) / "lib64" / "stubs")]
        libraries += ["cudart", "cublas", "cublasLt", "cuda"]
    static = [_find_lib(bdir, name) for name in libs]
    if sys.platform.startswith("linux"):
        # Keep llama.cpp's symbols private to the extension: another ggml copy in the same
        # process (llama-cpp-python, whisper bindings) then cannot clash with ours.
        extra_link += ["-Wl,--exclude-libs,ALL"]
    return LlamaBuild(
        source_dir=source_dir,
        build_dir=bdir,
        static_libs=static,
        include_dirs=[source_dir / "include", source_dir / "ggml" / "include"],
        extra_link_args=extra_link,
        libraries=[*libraries, "pthread", "m", "dl"],
        library_dirs=library_dirs,
        options=opts,
    )


def _find_lib(bdir: Path, name: str) -> Path:
    fname = f"lib{name}.a"
    for candidate in (bdir / "src" / fname, bdir / "ggml" / "src" / fname,
                      bdir / "ggml" / "src" / name / fname):
        if candidate.is_file():
            return candidate
    found = sorted(bdir.rglob(fname))
    if not found:
        raise RuntimeError(f"{fname} was not produced in {bdir}")
    return found[0]


def link_args(b: LlamaBuild) -> list[str]:
    """Flags that link a C++ program or module against the static build."""
    args = ["-Wl,--start-group", *map(str, b.static_libs), "-Wl,--end-group"]
    args += [f"-L{d}" for d in b.library_dirs] + [f"-l{lib}" for lib in b.libraries]
    return args


if __name__ == "__main__":
    result = build()
    print(result.build_dir)
