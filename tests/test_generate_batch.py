"""generate_batch / chat_batch: many prompts decoded together in n_parallel slots.

Results come back in input order; each prompt's greedy text equals what generate gives it
alone (on SmolLM2 with flash attention, where llama.cpp's arithmetic does not depend on the
batch); stop strings, max_tokens and the context's share per sequence apply per prompt; a
prompt that cannot fit is refused by index before anything is decoded; cancel and Ctrl-C
leave the context usable.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import BatchStats, ChatResponse, ContextSizeError

PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea:",
    "def fibonacci(n):",
    "Three reasons to learn Python are",
    "Once upon a time, in a small village, there lived",
    "The quick brown fox",
    "Explain photosynthesis in one sentence:",
    "1, 2, 3, 4,",
    "The best way to learn a language is",
    "Q: What is the boiling point of water?\nA:",
    "In 1492, Columbus",
    "My favourite recipe for pancakes:",
    "SELECT name FROM users WHERE",
    "The three primary colours are",
    "A short list of prime numbers:",
    "Dear hiring manager, I am writing to",
    "Summer holidays are",
]
OPTS = {"max_tokens": 24, "temperature": 0}


@pytest.fixture(scope="module")
def solo(smol):
    """Each prompt's greedy text from generate alone, on a fresh-cache context."""
    with smol.new_context(n_ctx=1024, prefix_caching=False) as ctx:
        return [ctx.generate(p, **OPTS) for p in PROMPTS]


@pytest.mark.parametrize("n_parallel", [1, 4, 16])
def test_greedy_batch_equals_generate_alone_in_input_order(smol, solo, n_parallel):
    with smol.new_context(n_ctx=256 * n_parallel if n_parallel > 1 else 1024,
                          n_parallel=n_parallel) as ctx:
        assert ctx.flash_attn == "on"
        texts = ctx.generate_batch(PROMPTS, **OPTS)
        st = ctx.last_batch_stats
    assert texts == solo
    assert isinstance(st, BatchStats) and st.prompts == len(PROMPTS) and st.n_parallel == n_parallel
    assert st.completion_tokens.dtype == np.int32 and st.completion_tokens.shape == (len(PROMPTS),)
    assert set(st.finish_reasons) <= {"stop", "length"}
    assert st.total_completion_tokens > 0 and st.tokens_per_second > 0
    if n_parallel > 1:
        # one decode per step carries every live sequence: far fewer decodes than tokens
        assert st.decodes < st.total_completion_tokens


def test_order_and_prompts_do_not_change_a_prompt_s_text(smol, solo):
    order = list(range(len(PROMPTS)))[::-1]
    with smol.new_context(n_ctx=2048, n_parallel=8) as ctx:
        texts = ctx.generate_batch([PROMPTS[i] for i in order], **OPTS)
        again = ctx.generate_batch(PROMPTS[:3], **OPTS)
    assert texts == [solo[i] for i in order]
    assert again == solo[:3]


def test_stop_strings_and_max_tokens_are_per_prompt(smol):
    prompts = ["1, 2, 3, 4,", "The capital of France is", "1, 2, 3, 4,"]
    with smol.new_context(n_ctx=1024, n_parallel=4) as ctx, \
            smol.new_context(n_ctx=1024, prefix_caching=False) as alone:
        texts = ctx.generate_batch(prompts, max_tokens=12, stop=" 7", temperature=0)
        st = ctx.last_batch_stats
        for p, t, reason, n in zip(prompts, texts, st.finish_reasons, st.completion_tokens):
            assert t == alone.generate(p, max_tokens=12, stop=" 7", temperature=0)
            assert reason == alone.last_stats.finish_reason
            assert n == alone.last_stats.completion_tokens
            assert " 7" not in t
        assert st.finish_reasons[0] == "stop"
        short = ctx.generate_batch(prompts, max_tokens=1, temperature=0)
        assert ctx.last_batch_stats.finish_reasons == ["length"] * 3
        assert all(len(smol.tokenize(t, add_special=False)) <= 2 for t in short)


