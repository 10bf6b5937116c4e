"""Checked by mypy --strict in tests/test_typing.py (never run): the public API is typed."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import llama_cython as llama


def use(path: str) -> str:
    model: llama.Model = llama.load_model(path, n_gpu_layers=0, progress=lambda p: p < 2.0)
    ids: npt.NDArray[np.int32] = model.tokenize("hello", add_special=False)
    piece: bytes = model.token_to_piece(int(ids[0]))
    text: str = model.detokenize(ids) + piece.decode()
    n: int = model.n_vocab + model.n_ctx_train + model.n_params + model.size
    meta: dict[str, str] = model.metadata
    with model.new_context(n_ctx=512, kv_cache_type="q8_0", flash_attn="on") as ctx:
        out: str = ctx.generate("Hi", max_tokens=4, temperature=0.0, seed=1)
        stats = ctx.last_stats
        if stats is not None:
            rate: float = stats.tokens_per_second
            reason: str = stats.finish_reason
            text += f"{rate}{reason}"
        kv: str | None = ctx.kv_cache_type
        text += out + str(kv) + str(n) + str(len(meta))
    try:
        llama.load_model("missing.gguf")
    except llama.ModelNotFoundError as exc:
        text += str(exc)
    return text


def use_tokenizer(model: llama.Model) -> int:
    batch: llama.TokenBatch = model.tokenize_batch(["a", b"b"], n_threads=2)
    first: npt.NDArray[np.int32] = batch[0]
    lengths: npt.NDArray[np.int32] = batch.lengths
    counts: npt.NDArray[np.int32] = model.count_tokens(["a", "b c"])
    one: int = model.count_tokens("a b")
    texts: list[str] = model.detokenize_batch(batch[1:])
    enc: llama.Encoding = model.encode("hello world")
    spans: npt.NDArray[np.int64] = enc.char_offsets
    vocab: llama.Vocab = model.vocab
    eos: int | None = vocab.eos
    scores: npt.NDArray[np.float32] = vocab.scores
    control = bool(vocab.attrs[0] & llama.TokenAttr.CONTROL)
    total = int(first.sum() + lengths.sum() + counts.sum()) + one + len(texts) + len(spans)
    return total + (eos or 0) + len(scores) + control


def use_system_info() -> str:
    info: llama.SystemInfo = llama.system_info()
    variants: tuple[str, ...] = info.cpu_variants
    cpu: dict[str, str] = info.backend_features.get("CPU", {})
    return f"{info.cpu_variant} of {variants}: {sorted(cpu)} {info!s}"


def use_jobs(model: llama.Model, ctx: llama.Context) -> int:
    from pathlib import Path

    from llama_cython import jobs

    done: list[int] = []
    r: jobs.JobResult = jobs.embed_file(ctx, "in.parquet", Path("out.npy"), chunk_rows=1024,
                                        nulls="empty", progress=lambda d, t: done.append(d))
    g = jobs.generate_file(ctx, "in.jsonl", "out.parquet", id_column="id", stop=["\n"],
                           temperature=0.0, seed=1)
    c = jobs.count_file(model, "in.txt", None, add_special=False)
    rows = sum(len(b) + b.start for b in jobs.read_table_batches("in.csv", "text", batch_rows=64))
    out: Path | None = r.output
    return r.rows + g.chunks_resumed + (c.tokens or 0) + rows + jobs.count_rows("in.txt") + len(str(out))
