#!/usr/bin/env python3
"""Tokens/s of ctx.score(texts): llama_cython against a C++ loop and llama-cpp-python.

With ``--grammar``, also the cost of JSON-schema-constrained generation (part 2).

Part 1, scoring. Every side computes, for each of the 2,000 sentences of ``benchmarks/corpus.py``,
the log-probability of every token given the tokens before it, with SmolLM2-135M-Instruct Q4_1
(``llama_cython.models``' default model) on the CPU, ``--threads`` T (2), one side at a time:

* ``c-score-loop``: ``benchmarks/native/score_loop.cpp``, a C++ loop on llama.h alone (built by
  ``scripts/build_native.py`` against the same static llama.cpp as the extension). It packs the
  texts in order into batches of at most n_batch tokens and n_seq_max texts, one sequence per
  text, every position an output, n_ctx = n_batch = n_ubatch and a unified KV cache, and takes
  the log-softmax over the full vocabulary in C. Run as ``-b B --n-seq-max P -t T --fa X``,
  where X is the flash attention setting ours got (``ctx.flash_attn`` read back), so both sides
  decode the same batches.
* ``llama-cpp-python`` (0.3.36 in the peers venv): ``Llama(model,
  logits_all=True, n_ctx=512, n_batch=512, n_threads=T, n_threads_batch=T, verbose=False)``
  (flash attention off: its default), then for each text ``llm.reset(); llm.eval(tokens)`` with
  ``llm.tokenize(text.encode(), add_bos=True, special=False)`` and the log-softmax (numpy,
  float64) of rows 0..n-2 of ``llm.scores`` taken at tokens 1..n-1: one text per decode, which
  is how its ``logits_all`` path scores a text. It runs in a worker subprocess of
  ``build/peers-venv`` (``benchmarks/setup_peers.py``; this file with ``_worker``), the values
  handed back in a file.
* ours: ``model.new_context(n_ctx=B, n_parallel=P, kv_unified=True, n_batch=B, n_ubatch=B,
  n_threads=T, flash_attn=--fa).score(texts)`` in this process (see ``measure_ours``): one KV
  cache shared by the sequences, as the C loop's, so that llama.cpp decodes a packed batch as
  one ubatch. (With a cache split per sequence, kv_unified=False, it cuts a packed batch into
  ubatches of equal-length pieces of each sequence, ``split_equal``: other batch shapes,
  other rounding.)

Defaults B = 512, P = 32, T = 2. Each side scores the first 8 texts to warm up, then times
``--repeats`` whole-corpus calls (tokenization and log-softmax included) and keeps the median;
tokens/s counts every token decoded (the C loop's ``n_tokens``). Targets: ours >= 0.97x the C
loop and >= 3x llama-cpp-python.

The values are cross-checked (max, mean and 99th percentile of the absolute difference of the
log-probabilities, and the largest difference of a text's sum):

* ours against the C loop's ``--dump``: the same packing must give the same ubatches and equal
  values up to rounding; the script exits 1 above ``--max-diff-c`` (1e-3).
* ours with ``n_parallel=1`` against the C loop with ``--n-seq-max 1`` on the first
  ``--single-texts`` (32) texts, untimed: one text per decode on both sides, so the ubatches
  are equal whatever the KV cache layout (seen: <= 2e-6). Same limit. When this passes and the
  check above fails, the values are right and the packing differs.
* ours against llama-cpp-python (one text per decode, and flash attention off there): reported,
  not enforced. With flash attention on in ours, the first ``--fa-off-texts`` (200) texts are
  also scored by a second context of ours with ``flash_attn="off"`` (untimed), to separate what
  flash attention changes from what the batch shape changes.

This model's log-probabilities move with the batch shape far more than float rounding
suggests: seen on the first 50 texts, up to 0.7 between flash attention on and off and up to
0.2-0.6 between one text and 32 texts per decode (mean 0.004-0.08), most likely the f16
rounding (KV cache, attention) of its large activations. So only sides that decode the same
ubatches can be held to 1e-3. The token ids of every side must agree.

Part 2, ``--grammar``: 16 short chat prompts that ask for a JSON record (a person, a city, a
book, a product) are answered with ``ctx.chat(messages, max_tokens=64, temperature=0,
repetition_penalty=1.1)``, once unconstrained and once with ``json_schema=`` a small object
schema (3-4 properties) matching the request, the two calls of a prompt next to each other,
the KV cache cleared before each call (no prefix reuse either way). Reported: generation
tokens/s of each (completion tokens over ``last_stats.generation_ms``, prompt excluded) and by
wall time of the whole call, and the overhead ratio. llama.cpp's grammar sampler is the
reference for the cost: like llama.cpp's common sampler (``common/sampling.cpp``), ours samples
first without the grammar, checks only the sampled token against it, and filters the whole
vocabulary through the grammar only when that token is refused; the overhead is then mostly the
steps where the model wanted to write something else (prose before the ``{``, say).

The machines are shared, and a 2-thread ggml pool that loses a core stalls at every barrier:
before each side (and each grammar pair) the script waits up to ``--quiet-wait`` s for idle
CPUs, measures the share of the CPUs other processes took meanwhile (``other``) and runs it
again (up to ``--tries``) while that share is above ``--max-foreign``.

    .venv/bin/python benchmarks/bench_score.py                       # all three sides
    .venv/bin/python benchmarks/bench_score.py --sides c,ours --repeats 3 --json
    .venv/bin/python benchmarks/bench_score.py --n-texts 200 --grammar
    .venv/bin/python benchmarks/bench_score.py --sides none --grammar --grammar-prompts 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import corpus  # noqa: E402
from _cpu import Interference, add_interference_options, print_system, wait_quiet  # noqa: E402

PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
WORK = ROOT / "build" / "bench-score"
SIDES = ("c", "lcp", "ours")
WARMUP_TEXTS = 8
TARGET_VS_C = 0.97
TARGET_VS_LCP = 3.0


# -- values -------------------------------------------------------------------------------------

@dataclass
class Scored:
    """Per-token log-probabilities in ``TokenScores``' layout: for text k, ``values`` and
    ``tokens`` at [offsets[k], offsets[k + 1]) score its tokens 1..n-1."""

    values: np.ndarray   # float32
    tokens: np.ndarray   # int32
    offsets: np.ndarray  # int64, n_texts + 1

    def save(self, path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, values=self.values, tokens=self.tokens, offsets=self.offsets)
        return str(path)

    @classmethod
    def load(cls, path: str) -> Scored:
        with np.load(path) as z:
            return cls(z["values"], z["tokens"], z["offsets"])

    @classmethod
    def from_c_dump(cls, prefix: Path) -> Scored:
        """The C loop's --dump (every token, NaN at each text's first) in this layout."""
        lp = np.fromfile(f"{prefix}.logprobs.f32", dtype=np.float32)
        toks = np.fromfile(f"{prefix}.tokens.i32", dtype=np.int32)
        off = np.fromfile(f"{prefix}.offsets.i64", dtype=np.int64)
        lengths = np.diff(off)
        keep = np.ones(lp.shape[0], dtype=bool)
        keep[off[:-1][lengths > 0]] = False
        scored = np.maximum(lengths - 1, 0)
        return cls(lp[keep], toks[keep], np.concatenate(([0], np.cumsum(scored))).astype(np.int64))

    def head(self, n: int) -> Scored:
        """The first n texts."""
        end = int(self.offsets[n])
        return Scored(self.values[:end], self.tokens[:end], self.offsets[:n + 1])


def compare(a: Scored, b: Scored) -> dict[str, Any]:
    """Max / mean absolute difference of the log-probabilities of the texts both sides tokenized
    alike (the first texts of the shorter side)."""
    n = min(len(a.offsets), len(b.offsets)) - 1
    a, b = a.head(n), b.head(n)
    la, lb = np.diff(a.offsets), np.diff(b.offsets)
    same = la == lb
    if not (same.all() and np.array_equal(a.tokens, b.tokens)):
        for k in np.flatnonzero(same):
            same[k] = np.array_equal(a.tokens[a.offsets[k]:a.offsets[k + 1]],
                                     b.tokens[b.offsets[k]:b.offsets[k + 1]])
    owner_a = np.repeat(np.arange(n), la)
    keep_a, keep_b = same[owner_a], same[np.repeat(np.arange(n), lb)]
    va = a.values[keep_a].astype(np.float64)
    vb = b.values[keep_b].astype(np.float64)
    owner = owner_a[keep_a]
    d = np.abs(va - vb)
    out: dict[str, Any] = {"n_texts": n, "texts_tokenized_alike": int(same.sum()), "n_values": int(d.size),
                           "nonfinite": int(np.sum(~np.isfinite(d)))}
    if d.size:
        d = np.where(np.isfinite(d), d, np.inf)
        i = int(np.argmax(d))
        sum_diff = np.abs(np.bincount(owner, weights=va, minlength=n)
                          - np.bincount(owner, weights=vb, minlength=n))
        out.update(max_abs_diff=float(d[i]), mean_abs_diff=float(np.mean(d)),
                   p99_abs_diff=float(np.quantile(d, 0.99)), worst_text=int(owner[i]),
                   max_abs_diff_text_sum=float(np.nanmax(sum_diff)))
    return out


# -- results ------------------------------------------------------------------------------------

@dataclass
class Result:
    side: str
    setting: str
    n_texts: int
    n_tokens: int
    runs: list[float]
    other_cpu: float
    values: str = ""  # path of the Scored .npz
    tries: int = 1
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds

    @property
    def texts_per_s(self) -> float:
        return self.n_texts / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds, "tokens_per_s": self.tokens_per_s,
                "texts_per_s": self.texts_per_s}


def measured(fn: Callable[[], Result | None], args: argparse.Namespace) -> Result | None:
    """``fn()`` after waiting for idle CPUs, run again (``--tries`` in all) while others took
    more than ``--max-foreign`` of the CPUs during it; the least disturbed run is kept."""
    best: Result | None = None
    for attempt in range(max(1, args.tries)):
        wait_quiet(args.quiet_wait)
        r = fn()
        if r is None:
            return None
        r.tries = attempt + 1
        if best is None or r.other_cpu < best.other_cpu:
            best = r
        if r.other_cpu <= args.max_foreign:
            break
        print(f"  ({r.side}: others took {r.other_cpu:.0%} of the CPUs, "
              f"{'again' if attempt + 1 < args.tries else 'keeping the quietest run'})",
              file=sys.stderr, flush=True)
    return best


# -- sides --------------------------------------------------------------------------------------

def build_c_loop() -> Path:
    """Build (or find cached) the C loop; the build tools' output goes to stderr."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_native

    return build_native.build_program_quietly("c-score-loop")