def test_seeded_sampling_is_reproducible_whatever_the_slot(smol):
    kw = {"max_tokens": 16, "temperature": 0.9, "seed": 1234}
    with smol.new_context(n_ctx=1024, n_parallel=4) as ctx:
        a = ctx.generate_batch(PROMPTS[:6], **kw)
        b = ctx.generate_batch(PROMPTS[:6], **kw)
        c = ctx.generate_batch(PROMPTS[:3], **kw)
        d = ctx.generate_batch(PROMPTS[:6], **{**kw, "seed": 99})
    with smol.new_context(n_ctx=1024, n_parallel=1) as one:
        e = one.generate_batch(PROMPTS[:6], **kw)
    assert a == b == e
    assert c == a[:3]
    assert d != a


def test_a_prompt_longer_than_a_slot_is_refused_by_index(smol, solo):
    with smol.new_context(n_ctx=512, n_parallel=2) as ctx:
        assert ctx.n_ctx_seq == 256
        long = "word " * 400
        with pytest.raises(ContextSizeError, match=r"prompts\[2\]"):
            ctx.generate_batch([PROMPTS[0], PROMPTS[1], long, PROMPTS[2]], **OPTS)
        assert not ctx.busy
        assert ctx.generate_batch(PROMPTS[:2], **OPTS) == solo[:2]
        with pytest.raises(llama.TokenizeError, match=r"prompts\[1\]"):
            ctx.generate_batch(["fine", "\ud800"], **OPTS)
        with pytest.raises(TypeError, match=r"prompts\[1\]"):
            ctx.generate_batch(["fine", 3], **OPTS)
        with pytest.raises(TypeError, match="single text"):
            ctx.generate_batch("one prompt", **OPTS)
        assert ctx.generate_batch([], **OPTS) == []


def test_a_sequence_stops_at_its_share_of_the_context(smol):
    with smol.new_context(n_ctx=512, n_parallel=2) as ctx:
        texts = ctx.generate_batch(["Count: 1, 2, 3,", "Count: 10, 20, 30,"], max_tokens=1000,
                                   temperature=0, ignore_eos=True)
        st = ctx.last_batch_stats
        assert st.finish_reasons == ["length", "length"]
        # as generate: the last sampled token is the one that no longer fits
        assert all(p + c == ctx.n_ctx_seq + 1 for p, c in zip(st.prompt_tokens, st.completion_tokens))
        assert all(texts)
    with smol.new_context(n_ctx=256) as alone:
        alone.generate("Count: 1, 2, 3,", max_tokens=1000, temperature=0, ignore_eos=True)
        assert alone.last_stats.completion_tokens == st.completion_tokens[0]


def test_cancel_and_progress(smol, solo):
    seen = []
    with smol.new_context(n_ctx=2048, n_parallel=4) as ctx:
        texts = ctx.generate_batch(PROMPTS, progress=seen.append, **OPTS)
        assert sum(seen) == len(PROMPTS) and texts == solo

        def stop_after_first(n):
            ctx.cancel()

        texts = ctx.generate_batch(PROMPTS, progress=stop_after_first, **OPTS)
        reasons = ctx.last_batch_stats.finish_reasons
        assert "cancelled" in reasons and len(texts) == len(PROMPTS)
        for t, reason, full in zip(texts, reasons, solo):
            assert full.startswith(t)
            if reason != "cancelled":
                assert t == full
        assert ctx.generate_batch(PROMPTS[:2], **OPTS) == solo[:2]      # usable afterwards


def test_the_context_is_held_during_the_batch(smol):
    with smol.new_context(n_ctx=1024, n_parallel=2) as ctx:
        outcome = {}

        def progress(n):
            try:
                ctx.close()
            except llama.ContextBusyError as exc:
                outcome["close"] = str(exc)

        ctx.generate_batch(PROMPTS[:3], progress=progress, **OPTS)
        assert "this thread" in outcome["close"]
        other = threading.Thread(target=lambda: outcome.update(other=ctx.generate("x", max_tokens=1)))
        other.start()
        other.join()
        assert "other" in outcome


