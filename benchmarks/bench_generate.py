#!/usr/bin/env python3
"""Tokens/s of ``Context.generate`` and ``generate_stream`` against llama.cpp's own C loop.

The reference is ``benchmarks/native/generate_loop.cpp``: a C++ program on llama.h alone that
does the work of llama_cython's loop call for call (tokenize, build the sampler chain, clear
the KV cache, decode the prompt, then sample -> EOG check -> piece -> decode), compiled by
``scripts/build_native.py`` against the same static llama.cpp libraries as the extension.

It runs as one long-lived subprocess per sampling mode (``--step``: one repeat per line on its
stdin), so that process start-up and model loading are not counted and the two sides can be
interleaved one call at a time, strictly sequentially (the bench machines have two cores, and
two ggml thread pools at once would measure the scheduler). Our side is measured two ways
(``--calls``), each next to the same C runs: ``generate`` (one call, the whole loop in C) and
``stream`` (iterating ``ctx.generate_stream(...)`` in a Python ``for`` loop and joining the
pieces: the loop goes back to Python, with the GIL, for every piece). One repeat is one call
of each side; the order alternates (C, generate, stream, then stream, generate, C, ...) to
cancel drift; each figure is the median of the repeats, after a warm-up call on each side.
Our context has ``prefix_caching=False``: like the C loop, every call decodes its whole prompt
(with it, a repeated prompt would be taken from the KV cache and only ours would skip it).
The machines are shared: a repeat during which other processes took a noticeable share of the
CPUs (from /proc/stat, less the two processes' own CPU time) is thrown away and run again once
the CPUs are idle.

Measured, for greedy decoding (temperature 0) and for sampling (top_k 40, top_p 0.95,
min_p 0.05, temperature 0.8, fixed seed):

* generation: tokens / time after the prompt; ours from ``ctx.last_stats.generation_ms``
  (llama_time_us in the C loop; for a stream it spans the Python work between the pieces
  too), the reference's from std::chrono around the same span;
* whole call: tokens / wall time of the whole request; ours is ``time.perf_counter`` around
  ``ctx.generate(...)`` (tokenization, argument checks, sampler set-up, prompt, generation,
  building the str and the stats), or around the whole stream (creating it, every iteration,
  appending each piece to a list, joining them), the reference's from tokenization to the
  freed sampler.

All sides must generate the same number of tokens (the prompt is chosen so that neither hits
an end-of-generation token within ``-n``), the same tokens (all run the same chain with the
same seed on the same build, so sampling is checked too) and the same text (the C loop reports
its bytes; the stream's joined pieces must decode to the same str).

    .venv/bin/python benchmarks/bench_generate.py                  # SmolLM2, 2 threads, n=128
    .venv/bin/python benchmarks/bench_generate.py --model gemma-3-270m --repeats 7 --json
    .venv/bin/python benchmarks/bench_generate.py --calls stream --modes sampling
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import build_native  # noqa: E402
from _cpu import Interference, add_interference_options, print_system, wait_quiet, warn_if_busy  # noqa: E402
from _step_process import StepProcess  # noqa: E402

import llama_cython as llama  # noqa: E402

# A request that makes both models write at length: no end-of-generation token within 128.
PROMPTS = {
    "smollm2-135m-instruct": (
        "<|im_start|>user\nWrite a long, detailed essay about the history of the Roman Empire, "
        "from its founding to its fall.<|im_end|>\n<|im_start|>assistant\n"
    ),
    "gemma-3-270m": (
        "<start_of_turn>user\nWrite a long, detailed essay about the history of the Roman "
        "Empire, from its founding to its fall.<end_of_turn>\n<start_of_turn>model\n"
    ),
}

MODES: dict[str, dict[str, Any]] = {
    "greedy": {"temperature": 0.0},
    "sampling": {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1234},
}


def c_args(params: dict[str, Any]) -> list[str]:
    """The reference program's options for one mode (its defaults are llama_cython's)."""
    args = ["--temp", repr(params.get("temperature", 0.0))]
    for key, flag in (("top_k", "--top-k"), ("top_p", "--top-p"), ("min_p", "--min-p"), ("seed", "--seed")):
        if key in params:
            args += [flag, str(params[key])]
    return args


class CLoop(StepProcess):
    """The reference loop as a subprocess that runs one repeat per request."""

    def __init__(self, exe: Path, model: Path, prompt: str, n: int, threads: int, n_ctx: int,
                 params: dict[str, Any], max_repeats: int) -> None:
        super().__init__([str(exe), "-m", str(model), "-p", prompt, "-n", str(n), "-t", str(threads),
                          "-c", str(n_ctx), "-r", str(max_repeats), "--step", *c_args(params)])


CALLS = ("generate", "stream")


def _ours_result(ctx: Any, text: str, t0: float, t1: float, pieces: int) -> dict[str, Any]:
    st = ctx.last_stats
    return {
        "n_prompt": st.prompt_tokens,
        "n_gen": st.completion_tokens,
        "t_prompt_ms": st.prompt_ms,
        "t_gen_ms": st.generation_ms,
        "t_total_ms": (t1 - t0) * 1000.0,
        "finish": st.finish_reason,
        "tokens": st.tokens.tolist(),
        "text": text,
        "pieces": pieces,
    }


def run_generate(ctx: Any, prompt: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """One ``ctx.generate`` call, timed from the call to the returned str."""
    t0 = time.perf_counter()
    text = ctx.generate(prompt, max_tokens=n, **params)
    t1 = time.perf_counter()
    return _ours_result(ctx, text, t0, t1, 1)


def run_stream(ctx: Any, prompt: str, n: int, params: dict[str, Any]) -> dict[str, Any]:
    """One stream, as a caller iterates it: from creating it to the joined text."""
    t0 = time.perf_counter()
    pieces: list[str] = []
    for piece in ctx.generate_stream(prompt, max_tokens=n, **params):
        pieces.append(piece)
    text = "".join(pieces)
    t1 = time.perf_counter()
    return _ours_result(ctx, text, t0, t1, len(pieces))


RUNNERS = {"generate": run_generate, "stream": run_stream}


def c_text(run: dict[str, Any]) -> str:
    """The C loop's text, decoded as llama_cython decodes its pieces."""
    return bytes.fromhex(run.get("text_hex", "")).decode("utf-8", "replace")


