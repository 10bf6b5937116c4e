"""Prefix caching: a common token prefix already in the KV cache is reused and counted.

"exact" (the default) reuses only what a fresh context would compute the same way (whole
n_ubatch batches of earlier prompts), so logits and output are bit-identical to
``prefix_caching=False`` with flash attention on; "any" reuses the longest common prefix,
answers included, up to rounding. Also with sliding-window attention (Gemma 3) and after a
generation that ended early."""

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


def _prompt_tokens(model, messages, template=None) -> np.ndarray:
    text, add_special = render_model_chat(model, messages, template=template)
    return model.tokenize(text, add_special=add_special, parse_special=True)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


# The Gemma 3 GGUF carries no chat template; Gemma 3's own folds the system message into the
# first user turn, which this one does too.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m.role == 'system' %}{% set sys = m.content + '\\n\\n' %}{% else %}"
    "<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n"
    "{% if loop.index0 == 1 and messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "{{ m.content }}<end_of_turn>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class _Chat:
    """A model and the template its chats use in these tests."""

    def __init__(self, model, template):
        self.model, self.template = model, template

    def new_context(self, **kw):
        return self.model.new_context(**kw)

    def chat(self, ctx, messages, **kw):
        return ctx.chat(messages, template=self.template, **kw)

    def chat_stream(self, ctx, messages, **kw):
        return ctx.chat_stream(messages, template=self.template, **kw)

    def tokens(self, messages):
        return _prompt_tokens(self.model, messages, self.template)


@pytest.fixture(scope="module", params=["smol", "gemma"])
def model(request):
    m = request.getfixturevalue(request.param)
    return _Chat(m, GEMMA3_TEMPLATE if request.param == "gemma" else None)


def _floor(n: int, unit: int) -> int:
    return n - n % unit


@pytest.mark.parametrize("mode", ["exact", "any"])
def test_second_turn_reuses_the_system_prompt_and_answers_the_same(model, mode):
    first = _conversation("What is the status of order 1003?")
    second = _conversation("Can I return the item from order 1007?")
    opts = {"max_tokens": 24, "temperature": 0}
    ub = 64
    with model.new_context(n_ctx=2048, n_ubatch=ub, prefix_caching=mode) as cached, \
            model.new_context(n_ctx=2048, n_ubatch=ub, prefix_caching=False) as fresh:
        a1 = model.chat(cached, first, **opts)
        assert a1.usage.cached_tokens == 0 and cached.cached_tokens == 0
        a2 = model.chat(cached, second, **opts)
        model.chat(fresh, first, **opts)
        b2 = model.chat(fresh, second, **opts)
        assert fresh.cached_tokens == 0 and b2.usage.cached_tokens == 0
        assert cached.cached_tokens == a2.usage.cached_tokens
        if mode == "exact":
            assert np.array_equal(cached.get_logits(), fresh.get_logits())
    assert a2.content == b2.content
    common = _common_prefix(model.tokens(first), model.tokens(second))
    assert common > 300
    if mode == "exact":
        expected = _floor(min(common, _floor(len(model.tokens(first)), ub)), ub)
    else:
        expected = common
    assert a2.usage.cached_tokens == expected
    if model.model.n_swa:
        assert expected >= model.model.n_swa    # the reuse reached the sliding window


@pytest.mark.parametrize("flash_attn", ["on", "off"])
def test_exact_reuse_gives_bit_identical_logits_over_many_turns(model, flash_attn):
    """The promise of the default: whatever was reused, every turn's logits equal a fresh
    context's bit for bit (flash attention included, which rounds by batch shape)."""
    questions = ["What is the status of order 1003?", "Can I return the item from order 1007?",
                 "Summarise our conversation."]
    opts = {"max_tokens": 12, "temperature": 0}
    reused = []
    with model.new_context(n_ctx=2048, n_ubatch=64, flash_attn=flash_attn) as cached, \
            model.new_context(n_ctx=2048, n_ubatch=64, flash_attn=flash_attn,
                              prefix_caching=False) as fresh:
        assert cached.prefix_caching == "exact"
        messages = [{"role": "system", "content": RULES}]
        for q in questions:
            messages.append({"role": "user", "content": q})
            a = model.chat(cached, messages, **opts)
            b = model.chat(fresh, messages, **opts)
            assert a.content == b.content
            assert np.array_equal(cached.get_logits(), fresh.get_logits())
            assert a.usage.cached_tokens % 64 == 0
            reused.append(a.usage.cached_tokens)
            messages.append({"role": "assistant", "content": a.content})
    assert reused[0] == 0 and min(reused[1:]) >= 512


