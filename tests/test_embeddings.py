"""Batch embeddings: agreement with sentence-transformers, batch == one by one whatever the
packing, numpy in and out, bounded memory, and clear errors that leave the context usable."""

from __future__ import annotations

import json
import resource
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import ContextError, ContextSizeError, DecodeError, EmbeddingStats

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def minilm():
    model = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    yield model


@pytest.fixture(scope="module")
def ctx(minilm):
    with minilm.new_context(embeddings=True, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return json.loads((DATA / "embedding_sentences.json").read_text(encoding="utf-8"))


def test_embedding_context_defaults_reach_llama_cpp(ctx, minilm):
    # n_ctx defaults to the model's maximum when that is below 2048; an embeddings context packs
    # many sequences (n_parallel read back from llama.cpp), each of which may use the whole context.
    assert minilm.n_ctx_train == 512
    assert ctx.n_ctx == 512 and ctx.n_parallel == 128 and ctx.n_ctx_seq == 512
    assert ctx.embeddings is True and ctx.pooling == "mean"


# -- against what we did not write ----------------------------------------------------------------


def test_matches_sentence_transformers(ctx, sentences):
    reference = np.load(DATA / "embedding_reference.npy")
    assert reference.shape == (len(sentences), 384) and len(sentences) >= 500
    ours = ctx.get_embeddings_batch(sentences)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    cos = np.sum(ours * reference, axis=1)            # both L2-normalised
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.999, (worst, float(cos[worst]), sentences[worst][:80])
    assert ctx.last_embedding_stats.truncated == 0


def test_bf16_variant_matches_sentence_transformers(sentences):
    """The registry's BF16 file (made from the F32 one by llama.cpp's quantizer) keeps every
    reference sentence at cosine >= 0.999 (0.99994 measured), with flash attention on and off."""
    reference = np.load(DATA / "embedding_reference.npy")
    model = llama.load_model(llama.models.model_path("all-minilm-l6-v2-bf16"))
    assert "BF16" in model.description
    for fa in ("on", "off"):
        with model.new_context(embeddings=True, flash_attn=fa) as c:
            cos = np.sum(c.get_embeddings_batch(sentences) * reference, axis=1)
        assert cos.min() >= 0.999, (fa, float(cos.min()))


# -- batch == one by one -----------------------------------------------------------------------------
#
# Measured: llama.cpp's CPU kernels round differently for different batch shapes (a text packed
# beside others, even others of its own length, moves by up to 2.6e-4 on a unit vector with the
# F16 model and 8.7e-5 with F32 and flash attention off), so "equal" here means within 5e-4 and
# a cosine above 0.99999; the 1e-5 is not reachable without shape-invariant kernels.
BATCH_ATOL = 5e-4


@pytest.fixture(scope="module")
def one_by_one(ctx, sentences) -> np.ndarray:
    subset = sentences[::5]
    return np.stack([ctx.get_embeddings(t) for t in subset])


@pytest.mark.parametrize("batch_tokens", [None, 64, 128, 512])
def test_batch_equals_one_by_one(ctx, sentences, one_by_one, batch_tokens):
    subset = sentences[::5]
    batch = ctx.get_embeddings_batch(subset, batch_tokens=batch_tokens)
    assert np.abs(batch - one_by_one).max() <= BATCH_ATOL
    assert np.sum(batch * one_by_one, axis=1).min() >= 0.99999


def test_order_does_not_matter(ctx, sentences, one_by_one):
    subset = sentences[::5]
    perm = np.random.default_rng(7).permutation(len(subset))
    shuffled = ctx.get_embeddings_batch([subset[i] for i in perm])
    assert np.abs(shuffled - one_by_one[perm]).max() <= BATCH_ATOL


def test_unnormalised_rows(ctx, sentences):
    raw = ctx.get_embeddings_batch(sentences[:20], normalize=False)
    unit = ctx.get_embeddings_batch(sentences[:20])
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0)
    np.testing.assert_allclose(raw / norms[:, None], unit, atol=1e-6)


# -- inputs and outputs ------------------------------------------------------------------------------


def test_sequence_types(ctx, sentences):
    texts = sentences[:7]
    ref = ctx.get_embeddings_batch(texts)
    for form in (tuple(texts), np.array(texts), (t for t in texts), iter(texts)):
        np.testing.assert_array_equal(ctx.get_embeddings_batch(form), ref)
    empty = ctx.get_embeddings_batch([])
    assert empty.shape == (0, 384) and empty.dtype == np.float32


