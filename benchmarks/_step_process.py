"""A C reference loop run as a long-lived subprocess, one repeat per line written to its stdin
(``--step``): start-up and model loading are not timed, and the driver interleaves it with
its own runs strictly one at a time."""

from __future__ import annotations

import json
import subprocess
from typing import Any


class StepProcess:
    """``cmd`` started once; :meth:`run` asks for one repeat and returns its JSON line."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()   # blocks until the repeat is done: nothing overlaps
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"the C loop exited ({self.proc.wait()}): {err.strip()}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