def build_reference() -> Path:
    """Build (or find cached) the C loop; the build's tool output goes to stderr, not stdout."""
    return build_native.build_program_quietly("c-generate-loop")


def bench_mode(exe: Path, model_file: Path, ctx: Any, prompt: str, args: argparse.Namespace,
               params: dict[str, Any], calls: list[str]) -> dict[str, Any]:
    """Warm-up, then ``repeats`` rounds of one call per side, next to each other (ABC CBA order).

    A round during which other processes took more than ``--max-foreign`` of the CPUs is run
    again (after waiting for the machine to calm down), up to ``repeats`` extra rounds.
    """
    max_rounds = args.warmup + 2 * args.repeats
    c = CLoop(exe, model_file, prompt, args.n, args.threads, args.n_ctx, params, max_rounds)
    pids: list[int | str] = ["self", c.proc.pid]
    sides = ["c", *calls]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    discarded = 0

    def call(side: str) -> dict[str, Any]:
        return c.run() if side == "c" else RUNNERS[side](ctx, prompt, args.n, params)

    try:
        for _ in range(args.warmup):
            for side in sides:
                call(side)
        attempts = 0
        while len(runs["c"]) < args.repeats and attempts < 2 * args.repeats:
            order = sides if attempts % 2 == 0 else sides[::-1]
            attempts += 1
            one: dict[str, dict[str, Any]] = {}
            worst = 0.0
            for side in order:
                with Interference(pids) as probe:
                    one[side] = call(side)
                one[side]["foreign_cpu_share"] = probe.share
                worst = max(worst, probe.share)
            if worst > args.max_foreign and attempts < 2 * args.repeats:
                discarded += 1
                wait_quiet(args.quiet_wait)
                continue
            for side in sides:
                runs[side].append(one[side])
    finally:
        c.close()
    return {"runs": runs, "discarded_rounds": discarded}


