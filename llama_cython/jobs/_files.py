"""Durable writes for the jobs (temp file, fsync, rename, fsync of the folder), and the test
hook that stops a job at each step where a crash could land."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Test-only, not a user feature: with LLAMA_CYTHON_JOBS_KILL_AT=<n> in the environment a job
# sends itself SIGKILL at its n-th kill point (1-based), so that tests can stop it at every step
# where a crash or a power cut could land (tests/test_jobs.py). The points: before a part is
# written, after its temp file and after its rename, after each manifest's temp file, at the
# start of the assembly and after each part joined, after the joined file is fsynced, before and
# after its rename onto the output, and while the working folder is removed.
# ``points_hit`` counts the points the last job passed.
KILL_ENV = "LLAMA_CYTHON_JOBS_KILL_AT"
points_hit = 0
kill_at = 0


def kill_reset() -> None:
    """Start counting kill points for a new job."""
    global points_hit, kill_at
    points_hit = 0
    kill_at = int(os.environ.get(KILL_ENV) or 0)


def kill_point() -> None:
    global points_hit
    points_hit += 1
    if kill_at == points_hit:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` so that it is either absent (or its old self) or complete: a temp file,
    fsynced, renamed over it, and the folder fsynced so that the rename itself survives."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    kill_point()
    os.replace(tmp, path)
    fsync_dir(path.parent)
