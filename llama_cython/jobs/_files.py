"""Durable writes for the jobs (temp file, fsync, rename, fsync of the folder), the lock that
keeps two runs of one job apart, and the test hook that stops a job at each step where a crash
could land."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from llama_cython.errors import JobResumeError

# Test-only, not a user feature: with LLAMA_CYTHON_JOBS_KILL_AT=<n> in the environment a job
# sends itself SIGKILL at its n-th kill point (1-based), so that tests can stop it at every step
# where a crash or a power cut could land (tests/test_jobs.py). The points: before a part is
# written, after its temp file and after its rename, after each manifest's temp file, at the
# start of the assembly and after each part joined, after the joined file is fsynced, before and
# after its rename onto the output, after the manifest says "done", and after a working folder
# is renamed away (before it is deleted).
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


def discard(folder: Path) -> None:
    """Remove ``folder`` in one step that a crash cannot split: rename it to
    ``<name>.trash-<pid>`` (the rename made durable), then delete that. A crash before the
    rename leaves the folder whole, after it a trash folder that the next run sweeps away
    (:func:`sweep`), never a half-deleted folder under the old name."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{folder.name}.trash-{os.getpid()}")
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(folder, trash)
    fsync_dir(folder.parent)
    kill_point()
    shutil.rmtree(trash)


def trash_folders(folder: Path) -> list[Path]:
    """The trash folders :func:`discard` left behind for ``folder`` (a run killed while
    deleting one)."""
    prefix = folder.name + ".trash-"
    if not folder.parent.is_dir():
        return []
    return sorted(p for p in folder.parent.iterdir() if p.name.startswith(prefix) and p.is_dir())


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if absent) for the ``with`` block;
    JobResumeError at once if another process holds it.

    ``flock`` locks belong to the open file, and the kernel drops them when the process dies
    (SIGKILL included), so a crashed run never leaves a stale lock, only the file. The holder
    deletes the file at the end, while it still holds the lock: a process that opened the file
    before the deletion and locks it after finds that the path no longer names the file it
    locked, and starts over on the path's current file, so two processes never both hold a
    lock on the file the path names. On a system without ``fcntl`` (Windows) the block runs
    without a lock.
    """
    try:
        import fcntl
    except ImportError:                    # pragma: no cover - not POSIX
        yield
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JobResumeError(f"another process is running this job (lock {path})") from None
            own = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (own.st_dev, own.st_ino):
            break
        os.close(fd)                       # the file was deleted by the holder before us
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)
