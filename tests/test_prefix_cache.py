"""Prefix caching: the longest common token prefix already in the KV cache is reused, the
output is the same as without it, and the reuse is counted; also with sliding-window
attention (Gemma 3) and after a generation that ended early."""

from __future__ import annotations

import numpy as np
import pytest

from llama_cython.chat import render_model_chat

RULES = " ".join(
    f"Rule {i}: when the customer asks about order number {1000 + i}, answer politely, check the "
    f"shipping status, and mention that returns are free within {i % 30 + 1} days."
    for i in range(14)
)


def _conversation(question: str, system: str = RULES) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def _prompt_tokens(model, messages) -> np.ndarray:
    text, add_special = render_model_chat(model, messages)
    return model.tokenize(text, add_special=add_special, parse_special=True)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@pytest.fixture(scope="module", params=["smol", "gemma"])
def model(request):
    return request.getfixturevalue(request.param)


def test_second_turn_reuses_the_system_prompt_and_answers_the_same(model):
    first = _conversation("What is the status of order 1003?")
    second = _conversation("Can I return the item from order 1007?")
    opts = {"max_tokens": 24, "temperature": 0}
    with model.new_context(n_ctx=2048, prefix_caching=True) as cached, \
            model.new_context(n_ctx=2048, prefix_caching=False) as fresh:
        a1 = cached.chat(first, **opts)
        assert a1.usage.cached_tokens == 0 and cached.cached_tokens == 0
        a2 = cached.chat(second, **opts)
        fresh.chat(first, **opts)
        b2 = fresh.chat(second, **opts)
        assert fresh.cached_tokens == 0 and b2.usage.cached_tokens == 0
    assert a2.content == b2.content
    expected = _common_prefix(_prompt_tokens(model, first), _prompt_tokens(model, second))
    assert expected > 300
    assert cached.cached_tokens == expected == a2.usage.cached_tokens
    if model.n_swa:
        assert expected > model.n_swa     # the reuse reached past the sliding window


def test_the_same_prompt_twice_decodes_only_its_last_token(smol):
    with smol.new_context(n_ctx=1024) as ctx:
        text = ctx.generate(RULES, max_tokens=8, temperature=0)
        n = ctx.last_stats.prompt_tokens
        assert ctx.generate(RULES, max_tokens=8, temperature=0) == text
        assert ctx.cached_tokens == n - 1


def test_multi_turn_chat_reuses_the_previous_answer(smol):
    messages = _conversation("My name is Alice. Please remember it.", system="You are a helpful assistant.")
    with smol.new_context(n_ctx=2048) as ctx, smol.new_context(n_ctx=2048, prefix_caching=False) as fresh:
        reply = ctx.chat(messages, max_tokens=40, temperature=0)
        turn1 = len(_prompt_tokens(smol, messages))
        messages += [{"role": "assistant", "content": reply.content},
                     {"role": "user", "content": "What is my name?"}]
        reply2 = ctx.chat(messages, max_tokens=40, temperature=0)
        assert ctx.cached_tokens >= turn1      # the first prompt and (part of) the answer
        assert "Alice" in reply2.content
        assert fresh.chat(messages, max_tokens=40, temperature=0).content == reply2.content


@pytest.mark.parametrize("how", ["stop", "cancel", "close", "length"])
def test_reuse_after_a_generation_that_ended_early(model, how):
    first = _conversation("Describe order 1004 in detail.")
    second = _conversation("Describe order 1009 in detail.")
    opts = {"max_tokens": 16, "temperature": 0}
    with model.new_context(n_ctx=2048) as ctx, model.new_context(n_ctx=2048, prefix_caching=False) as fresh:
        if how == "stop":
            words = fresh.chat(first, **opts).content.split()
            ctx.chat(first, stop=words[2] if len(words) > 2 else "\n", **opts)
        elif how == "cancel":
            seen: list[str] = []
            ctx.chat_stream(first, callback=lambda p: seen.append(p) or len(seen) < 2, **opts)
        elif how == "close":
            stream = ctx.chat_stream(first, **opts)
            next(stream)
            stream.close()
        else:
            ctx.chat(first, max_tokens=3, temperature=0)
        assert ctx.chat(second, **opts).content == fresh.chat(second, **opts).content
        assert ctx.cached_tokens > 300
        # and the first conversation again, now diverging later than before
        assert ctx.chat(first, **opts).content == fresh.chat(first, **opts).content


def test_clear_cache_forgets_the_prefix(smol):
    with smol.new_context(n_ctx=1024) as ctx:
        ctx.generate(RULES, max_tokens=2, temperature=0)
        ctx.clear_cache()
        assert ctx.n_past == 0
        ctx.generate(RULES, max_tokens=2, temperature=0)
        assert ctx.cached_tokens == 0
