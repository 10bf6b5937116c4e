"""How busy the machine is, for the benchmarks: a measurement that overlapped other work is
thrown away and run again (the bench machines are shared, and a ggml thread pool that loses a
core to another process stalls at every barrier)."""

from __future__ import annotations

import os
import sys
import time
from typing import final

__all__ = ["Interference", "wait_quiet"]

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_ticks() -> int:
    """CPU time the whole machine spent busy (steal included), in clock ticks; 0 if unknown."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait
    return sum(v[:8]) - v[3] - v[4]


def _proc_ticks(pid: int | str) -> int:
    """utime + stime of one process (all its threads), in clock ticks; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])


def _self_and_children_ticks() -> int:
    """CPU time of this process and the children it has waited for, in clock ticks."""
    t = os.times()
    return round((t.user + t.system + t.children_user + t.children_system) * _TICK)


@final
class Interference:
    """The share of the machine's CPUs that others took during a ``with`` block.

    "Ours" is the processes in ``pids``, or (without ``pids``) this process and the children it
    waits for in the block; everything else the machine did meanwhile is interference.
    """

    share = 0.0

    def __init__(self, pids: list[int | str] | None = None) -> None:
        self.pids = pids

    def _ours(self) -> int:
        if self.pids is None:
            return _self_and_children_ticks()
        return sum(_proc_ticks(p) for p in self.pids)

    def __enter__(self) -> Interference:
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_ticks(), self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.t0
        foreign = (_busy_ticks() - self.busy0) - (self._ours() - self.own0)
        capacity = wall * _TICK * (os.cpu_count() or 1)
        self.share = max(0.0, foreign) / capacity if capacity > 0 and self.busy0 else 0.0


def wait_quiet(max_wait: float) -> None:
    """Wait (up to max_wait s) until the machine's CPUs have been idle for 0.3 s."""
    deadline = time.perf_counter() + max_wait
    while time.perf_counter() < deadline:
        b0, t0 = _busy_ticks(), time.perf_counter()
        time.sleep(0.3)
        if (_busy_ticks() - b0) <= 0.05 * (time.perf_counter() - t0) * _TICK * (os.cpu_count() or 1):
            return


def print_system() -> str:
    """Print (to stderr, so that ``--json`` output stays clean) and return one line saying which
    build of llama_cython runs, on which CPU, with which llama.cpp CPU features."""
    import llama_cython

    line = str(llama_cython.system_info())
    print(f"# {line}", file=sys.stderr, flush=True)
    return line
