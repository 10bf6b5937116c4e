#!/usr/bin/env python3
"""Texts/s of embeddings scaled out with Ray Data and Dask, against one process with 2 threads.

All sides embed the same short texts (``benchmarks/corpus.py``, ``--n-texts`` sentences of
``--min-words`` to ``--max-words`` words, default 20,000 of 3-16) with all-MiniLM-L6-v2 on the
CPU, one side at a time:

* ``in-process``: ``model.new_context(embeddings=True, n_threads=T).get_embeddings_batch``
  in this process, (a) T = ``--threads`` (2) in one call over all texts, what a single-process
  user does; (b) the same in batches of ``--batch-size`` rows; (c) 1 thread in batches of
  ``--batch-size`` rows: exactly the work one engine worker does per batch, the baseline of the
  overhead below and the reference the engines' vectors are checked against.
* ``ray``: ``llama_cython.integrations.ray.embed_dataset(ds, path, concurrency=W, num_cpus=1,
  batch_size=B)`` on a local Ray cluster (``ray.init(num_cpus=max W)``), W = 1 and 2 actors of 1
  thread each, the input ``ray.data.from_arrow`` blocks of B rows (already in the object
  store), the output fetched to the driver (``ray.get`` of every block). Ray starts a new
  actor pool for each execution, so every run includes starting W actors and loading the
  model in each (``startup``, measured by a run over W rows, is reported too, and texts/s
  without it).
* ``dask``: ``llama_cython.integrations.dask.embed_partitions(ddf, path).compute()`` on a
  ``LocalCluster(n_workers=W, threads_per_worker=1)``, the input persisted in the workers as
  partitions of B rows, the result gathered to the client. The first run loads the model in
  each worker (``first``); the figures are the later, warm runs.

Every figure is the median of ``--repeats`` runs, wall time from the call to the returned
rows. The overhead per row is the worker time an engine spends per row beyond the 1-thread
in-process cost of the same batches: ``(seconds x W - in-process-1-thread seconds) / N``
(scheduling, serialization, moving rows between processes, and any idle worker time). The
engines' vectors must equal the 1-thread in-process ones batch for batch (``--atol``, 1e-5:
the batches are the same, so the rounding is too) or the script exits 1.

The machines are shared, and a ggml thread pool that loses a core stalls at every barrier:
before each side the driver waits (up to ``--quiet-wait`` s) for idle CPUs and warns when the
load average is high; run it on a quiet machine.

    .venv/bin/python benchmarks/bench_scaleout.py
    .venv/bin/python benchmarks/bench_scaleout.py --n-texts 2000 --workers 1,2 --engines dask --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import corpus  # noqa: E402
from _cpu import print_system, wait_quiet, warn_if_busy  # noqa: E402

DEFAULT_MODEL = "all-minilm-l6-v2"
ENGINES = ("ray", "dask")


@dataclass
class Result:
    side: str
    setting: str
    workers: int
    threads: int
    texts_per_s: float
    seconds: float
    runs: list[float]
    load_avg: float
    info: dict[str, Any] = field(default_factory=dict)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_runs(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    runs, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return runs, out


# -- in process -----------------------------------------------------------------------------------

def measure_in_process(model_path: Path, texts: list[str], threads: int, batch: int | None,
                       repeats: int) -> tuple[Result, np.ndarray]:
    import llama_cython as llama

    model = llama.load_model(model_path)
    with model.new_context(embeddings=True, n_threads=threads, n_threads_batch=threads) as ctx:
        ctx.get_embeddings_batch(texts[:32])                       # warm up

        def run() -> np.ndarray:
            if batch is None:
                return ctx.get_embeddings_batch(texts)
            return np.concatenate([ctx.get_embeddings_batch(texts[i:i + batch])
                                   for i in range(0, len(texts), batch)])

        load = os.getloadavg()[0]
        runs, emb = timed_runs(run, repeats)
    model.close()
    sec = statistics.median(runs)
    setting = f"{threads} thread{'s' if threads > 1 else ''}, " + (
        "one call" if batch is None else f"batches of {batch}")
    return Result("in-process", setting, 1, threads, len(texts) / sec, sec, runs, load), emb


# -- Ray ------------------------------------------------------------------------------------------

def measure_ray(model_path: Path, texts: list[str], workers: list[int], batch: int, repeats: int,
                reference: np.ndarray, quiet_wait: float) -> list[Result]:
    import pyarrow as pa
    import ray

    from llama_cython.integrations.ray import embed_dataset

    t0 = time.perf_counter()
    ray.init(num_cpus=max(workers), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    say(f"  ray.init: {time.perf_counter() - t0:.1f} s")
    table = pa.table({"id": np.arange(len(texts)), "text": texts})
    # the input in the object store before the clock starts (as Dask's is persisted)
    full = ray.data.from_arrow([table.slice(i, batch) for i in range(0, len(texts), batch)])
    results = []
    try:
        for w in workers:
            def run(ds: Any = full, w: int = w) -> Any:
                out = embed_dataset(ds, model_path, concurrency=w, num_cpus=1, batch_size=batch)
                return pa.concat_tables(ray.get(out.to_arrow_refs()))

            wait_quiet(quiet_wait)
            load = warn_if_busy(say)
            tiny = ray.data.from_arrow([table.slice(i, 1) for i in range(w)])
            startup = statistics.median(timed_runs(lambda tiny=tiny, w=w: run(tiny, w), repeats)[0])
            runs, got = timed_runs(run, repeats)
            sec = statistics.median(runs)
            ids = got.column("id").to_numpy()
            col = got.column("embedding").combine_chunks()
            emb = col.flatten().to_numpy().reshape(len(col), -1)
            diff = float(np.abs(emb - reference[ids]).max())
            results.append(Result("ray", f"{w} actor{'s' if w > 1 else ''} x 1 thread", w, 1,
                                  len(texts) / sec, sec, runs, load,
                                  {"startup_s": startup, "max_abs_diff": diff, "rows": got.num_rows,
                                   "texts_per_s_without_startup": len(texts) / max(sec - startup, 1e-9)}))
            say(f"  ray {w} actor(s): {len(texts) / sec:.1f} texts/s (startup {startup:.1f} s, "
                f"max diff {diff:.1e})")
    finally:
        ray.shutdown()
    return results


# -- Dask -----------------------------------------------------------------------------------------

def measure_dask(model_path: Path, texts: list[str], workers: list[int], batch: int, repeats: int,
                 reference: np.ndarray, quiet_wait: float) -> list[Result]:
    import dask.dataframe as dd
    import pandas as pd
    from dask.distributed import Client, LocalCluster, wait

    from llama_cython.integrations.dask import embed_partitions

    frame = pd.DataFrame({"id": np.arange(len(texts)), "text": texts})
    results = []
    for w in workers:
        t0 = time.perf_counter()
        cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.WARNING)
        client = Client(cluster)
        say(f"  LocalCluster({w} workers): {time.perf_counter() - t0:.1f} s")
        try:
            ddf = dd.from_pandas(frame, chunksize=batch, sort=False).persist()
            wait(ddf)

            def run(ddf: Any = ddf) -> Any:
                return embed_partitions(ddf, model_path).compute()

            wait_quiet(quiet_wait)
            load = warn_if_busy(say)
            first = timed_runs(run, 1)[0][0]          # loads the model in each worker that gets a task
            runs, got = timed_runs(run, repeats)
            sec = statistics.median(runs)
            emb = np.stack(got["embedding"].to_numpy()).astype(np.float32)
            diff = float(np.abs(emb - reference[got["id"].to_numpy()]).max())
            results.append(Result("dask", f"{w} worker{'s' if w > 1 else ''} x 1 thread", w, 1,
                                  len(texts) / sec, sec, runs, load,
                                  {"first_run_s": first, "max_abs_diff": diff, "rows": len(got)}))
            say(f"  dask {w} worker(s): {len(texts) / sec:.1f} texts/s (first run {first:.1f} s, "
                f"max diff {diff:.1e})")
        finally:
            client.close()
            cluster.close()
    return results


# -- report ---------------------------------------------------------------------------------------

def report(results: list[Result], base: Result, ours: Result, n: int) -> None:
    w = max(len(f"{r.side} {r.setting}") for r in results) + 2
    print(f"  {'side / setting':<{w}}  {'texts/s':>8}  {'s':>7}  {'vs in-process':>13}  "
          f"{'overhead/row':>12}  notes")
    for r in results:
        name = f"{r.side} {r.setting}"
        ratio = r.texts_per_s / ours.texts_per_s
        over = ""
        if r.side != "in-process":
            over = f"{(r.seconds * r.workers * r.threads - base.seconds) / n * 1e6:9.0f} us"
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in r.info.items())
        print(f"  {name:<{w}}  {r.texts_per_s:8.1f}  {r.seconds:7.2f}  {ratio:12.2f}x  {over:>12}  {notes}")
    print(f"\nvs in-process: against {ours.side} {ours.setting}; overhead/row: worker time per row "
          f"beyond {base.side} {base.setting} ({base.seconds / n * 1e6:.0f} us/row)")


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"a GGUF path, or a name from llama_cython.models (default {DEFAULT_MODEL})")
    ap.add_argument("--n-texts", type=int, default=20_000)
    ap.add_argument("--min-words", type=int, default=3)
    ap.add_argument("--max-words", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=256, help="rows per Ray batch / Dask partition")
    ap.add_argument("--workers", default="1,2", help="worker processes (1 thread each) to try")
    ap.add_argument("--threads", type=int, default=2, help="threads of the in-process side")
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of: {','.join(ENGINES)}")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    ap.add_argument("--atol", type=float, default=1e-5,
                    help="largest allowed difference from the in-process vectors of the same batches")
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="seconds to wait at most for idle CPUs before each side (0: don't)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()
    engines = {s.strip() for s in args.engines.split(",") if s.strip()}
    if not engines <= set(ENGINES):
        ap.error(f"unknown engines: {sorted(engines - set(ENGINES))}")
    workers = _ints(args.workers)

    model = Path(args.model)
    if not model.is_file():
        from llama_cython import models

        model = models.model_path(args.model)
    texts = corpus.make_corpus(args.n_texts, min_words=args.min_words, max_words=args.max_words)
    say(f"{len(texts)} texts of {args.min_words}-{args.max_words} words, sha256 {corpus.digest(texts)[:16]}")

    results: list[Result] = []
    for threads, batch in ((args.threads, None), (args.threads, args.batch_size), (1, args.batch_size)):
        wait_quiet(args.quiet_wait)
        warn_if_busy(say)
        r, emb = measure_in_process(model, texts, threads, batch, args.repeats)
        results.append(r)
        say(f"  in-process {r.setting}: {r.texts_per_s:.1f} texts/s")
    ours, base, reference = results[0], results[2], emb
    if "ray" in engines:
        results += measure_ray(model, texts, workers, args.batch_size, args.repeats, reference,
                               args.quiet_wait)
    if "dask" in engines:
        results += measure_dask(model, texts, workers, args.batch_size, args.repeats, reference,
                                args.quiet_wait)

    bad = [r for r in results if r.info.get("max_abs_diff", 0.0) > args.atol
           or r.info.get("rows", len(texts)) != len(texts)]
    if args.json:
        print(json.dumps({"system": system, "n_texts": len(texts), "batch_size": args.batch_size,
                          "results": [asdict(r) for r in results]}, indent=2))
    else:
        report(results, base, ours, len(texts))
    for r in bad:
        say(f"error: {r.side} {r.setting}: vectors differ from the in-process ones of the same "
            f"batches by {r.info.get('max_abs_diff')} (> {args.atol}) or rows are missing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