def test_out_is_filled_in_place(ctx, sentences):
    out = np.full((10, 384), np.nan, dtype=np.float32)
    got = ctx.get_embeddings_batch(sentences[:10], out=out)
    assert got is out
    np.testing.assert_array_equal(out, ctx.get_embeddings_batch(sentences[:10]))


@pytest.mark.parametrize(
    ("out", "exc"),
    [
        (np.zeros((3, 384), dtype=np.float64), TypeError),
        (np.zeros((4, 384), dtype=np.float32), ValueError),
        (np.zeros((3, 383), dtype=np.float32), ValueError),
        (np.zeros((384, 3), dtype=np.float32).T, ValueError),
        (np.zeros((3, 768), dtype=np.float32)[:, ::2], ValueError),
        ([[0.0] * 384] * 3, TypeError),
    ],
)
def test_bad_out(ctx, out, exc):
    with pytest.raises(exc, match="out"):
        ctx.get_embeddings_batch(["a", "b", "c"], out=out)
    assert ctx.get_embeddings("still works").shape == (384,)


def test_read_only_out(ctx):
    out = np.zeros((1, 384), dtype=np.float32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        ctx.get_embeddings_batch(["a"], out=out)


def test_non_str_items_name_their_index(ctx):
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        ctx.get_embeddings_batch(["a", "b", 3, "d"])
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        ctx.get_embeddings_batch([b"bytes"])
    with pytest.raises(TypeError, match="single text"):
        ctx.get_embeddings_batch("a str is not a list")
    with pytest.raises(TypeError):
        ctx.get_embeddings_batch(42)
    with pytest.raises(TypeError):
        ctx.get_embeddings(["a list"])
    assert ctx.get_embeddings("still works").shape == (384,)


def test_empty_string_is_embedded_like_any_text(ctx):
    # BERT's tokenizer adds [CLS] and [SEP]: "" has two tokens and a (well-defined) vector.
    vec = ctx.get_embeddings("")
    assert vec.shape == (384,) and np.isfinite(vec).all()
    np.testing.assert_allclose(np.linalg.norm(vec), 1.0, rtol=1e-5)
    rows = ctx.get_embeddings_batch(["", "x", ""])
    np.testing.assert_allclose(rows[0], vec, atol=BATCH_ATOL)
    np.testing.assert_array_equal(rows[0], rows[2])


def test_context_without_embeddings(minilm, smol):
    with smol.new_context(n_ctx=256) as c:
        with pytest.raises(ContextError, match="embeddings=True"):
            c.get_embeddings_batch(["a"])
        with pytest.raises(ContextError, match="embeddings=True"):
            c.get_embeddings("a")
        assert c.generate("Hi", max_tokens=2, temperature=0)
    with minilm.new_context(embeddings=True) as e, pytest.raises(ContextError, match="embeddings only"):
        e.generate("Hi")


def test_closed_context(minilm):
    c = minilm.new_context(embeddings=True)
    c.close()
    with pytest.raises(llama.ClosedError):
        c.get_embeddings_batch(["a"])


# -- long texts ------------------------------------------------------------------------------------------


def test_truncation(ctx, minilm):
    long_text = "word " * 2000
    n_tokens = len(minilm.tokenize(long_text))
    assert n_tokens > 512
    rows = ctx.get_embeddings_batch(["short", long_text, "short"])
    assert ctx.last_embedding_stats.truncated == 1
    assert np.isfinite(rows).all()
    # the cut text equals its own first 512 tokens, ending in [SEP] as the tokenizer would
    cut = minilm.detokenize(minilm.tokenize(long_text)[1:511])
    np.testing.assert_allclose(rows[1], ctx.get_embeddings(cut), atol=1e-4)
    with pytest.raises(ContextSizeError, match=r"texts\[1\]"):
        ctx.get_embeddings_batch(["short", long_text], truncate=False)
    assert ctx.get_embeddings("still works").shape == (384,)


# -- progress, stats, cancel ------------------------------------------------------------------------------


def test_progress_and_stats(ctx, sentences):
    calls: list[int] = []
    ctx.get_embeddings_batch(sentences, progress=calls.append, batch_tokens=128)
    stats = ctx.last_embedding_stats
    assert isinstance(stats, EmbeddingStats)
    assert sum(calls) == len(sentences) == stats.texts
    assert stats.batches > 1
    # one call per batch on one worker; with several, each call counts what all of them finished
    assert 1 <= len(calls) <= stats.batches
    if ctx.embed_workers == 1:
        assert len(calls) == stats.batches
    assert stats.tokens > len(sentences) and stats.texts_per_second > 0
    with pytest.raises(DecodeError):
        ctx.get_embeddings_batch(sentences, progress=lambda n: False)
    with pytest.raises(TypeError, match="progress"):
        ctx.get_embeddings_batch(sentences, progress="yes")
    assert ctx.get_embeddings("still works").shape == (384,)


def test_bad_batch_tokens(ctx):
    for bad in (0, -1, 10**9):
        with pytest.raises(llama.OptionError, match="batch_tokens"):
            ctx.get_embeddings_batch(["a"], batch_tokens=bad)


# -- pipelines ----------------------------------------------------------------------------------------------


def test_iter_embeddings_chunks_in_order(ctx, sentences):
    blocks = list(ctx.iter_embeddings(iter(sentences[:250]), chunk_size=100))
    assert [b.shape[0] for b in blocks] == [100, 100, 50]
    np.testing.assert_allclose(np.concatenate(blocks), ctx.get_embeddings_batch(sentences[:250]),
                               atol=BATCH_ATOL)


def test_iter_embeddings_memory_is_bounded(ctx):
    """8,000 short texts through iter_embeddings in blocks of 500: the peak of what Python and numpy
    allocate (tracemalloc) stays under 3 MiB, where keeping every block would take 11.7 MiB
    (8,000 x 384 float32; one block is 0.73 MiB), and peak RSS, which counts llama.cpp's side
    too, grows by at most 16 MiB. The corpus is small for the suite's time (100,000 texts took 13
    minutes on a 2-core CI machine); the bounds do not depend on its length."""
    words = ["river", "stone", "light", "paper", "green", "quiet", "market", "winter", "song"]

    def corpus(n: int):
        for i in range(n):
            yield f"{words[i % 9]} {words[(i // 9) % 9]} {words[(i // 81) % 9]} number {i}"

    for _ in ctx.iter_embeddings(corpus(1_000), chunk_size=500):     # warm up allocators
        pass
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss        # KiB
    total = 0
    checksum = 0.0
    tracemalloc.start()
    try:
        for block in ctx.iter_embeddings(corpus(8_000), chunk_size=500):
            total += block.shape[0]
            checksum += float(block[:, 0].sum())
        del block
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    assert total == 8_000 and np.isfinite(checksum)
    assert peak < 3 * 2**20, f"Python/numpy peak {peak / 2**20:.1f} MiB"
    assert grown < 16 * 1024, f"peak RSS grew by {grown / 1024:.1f} MiB"


# -- decoder models and threads ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pooling"), [("smol", "mean"), ("smol", "last"), ("gemma", "mean")])
def test_decoder_models(request, name, pooling):
    model = request.getfixturevalue(name)
    texts = ["The cat sat on the mat.", "A dog barked.", "Stock markets fell sharply today.", "x"]
    with model.new_context(embeddings=True, pooling=pooling, n_ctx=512) as c:
        assert c.pooling == pooling
        batch = c.get_embeddings_batch(texts)
        single = np.stack([c.get_embeddings(t) for t in texts])
    assert batch.shape == (4, model.n_embd_out)
    np.testing.assert_allclose(batch, single, atol=1e-4)


def test_two_contexts_in_two_threads(minilm, sentences):
    with minilm.new_context(embeddings=True, n_threads=1) as a, \
            minilm.new_context(embeddings=True, n_threads=1) as b:
        ref_a = a.get_embeddings_batch(sentences[:100])
        ref_b = b.get_embeddings_batch(sentences[100:200])
        results: dict[str, np.ndarray] = {}
        ta = threading.Thread(target=lambda: results.update(a=a.get_embeddings_batch(sentences[:100])))
        tb = threading.Thread(target=lambda: results.update(b=b.get_embeddings_batch(sentences[100:200])))
        ta.start()
        tb.start()
        ta.join()
        tb.join()
    np.testing.assert_array_equal(results["a"], ref_a)
    np.testing.assert_array_equal(results["b"], ref_b)


@pytest.mark.parametrize("name", ["minilm", "smol"])
def test_pooling_none_gives_token_embeddings(request, name, minilm):
    """pooling='none': one vector per token, as a ragged (values, offsets) pair."""
    model = request.getfixturevalue(name)
    texts = ["hello world", "", "a much longer sentence with more tokens in it, and a comma", "x"]
    lengths = [len(model.tokenize(t)) for t in texts]
    d = model.n_embd_out
    with model.new_context(embeddings=True, pooling="none", n_ctx=512) as c:
        emb = c.get_token_embeddings(texts, normalize=False)
        assert isinstance(emb, llama.TokenEmbeddings) and len(emb) == len(texts)
        assert emb.values.dtype == np.float32 and emb.values.shape == (sum(lengths), d)
        assert emb.lengths.tolist() == lengths and emb.offsets[0] == 0
        assert np.shares_memory(emb[2], emb.values)
        for i, text in enumerate(texts):
            alone = c.get_token_embeddings([text], normalize=False)[0]
            assert alone.shape == (lengths[i], d)
            np.testing.assert_allclose(alone, emb[i], atol=1e-3, rtol=1e-3)
        unit = c.get_token_embeddings(texts)
        norms = np.linalg.norm(unit.values, axis=1)
        assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)
        # one return type per method: the pooled calls refuse a per-token context
        for call in (lambda: c.get_embeddings_batch(texts), lambda: c.get_embeddings("x"),
                     lambda: c.iter_embeddings(texts)):
            with pytest.raises(ContextError, match=r"get_token_embeddings|one vector per text"):
                call()
        empty = c.get_token_embeddings([])
        assert len(empty) == 0 and empty.values.shape == (0, d)
        assert c.last_embedding_stats.tokens == sum(lengths)
    if name == "minilm":
        # the mean of the token vectors is what mean pooling gives
        with model.new_context(embeddings=True, pooling="mean") as m:
            pooled = m.get_embeddings_batch(texts, normalize=False)
        np.testing.assert_allclose(emb.mean(), pooled, atol=1e-3, rtol=1e-3)
        with model.new_context(embeddings=True) as m, pytest.raises(ContextError, match="pooling='none'"):
            m.get_token_embeddings(texts)