def test_chat_batch_answers_like_chat(smol):
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": "What colour is the sky?"}],
        [{"role": "user", "content": "Name a prime number."}],
    ]
    with smol.new_context(n_ctx=1024, n_parallel=4) as ctx, \
            smol.new_context(n_ctx=1024, prefix_caching=False) as alone:
        replies = ctx.chat_batch(conversations, max_tokens=24, temperature=0)
        for conv, reply in zip(conversations, replies):
            single = alone.chat(conv, max_tokens=24, temperature=0)
            assert isinstance(reply, ChatResponse)
            assert reply.content == single.content
            assert reply.finish_reason == single.finish_reason
            assert reply.usage.prompt_tokens == single.usage.prompt_tokens
            assert reply.usage.completion_tokens == single.usage.completion_tokens
            assert np.array_equal(reply.stats.tokens, single.stats.tokens)
        with pytest.raises(ValueError, match=r"conversations\[1\]"):
            ctx.chat_batch([conversations[0], [{"role": "user"}]], max_tokens=2)


def test_gemma_batches_give_whole_answers(gemma):
    """Gemma 3 (sliding window, Q4_K): batching changes llama.cpp's rounding, so texts are only
    checked to be well-formed and to end for a stated reason (see the guide)."""
    with gemma.new_context(n_ctx=1024, n_parallel=4) as ctx:
        texts = ctx.generate_batch(PROMPTS[:6], max_tokens=12, temperature=0)
        st = ctx.last_batch_stats
    assert len(texts) == 6 and all(isinstance(t, str) for t in texts)
    assert set(st.finish_reasons) <= {"stop", "length"}
    assert all(0 < n <= 12 for n in st.completion_tokens)


def test_the_stream_yields_pieces_that_add_up_to_the_batch(smol, solo):
    with smol.new_context(n_ctx=2048, n_parallel=8) as ctx:
        texts: dict[int, str] = {}
        order = []
        with ctx.generate_batch_stream(PROMPTS, stop="\n\n", **OPTS) as stream:
            assert isinstance(stream, llama.BatchGenerationStream)
            with pytest.raises(llama.ContextBusyError, match="stream"):
                ctx.generate("x", max_tokens=1)
            for i, piece in stream:
                assert isinstance(i, int) and piece
                texts[i] = texts.get(i, "") + piece
                order.append(i)
        assert stream.closed and stream.stats.prompts == len(PROMPTS)
        expected = ctx.generate_batch(PROMPTS, stop="\n\n", **OPTS)
    assert [texts.get(i, "") for i in range(len(PROMPTS))] == expected
    assert order != sorted(order)          # pieces of different prompts interleave


def test_closing_the_stream_early_cancels_and_frees_the_context(smol, solo):
    with smol.new_context(n_ctx=2048, n_parallel=4) as ctx:
        stream = ctx.generate_batch_stream(PROMPTS, **OPTS)
        got: dict[int, str] = {}
        for i, piece in stream:
            got[i] = got.get(i, "") + piece
            if len(got) == 2:
                break
        stream.close()
        reasons = stream.stats.finish_reasons
        assert "cancelled" in reasons and ctx.last_batch_stats is stream.stats
        for i, t in got.items():
            assert solo[i].startswith(t)
        assert ctx.generate_batch(PROMPTS[:2], **OPTS) == solo[:2]
        dropped = ctx.generate_batch_stream(PROMPTS, **OPTS)
        next(dropped)
        del dropped                        # garbage: the context is handed back
        assert not ctx.busy
        assert ctx.generate(PROMPTS[0], **OPTS) == solo[0]


def test_a_stream_dropped_in_a_reference_cycle_hands_the_context_back(smol):
    import gc

    def start_and_drop(ctx):
        box: list[object] = []
        stream = ctx.generate_batch_stream(PROMPTS[:3], progress=lambda n: box, **OPTS)
        box.append(stream)                 # stream -> progress -> box -> stream
        next(stream)

    with smol.new_context(n_ctx=1024, n_parallel=2) as ctx:
        start_and_drop(ctx)
        gc.collect()
        assert not ctx.busy
        assert ctx.generate_batch(PROMPTS[:1], **OPTS)


# Shared prefixes: a system prompt (or few-shot block) common to many prompts is decoded once;
# the other sequences get its KV cells with llama_memory_seq_cp.
SYSTEM = ("<|im_start|>system\nYou are a careful assistant for a public library. Answer in one "
          "short sentence, name a source when you can, and say so plainly when you do not "
          "know.<|im_end|>\n")
QUESTIONS = ["When does the library open?", "Can I renew a book online?",
             "What is a library card?", "How many books can I borrow?",
             "Is there a reading room?", "Do you lend e-books?", "Who was Dewey?",
             "What is an ISBN?"]
