"""Generation you can build on: sampling options, stop strings, streaming (iterator and
callback), whole UTF-8 pieces, finish reasons, logits."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import ContextBusyError, GenerationStream

CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n"
)
PROMPT = "The three most important inventions in history are"
SHORT_ANSWER = CHAT_PROMPT.replace("Write a short poem about the sea.", "Say the word yes.")


@pytest.fixture(scope="module")
def ctx(smol):
    with smol.new_context(n_ctx=1024, n_threads=2) as context:
        yield context


@pytest.fixture(scope="module")
def greedy_ref(ctx) -> tuple[str, np.ndarray]:
    text = ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0)
    assert ctx.last_stats.finish_reason == "length"
    return text, ctx.last_stats.tokens.copy()


# -- sampling ----------------------------------------------------------------------------------------


def test_every_sampling_option_reaches_the_chain(ctx):
    """Each option changes the output of a seeded run (so none is silently ignored)."""
    base = {"max_tokens": 24, "temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 11}
    ref = ctx.generate(PROMPT, **base)
    changed = {}
    for key, value in [("top_k", 2), ("top_p", 0.3), ("min_p", 0.3), ("typical_p", 0.2),
                       ("repetition_penalty", 3.0), ("presence_penalty", 3.0),
                       ("frequency_penalty", 3.0), ("temperature", 0.1), ("seed", 12)]:
        changed[key] = ctx.generate(PROMPT, **{**base, key: value}) != ref
    assert all(changed.values()), changed
    assert ctx.generate(PROMPT, **base) == ref


def test_ignore_eos_generates_max_tokens(smol):
    with smol.new_context(n_ctx=512) as c:
        c.generate(SHORT_ANSWER, max_tokens=64, temperature=0)
        assert c.last_stats.finish_reason == "stop"     # the model ends its turn by itself...
        n = c.last_stats.completion_tokens
        c.generate(SHORT_ANSWER, max_tokens=n + 20, temperature=0, ignore_eos=True)
        assert c.last_stats.finish_reason == "length"   # ...but not with ignore_eos
        assert c.last_stats.completion_tokens == n + 20
        assert not any(smol.is_eog(int(t)) for t in c.last_stats.tokens)


def test_finish_reasons(ctx, greedy_ref):
    ctx.generate(CHAT_PROMPT, max_tokens=3, temperature=0)
    assert ctx.last_stats.finish_reason == "length"
    assert ctx.last_stats.completion_tokens == 3
    ctx.generate(SHORT_ANSWER, max_tokens=64, temperature=0)
    assert ctx.last_stats.finish_reason == "stop"       # <|im_end|>
    text, _ = greedy_ref
    ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0, stop=text.split()[3])
    assert ctx.last_stats.finish_reason == "stop"


# -- stop strings ------------------------------------------------------------------------------------


def _pieces(model, tokens) -> list[bytes]:
    return [model.token_to_piece(int(t), special=False) for t in tokens]


def test_stop_string_split_across_tokens(smol, ctx, greedy_ref):
    _text, tokens = greedy_ref
    pieces = _pieces(smol, tokens)
    # A stop string from the middle of one multi-character token to the middle of a later one.
    offsets = np.cumsum([0] + [len(p) for p in pieces])
    i = next(k for k in range(4, len(pieces)) if len(pieces[k]) >= 3 and len(pieces[k + 1]) >= 3)
    start, end = offsets[i] + 1, offsets[i + 2] - 1
    raw = b"".join(pieces)
    stop = raw[start:end].decode()
    assert raw.index(raw[start:end]) == start      # its first occurrence
    expected = raw[:start].decode()
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0, stop=[stop]) == expected
    assert ctx.last_stats.finish_reason == "stop"
    streamed = list(ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0, stop=stop))
    assert "".join(streamed) == expected            # no part of the stop string leaked out


def test_the_earliest_of_several_stop_strings_wins(ctx, greedy_ref):
    text, _ = greedy_ref
    words = text.split()
    late, early = words[6], words[2]
    cut = min(text.index(late), text.index(early))
    out = ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0, stop=(late, "never-there", early))
    assert out == text[:cut]


def test_a_stop_string_that_never_matches_changes_nothing(ctx, greedy_ref):
    text, _ = greedy_ref
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0, stop=["#@!", "\u2603"]) == text
    # a held-back prefix of a stop string is shown once it turns out not to be one
    streamed = "".join(ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0,
                                           stop=[text[:12] + "#"]))
    assert streamed == text


def test_stop_string_at_the_very_start(ctx, greedy_ref):
    text, _ = greedy_ref
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0, stop=text[:2]) == ""
    assert list(ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0, stop=text[:2])) == []


# -- streaming ---------------------------------------------------------------------------------------


def test_stream_pieces_add_up_to_generate(ctx, greedy_ref):
    text, tokens = greedy_ref
    stream = ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0)
    assert isinstance(stream, GenerationStream)
    assert stream.finish_reason is None
    pieces = list(stream)
    assert "".join(pieces) == text == stream.text
    assert all(isinstance(p, str) and p for p in pieces)
    assert stream.finish_reason == "length" and stream.closed
    assert np.array_equal(stream.stats.tokens, tokens)
    assert ctx.last_stats is stream.stats


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stream_equals_generate_with_sampling(ctx, seed):
    opts = {"max_tokens": 40, "temperature": 0.9, "top_k": 50, "top_p": 0.9, "seed": seed,
            "repetition_penalty": 1.1}
    text = ctx.generate(PROMPT, **opts)
    assert "".join(ctx.generate_stream(PROMPT, **opts)) == text


def test_callback_form(ctx, greedy_ref):
    text, _ = greedy_ref
    seen: list[str] = []
    stream = ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0, callback=seen.append)
    assert "".join(seen) == text == stream.text      # None from the callback goes on
    assert stream.finish_reason == "length"
    seen.clear()
    stream = ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0,
                                 callback=lambda p: seen.append(p) or len(seen) < 3)
    assert len(seen) == 3 and stream.finish_reason == "cancelled"
    assert stream.stats.completion_tokens <= 4
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0) == text


def test_callback_that_raises(ctx, greedy_ref):
    text, _ = greedy_ref

    def boom(piece: str) -> bool:
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0, callback=boom)
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0) == text
    with pytest.raises(TypeError, match="callback"):
        ctx.generate_stream(CHAT_PROMPT, callback="print")


def test_an_open_stream_keeps_the_context_busy(ctx, greedy_ref):
    text, _ = greedy_ref
    stream = ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0)
    first = next(stream)
    with pytest.raises(ContextBusyError):
        ctx.generate(PROMPT, max_tokens=2)
    stream.close()
    assert stream.closed and stream.finish_reason == "cancelled"
    assert stream.text == first
    with pytest.raises(StopIteration):
        next(stream)
    stream.close()                                   # idempotent
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0) == text


def test_breaking_out_of_a_loop_frees_the_context(ctx, greedy_ref):
    text, _ = greedy_ref
    for _piece in ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0):
        break
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0) == text
    with ctx.generate_stream(CHAT_PROMPT, max_tokens=48, temperature=0) as stream:
        next(stream)
    assert stream.closed
    assert ctx.generate(CHAT_PROMPT, max_tokens=48, temperature=0) == text


def test_stream_cannot_be_created_directly():
    with pytest.raises(TypeError):
        GenerationStream()


def test_stream_cancel_from_another_thread(ctx):
    # No timer: the other thread cancels once the first pieces have arrived, whatever the
    # machine's speed, and the stream must end at its next step (the text held back so far,
    # at most one more piece).
    stream = ctx.generate_stream(PROMPT, max_tokens=100_000, ignore_eos=True, temperature=0)
    before = after = 0
    for _ in stream:
        if before < 3:
            before += 1
            if before == 3:
                canceller = threading.Thread(target=stream.cancel)
                canceller.start()
                canceller.join()
        else:
            after += 1
    assert stream.finish_reason == "cancelled"
    assert after <= 1
    assert 3 <= stream.stats.completion_tokens < 100


# -- UTF-8 -------------------------------------------------------------------------------------------


def test_pieces_are_whole_utf8_on_non_latin_text(gemma):
    prompt = ("<start_of_turn>user\nTranslate into Japanese and Chinese: 'Good morning, the sea is "
              "beautiful today.'<end_of_turn>\n<start_of_turn>model\n")
    with gemma.new_context(n_ctx=512) as c:
        text = c.generate(prompt, max_tokens=60, temperature=0)
        pieces = list(c.generate_stream(prompt, max_tokens=60, temperature=0))
    assert "".join(pieces) == text
    assert "\ufffd" not in text
    assert any(ord(ch) > 0x2E80 for ch in text), text          # CJK was generated
    for p in pieces:
        p.encode("utf-8")   # every piece is a valid str on its own (no lone surrogates)


def _partial_tokens(model, tokens) -> int:
    """How many tokens are only part of a UTF-8 character."""
    partial = 0
    for t in tokens:
        try:
            model.token_to_piece(int(t), special=False).decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    return partial


def test_utf8_pieces_on_emoji_with_bpe(smol):
    prompt = "Emoji list: 🦙🦙🦙 🎉🎉 🌊🌊🌊 and"
    with smol.new_context(n_ctx=256) as c:
        text = c.generate(prompt, max_tokens=40, temperature=0)
        tokens = c.last_stats.tokens
        pieces = list(c.generate_stream(prompt, max_tokens=40, temperature=0))
    assert "".join(pieces) == text
    # (max_tokens may end inside a character: that last one shows as U+FFFD, in both forms)
    assert "\ufffd" not in text.rstrip("\ufffd")
    # Byte-level BPE cuts emoji into several tokens: holding back was needed, and done.
    assert _partial_tokens(smol, tokens) > 0
    assert len(pieces) < len(tokens)


# -- logits ------------------------------------------------------------------------------------------


def test_logits_of_the_last_position(smol):
    with smol.new_context(n_ctx=256) as c:
        with pytest.raises(llama.ContextError, match="no logits"):
            c.get_logits()
        c.generate(PROMPT, max_tokens=1, temperature=0)
        logits = c.get_logits()
        assert logits.dtype == np.float32 and logits.shape == (smol.n_vocab,)
        assert logits.flags.owndata                           # a copy, never a dangling view
        assert int(np.argmax(logits)) == int(c.last_stats.tokens[0])
        again = c.get_logits()
        assert np.array_equal(again, logits) and again is not logits
        c.clear_cache()
        with pytest.raises(llama.ContextError):
            c.get_logits()
    with pytest.raises(llama.ClosedError):
        c.get_logits()


def test_long_prompt_decode_can_be_cancelled(smol):
    text = " ".join(f"word{i}" for i in range(600))
    with smol.new_context(n_ctx=8192, n_batch=4096, n_ubatch=512) as c:
        t0 = time.perf_counter()
        c.generate(text, max_tokens=1, temperature=0)
        full = time.perf_counter() - t0
        c.clear_cache()
        timer = threading.Timer(full / 10, c.cancel)
        timer.start()
        t0 = time.perf_counter()
        c.generate(text, max_tokens=4, temperature=0)
        took = time.perf_counter() - t0
        timer.join()
        assert c.last_stats.finish_reason == "cancelled"
        assert c.last_stats.completion_tokens == 0
        assert took < full * 0.7, (took, full)
        # The half-decoded prompt is not taken for a cached prefix.
        ref = c.generate(PROMPT, max_tokens=8, temperature=0)
        c.clear_cache()
        assert c.generate(PROMPT, max_tokens=8, temperature=0) == ref
