"""Build of llama_cython: llama.cpp's ``llama`` target (static), then the one C++ extension.

The llama.cpp part lives in ``scripts/build_llama_cpp.py`` (fetch if missing, configure once,
build in a cached folder keyed on commit + options + compiler); this file only wires it into
setuptools' ``build_ext``. Environment switches: ``LLAMA_CYTHON_PORTABLE=1`` (no -march=native),
``LLAMA_CYTHON_CUDA=1`` (CUDA backend), ``LLAMA_CPP_DIR`` (your own llama.cpp checkout),
``LLAMA_CYTHON_ANNOTATE=1`` (write cython -a HTML next to the sources).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))


class build_ext(_build_ext):
    """Build llama.cpp first, then cythonize and compile ``llama_cython._core`` against it."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        import build_llama_cpp
        from Cython.Build import cythonize

        lib = build_llama_cpp.build()
        for ext in self.extensions:
            ext.include_dirs = [str(p) for p in lib.include_dirs] + list(ext.include_dirs)
            ext.extra_link_args = build_llama_cpp.link_args(lib) + lib.extra_link_args + list(ext.extra_link_args)
            ext.depends = [str(p) for p in lib.static_libs] + list(ext.depends)
        # cythonize returns plain distutils Extensions; keep setuptools' own objects and only
        # take the generated .cpp sources from it.
        generated = cythonize(
            self.extensions,
            compiler_directives={"language_level": 3, "embedsignature": True},
            include_path=[str(ROOT)],
            annotate=os.environ.get("LLAMA_CYTHON_ANNOTATE") == "1",
            quiet=True,
        )
        for ext, gen in zip(self.extensions, generated):
            ext.sources = gen.sources
        super().run()


core = Extension(
    "llama_cython._core",
    sources=["llama_cython/_core.pyx"],
    depends=["llama_cython/_token_batch.h"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O2", "-fvisibility=hidden", "-Wno-unused-function"],
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext})
