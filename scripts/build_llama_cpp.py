#!/usr/bin/env python3
"""Build llama.cpp's ``llama`` target (static, PIC, Release) once per machine and keep it.

Only the libraries the extension links are built: ``llama``, ``ggml``, ``ggml-base`` and
``ggml-cpu`` (and ``ggml-cuda`` with ``LLAMA_CYTHON_CUDA=1``).

**CPU variants.** By default the build targets this machine's CPU: one variant, ``native`` (on
x86 its instruction-set flags spelled out, AMX excepted; elsewhere ``GGML_NATIVE``). With
``LLAMA_CYTHON_PORTABLE=1`` (what a wheel for distribution is built with) the libraries are
built for the x86-64-v2 baseline and ``ggml-cpu``, where the hot kernels are, is built once
more for each faster variant (:data:`PORTABLE_X86`); the package then holds one core module per
variant and loads the best one the running CPU supports (``llama_cython/_loader.py``).

**Cache.** Every build lives under ``~/.cache/llama_cython`` (``LLAMA_CYTHON_CACHE``):

- ``src/llama.cpp-<sha>/``: a copy of the pinned sources (the files listed in
  :data:`fetch_llama_cpp.BUILD_TREE`) at a fixed path, so that a build started from a temporary
  folder (``pip install`` of a clone or an sdist, with build isolation) configures the same way
  every time and ccache hits;
- ``build/<key>/``: the CMake build folder, keyed on the llama.cpp commit, the options, the
  compiler and the machine; one that names a cmake or a source folder that no longer exists
  (an isolated build environment that pip deleted) is configured again;
- ``llama.cpp/<key>/``: the finished libraries and headers with a ``.complete`` stamp. A later
  build with the same key uses them without running cmake at all, in well under a second.

With ``LLAMA_CPP_DIR`` (your own checkout) the build runs every time (it is incremental), since
those sources may change. ccache is used when it is on PATH.

Other switches: ``LLAMA_CYTHON_CUDA=1`` (CUDA backend; ``LLAMA_CYTHON_CUDA_ARCH`` picks
architectures, default ``native``), ``LLAMA_CYTHON_AMX=1`` (AMX kernels in the native build),
``LLAMA_CYTHON_JOBS=N`` (parallel compile jobs, default all cores), ``LLAMA_CYTHON_BUILD_DIR``
(one fixed build folder instead of the keyed ones; native builds only).

Usage::

    python scripts/build_llama_cpp.py                 # build (or reuse) the libraries, print them
    LLAMA_CYTHON_PORTABLE=1 python scripts/build_llama_cpp.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch_llama_cpp import BUILD_TREE, BUILD_TREE_EXCLUDE, STAMP_NAME, cache_dir, ensure_llama_cpp, load_pin  # noqa: E402

# Bump when what the cache holds changes shape, so that old entries are not reused.
CACHE_LAYOUT = 2

# Order matters for static linking: users before what they use.
COMMON_LIBS = ["llama", "ggml"]
BASE_LIBS = ["ggml-base"]

# /proc/cpuinfo flag (also llama_cython._cpuid's name) -> ggml CMake option (x86 only).
X86_FLAG_OPTIONS = [
    ("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2"), ("avx_vnni", "GGML_AVX_VNNI"),
    ("avx512f", "GGML_AVX512"), ("avx512vbmi", "GGML_AVX512_VBMI"),
    ("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"),
]
# What each ggml option compiles with (-m flags), as CPU features a CPU must have to run it.
X86_OPTION_NEEDS = {
    "GGML_SSE42": ["sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "cx16"],
    "GGML_AVX": ["avx"], "GGML_AVX2": ["avx2"], "GGML_FMA": ["fma"], "GGML_F16C": ["f16c"],
    "GGML_BMI2": ["bmi1", "bmi2"], "GGML_AVX_VNNI": ["avx_vnni"],
    "GGML_AVX512": ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"],
    "GGML_AVX512_VBMI": ["avx512vbmi"], "GGML_AVX512_VNNI": ["avx512_vnni"],
    "GGML_AVX512_BF16": ["avx512_bf16"],
    "GGML_AMX_TILE": ["amx_tile"], "GGML_AMX_INT8": ["amx_int8"], "GGML_AMX_BF16": ["amx_bf16"],
}
_X86_ALL_OPTIONS = [opt for _, opt in X86_FLAG_OPTIONS]

# The portable set, best first: (variant name, ggml options turned on). The first entry of the
# list that a CPU can run is loaded. x86_64_v2 is the baseline every build also compiles the
# shared libraries (llama, ggml, ggml-base) for.
PORTABLE_X86 = [
    ("x86_64_v4", ["GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2",
                   "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI"]),
    ("x86_64_v3", ["GGML_SSE42", "GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2"]),
    ("x86_64_v2", ["GGML_SSE42"]),
]


@dataclass
class CpuVariant:
    """One build of ``ggml-cpu``: its name, the CPU features it needs, the library."""

    name: str
    requires: list[str]
    options: dict[str, str]
    cpu_lib: Path


@dataclass
class LlamaBuild:
    """A finished build: what to compile against and what to link, per CPU variant."""

    source_dir: Path                 # the llama.cpp sources the build came from
    prefix: Path                     # the cached libraries and headers of the base build
    include_dirs: list[Path]
    common_libs: list[Path]          # llama, ggml (before ggml-cpu in link order)
    base_libs: list[Path]            # ggml-base (after it)
    variants: list[CpuVariant]       # best first
    portable: bool
    options: dict[str, str] = field(default_factory=dict)
    libraries: list[str] = field(default_factory=list)
    library_dirs: list[str] = field(default_factory=list)
    extra_link_args: list[str] = field(default_factory=list)

    @property
    def build_dir(self) -> Path:
        """Where programs built against this build are kept (``scripts/build_native.py``)."""
        return self.prefix

    def static_libs(self, variant: CpuVariant | None = None) -> list[Path]:
        """The static libraries of ``variant`` (default: the first), in link order."""
        chosen = variant or self.variants[0]
        return [*self.common_libs, chosen.cpu_lib, *self.base_libs]

    def manifest(self) -> dict[str, object]:
        """What ``llama_cython/_variants/variants.json`` records about this build."""
        return {
            "llama_cpp_commit": load_pin()["commit"] if not os.environ.get("LLAMA_CPP_DIR") else "custom",
            "portable": self.portable,
            "variants": [{"name": v.name, "requires": v.requires, "options": v.options}
                         for v in self.variants],
        }


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def is_x86() -> bool:
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


def _base_options() -> dict[str, str]:
    opts = {
        "CMAKE_BUILD_TYPE": "Release",  # NDEBUG: the *_ith getters return NULL instead of aborting
        "BUILD_SHARED_LIBS": "OFF",
        "CMAKE_POSITION_INDEPENDENT_CODE": "ON",
        # a static library does not wait for the libraries it will be linked with
        "CMAKE_OPTIMIZE_DEPENDENCIES": "ON",
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
        # ccache is given to CMake explicitly (with relative paths) when it is on PATH.
        "GGML_CCACHE": "OFF",
    }
    if _truthy("LLAMA_CYTHON_CUDA"):
        opts.update({"GGML_CUDA": "ON", "GGML_CUDA_NCCL": "OFF",
                     "CMAKE_CUDA_ARCHITECTURES": os.environ.get("LLAMA_CYTHON_CUDA_ARCH", "native")})
    return opts


def _x86_options(on: list[str]) -> dict[str, str]:
    opts = {"GGML_NATIVE": "OFF"}
    for option in _X86_ALL_OPTIONS:
        opts[option] = "ON" if option in on else "OFF"
    return opts


def _needs(x86_opts: dict[str, str]) -> list[str]:
    needs: list[str] = []
    for option, value in sorted(x86_opts.items()):
        if value == "ON":
            needs += [f for f in X86_OPTION_NEEDS.get(option, []) if f not in needs]
    return sorted(needs)


def portable_requested() -> bool:
    return _truthy("LLAMA_CYTHON_PORTABLE")


def variant_plan(portable: bool | None = None) -> list[tuple[str, dict[str, str], list[str]]]:
    """The CPU variants to build, best first: (name, ggml options, CPU features needed).

    The last entry's options are also those the shared libraries are built with.
    """
    if portable is None:
        portable = portable_requested()
    if portable:
        if not is_x86():
            # Other CPUs: one build with the compiler's defaults for the architecture.
            return [("generic", {"GGML_NATIVE": "OFF"}, [])]
        return [(name, _x86_options(on), _needs(_x86_options(on))) for name, on in PORTABLE_X86]
    if is_x86() and _cpu_flags():
        # "Native" spelled out from the CPU's flags instead of -march=native, so that AMX stays
        # off: on virtual machines that report AMX without enabling its tile state (this
        # project's CI machines among them) ggml's AMX kernels die with SIGILL, llama.cpp's
        # own programs included. LLAMA_CYTHON_AMX=1 turns it back on.
        flags = _cpu_flags()
        on = [option for cpu_flag, option in X86_FLAG_OPTIONS if cpu_flag in flags]
        opts = _x86_options(on)
        if _truthy("LLAMA_CYTHON_AMX"):
            opts.update({"GGML_AMX_TILE": "ON", "GGML_AMX_INT8": "ON", "GGML_AMX_BF16": "ON"})
        return [("native", opts, _needs(opts))]
    return [("native", {"GGML_NATIVE": "ON"}, [])]


def compiler_id() -> str:
    cc = os.environ.get("CC", "cc")
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        out = cc
    return out.splitlines()[0] if out else cc


def _key(source_id: str, opts: dict[str, str], targets: tuple[str, ...]) -> str:
    key_src = json.dumps([CACHE_LAYOUT, source_id, opts, list(targets), compiler_id(), platform.machine()],
                         sort_keys=True)
    return hashlib.sha256(key_src.encode()).hexdigest()[:16]


def _say(msg: str) -> None:
    print(f"[llama.cpp] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    # Output goes straight to our stderr: `pip install -v` shows cmake's and ninja's lines.
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)


def _cmake() -> str:
    exe = shutil.which("cmake")
    if exe:
        return exe
    try:
        import cmake  # type: ignore[import-not-found]
        return str(Path(cmake.CMAKE_BIN_DIR) / "cmake")
    except ImportError as exc:
        raise RuntimeError("cmake is required to build llama.cpp (pip install cmake)") from exc


def _staged_sources(source_dir: Path) -> Path:
    """A copy of the pinned sources at a path that does not depend on where the build started."""
    sha = (source_dir / STAMP_NAME).read_text(encoding="utf-8").strip()
    staged = cache_dir() / "src" / f"llama.cpp-{sha[:16]}"
    if (staged / STAMP_NAME).is_file():
        return staged
    staged.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=staged.parent))
    try:
        skip = {(source_dir / name).resolve() for name in BUILD_TREE_EXCLUDE}

        def ignore(folder: str, names: list[str]) -> list[str]:
            return [n for n in names if (Path(folder) / n).resolve() in skip]

        for name in BUILD_TREE:
            src = source_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name, symlinks=True, ignore=ignore)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
        shutil.copy2(source_dir / STAMP_NAME, tmp / STAMP_NAME)   # written last: marks it whole
        try:
            tmp.rename(staged)
        except OSError:   # another build staged it first
            if not (staged / STAMP_NAME).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return staged


def _cache_value(cache: Path, name: str) -> str | None:
    try:
        for line in cache.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(name + ":"):
                return line.split("=", 1)[1]
    except OSError:
        return None
    return None


def stale_reason(cache: Path, source: Path) -> str | None:
    """Why the build folder of ``cache`` (its CMakeCache.txt) cannot be reused for ``source``,
    or None when it can."""
    home = _cache_value(cache, "CMAKE_HOME_DIRECTORY")
    old_cmake = _cache_value(cache, "CMAKE_COMMAND")
    if not home or Path(home).resolve() != source.resolve():
        return f"it was configured for the source folder {home}"
    if not old_cmake or not Path(old_cmake).is_file():
        # pip's isolated build environments are deleted after the build: ninja could not even
        # re-run the cmake it names.
        return f"the cmake it names ({old_cmake}) is gone"
    return None


def _configure(cmake: str, source: Path, bdir: Path, opts: dict[str, str]) -> None:
    cache = bdir / "CMakeCache.txt"
    if cache.is_file():
        reason = stale_reason(cache, source)
        if reason is None:
            return
        _say(f"configuring {bdir} afresh: {reason}")
        shutil.rmtree(bdir)
    bdir.mkdir(parents=True, exist_ok=True)
    cmd = [cmake, "-S", str(source), "-B", str(bdir)]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    if shutil.which("ccache"):
        cmd += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    cmd += [f"-D{k}={v}" for k, v in sorted(opts.items())]
    _run(cmd)


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    # ccache: paths under the cache root are hashed relative to the build folder, so a build of
    # the same sources under another LLAMA_CYTHON_CACHE hits the same ccache entries.
    env.setdefault("CCACHE_BASEDIR", str(cache_dir().resolve()))
    env.setdefault("CCACHE_NOHASHDIR", "1")
    return env


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


def _build_one(source: Path, source_id: str, opts: dict[str, str], libs: list[str],
               headers: bool, reuse: bool, label: str) -> Path:
    """Build ``libs`` with ``opts`` (or find them cached); return the prefix that holds them."""
    targets = tuple(libs)
    key = _key(source_id, opts, targets)
    override = os.environ.get("LLAMA_CYTHON_BUILD_DIR")
    prefix = cache_dir() / "llama.cpp" / f"{label}-{key}"
    if reuse and (prefix / ".complete").is_file():
        return prefix
    bdir = Path(override).expanduser().resolve() if override else cache_dir() / "build" / f"{label}-{key}"
    cmake = _cmake()
    _say(f"building {', '.join(libs)} ({label}) in {bdir}; the first build takes minutes, "
         "later ones reuse it (pip install -v shows the progress)")
    _configure(cmake, source, bdir, opts)
    jobs = os.environ.get("LLAMA_CYTHON_JOBS") or str(os.cpu_count() or 2)
    _run([cmake, "--build", str(bdir), "--target", *targets, "-j", jobs], env=_build_env())
    # Publish: libraries and headers into a fresh folder, renamed into place when whole.
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".publish-", dir=prefix.parent))
    try:
        (tmp / "lib").mkdir()
        for name in libs:
            shutil.copy2(_find_lib(bdir, name), tmp / "lib" / f"lib{name}.a")
        if headers:
            (tmp / "include").mkdir()
            for folder in (source / "include", source / "ggml" / "include"):
                for h in folder.glob("*.h"):
                    shutil.copy2(h, tmp / "include" / h.name)
        (tmp / "build.json").write_text(json.dumps({"options": opts, "libs": libs, "source": source_id,
                                                    "compiler": compiler_id()}, indent=1))
        (tmp / ".complete").write_text(key)
        if prefix.exists():
            shutil.rmtree(prefix)
        tmp.rename(prefix)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prefix


def build(portable: bool | None = None) -> LlamaBuild:
    """Build (or find in the cache) llama.cpp for every CPU variant; return what to link."""
    if portable is None:
        portable = portable_requested()
    fetched = ensure_llama_cpp()
    custom = bool(os.environ.get("LLAMA_CPP_DIR"))
    if custom:
        source, source_id, reuse = fetched, f"custom:{fetched}", False
    else:
        source, source_id, reuse = _staged_sources(fetched), load_pin()["sha256"], True
    if portable and os.environ.get("LLAMA_CYTHON_BUILD_DIR"):
        raise RuntimeError("LLAMA_CYTHON_BUILD_DIR names one build folder; a portable build needs "
                           "one per CPU variant: leave it unset")
    plan = variant_plan(portable)
    base = _base_options()
    cuda = base.get("GGML_CUDA") == "ON"
    cpu_libs = ["ggml-cpu", *(["ggml-cuda"] if cuda else [])]
    # The shared libraries come from the baseline (last) variant's build.
    base_name, base_opts, _ = plan[-1]
    prefix = _build_one(source, source_id, {**base, **base_opts},
                        COMMON_LIBS + cpu_libs + BASE_LIBS, headers=True, reuse=reuse, label=base_name)
    variants = []
    for name, opts, needs in plan:
        vprefix = prefix if name == base_name else _build_one(
            source, source_id, {**base, **opts}, ["ggml-cpu"], headers=False, reuse=reuse, label=name)
        variants.append(CpuVariant(name, needs, {k: v for k, v in opts.items() if k.startswith("GGML_")},
                                   vprefix / "lib" / "libggml-cpu.a"))
    lib = prefix / "lib"
    common = [lib / f"lib{n}.a" for n in COMMON_LIBS]
    tail = [lib / "libggml-cuda.a"] if cuda else []
    libraries: list[str] = []
    library_dirs: list[str] = []
    if cuda:
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        library_dirs += [str(Path(cuda_home) / "lib64"), str(Path(cuda_home) / "lib64" / "stubs")]
        libraries += ["cudart", "cublas", "cublasLt", "cuda"]
    extra_link: list[str] = []
    if sys.platform.startswith("linux"):
        # Keep llama.cpp's symbols private to the extension: another ggml copy in the same
        # process (llama-cpp-python, whisper bindings) then cannot clash with ours.
        extra_link += ["-Wl,--exclude-libs,ALL"]
    return LlamaBuild(
        source_dir=fetched,
        prefix=prefix,
        include_dirs=[prefix / "include"],
        common_libs=common,
        base_libs=[*tail, lib / "libggml-base.a"],
        variants=variants,
        portable=portable,
        options={**base, **base_opts},
        libraries=[*libraries, "pthread", "m", "dl"],
        library_dirs=library_dirs,
        extra_link_args=extra_link,
    )


def build_tool(target: str) -> Path:
    """Build one of llama.cpp's own programs (``llama-speculative-simple``, ``llama-perplexity``...)
    from the pinned tree, for the benchmarks and tests that compare against it; return its path.

    These need llama.cpp's ``common`` library, which the extension never links, so they get a
    build folder of their own (``build/tools-<key>``, the native CPU options, incremental: a
    second target reuses what the first built). The first build takes minutes on two cores.
    """
    source = ensure_llama_cpp()
    _name, opts, _ = variant_plan(False)[-1]
    opts = {**_base_options(), **opts, "LLAMA_BUILD_COMMON": "ON", "LLAMA_BUILD_EXAMPLES": "ON",
            "LLAMA_BUILD_TOOLS": "ON"}
    key = _key(f"tools:{load_pin()['sha256']}", opts, ())
    bdir = cache_dir() / "build" / f"tools-{key}"
    exe = bdir / "bin" / target
    cmake = _cmake()
    _configure(cmake, source, bdir, opts)
    jobs = os.environ.get("LLAMA_CYTHON_JOBS") or str(os.cpu_count() or 2)
    _run([cmake, "--build", str(bdir), "--target", target, "-j", jobs], env=_build_env())
    if not exe.is_file():
        raise RuntimeError(f"{target} was not produced in {bdir}")
    return exe


def link_args(b: LlamaBuild, variant: CpuVariant | None = None) -> list[str]:
    """Flags that link a C++ program or module against the static build of ``variant``."""
    args = ["-Wl,--start-group", *map(str, b.static_libs(variant)), "-Wl,--end-group"]
    args += [f"-L{d}" for d in b.library_dirs] + [f"-l{lib}" for lib in b.libraries]
    return args


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--portable", action="store_true", default=None,
                        help="build the portable CPU variants (as LLAMA_CYTHON_PORTABLE=1)")
    args = parser.parse_args(argv)
    result = build(portable=args.portable)
    print(json.dumps({"prefix": str(result.prefix),
                      "variants": {v.name: str(v.cpu_lib) for v in result.variants}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