def measure_c_loop(exe: Path, model: Path, texts_file: Path, n_texts: int, args: argparse.Namespace,
                   fa: str) -> Result:
    prefix = WORK / f"c-b{args.n_batch}-p{args.n_parallel}-fa{fa}"
    cmd = [str(exe), "-m", str(model), "-f", str(texts_file), "-b", str(args.n_batch),
           "--n-seq-max", str(args.n_parallel), "-t", str(args.threads), "--fa", fa,
           "-r", str(args.repeats), "--warmup", str(WARMUP_TEXTS), "--dump", str(prefix)]
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"c-score-loop failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    config = next(x["config"] for x in lines if "config" in x)
    reps = [x for x in lines if "repeat" in x]
    scored = Scored.from_c_dump(prefix)
    last = reps[-1]
    info = {"config": config, **{k: last[k] for k in ("n_scored", "n_decodes", "t_tokenize_ms", "t_decode_ms",
                                                      "t_logsoftmax_ms", "sum_logprob")}}
    setting = f"-b {args.n_batch} --n-seq-max {args.n_parallel} -t {args.threads} --fa {fa}"
    return Result("c-score-loop", setting, n_texts, int(last["n_tokens"]),
                  [x["t_total_ms"] / 1000.0 for x in reps], load.share, scored.save(WORK / "c.npz"),
                  info=info)