# -- data-parallel workers (embed_workers) ------------------------------------------------------------


@pytest.mark.parametrize(("options", "workers"), [
    ({"n_threads": 2}, 2), ({"n_threads": 1}, 1), ({"n_threads": 2, "embed_workers": 1}, 1),
    ({"n_threads": 1, "n_threads_batch": 2}, 2), ({"n_threads": 2, "n_threads_batch": 1}, 1)])
def test_embed_workers_default_on_an_encoder(minilm, options, workers):
    """One worker per batch thread for a small model without a KV cache (all-MiniLM)."""
    with minilm.new_context(embeddings=True, **options) as c:
        assert c.embed_workers == workers
        assert c.options["embed_workers"] == options.get("embed_workers")


def test_embed_workers_default_on_a_decoder_is_one(smol):
    """A model with a KV cache embeds on its context alone (a worker would need a cache of its own)."""
    with smol.new_context(embeddings=True, n_ctx=512, n_threads=2) as c:
        assert c.embed_workers == 1
    with smol.new_context(embeddings=True, n_ctx=512, n_threads=2, embed_workers=2) as c:
        assert c.embed_workers == 2
        texts = ["The cat sat on the mat.", "A dog barked.", "Stock markets fell sharply today."] * 4
        with smol.new_context(embeddings=True, n_ctx=512, n_threads=2, embed_workers=1) as one:
            np.testing.assert_array_equal(c.get_embeddings_batch(texts, batch_tokens=16),
                                          one.get_embeddings_batch(texts, batch_tokens=16))