def summarize(result: dict[str, Any], n_expected: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = result["runs"]
    c_runs = runs["c"]
    every = [r for side_runs in runs.values() for r in side_runs]
    n_gen = {r["n_gen"] for r in every}
    n_prompt = {r["n_prompt"] for r in every}
    ref_text = c_text(c_runs[0])
    n = c_runs[0]["n_gen"]
    checks = {
        "n_gen": sorted(n_gen),
        "n_prompt": sorted(n_prompt),
        "same_count": len(n_gen) == 1 and n == n_expected,
        "same_tokens": all(r["tokens"] == c_runs[0]["tokens"] for r in every),
        # every C run the same text, and every one of ours (generate's str, the joined pieces)
        "same_text": all(c_text(r) == ref_text for r in c_runs)
                     and all(r["text"] == ref_text for side, rs in runs.items() if side != "c" for r in rs),
        "finish": sorted({r["finish"] for r in every}),
    }
    out: dict[str, Any] = {
        "n_gen": n,
        "n_prompt": c_runs[0]["n_prompt"],
        "checks": checks,
        "rounds": len(c_runs),
        "discarded_rounds": result["discarded_rounds"],
        "max_foreign_cpu_share": max(r["foreign_cpu_share"] for r in every),
        "prompt_ms": {side: statistics.median(r["t_prompt_ms"] for r in rs) for side, rs in runs.items()},
        "calls": {},
    }
    for side, rs in runs.items():
        if side == "c":
            continue
        entry: dict[str, Any] = {"pieces": statistics.median(r["pieces"] for r in rs)}
        for phase, key in (("generation", "t_gen_ms"), ("whole_call", "t_total_ms")):
            tc = [r[key] for r in c_runs]
            tp = [r[key] for r in rs]
            mc, mp = statistics.median(tc), statistics.median(tp)
            entry[phase] = {
                "c_ms": mc,
                "ours_ms": mp,
                "c_tok_s": n * 1000.0 / mc,
                "ours_tok_s": n * 1000.0 / mp,
                "ratio": mc / mp,  # (ours tok/s) / (C tok/s)
                # the same, round by round (each C run with the call next to it in time)
                "ratio_paired_median": statistics.median(a / b for a, b in zip(tc, tp)),
                "overhead_us_per_token": (mp - mc) * 1000.0 / n,
                "c_ms_all": tc,
                "ours_ms_all": tp,
            }
        out["calls"][side] = entry
    if "generate" in runs and "stream" in runs:
        # what streaming costs over one generate call, per piece handed to Python
        tg = [r["t_total_ms"] for r in runs["generate"]]
        ts = [r["t_total_ms"] for r in runs["stream"]]
        pieces = out["calls"]["stream"]["pieces"]
        out["stream_vs_generate"] = {
            "ratio_paired_median": statistics.median(a / b for a, b in zip(tg, ts)),
            "overhead_us_per_piece_paired_median":
                statistics.median((b - a) * 1000.0 / pieces for a, b in zip(tg, ts)),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", choices=sorted(PROMPTS))
    ap.add_argument("-n", type=int, default=128, help="tokens to generate per call (default 128)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per side and mode")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per side and mode first")
    add_interference_options(ap, "pair", "one of its calls")
    ap.add_argument("--modes", default="greedy,sampling", help="comma-separated: greedy,sampling")
    ap.add_argument("--calls", default="generate,stream",
                    help="comma-separated, ours measured as: generate (ctx.generate), stream "
                         "(iterating ctx.generate_stream); default both")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}; known: {', '.join(MODES)}")
    calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    if not calls or any(c not in CALLS for c in calls):
        ap.error(f"--calls: one or more of {', '.join(CALLS)}")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    load = warn_if_busy(say)

    model_file = llama.models.model_path(args.model)
    exe = build_reference()
    prompt = PROMPTS[args.model]
    model = llama.load_model(str(model_file))
    ctx = model.new_context(n_ctx=args.n_ctx, n_batch=512, n_threads=args.threads,
                            n_threads_batch=args.threads, flash_attn="auto", prefix_caching=False)
    flash_attn = ctx.flash_attn
    t_start = time.perf_counter()
    results: dict[str, Any] = {}
    try:
        for m in modes:
            results[m] = summarize(bench_mode(exe, model_file, ctx, prompt, args, MODES[m], calls), args.n)
    finally:
        ctx.close()
        model.close()
    elapsed = time.perf_counter() - t_start

    report = {
        "system": system,
        "model": args.model,
        "model_file": str(model_file),
        "threads": args.threads,
        "n": args.n,
        "n_ctx": args.n_ctx,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "flash_attn": flash_attn,
        "calls": calls,
        "elapsed_s": elapsed,
        "load_avg_start": load,
        "modes": results,
    }
    ok = all(r["checks"]["same_count"] and r["checks"]["same_tokens"] and r["checks"]["same_text"]
             for r in results.values())
    report["valid"] = ok
    headline = results.get("sampling") or next(iter(results.values()))
    headline_mode = "sampling" if "sampling" in results else modes[0]
    report["headline_mode"] = headline_mode
    report["headline_ratio"] = {c: headline["calls"][c]["whole_call"]["ratio"] for c in calls}

    if args.json:
        print(json.dumps(report, indent=2))
        return 0 if ok else 1

    print(f"model {args.model} ({model_file.name}), {args.threads} threads, n={args.n}, "
          f"prompt {headline['n_prompt']} tokens, median of {args.repeats} (+{args.warmup} warm-up), "
          f"C loop and llama_cython ({', '.join(calls)}) interleaved")
    hdr = (f"{'mode':<10} {'ours':<9} {'measure':<12} {'C tok/s':>9} {'ours tok/s':>11} {'ours/C':>8} "
           f"{'paired':>8} {'overhead':>13}")
    print(hdr)
    print("-" * len(hdr))
    for m, r in results.items():
        for c, e in r["calls"].items():
            for phase, label in (("generation", "generation"), ("whole_call", "whole call")):
                p = e[phase]
                print(f"{m:<10} {c:<9} {label:<12} {p['c_tok_s']:>9.1f} {p['ours_tok_s']:>11.1f} "
                      f"{p['ratio']:>7.3f}x {p['ratio_paired_median']:>7.3f}x "
                      f"{p['overhead_us_per_token']:>+9.1f} us/t")
    print("ours/C: ratio of the medians; paired: median of the ratios of runs next to each other in time;")
    print("overhead: (median time ours - median time C) / tokens. Generation: after the prompt (ours from")
    print("ctx.last_stats); whole call: tokenization to result (ours: perf_counter around ctx.generate, or")
    print("around creating and iterating ctx.generate_stream and joining its pieces).")
    for m, r in results.items():
        ch = r["checks"]
        prompts = " / ".join(f"{v:.1f} ms ({k})" for k, v in r["prompt_ms"].items())
        print(f"{m}: prompt {prompts}; tokens generated {ch['n_gen']} (finish {', '.join(ch['finish'])}), "
              f"same count: {'yes' if ch['same_count'] else 'NO'}, "
              f"same tokens: {'yes' if ch['same_tokens'] else 'NO'}, "
              f"same text: {'yes' if ch['same_text'] else 'NO'}; "
              f"{r['rounds']} rounds kept, {r['discarded_rounds']} disturbed rounds run again")
        if "stream_vs_generate" in r:
            sv = r["stream_vs_generate"]
            print(f"{m}: stream: {r['calls']['stream']['pieces']:.0f} pieces; stream vs generate, "
                  f"paired: {sv['ratio_paired_median']:.3f}x, "
                  f"{sv['overhead_us_per_piece_paired_median']:+.1f} us/piece")
    print(f"bench time {elapsed:.1f} s")
    if not ok:
        print("WARNING: the sides did not generate the same tokens and text; the ratios are not comparable")
    names = {"generate": "generate", "stream": "generate_stream"}
    for c in calls:
        print(f"{names[c]}/C-loop ratio ({headline_mode}, {args.threads} threads): "
              f"{report['headline_ratio'][c]:.2f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
