"""Token log-probabilities: logprobs=k on generation, ctx.score, score_continuations, perplexity.

References we did not write: the logits llama.cpp hands out (``get_logits``, one decode per
step), llama.cpp's own ``llama-perplexity`` tool (its figures recorded by
scripts/record_perplexity_reference.py into tests/data/perplexity_reference.json) and
llama-cpp-python's logits-based log-probabilities (tests/data/llama_cpp_python_logprobs.json,
recorded by scripts/record_llama_cpp_python_logprobs.py).
"""

from __future__ import annotations

from pathlib import Path

import _references
import numpy as np
import pytest

import llama_cython as llama
from llama_cython.token_scores import TokenScores

DATA = Path(__file__).parent / "data"

SENTENCES = [
    "The cat sat on the mat.",
    "Mat the on sat cat the.",
    "Paris is the capital of France.",
    "Colorless green ideas sleep furiously.",
    "a",
    "",
    "Once upon a time there was a little girl who lived in a village near the forest.",
]


def _log_softmax(row: np.ndarray) -> np.ndarray:
    row = row.astype(np.float64)
    m = row.max()
    return row - m - np.log(np.exp(row - m).sum())


@pytest.fixture(scope="module")
def scorer(smol):
    ctx = smol.new_context(n_ctx=2048, n_parallel=16, kv_unified=True)
    yield ctx
    ctx.close()


def _one_by_one(model, text: str) -> np.ndarray:
    """Log-probabilities of text's tokens from get_logits after each prefix (a fresh decode of
    every prefix: nothing shared with the packed loop)."""
    toks = model.tokenize(text)
    out = []
    ctx = model.new_context(n_ctx=256, prefix_caching="off")
    try:
        for i in range(1, len(toks)):
            ctx.generate(model.detokenize(toks[:i]), max_tokens=1, temperature=0)
            # the prompt's tokens must be the prefix itself for the comparison to hold
            assert ctx.last_stats.prompt_tokens == i
            out.append(_log_softmax(ctx.get_logits())[toks[i]])
    finally:
        ctx.close()
    return np.array(out)


def test_score_matches_logits_step_by_step(smol, scorer):
    texts = ["The cat sat on the mat.", "Paris is the capital of France."]
    s = scorer.score(texts)
    assert isinstance(s, TokenScores) and len(s) == 2
    texts = texts[1:]               # the packed second text: the one another text could disturb
    s = TokenScores(s.values[s.offsets[1]:], s.tokens[s.offsets[1]:], s.offsets[1:] - s.offsets[1])
    for i, text in enumerate(texts):
        ref = _one_by_one(smol, text)
        assert s[i].shape == ref.shape
        np.testing.assert_allclose(s[i], ref, atol=2e-3)
        np.testing.assert_array_equal(s.tokens[s.offsets[i]:s.offsets[i + 1]], smol.tokenize(text)[1:])


def test_score_ragged_shapes_and_reductions(smol, scorer):
    s = scorer.score(SENTENCES)
    counts = [len(smol.tokenize(t)) for t in SENTENCES]
    assert s.lengths.tolist() == [max(c - 1, 0) for c in counts]
    assert s.values.dtype == np.float32 and s.tokens.dtype == np.int32 and s.offsets.dtype == np.int64
    assert np.all(s.values <= 0) and np.all(np.isfinite(s.values))
    sums = s.sum()
    for i in range(len(SENTENCES)):
        assert sums[i] == pytest.approx(float(np.sum(s[i], dtype=np.float64)))
    ppl = s.perplexity()
    assert np.isnan(ppl[5]) and np.isnan(ppl[4])        # nothing scored in "" and "a"
    # a shuffled sentence is less likely than the sentence
    assert sums[0] > sums[1]


def test_score_packing_does_not_change_results(smol, scorer):
    """One text per decode (n_parallel=1), 16 per decode on a shared cache and 16 on split
    caches give the same values, up to batch-shape rounding."""
    single = smol.new_context(n_ctx=512)
    try:
        a = single.score(SENTENCES)
    finally:
        single.close()
    b = scorer.score(SENTENCES)
    split = smol.new_context(n_ctx=4096, n_parallel=16)
    try:
        c = split.score(SENTENCES)
    finally:
        split.close()
    for other in (b, c):
        np.testing.assert_array_equal(a.offsets, other.offsets)
        np.testing.assert_allclose(a.values, other.values, atol=2e-3)


def test_score_inputs_and_errors(smol, scorer):
    import pyarrow as pa

    a = scorer.score(SENTENCES[:3])
    b = scorer.score(pa.array(SENTENCES[:3]))
    np.testing.assert_array_equal(a.values, b.values)
    with pytest.raises(TypeError):
        scorer.score("one string")
    with pytest.raises(llama.ContextSizeError):
        scorer.score(["word " * 3000])              # longer than the context (2048)
    with pytest.raises(TypeError):
        scorer.score(SENTENCES, progress=3)
    seen = []
    scorer.score(SENTENCES, progress=seen.append)
    assert sum(seen) == len(SENTENCES)
    emb = smol.new_context(embeddings=True)
    try:
        with pytest.raises(llama.ContextError, match="embeddings"):
            emb.score(["x"])
    finally:
        emb.close()
    # the context is usable afterwards, and generation starts afresh
    assert scorer.generate("Hello", max_tokens=2, temperature=0)


