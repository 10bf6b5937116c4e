"""The standing stress run: seeded random GGUF mutations, in child processes, bounded in time.

The default run (CI) uses a fixed seed, so that a red run is a regression, not the luck of the
draw; ``LLAMA_CYTHON_STRESS=1`` draws a new seed every run and runs ten times as many variants,
and ``LLAMA_CYTHON_STRESS_SEED`` fixes the seed (it is printed, so a failure can be replayed
with ``scripts/fuzz_gguf.py --seed N``). A crash (a signal, an abort) or a
hang of any child fails the test with its reproducer's description; Python exceptions are the
expected outcome for broken files.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 587152990     # found a SIGSEGV class (F64 weights) before the pre-check refused them


def test_random_gguf_mutations_never_kill_the_interpreter(tmp_path):
    stress = os.environ.get("LLAMA_CYTHON_STRESS") == "1"
    seed = int(os.environ.get("LLAMA_CYTHON_STRESS_SEED",
                              random.randrange(1 << 30) if stress else DEFAULT_SEED))
    scale = 10 if stress else 1
    cmd = [sys.executable, str(ROOT / "scripts" / "fuzz_gguf.py"), "--seed", str(seed),
           "--sample", str(20 * scale), "--count", str(30 * scale),
           "--time-budget", str(150 * scale), "--workers", "2", "--no-minimize", "--quiet",
           "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300 * scale, cwd=str(ROOT))
    print(f"fuzz_gguf seed {seed}")
    assert "== 0 crash classes" in proc.stdout, (
        f"seed {seed}: replay with `python scripts/fuzz_gguf.py --seed {seed} --sample "
        f"{20 * scale} --count {30 * scale}`\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stdout[-3000:]
