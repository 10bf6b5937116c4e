"""Shared by the seeded stress tests that run a script in a child process.

The default run (CI) uses the test's fixed seed; ``LLAMA_CYTHON_STRESS=1`` draws a new one every
run (the tests scale their work up too), and ``LLAMA_CYTHON_STRESS_SEED`` fixes it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STRESS = os.environ.get("LLAMA_CYTHON_STRESS") == "1"


def stress_seed(default: int) -> int:
    """``default``, or with ``LLAMA_CYTHON_STRESS=1`` a new seed; ``LLAMA_CYTHON_STRESS_SEED`` wins."""
    return int(os.environ.get("LLAMA_CYTHON_STRESS_SEED",
                              random.randrange(1 << 30) if STRESS else default))


def run_stress_child(code: str, seed: int, *args: object, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``code`` with ``seed`` and ``args`` as its arguments in a fresh interpreter; fail,
    naming the seed and showing the end of its output (the call or race that broke is printed
    last), unless it exits 0 with ``OK`` as its last line."""
    proc = subprocess.run([sys.executable, "-c", code, str(seed), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT))
    how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
           else f"exit code {proc.returncode}")
    if proc.returncode != 0 or not proc.stdout.rstrip().endswith("OK"):
        pytest.fail(f"seed {seed}: {how}\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}")
    return proc
