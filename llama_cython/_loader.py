"""Choose and load the build of the compiled core that this CPU can run.

The compiled core (``llama_cython._core``, llama.cpp linked in statically) is built once per
*CPU variant* and each build lies in ``_variants/<name>/``; ``_variants/variants.json``, written
by the build, lists them best first with the instruction-set features each needs:

- a source build (``pip install .``) has one variant, ``native``, compiled for the machine that
  built it; on another CPU that lacks one of its features it is refused here with a clear
  ``ImportError`` instead of dying of SIGILL;
- a portable build (``LLAMA_CYTHON_PORTABLE=1``, what a distributed wheel holds) has
  ``x86_64_v4`` (AVX-512 with VNNI and VBMI), ``x86_64_v3`` (AVX2, FMA, F16C) and
  ``x86_64_v2`` (SSE4.2), and the best one this CPU runs is loaded.

Exactly one of them is ever loaded into a process, under the module name ``llama_cython._core``,
so there is one copy of llama.cpp in the process whichever was chosen.
``LLAMA_CYTHON_CPU_VARIANT=<name>`` picks one by name (it must still be runnable here).

This module imports nothing of llama.cpp and only the standard library, so that it can run
before the core is loaded.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["CoreVariant", "load_core", "loaded_variant", "variants"]

CORE_NAME = "llama_cython._core"
VARIANTS_DIR = Path(__file__).resolve().parent / "_variants"
MANIFEST = VARIANTS_DIR / "variants.json"
ENV_VARIANT = "LLAMA_CYTHON_CPU_VARIANT"


@dataclass(frozen=True)
class CoreVariant:
    """One build of the compiled core: its name, what it needs of the CPU, how it was built."""

    name: str
    requires: tuple[str, ...]
    options: dict[str, str]
    path: Path

    def missing(self, have: frozenset[str]) -> tuple[str, ...]:
        """The features this variant needs that ``have`` lacks."""
        return tuple(f for f in self.requires if f not in have)


_loaded: CoreVariant | None = None


def variants() -> list[CoreVariant]:
    """The builds of the core in this installation, best first (from ``variants.json``)."""
    try:
        manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImportError(
            f"llama_cython's compiled core is missing ({MANIFEST} not found): the package was "
            "not built. Install it with pip (pip install .), or run scripts/test.py in a checkout."
        ) from None
    found = []
    for entry in manifest["variants"]:
        folder = VARIANTS_DIR / entry["name"]
        path = next((folder / f"_core{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES
                     if (folder / f"_core{suffix}").is_file()), None)
        if path is None:
            continue
        found.append(CoreVariant(entry["name"], tuple(entry["requires"]), dict(entry["options"]), path))
    if not found:
        raise ImportError(f"llama_cython's compiled core is missing: no _core module under {VARIANTS_DIR}")
    return found


def cpu_features() -> frozenset[str]:
    """The instruction-set features this process can use (see :mod:`llama_cython._cpuid`)."""
    from llama_cython import _cpuid

    return _cpuid.features()


def choose(available: list[CoreVariant], have: frozenset[str], wanted: str | None) -> CoreVariant:
    """The variant to load: ``wanted`` if given, else the first (best) that ``have`` can run."""
    if wanted:
        by_name = {v.name: v for v in available}
        if wanted not in by_name:
            raise ImportError(f"{ENV_VARIANT}={wanted!r}: this installation has "
                              f"{', '.join(by_name)}")
        chosen = by_name[wanted]
        if chosen.missing(have):
            raise ImportError(f"{ENV_VARIANT}={wanted!r} needs CPU features this CPU lacks: "
                              f"{', '.join(chosen.missing(have))}")
        return chosen
    for variant in available:
        if not variant.missing(have):
            return variant
    best = available[-1]
    raise ImportError(
        f"this build of llama_cython needs CPU features that this CPU lacks "
        f"({', '.join(best.missing(have))}); it was compiled for another machine's CPU "
        f"(variant {best.name!r}). Build it on this machine from source (pip install of the "
        f"sdist or a checkout), or install a portable wheel (built with LLAMA_CYTHON_PORTABLE=1)."
    )


def load_core() -> ModuleType:
    """Import ``llama_cython._core`` from the variant this CPU runs best; once per process."""
    global _loaded
    module = sys.modules.get(CORE_NAME)
    if module is not None:
        return module
    chosen = choose(variants(), cpu_features(), os.environ.get(ENV_VARIANT) or None)
    spec = importlib.util.spec_from_file_location(CORE_NAME, chosen.path)
    if spec is None or spec.loader is None:  # pragma: no cover - only for a broken install
        raise ImportError(f"cannot load {chosen.path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[CORE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[CORE_NAME]
        raise
    _loaded = chosen
    return module


def loaded_variant() -> CoreVariant | None:
    """The variant :func:`load_core` loaded (None before it ran)."""
    return _loaded
