"""Chat on real models: the model's own template, answers that make sense, streaming forms,
one BOS, and clear errors for bad conversations."""

from __future__ import annotations

import asyncio

import pytest

import llama_cython as llama
from llama_cython import ChatMessage, ChatResponse, OptionError, TemplateError
from llama_cython._core import chat_specials
from llama_cython.chat import render_model_chat

# With no system message SmolLM2's template adds its own ("You are a helpful AI assistant named
# SmolLM..."), after which the 135M Q4_1 model rambles in French; a plain one keeps it on topic.
GEMMA2_TEMPLATE = "google-gemma-2-2b-it.jinja"   # the Gemma 3 GGUF carries no template of its own
FRANCE = [{"role": "system", "content": "You are a helpful assistant."},
          {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def ctx(smol):
    # "any": a chat's next turn reuses the previous answer too (short prompts: "exact" reuse
    # works in whole 512-token batches)
    with smol.new_context(n_ctx=2048, prefix_caching="any") as context:
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
    reply = ctx.chat([ChatMessage("system", "You are a helpful assistant."),
                      ChatMessage("user", "What is the capital of France?")], max_tokens=48, temperature=0)
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


def test_multi_turn_keeps_context(ctx, france):
    # "that city" can only be understood from the first turn
    messages = [*FRANCE, {"role": "assistant", "content": france.content},
                {"role": "user", "content": "What is the population of that city?"}]
    second = ctx.chat(messages, max_tokens=40, temperature=0)
    assert "Paris" in second.content
    assert second.usage.cached_tokens > france.usage.prompt_tokens // 2


@pytest.fixture(scope="module")
def gemma_template(vendor_dir) -> str:
    return (vendor_dir / "models" / "templates" / GEMMA2_TEMPLATE).read_text(encoding="utf-8")


def test_gemma_chat_with_a_given_template(gemma, gemma_template):
    assert gemma.chat_template is None
    with gemma.new_context(n_ctx=1024) as c:
        with pytest.raises(TemplateError, match="no chat template"):
            c.chat(FRANCE[1:], max_tokens=4)
        reply = c.chat(FRANCE[1:], max_tokens=16, temperature=0, template=gemma_template)
    # (this Gemma 3 270M is the pre-trained model, not the instruction-tuned one: no answer check)
    assert reply.usage.completion_tokens > 0 and reply.content


def test_a_template_that_writes_bos_gets_no_second_one(gemma, smol, gemma_template):
    bos, _, add_bos = chat_specials(gemma)
    assert add_bos and bos
    text, add_special = render_model_chat(gemma, FRANCE[1:], template=gemma_template)
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
    assert text == ("system: You are a helpful assistant.\nuser: What is the capital of France?\n"
                    "Answer in capitals.\nassistant:")
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


def test_roles_the_template_rejects(gemma, gemma_template):
    with gemma.new_context(n_ctx=512) as c:
        # Gemma's template insists on alternating user/model turns and has no system role.
        for messages in ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                         FRANCE):
            with pytest.raises(TemplateError, match=r"alternate|[Ss]ystem"):
                c.chat(messages, max_tokens=4, template=gemma_template)
        assert c.chat(FRANCE[1:], max_tokens=4, temperature=0, template=gemma_template).content


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
    with pytest.raises(TemplateError, match=r"syntax|template"):
        ctx.chat(FRANCE, template="{% for %}")
    with pytest.raises(TemplateError):
        ctx.chat(FRANCE, template="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert ctx.chat(FRANCE, max_tokens=48, temperature=0).content == france.content


def test_chat_on_a_closed_context(smol):
    c = smol.new_context(n_ctx=256)
    c.close()
    with pytest.raises(llama.ClosedError):
        c.chat(FRANCE)


def test_add_generation_prompt_must_be_a_bool(ctx):
    with pytest.raises(TypeError, match="add_generation_prompt"):
        render_model_chat(ctx.model, FRANCE, add_generation_prompt="no")
