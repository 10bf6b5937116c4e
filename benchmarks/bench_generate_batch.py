#!/usr/bin/env python3
"""Aggregate tokens/s of ``Context.generate_batch`` against a C++ continuous-batching loop,
serial ``generate`` and serial llama-cpp-python, in one run.

The C reference is ``benchmarks/native/batch_loop.cpp``: a C++ program on llama.h alone that
does the work of llama_cython's batch loop call for call (admit prompts into free slots, one
batch of every pending token plus prompt chunks within n_batch, llama_process, greedy sample,
token_to_piece, free finished slots), compiled by ``scripts/build_native.py`` against the same
static llama.cpp libraries as the extension. It runs as one long-lived subprocess per
n_parallel (``--step``: one repeat per line on stdin), so that start-up and model loading are
not counted and the sides run strictly one at a time (two cores: two ggml thread pools at
once would measure the scheduler).

The prompts: ``--prompts`` (64) mixed-length prompts built from a fixed list of openings
(5 to 60 words), each continued greedily for ``--max-tokens`` (64) tokens. Greedy decoding
throughout, so every side must produce the same texts wherever llama.cpp's arithmetic does
not depend on the batch (checked and reported; on SmolLM2 with flash attention it is exact).

For each ``--n-parallel`` value (1, 4, 8, 16, 32), one repeat is one batch call of each side,
the order alternating, median of ``--repeats``; then serial ``generate`` over the same prompts
(one context, prefix caching off) and, when ``build/peers-venv`` exists
(``benchmarks/setup_peers.py``), llama-cpp-python 0.3.36 serially (it has no batch API) in a
worker subprocess. Figures: generated tokens / wall time of the call (prompt processing
included; tokenization excluded for ours and the C loop alike, since ``last_batch_stats.ms``
and the C loop's clock both start after it).

Last, a batch whose 64 prompts share one ~150-token system prompt, run with the shared prefix
copied between sequences (``prefix_caching="any"``) and with it decoded by every sequence
(``"off"``), alternating: wall time of each and the tokens reused.

    .venv/bin/python benchmarks/bench_generate_batch.py
    .venv/bin/python benchmarks/bench_generate_batch.py --n-parallel 1,8 --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "scripts"))

import build_native  # noqa: E402
from _cpu import print_system  # noqa: E402
from _step_process import StepProcess  # noqa: E402

import llama_cython as llama  # noqa: E402

PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"

OPENINGS = [
    "The history of the printing press begins", "Write a short story about a lighthouse keeper who",
    "Explain to a ten-year-old why the sky is blue and why sunsets are red", "def merge_sort(items):",
    "List five practical tips for keeping houseplants alive in a dark apartment",
    "Q: What causes the seasons on Earth?\nA:", "Dear team, following yesterday's meeting about the budget",
    "Summarise the plot of a detective novel set in 1920s Vienna in which the detective is a retired",
    "The recipe calls for flour, butter, sugar and", "In economics, the law of supply and demand states that",
    "Translate into French: The train leaves at nine o'clock tomorrow morning from platform four.",
    "A haiku about autumn rain:", "Three arguments for and three against working from home, briefly:",
    "SELECT customer_id, SUM(amount) FROM orders WHERE", "Once upon a time, in a kingdom by the sea,",
    "The mitochondria is", "Write a product description for a waterproof hiking backpack with a",
]


def make_prompts(n: int) -> list[str]:
    out = []
    for i in range(n):
        base = OPENINGS[i % len(OPENINGS)]
        extra = " ".join(OPENINGS[(i * 7 + k) % len(OPENINGS)].split()[0] for k in range(i % 5 * 8))
        out.append(f"{extra} {base}".strip() if extra else base)
    return out


class CBatchLoop(StepProcess):
    """The C++ loop for one n_parallel, one repeat per request."""

    def __init__(self, exe: Path, model: Path, prompts_file: Path, args: argparse.Namespace,
                 n_parallel: int, n_ctx: int) -> None:
        super().__init__([str(exe), "-m", str(model), "-f", str(prompts_file), "-n", str(args.max_tokens),
                          "-t", str(args.threads), "-c", str(n_ctx), "-np", str(n_parallel),
                          "-b", str(args.n_batch), "-r", "1000", "--step"])

    def run(self) -> dict[str, Any]:
        r = super().run()
        r["texts"] = [bytes.fromhex(h).decode("utf-8", "replace") for h in r.pop("texts_hex")]
        return r


SHARED_SYSTEM = (
    "<|im_start|>system\nYou are the help desk of a city library. The library opens Monday to "
    "Friday from nine to eight and on Saturdays from ten to four; it is closed on Sundays and "
    "public holidays. Members may borrow up to twelve books, four films and two games at a time, "
    "for three weeks, and renew them twice online or at the desk unless another member has "
    "reserved them. Membership is free for residents; visitors pay ten euros a year. Late "
    "returns cost twenty cents a day per item. The reading room on the second floor is quiet; "
    "group rooms can be booked for two hours. Answer in one or two sentences.<|im_end|>\n")
SHARED_QUESTIONS = [
    "When do you open on Saturday?", "How many books can I borrow?", "Can I renew online?",
    "Is membership free?", "What does a late return cost?", "Where is the reading room?",
    "Can I book a group room?", "Are you open on Sundays?", "How long is the loan period?",
    "How many films can I borrow?", "Do visitors pay?", "Can I renew a reserved book?",
    "How often can I renew?", "Is the reading room quiet?", "How long can I keep a group room?",
    "When do you close on weekdays?",
]


def shared_prefix_run(model: Any, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """The same batch (one system prompt, many questions) with the shared prefix copied between
    sequences (``prefix_caching="any"``) and decoded by each (``"off"``), alternating."""
    prompts = [f"{SHARED_SYSTEM}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
               for q in SHARED_QUESTIONS * 4]
    n_par = 8
    results: dict[str, list[float]] = {"shared": [], "unshared": []}
    texts: dict[str, list[str]] = {}
    reused = 0
    for r in range(args.repeats):
        for mode in (("shared", "unshared") if r % 2 == 0 else ("unshared", "shared")):
            caching = "any" if mode == "shared" else "off"
            with model.new_context(n_ctx=n_par * 512, n_batch=args.n_batch, n_parallel=n_par,
                                   n_threads=args.threads, n_threads_batch=args.threads,
                                   prefix_caching=caching) as ctx:
                texts[mode] = ctx.generate_batch(prompts, max_tokens=32, temperature=0)
                st = ctx.last_batch_stats
                results[mode].append(st.ms)
                if mode == "shared":
                    reused = st.reused_tokens
    row = {"prompts": len(prompts), "n_parallel": n_par,
           "prompt_tokens": sum(len(model.tokenize(p, parse_special=True)) for p in prompts),
           "reused_tokens": reused, "shared_ms": statistics.median(results["shared"]),
           "unshared_ms": statistics.median(results["unshared"]),
           "same_texts": texts["shared"] == texts["unshared"]}
    row["speedup"] = row["unshared_ms"] / row["shared_ms"]
    say(f"shared system prompt ({row['prompts']} prompts, n_parallel {n_par}, 32 new tokens): "
        f"{row['shared_ms']:.0f} ms with the prefix copied vs {row['unshared_ms']:.0f} ms decoded "
        f"by each ({row['speedup']:.2f}x); {reused} of {row['prompt_tokens']} prompt tokens "
        f"reused; same texts: {row['same_texts']}")
    return row


def n_ctx_for(n_parallel: int, per_seq: int) -> int:
    return per_seq * n_parallel


LCP_WORKER = r"""
import json, sys, time
import llama_cpp
model, prompts_file, max_tokens, threads, n_ctx = sys.argv[1:6]
prompts = [l.encode().decode("unicode_escape") for l in open(prompts_file).read().splitlines()]
llm = llama_cpp.Llama(model_path=model, n_ctx=int(n_ctx), n_threads=int(threads),
                      n_threads_batch=int(threads), verbose=False)