def test_score_long_text_in_pieces(smol):
    """A text longer than the decode budget is decoded in pieces of one sequence: the same
    values, bit for bit, as one decode with the same physical batch (n_ubatch)."""
    text = " ".join(SENTENCES * 2)
    big = smol.new_context(n_ctx=512, n_batch=32, n_ubatch=32)
    small = smol.new_context(n_ctx=512, n_batch=512, n_ubatch=32)
    try:
        a = big.score([text])
        b = small.score([text])
    finally:
        big.close()
        small.close()
    assert a.lengths[0] > 64          # three pieces at least
    np.testing.assert_array_equal(a.values, b.values)


def test_score_continuations_ranks(smol, scorer):
    s = scorer.score_continuations("The capital of France is", [" Paris", " Rome", " a banana"])
    assert len(s) == 3
    assert int(np.argmax(s.sum())) == 0
    # equal to scoring prompt + candidate and keeping the candidate's tokens
    whole = scorer.score(["The capital of France is Paris"])
    n = s.lengths[0]
    np.testing.assert_allclose(s[0], whole[0][-n:], atol=2e-3)
    with pytest.raises(TypeError):
        scorer.score_continuations("x", " y")


def test_score_continuations_shares_the_prompt(smol, scorer):
    """With n_parallel >= 2 the prompt is decoded once and copied to each candidate's sequence
    (more candidates than sequences: several packs); the values are those of scoring each
    prompt + candidate on its own (one sequence, n_parallel=1), up to batch-shape rounding."""
    prompt = "Question: which of these is a fruit, an animal or a colour? The word is"
    candidates = [f" {w}" for w in ("apple", "horse", "blue", "banana", "tiger", "green", "pear",
                                    "cat", "red", "plum", "dog", "yellow", "kiwi", "owl", "pink",
                                    "fig", "bee", "grey", "lime", "elk")] + [" a very long answer " * 3]
    shared = scorer.score_continuations(prompt, candidates)
    single = smol.new_context(n_ctx=512)
    try:
        alone = single.score_continuations(prompt, candidates)
    finally:
        single.close()
    np.testing.assert_array_equal(shared.offsets, alone.offsets)
    np.testing.assert_array_equal(shared.tokens, alone.tokens)
    np.testing.assert_allclose(shared.values, alone.values, atol=2e-3)


