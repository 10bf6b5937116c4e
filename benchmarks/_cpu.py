"""How busy the machine is, for the benchmarks: a measurement that overlapped other work is
thrown away and run again (the bench machines are shared, and a ggml thread pool that loses a
core to another process stalls at every barrier)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import final

__all__ = ["Interference", "add_interference_options", "wait_quiet", "warn_if_busy"]

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


def add_interference_options(ap: argparse.ArgumentParser, unit: str, during: str) -> None:
    """``--max-foreign`` and ``--quiet-wait``, for a benchmark that runs a ``unit`` ("pair",
    "round", "call") again when others took the CPUs ``during`` it (with :class:`Interference`)
    and then waits for idle CPUs (:func:`wait_quiet`)."""
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help=f"run a {unit} again when other processes took more than this share of the "
                         f"CPUs during {during} (default 0.05)")
    ap.add_argument("--quiet-wait", type=float, default=10.0,
                    help=f"after a disturbed {unit}, wait up to this many seconds for idle CPUs")


def warn_if_busy(say: Callable[[str], None]) -> float:
    """Say so when the load average is over half the CPUs; return the load average."""
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        say(f"warning: load average {load:.2f} on {os.cpu_count()} CPUs: the machine is busy, "
            "timings will be noisy (ggml's thread barriers suffer badly from sharing cores)")
    return load


def print_system() -> str:
    """Print (to stderr, so that ``--json`` output stays clean) and return one line saying which
    build of llama_cython runs, on which CPU, with which llama.cpp CPU features."""
    import llama_cython

    line = str(llama_cython.system_info())
    print(f"# {line}", file=sys.stderr, flush=True)
    return line