llm.create_completion(prompts[0], max_tokens=4, temperature=0)
t = time.perf_counter(); n = 0; texts = []
for p in prompts:
    out = llm.create_completion(p, max_tokens=int(max_tokens), temperature=0, top_k=1)
    n += out["usage"]["completion_tokens"]; texts.append(out["choices"][0]["text"])
print(json.dumps({"t_ms": (time.perf_counter() - t) * 1000, "n_gen": n, "texts": texts,
                  "version": llama_cpp.__version__}))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--per-seq", type=int, default=256, help="KV cells per sequence (n_ctx / n_parallel)")
    ap.add_argument("--n-parallel", default="1,4,8,16,32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-serial", action="store_true", help="skip serial generate and llama-cpp-python")
    ap.add_argument("--no-shared", action="store_true", help="skip the shared-system-prompt batch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    system = print_system()

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    model_file = llama.models.model_path(args.model)
    model = llama.load_model(str(model_file))
    prompts = make_prompts(args.prompts)
    exe = build_native.build_program_quietly("c-batch-loop")
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    prompts_file = work / "prompts.txt"
    prompts_file.write_text("\n".join(p.replace("\\", "\\\\").replace("\n", "\\n") for p in prompts) + "\n")
    say(f"model {args.model}, {len(prompts)} prompts "
        f"({min(len(model.tokenize(p)) for p in prompts)}-{max(len(model.tokenize(p)) for p in prompts)} "
        f"tokens), {args.max_tokens} new tokens each, {args.threads} threads, n_batch {args.n_batch}")

    rows: list[dict[str, Any]] = []
    reference_texts: list[str] | None = None
    for n_par in (int(x) for x in args.n_parallel.split(",")):
        n_ctx = n_ctx_for(n_par, args.per_seq)
        c = CBatchLoop(exe, model_file, prompts_file, args, n_par, n_ctx)
        ours_t: list[float] = []
        c_t: list[float] = []
        same = True
        try:
            with model.new_context(n_ctx=n_ctx, n_batch=args.n_batch, n_parallel=n_par,
                                   n_threads=args.threads, n_threads_batch=args.threads) as ctx:
                ctx.generate_batch(prompts[:n_par], max_tokens=4, temperature=0)   # warm-up
                c.run()
                for r in range(args.repeats):
                    order = ("ours", "c") if r % 2 == 0 else ("c", "ours")
                    for side in order:
                        if side == "ours":
                            texts = ctx.generate_batch(prompts, max_tokens=args.max_tokens, temperature=0)
                            st = ctx.last_batch_stats
                            ours_t.append(st.total_completion_tokens * 1000.0 / st.ms)
                            ours_texts, ours_decodes = texts, st.decodes
                        else:
                            cr = c.run()
                            c_t.append(cr["n_gen"] * 1000.0 / cr["t_ms"])
                            c_texts = cr["texts"]
                    same = same and ours_texts == c_texts
        finally:
            c.close()
        if reference_texts is None:
            reference_texts = ours_texts
        row = {"n_parallel": n_par, "n_ctx": n_ctx, "ours_tps": statistics.median(ours_t),
               "c_tps": statistics.median(c_t), "decodes": ours_decodes, "same_texts_as_c": same,
               "same_texts_as_n_parallel_first": ours_texts == reference_texts}
        row["ratio_c"] = row["ours_tps"] / row["c_tps"]
        rows.append(row)
        say(f"n_parallel {n_par:>2}: ours {row['ours_tps']:7.1f} tok/s, C loop {row['c_tps']:7.1f} "
            f"tok/s, ratio {row['ratio_c']:.3f}x; {ours_decodes} decodes; texts equal to the C "
            f"loop's: {same}")

    serial: dict[str, Any] = {}
    if not args.no_serial:
        with model.new_context(n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                               prefix_caching=False) as ctx:
            ctx.generate(prompts[0], max_tokens=4, temperature=0)
            t = time.perf_counter()
            texts, n_gen = [], 0
            for p in prompts:
                texts.append(ctx.generate(p, max_tokens=args.max_tokens, temperature=0))
                n_gen += ctx.last_stats.completion_tokens
            dt = time.perf_counter() - t
        serial["generate_tps"] = sum(1 for _ in texts) and n_gen / dt
        serial["generate_same_texts"] = texts == reference_texts
        say(f"serial generate: {serial['generate_tps']:.1f} tok/s (texts equal to the batch's: "
            f"{serial['generate_same_texts']})")
        if PEERS_PYTHON.exists():
            out = subprocess.run([str(PEERS_PYTHON), "-c", LCP_WORKER, str(model_file), str(prompts_file),
                                  str(args.max_tokens), str(args.threads), "2048"],
                                 capture_output=True, text=True, timeout=3600)
            if out.returncode == 0:
                lcp = json.loads(out.stdout.strip().splitlines()[-1])
                serial["lcp_tps"] = lcp["n_gen"] * 1000.0 / lcp["t_ms"]
                serial["lcp_version"] = lcp["version"]
                say(f"llama-cpp-python {lcp['version']} serial: {serial['lcp_tps']:.1f} tok/s")
            else:
                say(f"llama-cpp-python failed: {out.stderr.strip()[-500:]}")
        else:
            say("llama-cpp-python: skipped (run benchmarks/setup_peers.py to create build/peers-venv)")

    shared = None if args.no_shared else shared_prefix_run(model, args, say)
    best = max(rows, key=lambda r: r["ours_tps"])
    report = {"shared_prefix": shared, "system": system, "model": args.model, "prompts": len(prompts),
              "max_tokens": args.max_tokens, "threads": args.threads, "rows": rows, "serial": serial,
              "min_ratio_c": min(r["ratio_c"] for r in rows), "best_n_parallel": best["n_parallel"]}
    if serial.get("generate_tps"):
        report["best_vs_serial_generate"] = best["ours_tps"] / serial["generate_tps"]
    if serial.get("lcp_tps"):
        report["best_vs_lcp_serial"] = best["ours_tps"] / serial["lcp_tps"]
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"lowest ratio to the C loop over n_parallel: {report['min_ratio_c']:.3f}x")
    if "best_vs_serial_generate" in report:
        print(f"best n_parallel {best['n_parallel']}: "
              f"{report['best_vs_serial_generate']:.2f}x serial generate"
              + (f", {report['best_vs_lcp_serial']:.2f}x llama-cpp-python serial"
                 if "best_vs_lcp_serial" in report else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
