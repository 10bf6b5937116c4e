"""What the running llama_cython is built from and what it uses on this machine.

>>> import llama_cython as llama
>>> info = llama.system_info()
>>> info.cpu_variant in info.cpu_variants
True
>>> "CPU" in info.backend_features
True
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field

from llama_cython import _loader
from llama_cython._core import llama_system_info, supports_gpu_offload

__all__ = ["SystemInfo", "system_info"]


@dataclass(frozen=True)
class SystemInfo:
    """The build of the core that is loaded and what it uses (see :func:`system_info`)."""

    cpu_model: str
    """The processor, as the operating system names it."""
    cpu_variant: str
    """The build of the core this process loaded: ``native`` (a source build, compiled for the
    machine that built it) or, in a portable build, ``x86_64_v4``, ``x86_64_v3`` or ``x86_64_v2``."""
    cpu_variants: tuple[str, ...]
    """Every build of the core this installation holds, best first."""
    portable: bool
    """True for a portable build (several variants, the best chosen at import)."""
    cpu_features: frozenset[str]
    """Instruction-set features of this CPU that the OS lets a process use (cpuid names)."""
    required_features: tuple[str, ...]
    """What the loaded variant was compiled to use."""
    backend_features: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each llama.cpp backend and the features it reports, e.g. ``{"CPU": {"AVX2": "1", ...}}``."""
    llama_cpp: str = ""
    """llama.cpp's own line (``llama_print_system_info``)."""
    llama_cpp_commit: str = ""
    gpu_offload: bool = False

    def __str__(self) -> str:
        cpu = self.backend_features.get("CPU", {})
        used = " ".join(k for k, v in cpu.items() if v not in ("0", ""))
        return (f"llama_cython core {self.cpu_variant} (of {', '.join(self.cpu_variants)}), "
                f"llama.cpp {self.llama_cpp_commit[:10]}, on {self.cpu_model}; CPU backend: {used}")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _parse_backends(line: str) -> dict[str, dict[str, str]]:
    """``"CPU : SSE3 = 1 | AVX = 1 | ... | CUDA : ARCHS = 900 | ..."`` -> nested dicts."""
    backends: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in line.split("|"):
        part = part.strip()
        if not part:
            continue
        if " : " in part:
            name, part = (s.strip() for s in part.split(" : ", 1))
            current = backends.setdefault(name, {})
        if current is not None and "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            current[key] = value
    return backends


def system_info() -> SystemInfo:
    """Which build of the core is loaded, what this CPU offers and what llama.cpp uses.

    Benchmarks print it, so that figures say which kernels produced them.
    """
    loaded = _loader.loaded_variant()
    available = _loader.variants()
    manifest = json.loads(_loader.MANIFEST.read_text(encoding="utf-8"))
    line = llama_system_info()
    return SystemInfo(
        cpu_model=_cpu_model(),
        cpu_variant=loaded.name if loaded else "unknown",
        cpu_variants=tuple(v.name for v in available),
        portable=bool(manifest.get("portable")),
        cpu_features=_loader.cpu_features(),
        required_features=loaded.requires if loaded else (),
        backend_features=_parse_backends(line),
        llama_cpp=line.strip(),
        llama_cpp_commit=str(manifest.get("llama_cpp_commit", "")),
        gpu_offload=bool(supports_gpu_offload()),
    )