def measure_lcp(model: Path, texts_file: Path, n_texts: int, args: argparse.Namespace) -> Result:
    if not PEERS_PYTHON.is_file():
        raise RuntimeError(f"{PEERS_PYTHON} is missing: run benchmarks/setup_peers.py first")
    out = WORK / "lcp.npz"
    cmd = [str(PEERS_PYTHON), str(Path(__file__).resolve()), "_worker", "--model-path", str(model),
           "--texts", str(texts_file), "--out", str(out), "--threads", str(args.threads),
           "--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"llama-cpp-python worker failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = info.pop("runs")
    n_tokens = info.pop("n_tokens")
    return Result("llama-cpp-python", f"logits_all n_ctx=n_batch=512 threads={args.threads} "
                  f"fa={'on' if info.get('flash_attn') else 'off'}", n_texts, n_tokens, runs, load.share,
                  str(out), info=info)


def new_scoring_context(model_obj: Any, args: argparse.Namespace, flash_attn: str) -> Any:
    # one KV cache shared by the sequences, as the C loop's: a packed batch is one ubatch
    return model_obj.new_context(n_ctx=args.n_batch, n_parallel=args.n_parallel, kv_unified=True,
                                 n_batch=args.n_batch, n_ubatch=args.n_batch, n_threads=args.threads,
                                 flash_attn=flash_attn)


def to_scored(s: Any) -> Scored:
    return Scored(np.asarray(s.values, dtype=np.float32), np.asarray(s.tokens, dtype=np.int32),
                  np.asarray(s.offsets, dtype=np.int64))


def measure_ours(ctx: Any, texts: list[str], args: argparse.Namespace) -> Result:
    """llama_cython's ``ctx.score``, in this process.

    ===================================================================================
    OURS IS MEASURED HERE. Everything else in this file is the peers' side; this
    function is the one place where llama_cython's scoring is timed and its output kept.
    ===================================================================================
    """
    ctx.score(texts[:WARMUP_TEXTS])  # warm-up, untimed
    runs: list[float] = []
    s: Any = None
    with Interference() as load:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            s = ctx.score(texts)
            runs.append(time.perf_counter() - t0)
    scored = to_scored(s)
    # every corpus text is non-empty, so each has a first token that is decoded but not scored
    n_tokens = int(scored.values.shape[0]) + sum(1 for t in texts if t)
    return Result("llama_cython", f"n_ctx={args.n_batch} n_parallel={args.n_parallel} kv_unified "
                  f"n_batch=n_ubatch={args.n_batch} threads={args.threads} fa={ctx.flash_attn}",
                  len(texts), n_tokens, runs, load.share, scored.save(WORK / "ours.npz"),
                  info={"flash_attn": ctx.flash_attn,
                        "sum_logprob": float(np.sum(scored.values, dtype=np.float64))})


def single_sequence_check(exe: Path, model: Path, model_obj: Any, texts: list[str], args: argparse.Namespace,
                          fa: str) -> dict[str, Any]:
    """Ours with ``n_parallel=1`` against the C loop with ``--n-seq-max 1`` on the first texts
    (untimed): one text per decode on both sides, hence the same ubatches whatever the KV cache
    layout, so the values must agree to rounding. Tells a packing difference (the main check)
    from a difference in the values themselves."""
    subset = WORK / "corpus-single.txt"
    subset.write_text("\n".join(texts) + "\n", encoding="utf-8")
    prefix = WORK / f"c-single-fa{fa}"
    cmd = [str(exe), "-m", str(model), "-f", str(subset), "-b", str(args.n_batch), "--n-seq-max", "1",
           "-t", str(args.threads), "--fa", fa, "-r", "1", "--warmup", "0", "--dump", str(prefix)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"c-score-loop failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    ctx1 = model_obj.new_context(n_ctx=args.n_batch, n_parallel=1, n_batch=args.n_batch,
                                 n_ubatch=args.n_batch, n_threads=args.threads, flash_attn=fa)
    return compare(to_scored(ctx1.score(texts)), Scored.from_c_dump(prefix))


# -- worker (runs in build/peers-venv) ----------------------------------------------------------

def worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_score.py _worker")
    ap.add_argument("--model-path", type=Path, required=True)
    ap.add_argument("--texts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    a = ap.parse_args(argv)
    texts = a.texts.read_text(encoding="utf-8").split("\n")
    if texts and texts[-1] == "":
        texts.pop()

    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(a.model_path), logits_all=True, n_ctx=512, n_batch=512,
                          n_threads=a.threads, n_threads_batch=a.threads, verbose=False)

    def score(batch: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        values: list[np.ndarray] = []
        tokens: list[np.ndarray] = []
        for text in batch:
            toks = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            n = len(toks)
            llm.reset()
            if n:
                llm.eval(toks)
            if n < 2:
                values.append(np.empty(0, np.float32))
                tokens.append(np.empty(0, np.int32))
                continue
            rows = llm.scores[:n - 1].astype(np.float64)
            target = np.asarray(toks[1:], dtype=np.int64)
            m = rows.max(axis=1)
            lse = np.log(np.exp(rows - m[:, None]).sum(axis=1)) + m
            values.append((rows[np.arange(n - 1), target] - lse).astype(np.float32))
            tokens.append(target.astype(np.int32))
        return values, tokens

    score(texts[:WARMUP_TEXTS])  # warm-up, untimed
    runs: list[float] = []
    values: list[np.ndarray] = []
    tokens: list[np.ndarray] = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        values, tokens = score(texts)
        runs.append(time.perf_counter() - t0)
    lengths = np.array([v.shape[0] for v in values], dtype=np.int64)
    Scored(np.concatenate(values) if values else np.empty(0, np.float32),
           np.concatenate(tokens) if tokens else np.empty(0, np.int32),
           np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)).save(a.out)
    n_tokens = sum(len(llm.tokenize(t.encode("utf-8"), add_bos=True, special=False)) for t in texts)
    fa = llm.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    print(json.dumps({"runs": runs, "n_tokens": n_tokens, "version": llama_cpp.__version__,
                      "n_ctx": llm.n_ctx(), "n_batch": llm.n_batch, "n_ubatch": llm.context_params.n_ubatch,
                      "n_threads": llm.n_threads, "n_threads_batch": llm.n_threads_batch, "flash_attn": fa}))
    return 0


# -- part 2: grammar-constrained generation -----------------------------------------------------

def _schema(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props), "additionalProperties": False}