def test_exact_reuse_is_in_whole_physical_batches(smol):
    with smol.new_context(n_ctx=2048) as ctx:          # n_ubatch 512 by default
        assert ctx.n_ubatch == 512
        n = len(smol.tokenize(RULES))
        assert 512 < n < 1024
        ctx.generate(RULES, max_tokens=4, temperature=0)
        ctx.generate(RULES + " One more rule.", max_tokens=4, temperature=0)
        assert ctx.cached_tokens == 512
    with smol.new_context(n_ctx=2048, prefix_caching="any") as ctx:
        ctx.generate(RULES, max_tokens=4, temperature=0)
        ctx.generate(RULES + " One more rule.", max_tokens=4, temperature=0)
        assert ctx.cached_tokens > 512


@pytest.mark.parametrize("value, expected", [(True, "exact"), ("EXACT", "exact"), ("any", "any"),
                                             (False, "off"), ("off", "off")])
def test_prefix_caching_values(smol, value, expected):
    with smol.new_context(n_ctx=256, prefix_caching=value) as ctx:
        assert ctx.prefix_caching == expected


def test_the_same_prompt_twice_decodes_only_its_last_token(smol):
    with smol.new_context(n_ctx=1024, prefix_caching="any") as ctx:
        text = ctx.generate(RULES, max_tokens=8, temperature=0)
        n = ctx.last_stats.prompt_tokens
        assert ctx.generate(RULES, max_tokens=8, temperature=0) == text
        assert ctx.cached_tokens == n - 1
    with smol.new_context(n_ctx=1024, n_ubatch=32) as ctx:
        assert ctx.generate(RULES, max_tokens=8, temperature=0) == text
        assert ctx.generate(RULES, max_tokens=8, temperature=0) == text
        assert ctx.cached_tokens == _floor(n - 1, 32)


def test_multi_turn_chat_reuses_the_previous_answer(smol):
    """With "any", the previous answer's KV entries (decoded one token at a time) are reused."""
    messages = _conversation("What is the capital of France?", system="You are a helpful assistant.")
    with smol.new_context(n_ctx=2048, prefix_caching="any") as ctx, \
            smol.new_context(n_ctx=2048, prefix_caching=False) as fresh:
        reply = ctx.chat(messages, max_tokens=40, temperature=0)
        turn1 = len(_prompt_tokens(smol, messages))
        messages += [{"role": "assistant", "content": reply.content},
                     {"role": "user", "content": "What is the population of that city?"}]
        reply2 = ctx.chat(messages, max_tokens=40, temperature=0)
        assert ctx.cached_tokens >= turn1      # the first prompt and (part of) the answer
        assert "Paris" in reply2.content
        assert fresh.chat(messages, max_tokens=40, temperature=0).content == reply2.content


@pytest.mark.parametrize("how", ["stop", "cancel", "close", "length"])
def test_reuse_after_a_generation_that_ended_early(model, how):
    first = _conversation("Describe order 1004 in detail.")
    second = _conversation("Describe order 1009 in detail.")
    opts = {"max_tokens": 16, "temperature": 0}
    with model.new_context(n_ctx=2048, n_ubatch=64) as ctx, \
            model.new_context(n_ctx=2048, n_ubatch=64, prefix_caching=False) as fresh:
        if how == "stop":
            words = model.chat(fresh, first, **opts).content.split()
            model.chat(ctx, first, stop=words[2] if len(words) > 2 else "\n", **opts)
        elif how == "cancel":
            seen: list[str] = []
            model.chat_stream(ctx, first, callback=lambda p: seen.append(p) or len(seen) < 2, **opts)
        elif how == "close":
            stream = model.chat_stream(ctx, first, **opts)
            next(stream)
            stream.close()
        else:
            model.chat(ctx, first, max_tokens=3, temperature=0)
        assert model.chat(ctx, second, **opts).content == model.chat(fresh, second, **opts).content
        assert ctx.cached_tokens > 300
        # and the first conversation again, now diverging later than before
        assert model.chat(ctx, first, **opts).content == model.chat(fresh, first, **opts).content


def test_clear_cache_forgets_the_prefix(smol):
    with smol.new_context(n_ctx=1024, n_ubatch=64) as ctx:
        ctx.generate(RULES, max_tokens=2, temperature=0)
        ctx.generate(RULES, max_tokens=2, temperature=0)
        assert ctx.cached_tokens > 0
        ctx.clear_cache()
        assert ctx.n_past == 0
        ctx.generate(RULES, max_tokens=2, temperature=0)
        assert ctx.cached_tokens == 0