def test_logprobs_agree_with_get_logits(smol):
    ctx = smol.new_context(n_ctx=512)
    check = smol.new_context(n_ctx=512, prefix_caching="off")
    try:
        prompt = "The cat sat on the"
        text = ctx.generate(prompt, max_tokens=6, temperature=0, logprobs=5)
        lp = ctx.last_stats.logprobs
        assert lp is not None and len(lp) == ctx.last_stats.completion_tokens and lp.k == 5
        assert lp.top_tokens.shape == (len(lp), 5) and lp.top_logprobs.dtype == np.float32
        np.testing.assert_array_equal(lp.tokens, ctx.last_stats.tokens)
        # greedy: the chosen token is the top one
        np.testing.assert_array_equal(lp.top_tokens[:, 0], lp.tokens)
        so_far = prompt
        for t in range(len(lp)):
            check.generate(so_far, max_tokens=1, temperature=0)
            ref = _log_softmax(check.get_logits())
            order = np.argsort(-ref, kind="stable")[:5]
            np.testing.assert_array_equal(lp.top_tokens[t], order)
            np.testing.assert_allclose(lp.top_logprobs[t], ref[order], atol=1e-4)
            assert lp.logprobs[t] == pytest.approx(ref[lp.tokens[t]], abs=1e-4)
            so_far += smol.detokenize(lp.tokens[t:t + 1])
        assert so_far == prompt + text
        # logprobs=True: the chosen token's only; stream and chat carry them too
        ctx.generate(prompt, max_tokens=3, temperature=0, logprobs=True)
        assert ctx.last_stats.logprobs.k == 0
        with ctx.generate_stream(prompt, max_tokens=3, temperature=0, logprobs=2) as stream:
            "".join(stream)
        assert stream.stats.logprobs.top_tokens.shape == (3, 2)
        reply = ctx.chat([{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, logprobs=1)
        assert reply.logprobs is not None and len(reply.logprobs) == reply.usage.completion_tokens
        ctx.generate(prompt, max_tokens=3, temperature=0)
        assert ctx.last_stats.logprobs is None
        for bad in (-1, 101, 1.5, "3"):
            with pytest.raises((llama.OptionError, TypeError)):
                ctx.generate(prompt, max_tokens=2, logprobs=bad)
        with pytest.raises(llama.OptionError):
            ctx.generate_with_draft(prompt, "prompt", max_tokens=2, logprobs=2)
        with pytest.raises(llama.OptionError):
            ctx.generate_batch([prompt], max_tokens=2, logprobs=2)
    finally:
        ctx.close()
        check.close()


def test_llama_cpp_python_logprobs_reference(smol):
    """llama-cpp-python's logits (Llama(logits_all=True), one text per evaluation, flash
    attention off as its default), log-softmaxed in float64, recorded offline: equal to 1e-3
    where recorded under this extension's ggml options; on another CPU family (AVX2 against
    AVX-512 moves single values by up to 0.3 nats, 0.06 on average) within 0.6 nats, 0.1 on
    average."""
    _header, ref, exact = _references.pick(DATA / "llama_cpp_python_logprobs.json",
                                           "scripts/record_llama_cpp_python_logprobs.py")
    ctx = smol.new_context(n_ctx=512, n_batch=512, flash_attn="off")
    try:
        for item in ref["texts"]:
            toks = np.array(item["token_ids"], dtype=np.int32)
            np.testing.assert_array_equal(smol.tokenize(item["text"]), toks)
            s = ctx.score([item["text"]])
            np.testing.assert_array_equal(s.tokens, toks[1:])
            want = np.array(item["logprobs"])
            if exact:
                np.testing.assert_allclose(s.values, want, atol=1e-3)
            else:
                np.testing.assert_allclose(s.values, want, atol=0.6)
                assert np.abs(s.values - want).mean() < 0.1
    finally:
        ctx.close()


def test_perplexity_equals_llama_perplexity_tool(smol, gemma, smol_path, gemma_path):
    """llama-perplexity -f text -c N -b B, recorded; the same chunks, batched the same way
    (n_seq = B / N chunks per decode as sequences of their own), the same flash attention.
    To the tool's 4 significant digits where recorded under this extension's ggml options; on
    another CPU family (AVX2 against AVX-512 moves a chunk's perplexity by up to 1.9 %, the
    estimate by 0.6 %) within 5 % per chunk and 2 % overall."""
    header, ref, exact = _references.pick(DATA / "perplexity_reference.json",
                                          "scripts/record_perplexity_reference.py")
    text = (DATA / "perplexity_text.txt").read_text(encoding="utf-8")
    if header.get("text_trailing_newline_dropped") and text.endswith("\n"):
        text = text[:-1]            # -f drops one trailing newline
    rel, chunk_rel, unc_rel = (5e-4, 5e-4, 5e-3) if exact else (2e-2, 5e-2, 5e-2)
    models = {smol_path.name: smol, gemma_path.name: gemma}
    checked = 0
    for entry in ref["models"].values():
        model = models.get(entry["file"])
        if model is None:
            continue
        np.testing.assert_array_equal(model.tokenize(text), entry["token_ids"])
        for run in entry["runs"]:
            n_ctx, n_seq = run["options"]["n_ctx"], run["n_seq"]
            ctx = model.new_context(n_ctx=256 * n_seq, n_parallel=n_seq, n_batch=run["n_batch_used"])
            try:
                r = ctx.perplexity(text, n_ctx=n_ctx)
            finally:
                ctx.close()
            assert r.n_chunks == run["n_chunk"] and r.n_tokens == run["n_scored"]
            assert r.perplexity == pytest.approx(run["ppl"], rel=rel)
            np.testing.assert_allclose(r.chunk_perplexity, run["chunk_ppl"], rtol=chunk_rel)
            assert r.uncertainty == pytest.approx(run["ppl_uncertainty"], rel=unc_rel)
            checked += 1
    assert checked == 4


def test_perplexity_errors(smol, scorer):
    with pytest.raises(llama.ContextSizeError, match="two chunks"):
        scorer.perplexity("short text", n_ctx=64)
    with pytest.raises(llama.OptionError):
        scorer.perplexity("x " * 1000, n_ctx=10**6)
    with pytest.raises(TypeError):
        scorer.perplexity(["x"])


def test_perplexity_stride(smol, scorer):
    text = " ".join(SENTENCES * 8)
    n = len(smol.tokenize(text))
    r = scorer.perplexity(text, n_ctx=64, stride=16)
    assert r.n_chunks == (n - 64) // 16 + 1
    assert r.n_tokens == 63 + (r.n_chunks - 1) * 16 == r.logprobs.shape[0]
    assert np.isfinite(r.perplexity) and r.chunk_perplexity[-1] == pytest.approx(r.perplexity)
    # the first window scores what score() gives for its tokens
    first = scorer.score([smol.detokenize(smol.tokenize(text)[:64])])
    np.testing.assert_allclose(r.logprobs[:63], first.values[:63], atol=2e-3)
    with pytest.raises(llama.OptionError):
        scorer.perplexity(text, n_ctx=64, stride=64)
