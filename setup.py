"""Build of llama_cython: llama.cpp's ``llama`` target (static), then the compiled core.

The llama.cpp part lives in ``scripts/build_llama_cpp.py`` (fetch if missing, build once per
machine in a cache keyed on commit + options + compiler); this file wires it into setuptools:

- ``_core.pyx`` is cythonized once and compiled once, then linked once per CPU variant into
  ``llama_cython/_variants/<variant>/_core*.so`` (one variant, ``native``, for a source build;
  ``x86_64_v2``/``v3``/``v4`` with ``LLAMA_CYTHON_PORTABLE=1``), and
  ``llama_cython/_variants/variants.json`` says what each needs of the CPU. At import,
  ``llama_cython/_loader.py`` loads the best one the running CPU supports;
- ``llama_cython._cpuid`` is a small C module (no llama.cpp in it) that the loader asks;
- ``sdist`` fetches the pinned llama.cpp first, so that the archive carries its sources and
  builds with no network.

Environment switches: ``LLAMA_CYTHON_PORTABLE=1``, ``LLAMA_CYTHON_CUDA=1``, ``LLAMA_CPP_DIR``
(your own llama.cpp checkout), ``LLAMA_CYTHON_ANNOTATE=1`` (write cython -a HTML next to the
sources); see README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.sdist import sdist as _sdist

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "scripts"))

CORE = "llama_cython._core"
CORE_PYX = "llama_cython/_core.pyx"
VARIANTS_PACKAGE = "llama_cython._variants"
# -g0: no debug information (Python's own CFLAGS ask for it), which would triple the module.
COMPILE_ARGS = ["-std=c++17", "-O2", "-g0", "-fvisibility=hidden", "-Wno-unused-function"]


def _variant_ext_name(variant: str) -> str:
    return f"{VARIANTS_PACKAGE}.{variant}._core"


class build_ext(_build_ext):
    """Build llama.cpp, then the core once per CPU variant, and write the variants' manifest."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        import build_llama_cpp
        from Cython.Build import cythonize

        lib = build_llama_cpp.build()
        self._llama = lib
        variants = {e.name: e for e in self.extensions if e.name.startswith(VARIANTS_PACKAGE + ".")}
        if sorted(variants) != sorted(_variant_ext_name(v.name) for v in lib.variants):
            raise RuntimeError(f"the build made variants {[v.name for v in lib.variants]}, setup.py "
                               f"expected {sorted(variants)}")
        others = [e for e in self.extensions if e.name not in variants]
        # The core is cythonized once, as the module llama_cython._core, and compiled once
        # (build_extensions); each variant links that object with its own ggml-cpu.
        # cythonize returns plain distutils Extensions; keep setuptools' own objects and only
        # take the generated sources from it.
        template = Extension(CORE, sources=[CORE_PYX], language="c++")
        generated = cythonize(
            [template, *others],
            compiler_directives={"language_level": 3, "embedsignature": True},
            include_path=[str(ROOT)],
            annotate=os.environ.get("LLAMA_CYTHON_ANNOTATE") == "1",
            quiet=True,
        )
        self._core_sources = list(generated[0].sources)
        for ext, gen in zip(others, generated[1:]):
            ext.sources = gen.sources
        self._core_objects: list[str] | None = None
        for v in lib.variants:
            ext = variants[_variant_ext_name(v.name)]
            ext.sources = []
            ext.include_dirs = [str(p) for p in lib.include_dirs]
            ext.extra_link_args = build_llama_cpp.link_args(lib, v) + lib.extra_link_args
            ext.depends = [str(p) for p in lib.static_libs(v)]
        self._clean_stale_variants({v.name for v in lib.variants})
        super().run()
        self._write_manifest(lib)

    def build_extensions(self) -> None:
        # ccache, when present, makes a rebuild of the same generated sources (a second clone,
        # an sdist, a fresh venv) take seconds; the llama.cpp build uses it the same way.
        if shutil.which("ccache"):
            os.environ.setdefault("CCACHE_NOHASHDIR", "1")   # the clone's folder is not an input
            for attr in ("compiler_so", "compiler_so_cxx"):
                cmd = getattr(self.compiler, attr, None)
                if cmd and cmd[0] != "ccache":
                    setattr(self.compiler, attr, ["ccache", *cmd])
        # The variants share one object file of the core: compile it once, before the
        # (parallel) links, instead of once per variant.
        if any(e.name.startswith(VARIANTS_PACKAGE + ".") for e in self.extensions):
            self._core_objects = self.compiler.compile(
                self._core_sources,
                output_dir=self.build_temp,
                include_dirs=[str(p) for p in self._llama.include_dirs],
                extra_postargs=list(COMPILE_ARGS),
                depends=sorted(str(p) for p in (ROOT / "llama_cython").glob("*.h")),
            )
            self._core_objects += self._compile_json_schema()
        super().build_extensions()

    def _compile_json_schema(self) -> list[str]:
        """llama.cpp's JSON-schema-to-GBNF converter (the one its server uses), with the few
        files of its ``common`` folder it needs, and our glue (``_json_schema.cpp``).

        The converter prints a warning when it replaces a pattern by "any string"; a forced
        include (``_jsg_hook.h``) routes that print to the glue, which refuses the schema.
        """
        src = Path(self._llama.source_dir)
        common = src / "common"
        includes = [str(p) for p in self._llama.include_dirs] + [
            str(common), str(src / "vendor"), str(src / "include"), str(src / "ggml" / "include"),
            str(ROOT / "llama_cython")]
        hook = ["-include", str(ROOT / "llama_cython" / "_jsg_hook.h")]
        objects: list[str] = []
        for files, extra in (
            ([common / "json-schema-to-grammar.cpp"], hook),
            ([common / f for f in ("json.cpp", "json-schema.cpp", "unicode.cpp", "trie.cpp")], []),
            ([ROOT / "llama_cython" / "_json_schema.cpp"], []),
        ):
            objects += self.compiler.compile(
                [os.path.relpath(f) if f.is_relative_to(ROOT) else str(f) for f in files],
                output_dir=os.path.join(self.build_temp, "json_schema"),
                include_dirs=includes,
                extra_postargs=[*COMPILE_ARGS, *extra],
                depends=[str(ROOT / "llama_cython" / n) for n in ("_jsg_hook.h", "_json_schema.h")],
            )
        return objects

    def build_extension(self, ext: Extension) -> None:
        if ext.name.startswith(VARIANTS_PACKAGE + "."):
            ext.extra_objects = list(self._core_objects or [])
            # setuptools relinks only when a dependency is newer than the module: the shared
            # core object is one (a change in a .pxi or a header changes only it).
            ext.depends = [*ext.depends, *ext.extra_objects]
        super().build_extension(ext)

    def _variants_dir(self) -> Path:
        if self.inplace:
            return ROOT / "llama_cython" / "_variants"
        return Path(self.build_lib) / "llama_cython" / "_variants"

    def _clean_stale_variants(self, keep: set[str]) -> None:
        """Remove cores of variants this build does not make (a native build's, left in the
        build folder or the source tree, must not be packaged beside portable ones)."""
        folder = self._variants_dir()
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir() and child.name not in keep:
                    shutil.rmtree(child)
        if self.inplace:   # setuptools copies built modules into the tree but makes no folders
            for name in keep:
                (folder / name).mkdir(parents=True, exist_ok=True)

    def _write_manifest(self, lib) -> None:
        folder = self._variants_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "variants.json").write_text(json.dumps(lib.manifest(), indent=1) + "\n")

    def get_outputs(self) -> list[str]:
        outputs = super().get_outputs()
        return [*outputs, str(self._variants_dir() / "variants.json")]


class sdist(_sdist):
    """Fetch the pinned llama.cpp before collecting files, so that the sdist carries it."""

    def run(self) -> None:
        if not os.environ.get("LLAMA_CPP_DIR"):
            from fetch_llama_cpp import ensure_llama_cpp

            ensure_llama_cpp()
        super().run()


def _extensions() -> list[Extension]:
    import build_llama_cpp

    # One module per CPU variant this build makes (known from the environment before building);
    # their sources are set by build_ext.run.
    variants = [Extension(_variant_ext_name(name), sources=[], language="c++",
                          extra_compile_args=list(COMPILE_ARGS))
                for name, _, _ in build_llama_cpp.variant_plan()]
    cpuid = Extension("llama_cython._cpuid", sources=["llama_cython/_cpuid.pyx"], language="c",
                      extra_compile_args=["-O2", "-g0"])
    return [cpuid, *variants]


setup(ext_modules=_extensions(), cmdclass={"build_ext": build_ext, "sdist": sdist})