SHARED = [f"{SYSTEM}<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in QUESTIONS]


@pytest.fixture(scope="module")
def shared_solo(smol):
    with smol.new_context(n_ctx=1024, prefix_caching=False) as ctx:
        return [ctx.generate(p, **OPTS) for p in SHARED + PROMPTS[:4]]


@pytest.mark.parametrize("n_parallel", [4, 16])
def test_shared_prefixes_are_decoded_once(smol, shared_solo, n_parallel):
    """prefix_caching="any" copies the whole common prefix. The tail is then decoded in
    another batch shape than alone, which may round differently (on this prompt set SmolLM2's
    texts stay the same; the check allows one to differ)."""
    prompts = SHARED + PROMPTS[:4]
    n_system = len(smol.tokenize(SYSTEM, parse_special=True))
    with smol.new_context(n_ctx=256 * n_parallel, n_parallel=n_parallel,
                          prefix_caching="any") as ctx:
        texts = ctx.generate_batch(prompts, **OPTS)
        st = ctx.last_batch_stats
        assert sum(a == b for a, b in zip(texts, shared_solo)) >= len(prompts) - 1
        # every shared prompt but the first of each wave copied at least the system prompt
        copied = st.cached_tokens[: len(SHARED)]
        assert (copied >= n_system).sum() >= len(SHARED) - 2
        assert (st.cached_tokens[len(SHARED):] == 0).all()
        assert st.reused_tokens == int(st.cached_tokens.sum()) > 0
        assert (st.cached_tokens < st.prompt_tokens).all()
    for caching in ("off", "exact"):
        # "exact" (the default) copies whole n_ubatch blocks only: none of a 38-token prefix
        with smol.new_context(n_ctx=256 * n_parallel, n_parallel=n_parallel,
                              prefix_caching=caching) as ctx:
            assert ctx.generate_batch(prompts, **OPTS) == shared_solo
            assert ctx.last_batch_stats.reused_tokens == 0


def test_exact_sharing_copies_whole_physical_batches(smol):
    prompts = [SYSTEM * 3 + f"<|im_start|>user\n{q}<|im_end|>\n" for q in QUESTIONS[:4]]
    with smol.new_context(n_ctx=1024, n_parallel=4, n_ubatch=32) as ctx:
        ctx.generate_batch(prompts, **OPTS)
        reused = ctx.last_batch_stats.cached_tokens
    assert (reused % 32 == 0).all() and (reused[1:] >= 96).all()


def test_shared_prefix_stats_per_prompt_in_the_stream(smol, shared_solo):
    with smol.new_context(n_ctx=1024, n_parallel=4, prefix_caching="any") as ctx:
        want = ctx.generate_batch(SHARED[:4], **OPTS)
        with ctx.generate_batch_stream(SHARED[:4], **OPTS) as stream:
            pieces: dict[int, str] = {}
            for i, piece in stream:
                pieces[i] = pieces.get(i, "") + piece
        assert [pieces.get(i, "") for i in range(4)] == want
        assert ctx.last_batch_stats.reused_tokens > 0


def test_gemma_shares_a_prefix_longer_than_its_sliding_window(gemma):
    """Gemma 3's sliding window is 512 tokens: a 700-token shared prefix is copied whole or,
    where the donor has already let go of cells the copy needs, decoded again. Either way the
    answers are the model's: compared with each prompt decoded alone (batching changes
    Gemma's rounding, so a late token may differ; the start of every answer may not)."""
    text = " ".join(f"Rule {i}: shelve book {i} on shelf {i % 9}." for i in range(45))
    prompts = [f"{text}\nQuestion: where is book {k}? Answer:" for k in (3, 17, 29, 42)]
    with gemma.new_context(n_ctx=1024 * 4, n_parallel=4, prefix_caching="any") as ctx:
        texts = ctx.generate_batch(prompts, max_tokens=8, temperature=0)
        st = ctx.last_batch_stats
    assert len(gemma.tokenize(text)) > 600
    assert st.reused_tokens > 600
    with gemma.new_context(n_ctx=2048, prefix_caching=False) as ctx:
        solo = [ctx.generate(p, max_tokens=8, temperature=0) for p in prompts]
    for got, want in zip(texts, solo):
        assert got[:6] == want[:6], (got, want)