@pytest.mark.parametrize(("value", "exc"), [(0, llama.OptionError), (3, llama.OptionError),
                                            (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_embed_workers(minilm, value, exc):
    with pytest.raises(exc, match="embed_workers"):
        minilm.new_context(embeddings=True, n_threads=2, embed_workers=value)


def test_embed_workers_need_an_embeddings_context(smol):
    with pytest.raises(llama.OptionError, match="embed_workers"):
        smol.new_context(n_ctx=256, n_threads=2, embed_workers=2)
    with smol.new_context(n_ctx=256, n_threads=2, embed_workers=1) as c:
        assert c.embed_workers == 1


@pytest.mark.parametrize("batch_tokens", [8, 64, 512])
def test_workers_give_the_vectors_of_one_context_bit_for_bit(minilm, sentences, batch_tokens):
    """The batches are planned before the workers take them, so each text is packed with the
    same neighbours whichever worker computes it: the values equal one context's exactly."""
    texts = [*sentences[:200], "", "x", sentences[0]]
    with minilm.new_context(embeddings=True, n_threads=2, embed_workers=1) as one, \
            minilm.new_context(embeddings=True, n_threads=2, embed_workers=2) as two:
        want = one.get_embeddings_batch(texts, batch_tokens=batch_tokens)
        got = two.get_embeddings_batch(texts, batch_tokens=batch_tokens)
        np.testing.assert_array_equal(got, want)
        assert two.last_embedding_stats.batches == one.last_embedding_stats.batches
        assert two.last_embedding_stats.tokens == one.last_embedding_stats.tokens
        # unnormalised, into out=, and a second call on the workers made by the first
        out = np.empty_like(want)
        two.get_embeddings_batch(texts, batch_tokens=batch_tokens, normalize=False, out=out)
        np.testing.assert_array_equal(out, one.get_embeddings_batch(texts, batch_tokens=batch_tokens,
                                                                    normalize=False))
        got_chunks = list(two.iter_embeddings(iter(texts), chunk_size=64))
        want_chunks = list(one.iter_embeddings(iter(texts), chunk_size=64))
        np.testing.assert_array_equal(np.concatenate(got_chunks), np.concatenate(want_chunks))


def test_workers_give_token_embeddings_bit_for_bit(minilm, sentences):
    texts = [*sentences[:60], ""]
    with minilm.new_context(embeddings=True, pooling="none", n_threads=2, embed_workers=1) as one, \
            minilm.new_context(embeddings=True, pooling="none", n_threads=2, embed_workers=2) as two:
        want = one.get_token_embeddings(texts, batch_tokens=64)
        got = two.get_token_embeddings(texts, batch_tokens=64)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(got.values, want.values)


def test_workers_progress_stop_and_reuse(minilm, sentences):
    """Progress counts every worker's texts; a stop from progress ends the call with DecodeError
    after the workers' current batches, and the context (workers included) embeds again."""
    with minilm.new_context(embeddings=True, n_threads=2, embed_workers=2) as c:
        calls: list[int] = []
        ref = c.get_embeddings_batch(sentences, progress=calls.append, batch_tokens=64)
        assert sum(calls) == len(sentences)
        with pytest.raises(DecodeError):
            c.get_embeddings_batch(sentences, progress=lambda n: False, batch_tokens=64)

        def boom(n: int) -> None:
            raise RuntimeError("from progress")
        with pytest.raises(RuntimeError, match="from progress"):
            c.get_embeddings_batch(sentences, progress=boom, batch_tokens=64)
        assert not c.busy
        np.testing.assert_array_equal(c.get_embeddings_batch(sentences, batch_tokens=64), ref)


def test_cancel_stops_every_worker(minilm):
    """ctx.cancel() from another thread aborts the decodes of all workers: DecodeError, then the
    context works again."""
    texts = [f"sentence number {i} about nothing in particular" for i in range(20000)]
    with minilm.new_context(embeddings=True, n_threads=2, embed_workers=2) as c:
        started = threading.Event()

        def progress(n: int) -> None:
            started.set()

        canceller = threading.Thread(target=lambda: (started.wait(60), c.cancel()))
        canceller.start()
        with pytest.raises(DecodeError):
            c.get_embeddings_batch(texts, progress=progress, batch_tokens=64)
        canceller.join()
        assert c.get_embeddings_batch(["usable"]).shape == (1, 384)


def test_closing_frees_the_workers_and_the_model_closes(sentences):
    m = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    c = m.new_context(embeddings=True, n_threads=2, embed_workers=2)
    c.get_embeddings_batch(sentences[:50], batch_tokens=32)
    c.close()
    with pytest.raises(llama.ClosedError):
        c.get_embeddings_batch(["x"])
    m.close()