SCHEMAS = {
    "person": _schema({"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                       "occupation": {"type": "string"}, "city": {"type": "string"}}),
    "city": _schema({"name": {"type": "string"}, "country": {"type": "string"},
                     "population": {"type": "integer", "minimum": 0}, "famous_for": {"type": "string"}}),
    "book": _schema({"title": {"type": "string"}, "author": {"type": "string"},
                     "year": {"type": "integer"}, "genre": {"type": "string"}}),
    "product": _schema({"name": {"type": "string"}, "price": {"type": "number", "minimum": 0},
                        "in_stock": {"type": "boolean"}}),
}

GRAMMAR_PROMPTS: tuple[tuple[str, str], ...] = (
    ("person", "Give me a JSON record of a fictional nurse: name, age, occupation and city."),
    ("city", "Describe Lisbon as a JSON object: its name, country, population and what it is famous for."),
    ("book", "Write a JSON record for the novel Moby-Dick: title, author, year and genre."),
    ("product", "Make up a kitchen product and return it as JSON: name, price and whether it is in stock."),
    ("person", "Return a JSON object describing a retired sailor who lives by the sea."),
    ("city", "I need a JSON record about Kyoto: name, country, population, famous for."),
    ("book", "Produce JSON for a children's book about a lost dog (title, author, year, genre)."),
    ("product", "Return a JSON record for a pair of running shoes: name, price, in_stock."),
    ("person", "Invent a young software engineer and give her details as a JSON object."),
    ("city", "As JSON, tell me the name, country, population and best-known sight of Cairo."),
    ("book", "Give the title, author, year and genre of Pride and Prejudice as a JSON object."),
    ("product", "Describe a cheap umbrella as a JSON product record."),
    ("person", "Create a JSON profile (name, age, occupation, city) of a baker in a small town."),
    ("city", "Output a JSON object for the city of Toronto with four fields."),
    ("book", "Record a science-fiction novel of your choice in JSON: title, author, year, genre."),
    ("product", "Write a JSON entry for a wooden desk lamp sold in an online shop."),
)


def _chat_call(ctx: Any, prompt: str, schema: dict[str, Any] | None, max_tokens: int) -> dict[str, Any]:
    ctx.clear_cache()
    kw: dict[str, Any] = {"json_schema": schema} if schema is not None else {}
    t0 = time.perf_counter()
    reply = ctx.chat([{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
                     repetition_penalty=1.1, **kw)
    wall = time.perf_counter() - t0
    st = ctx.last_stats
    parsed_ok = None
    if schema is not None:
        parsed_ok = reply.parsed is not None
    return {"completion_tokens": st.completion_tokens, "generation_ms": st.generation_ms,
            "prompt_ms": st.prompt_ms, "prompt_tokens": st.prompt_tokens, "wall_s": wall,
            "finish_reason": st.finish_reason, "parsed": parsed_ok, "content": reply.content}


def _tok_s(calls: list[dict[str, Any]]) -> tuple[float, float]:
    """(completion tokens / generation time, completion tokens / wall time)."""
    n = sum(c["completion_tokens"] for c in calls)
    gen = sum(c["generation_ms"] for c in calls) / 1000.0
    wall = sum(c["wall_s"] for c in calls)
    return (n / gen if gen > 0 else 0.0), (n / wall if wall > 0 else 0.0)


def grammar_part(model_obj: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Each prompt unconstrained, then with its schema, next to each other in time; a pair
    disturbed by other processes is run again (``--tries``)."""
    ctx = model_obj.new_context(n_ctx=1024, n_threads=args.threads, flash_attn=args.fa)
    prompts = GRAMMAR_PROMPTS[:args.grammar_prompts]
    kind, text = prompts[0]
    _chat_call(ctx, text, None, 8)  # warm-up, untimed
    _chat_call(ctx, text, SCHEMAS[kind], 8)
    free: list[dict[str, Any]] = []
    constrained: list[dict[str, Any]] = []
    disturbed = 0
    for kind, text in prompts:
        pair: tuple[dict[str, Any], dict[str, Any]] | None = None
        share = 0.0
        for _ in range(max(1, args.tries)):
            wait_quiet(args.quiet_wait)
            with Interference() as load:
                pair = (_chat_call(ctx, text, None, args.max_tokens),
                        _chat_call(ctx, text, SCHEMAS[kind], args.max_tokens))
            share = load.share
            if share <= args.max_foreign:
                break
        assert pair is not None
        disturbed += share > args.max_foreign
        for call in pair:
            call["other_cpu"] = share
        free.append({"kind": kind, **pair[0]})
        constrained.append({"kind": kind, **pair[1]})
    free_gen, free_wall = _tok_s(free)
    con_gen, con_wall = _tok_s(constrained)
    return {
        "n_prompts": len(prompts), "max_tokens": args.max_tokens, "flash_attn": ctx.flash_attn,
        "sampling": {"temperature": 0, "repetition_penalty": 1.1},
        "unconstrained": {"tokens_per_s": free_gen, "tokens_per_s_wall": free_wall,
                          "completion_tokens": sum(c["completion_tokens"] for c in free)},
        "json_schema": {"tokens_per_s": con_gen, "tokens_per_s_wall": con_wall,
                        "completion_tokens": sum(c["completion_tokens"] for c in constrained),
                        "parsed": sum(bool(c["parsed"]) for c in constrained),
                        "finish_reasons": {r: sum(c["finish_reason"] == r for c in constrained)
                                           for r in sorted({c["finish_reason"] for c in constrained})}},
        # time per token constrained / unconstrained: 1.05 = 5% slower with the schema
        "overhead": free_gen / con_gen if con_gen > 0 else None,
        "overhead_wall": free_wall / con_wall if con_wall > 0 else None,
        "disturbed_pairs": disturbed,
        "calls": {"unconstrained": free, "json_schema": constrained},
    }


# -- report -------------------------------------------------------------------------------------

def ratios(results: list[Result]) -> dict[str, float]:
    ours = next((r for r in results if r.side == "llama_cython"), None)
    if ours is None:
        return {}
    return {r.side: ours.tokens_per_s / r.tokens_per_s for r in results if r is not ours}


def print_report(results: list[Result], texts: list[str], checks: dict[str, Any],
                 grammar: dict[str, Any] | None) -> None:
    if results:
        print(f"\n{len(texts)} texts (corpus sha256 {corpus.digest(texts)[:12]}), median of the repeats:")
        w = max(len(f"{r.side} [{r.setting}]") for r in results)
        print(f"  {'side [setting]':<{w}}  {'tokens':>7}  {'tokens/s':>9}  {'texts/s':>8}  {'s':>7}  other")
        for r in results:
            print(f"  {f'{r.side} [{r.setting}]':<{w}}  {r.n_tokens:7d}  {r.tokens_per_s:9.1f}  "
                  f"{r.texts_per_s:8.1f}  {r.seconds:7.3f}  {r.other_cpu:5.0%}")
        rs = ratios(results)
        targets = {"c-score-loop": TARGET_VS_C, "llama-cpp-python": TARGET_VS_LCP}
        if rs:
            print("\nours / peer (tokens/s):")
            for side, ratio in rs.items():
                t = targets.get(side)
                verdict = "" if t is None else f"  (target >= {t}x: {'met' if ratio >= t else 'NOT met'})"
                print(f"  {side:<18} {ratio:6.3f}x{verdict}")
    if checks:
        print("\nvalues (log-probabilities, max |diff| over tokens scored alike):")
        for name, c in checks.items():
            if "max_abs_diff" not in c:
                print(f"  {name}: nothing to compare ({c})")
                continue
            extra = f", limit {c['limit']:g}: {'OK' if c['ok'] else 'FAILED'}" if "limit" in c else ""
            print(f"  {name}: max {c['max_abs_diff']:.3g} (text {c['worst_text']}), "
                  f"mean {c['mean_abs_diff']:.3g}, "
                  f"p99 {c['p99_abs_diff']:.3g}, per-text sum max {c['max_abs_diff_text_sum']:.3g}; "
                  f"{c['texts_tokenized_alike']}/{c['n_texts']} texts tokenized alike{extra}")
    if grammar:
        g = grammar
        print(f"\ngrammar: {g['n_prompts']} prompts, max_tokens={g['max_tokens']}, temperature=0, "
              f"repetition_penalty=1.1, fa={g['flash_attn']}")
        for name in ("unconstrained", "json_schema"):
            x = g[name]
            print(f"  {name:<14} {x['tokens_per_s']:8.1f} tokens/s (generation)  "
                  f"{x['tokens_per_s_wall']:8.1f} tokens/s (wall)  {x['completion_tokens']} tokens")
        js = g["json_schema"]
        print(f"  parsed {js['parsed']}/{g['n_prompts']} schema outputs; "
              f"finish reasons {js['finish_reasons']}")
        if g["overhead"] is not None:
            print(f"  overhead (time per token, schema / unconstrained): {g['overhead']:.3f}x generation, "
                  f"{g['overhead_wall']:.3f}x wall; {g['disturbed_pairs']} disturbed pairs")


# -- main ---------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--model", default=None,
                    help="a GGUF path or a name from llama_cython.models (default: its default model)")
    ap.add_argument("--n-texts", type=int, default=corpus.N_TEXTS)
    ap.add_argument("--sides", default=",".join(SIDES),
                    help=f"comma-separated, of: {','.join(SIDES)}; 'none' for --grammar alone")
    ap.add_argument("--n-batch", "-b", type=int, default=512,
                    help="B: n_batch = n_ubatch (and the C loop's n_ctx)")
    ap.add_argument("--n-parallel", "-p", type=int, default=32,
                    help="P: sequences (texts) per decode at most; ours' n_ctx = 256 * P")
    ap.add_argument("--threads", "-t", type=int, default=2)
    ap.add_argument("--fa", choices=("auto", "on", "off"), default="auto",
                    help="ours' flash_attn; the C loop gets what ours ends up with")
    ap.add_argument("--repeats", type=int, default=1, help="timed whole-corpus calls per side (median)")
    ap.add_argument("--tries", type=int, default=3, help="runs of a side at most (see --max-foreign)")
    ap.add_argument("--max-diff-c", type=float, default=1e-3,
                    help="fail when ours and the C loop differ by more (max abs log-prob)")
    ap.add_argument("--fa-off-texts", type=int, default=200,
                    help="with flash attention on in ours, score this many texts with fa off too (0: don't)")
    ap.add_argument("--single-texts", type=int, default=32,
                    help="also compare ours (n_parallel=1) with the C loop (--n-seq-max 1) on this many "
                         "texts: one text per decode on both sides (0: don't)")
    ap.add_argument("--grammar", action="store_true",
                    help="also run part 2: json_schema= generation overhead")
    ap.add_argument("--grammar-prompts", type=int, default=len(GRAMMAR_PROMPTS),
                    help=f"part 2: prompts to use, 1..{len(GRAMMAR_PROMPTS)}")
    ap.add_argument("--max-tokens", type=int, default=64, help="part 2: max_tokens per call")
    add_interference_options(ap, "side or grammar pair", "it")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    sides = {s.strip() for s in args.sides.split(",") if s.strip() and s.strip() != "none"}
    if not sides <= set(SIDES):
        ap.error(f"unknown sides: {sorted(sides - set(SIDES))}")
    if not 1 <= args.grammar_prompts <= len(GRAMMAR_PROMPTS):
        ap.error(f"--grammar-prompts must be 1..{len(GRAMMAR_PROMPTS)}")
    if not 1 <= args.n_texts <= corpus.N_TEXTS:
        ap.error(f"--n-texts must be 1..{corpus.N_TEXTS}")

    import llama_cython
    from llama_cython import models

    system = print_system()
    model = Path(args.model) if args.model and Path(args.model).is_file() else (
        models.model_path(args.model) if args.model else models.model_path())
    model_obj = llama_cython.load_model(str(model))
    texts = corpus.make_corpus(args.n_texts)
    WORK.mkdir(parents=True, exist_ok=True)
    texts_file = WORK / "corpus.txt"
    texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
    ctx = new_scoring_context(model_obj, args, args.fa) if sides else None
    fa = ctx.flash_attn if ctx is not None else None  # what ours got: the C loop runs with the same
    settings = {"model": str(model), "n_texts": len(texts), "n_batch": args.n_batch, "n_ubatch": args.n_batch,
                "n_parallel": args.n_parallel, "n_ctx": 256 * args.n_parallel, "threads": args.threads,
                "flash_attn_asked": args.fa, "flash_attn": fa, "repeats": args.repeats}
    print(f"# {model.name}: B={args.n_batch} P={args.n_parallel} T={args.threads} fa={fa} "
          f"({args.fa} asked), {len(texts)} texts, {args.repeats} repeat(s)", file=sys.stderr, flush=True)

    results: list[Result] = []

    def add(fn: Callable[[], Result | None]) -> None:
        r = measured(fn, args)
        if r is not None:
            results.append(r)
            print(f"{r.side:<18} {r.tokens_per_s:9.1f} tokens/s {r.texts_per_s:8.1f} texts/s "
                  f"(other {r.other_cpu:.0%})  [{r.setting}]", file=sys.stderr, flush=True)

    exe: Path | None = None
    if "c" in sides:
        exe = build_c_loop()
        add(lambda: measure_c_loop(exe, model, texts_file, len(texts), args, fa))
    if "ours" in sides:
        # ours: see measure_ours
        add(lambda: measure_ours(ctx, texts, args))
    if "lcp" in sides:
        add(lambda: measure_lcp(model, texts_file, len(texts), args))

    checks: dict[str, Any] = {}
    ok = True
    by_side = {r.side: Scored.load(r.values) for r in results}
    ours = by_side.get("llama_cython")
    if ours is not None and "c-score-loop" in by_side:
        c = compare(ours, by_side["c-score-loop"])
        c["limit"] = args.max_diff_c
        c["ok"] = (c.get("max_abs_diff", 0.0) <= args.max_diff_c and c["nonfinite"] == 0
                   and c["texts_tokenized_alike"] == c["n_texts"])
        ok &= c["ok"]
        checks[f"ours (fa {fa}) vs c-score-loop (fa {fa})"] = c
    if ours is not None and "llama-cpp-python" in by_side:
        lcp_fa = next(r.info.get("flash_attn") for r in results if r.side == "llama-cpp-python")
        checks[f"ours (fa {fa}) vs llama-cpp-python (fa {'on' if lcp_fa else 'off'})"] = compare(
            ours, by_side["llama-cpp-python"])
    if ours is not None and fa == "on" and args.fa_off_texts > 0 and len(by_side) > 1:
        n_off = min(args.fa_off_texts, len(texts))
        ctx_off = new_scoring_context(model_obj, args, "off")
        off = to_scored(ctx_off.score(texts[:n_off]))
        del ctx_off
        checks[f"ours (fa on) vs ours (fa off), first {n_off} texts"] = compare(ours.head(n_off), off)
        if "llama-cpp-python" in by_side:
            checks[f"ours (fa off) vs llama-cpp-python, first {n_off} texts"] = compare(
                off, by_side["llama-cpp-python"].head(n_off))
    if ours is not None and exe is not None and fa is not None and args.single_texts > 0:
        n1 = min(args.single_texts, len(texts))
        c = single_sequence_check(exe, model, model_obj, texts[:n1], args, fa)
        c["limit"] = args.max_diff_c
        c["ok"] = (c.get("max_abs_diff", 0.0) <= args.max_diff_c and c["nonfinite"] == 0
                   and c["texts_tokenized_alike"] == c["n_texts"])
        ok &= c["ok"]
        checks[f"ours (n_parallel=1, fa {fa}) vs c-score-loop (--n-seq-max 1), first {n1} texts"] = c
    counts = {r.side: r.n_tokens for r in results}
    if len(set(counts.values())) > 1:
        print(f"warning: the sides decoded different numbers of tokens: {counts}", file=sys.stderr)
        ok = False

    grammar = grammar_part(model_obj, args) if args.grammar else None

    if args.json:
        print(json.dumps({"system": system, "settings": settings, "corpus_sha256": corpus.digest(texts),
                          "results": [r.as_dict() for r in results], "ratios": ratios(results),
                          "targets": {"c-score-loop": TARGET_VS_C, "llama-cpp-python": TARGET_VS_LCP},
                          "checks": checks, "checks_ok": ok, "grammar": grammar}, indent=1))
    else:
        print_report(results, texts, checks, grammar)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
