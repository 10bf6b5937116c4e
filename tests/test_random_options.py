"""Random option values across the public calls, in a child process: every call either works
or raises a Python exception; none kills the interpreter (issue 10's stress suite).

The values are drawn with a fixed seed in CI (``LLAMA_CYTHON_STRESS=1``: a new seed and ten
times the calls; ``LLAMA_CYTHON_STRESS_SEED`` fixes it), from a pool of the values that break
C code: zero, negatives, huge and boundary integers, NaN and infinities, wrong types.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, math, random, sys
import numpy as np
import llama_cython as llama

seed, calls = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(seed)
POOL = [0, 1, 2, -1, -2, 3, 7, 255, 256, 257, 511, 512, 4096, 2**31 - 1, 2**31, -2**31, 2**63, 10**30,
        0.0, -0.0, 0.5, 1.0, 1.5, -1.0, 1e-30, 1e30, math.nan, math.inf, -math.inf,
        True, False, None, "", "auto", "on", "off", "none", "mean", "rank", "f16", "q4_0", "x" * 1000,
        [], [1, 2], (0.5,), {}, b"bytes", np.int64(5), np.float32(0.25), np.array([1, 2])]

smol = llama.load_model(llama.models.model_path("smollm2-135m-instruct"))
mini = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))

CONTEXT = ["n_ctx", "n_batch", "n_ubatch", "n_threads", "n_threads_batch", "kv_cache_type",
           "flash_attn", "pooling", "n_parallel", "prefix_caching"]
SAMPLING = ["max_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p",
            "repetition_penalty", "repeat_last_n", "presence_penalty", "frequency_penalty",
            "ignore_eos", "seed", "stop"]
BATCH = ["add_special", "parse_special", "n_threads", "errors", "nulls"]
EMBED = ["normalize", "truncate", "batch_tokens", "nulls"]

# Values each option may take; a draw is one of these three times in four, else from POOL.
VALID = {
    "n_ctx": [0, 256, 512, 1000, 2048], "n_batch": [1, 8, 64, 512, 2048], "n_ubatch": [1, 8, 64, 512],
    "n_threads": [1, 2, None], "n_threads_batch": [1, 2, None],
    "kv_cache_type": ["f16", "f32", "bf16", "q8_0", "q4_0"], "flash_attn": ["auto", "on", "off", True, False],
    "pooling": [None, "none", "mean", "cls", "last"], "n_parallel": [1, 2, 3, 4],
    "prefix_caching": [True, False, "exact", "any", "off"],
    "max_tokens": [1, 2, 4, 8], "temperature": [0, 0.5, 1.0, 2.0, 100.0], "top_k": [0, 1, 5, 40, 10**6],
    "top_p": [0.01, 0.5, 1.0], "min_p": [0, 0.05, 1.0], "typical_p": [0.01, 0.5, 1.0],
    "repetition_penalty": [0.5, 1.0, 1.3, 100.0], "repeat_last_n": [-1, 0, 1, 64, 2**31 - 1],
    "presence_penalty": [-100.0, 0.0, 1.5], "frequency_penalty": [-100.0, 0.0, 1.5],
    "ignore_eos": [True, False], "seed": [0, 1, 2**32 - 2, None], "stop": [None, "\n", ["a", "b"], "x" * 300],
    "add_special": [True, False], "parse_special": [True, False], "errors": ["strict", "replace"],
    "nulls": ["raise", "empty", "skip"], "normalize": [True, False], "truncate": [True, False],
    "batch_tokens": [1, 8, 512, None],
}

def draw(names, k):
    return {n: rng.choice(VALID[n]) if rng.random() < 0.75 else rng.choice(POOL)
            for n in rng.sample(names, min(k, len(names)))}

def attempt(label, fn):
    print("CALL", label, flush=True)
    try:
        fn()
    except Exception as exc:
        if not isinstance(exc, (llama.LlamaError, TypeError, ValueError, OverflowError)):
            raise AssertionError(f"{label}: unexpected {type(exc).__name__}: {exc}")

gen_ctx = smol.new_context(n_ctx=256, n_threads=1)
emb_ctx = mini.new_context(embeddings=True, n_threads=1)
for i in range(calls):
    kind = rng.randrange(5)
    if kind == 0:
        kw = draw(CONTEXT, 3)
        def make(kw=kw):
            with smol.new_context(**{"n_threads": 1, "n_ctx": 256, **kw}) as c:
                c.generate("Hi", max_tokens=2, temperature=0)
        attempt(f"new_context {kw!r}", make)
    elif kind == 1:
        kw = draw(SAMPLING, 4)
        kw.setdefault("max_tokens", 4)
        if isinstance(kw["max_tokens"], int) and kw["max_tokens"] > 8:
            kw["max_tokens"] = 8
        attempt(f"generate {kw!r}", lambda kw=kw: gen_ctx.generate("Once upon a time", **kw))
    elif kind == 2:
        kw = draw(BATCH, 2)
        texts = rng.choice([["a b", "c"], [None, "x"], ["\ud800"], [b"\xff"], [""], []])
        attempt(f"tokenize_batch {texts!r} {kw!r}", lambda kw=kw, t=texts: smol.tokenize_batch(t, **kw))
    elif kind == 3:
        kw = draw(EMBED, 2)
        texts = rng.choice([["a b", "c"], [None, "x"], [""], ["word " * 600]])
        attempt(f"embeddings {texts!r:.40} {kw!r}",
                lambda kw=kw, t=texts: emb_ctx.get_embeddings_batch(t, **kw))
    else:
        tok = rng.choice(POOL)
        attempt(f"token {tok!r}",
                lambda t=tok: (smol.token_to_piece(t), smol.detokenize([t]), smol.is_eog(t)))
assert gen_ctx.generate("Hello", max_tokens=2, temperature=0) is not None
assert emb_ctx.get_embeddings_batch(["still fine"]).shape == (1, mini.n_embd)
print("OK", flush=True)
'''


def test_random_options_never_kill_the_interpreter():
    stress = os.environ.get("LLAMA_CYTHON_STRESS") == "1"
    seed = int(os.environ.get("LLAMA_CYTHON_STRESS_SEED",
                              random.randrange(1 << 30) if stress else 20261202))
    calls = 4000 if stress else 400
    proc = subprocess.run([sys.executable, "-c", CHILD, str(seed), str(calls)],
                          capture_output=True, text=True, timeout=1800 if stress else 600, cwd=str(ROOT))
    last = [line for line in proc.stdout.splitlines() if line.startswith("CALL")][-1:]
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), (
        f"seed {seed}, exit code {proc.returncode}, last call: {last}\n"
        f"{proc.stderr[-3000:]}")
