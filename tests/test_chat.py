"""Chat on real models: the model's own template, answers that make sense, streaming forms,
one BOS, and clear errors for bad conversations."""

from __future__ import annotations

import asyncio

import pytest

import llama_cython as llama
from llama_cython import ChatMessage, ChatResponse, OptionError, TemplateError
from llama_cython.chat import render_model_chat

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ctx(smol):
    with smol.new_context(n_ctx=2048) as context:
        yield context


@pytest.fixture(scope="module")
def france(ctx) -> ChatResponse:
    return ctx.chat(FRANCE, max_tokens=48, temperature=0)


def test_capital_of_france(france):
    assert isinstance(france, ChatResponse)
    assert "Paris" in france.content
    assert france.finish_reason == "stop"
    usage = france.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens < 48
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert "<|im_end|>" not in france.content


def test_messages_as_dataclasses_or_dicts(ctx, france):
    reply = ctx.chat([ChatMessage("user", "What is the capital of France?")], max_tokens=48, temperature=0)
    assert reply.content == france.content


def test_chat_stream_and_async_give_the_same_text(ctx, france):
    pieces = list(ctx.chat_stream(FRANCE, max_tokens=48, temperature=0))
    assert "".join(pieces) == france.content

    async def main() -> list[str]:
        return [p async for p in ctx.chat_async(FRANCE, max_tokens=48, temperature=0)]

    assert "".join(asyncio.run(main())) == france.content
    seen: list[str] = []
    stream = ctx.chat_stream(FRANCE, max_tokens=48, temperature=0, callback=seen.append)
    assert "".join(seen) == france.content == stream.text


def test_multi_turn_keeps_context(ctx):
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "My favourite colour is green. Remember that."},
    ]
    first = ctx.chat(messages, max_tokens=40, temperature=0)
    messages += [{"role": "assistant", "content": first.content},
                 {"role": "user", "content": "What is my favourite colour?"}]
    second = ctx.chat(messages, max_tokens=40, temperature=0)
    assert "green" in second.content.lower()


def test_gemma_chat_with_its_own_template(gemma):
    with gemma.new_context(n_ctx=1024) as c:
        reply = c.chat(FRANCE, max_tokens=32, temperature=0)
    assert "Paris" in reply.content
    assert reply.finish_reason == "stop"


def test_a_template_that_writes_bos_gets_no_second_one(gemma, smol):
    bos, _, add_bos = gemma._chat_specials()
    assert add_bos and bos
    text, add_special = render_model_chat(gemma, FRANCE)
    assert text.startswith(bos) and add_special is False
    ids = gemma.tokenize(text, add_special=add_special, parse_special=True)
    bos_id = int(gemma.tokenize("", add_special=True)[0])
    assert ids[0] == bos_id and ids[1] != bos_id
    # SmolLM2's ChatML template writes no BOS and its tokenizer adds none
    text, add_special = render_model_chat(smol, FRANCE)
    assert not text.startswith("<|endoftext|>")


def test_explicit_template_and_template_kwargs(ctx):
    template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                "{% if shout %}Answer in capitals.\n{% endif %}assistant:")
    text, _ = render_model_chat(ctx.model, FRANCE, template=template, template_kwargs={"shout": True})
    assert text == "user: What is the capital of France?\nAnswer in capitals.\nassistant:"
    reply = ctx.chat(FRANCE, template=template, template_kwargs={"shout": True}, max_tokens=4,
                     temperature=0)
    assert reply.usage.prompt_tokens == len(ctx.tokenize(text, parse_special=True))


def test_generation_prompt_can_be_left_out(ctx):
    with_gp, _ = render_model_chat(ctx.model, FRANCE)
    without, _ = render_model_chat(ctx.model, FRANCE, add_generation_prompt=False)
    assert with_gp.startswith(without) and with_gp.endswith("<|im_start|>assistant\n")


# -- bad conversations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "exc", "match"),
    [
        ([], ValueError, "empty"),
        ([{"role": "user", "content": 42}], TypeError, "0"),
        ([{"role": "user", "content": "hi"}, {"role": "user", "content": b"bytes"}], TypeError, "1"),
        (["just a string"], TypeError, "0"),
        ([{"content": "no role"}], (TypeError, ValueError), "role"),
        ("a plain string", TypeError, "messages"),
    ],
)
def test_bad_messages(ctx, france, messages, exc, match):
    with pytest.raises(exc, match=match):
        ctx.chat(messages, max_tokens=4)
    assert ctx.chat(FRANCE, max_tokens=48, temperature=0).content == france.content


def test_roles_the_template_rejects(gemma):
    with gemma.new_context(n_ctx=512) as c:
        # Gemma's template insists on alternating user/model turns.
        with pytest.raises(TemplateError, match="alternate"):
            c.chat([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], max_tokens=4)
        with pytest.raises(TemplateError):
            c.chat([{"role": "narrator", "content": "a"}], max_tokens=4)
        assert "Paris" in c.chat(FRANCE, max_tokens=32, temperature=0).content


def test_bad_options(ctx, france):
    with pytest.raises(OptionError, match="max_tokens"):
        ctx.chat(FRANCE, max_tokens=0)
    with pytest.raises(OptionError, match="stop"):
        ctx.chat(FRANCE, stop=[""])
    with pytest.raises(TypeError, match="template"):
        ctx.chat(FRANCE, template=123)
    with pytest.raises(TypeError, match="template_kwargs"):
        ctx.chat(FRANCE, template_kwargs=["x"])
    with pytest.raises(ValueError, match="messages"):
        ctx.chat(FRANCE, template_kwargs={"messages": []})
    with pytest.raises(TemplateError, match="syntax|template"):
        ctx.chat(FRANCE, template="{% for %}")
    with pytest.raises(TemplateError):
        ctx.chat(FRANCE, template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert ctx.chat(FRANCE, max_tokens=48, temperature=0).content == france.content


def test_chat_on_a_closed_context(smol):
    c = smol.new_context(n_ctx=256)
    c.close()
    with pytest.raises(llama.ClosedError):
        c.chat(FRANCE)
