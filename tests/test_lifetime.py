"""Ownership and lifetime: close(), context managers, closed objects, keep-alive, memory.

A Model owns its weights and a Context its KV cache. ``close()`` is idempotent, every method of
a closed object raises ``ClosedError``, a model refuses to close under an open context, a
context keeps its model alive, and objects dropped without ``close()`` free themselves silently.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython.errors import ClosedError, ContextBusyError, LlamaError

PROMPT = "The capital of France is"


def _ctx(model, **options):
    options = {"n_ctx": 256, "n_threads": 1, **options}
    return model.new_context(**options)


def _greedy(ctx, n: int = 4) -> str:
    return ctx.generate(PROMPT, max_tokens=n, temperature=0.0)


@pytest.fixture(scope="module")
def reference(smol) -> str:
    with _ctx(smol) as ctx:
        return _greedy(ctx)


@pytest.fixture()
def own_model(smol_path):
    """A private SmolLM2 model that a test may close (the shared ones are never closed)."""
    model = llama.load_model(smol_path)
    yield model
    for _ in range(3):
        gc.collect()
    try:
        model.close()
    except LlamaError:
        pass


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# -- close() and context managers ----------------------------------------------------------------


def test_context_close_is_idempotent(smol, reference):
    ctx = _ctx(smol)
    assert ctx.closed is False
    assert _greedy(ctx) == reference
    ctx.close()
    assert ctx.closed is True
    ctx.close()
    ctx.close()
    assert ctx.closed is True
    assert repr(ctx) == "<llama_cython.Context closed>"


def test_model_close_is_idempotent(own_model):
    assert own_model.closed is False
    own_model.close()
    assert own_model.closed is True
    own_model.close()
    assert own_model.closed is True
    assert "closed" in repr(own_model)


def test_context_managers(smol_path, reference):
    with llama.load_model(smol_path) as model:
        assert model.closed is False
        with _ctx(model) as ctx:
            assert ctx.closed is False
            assert _greedy(ctx) == reference
        assert ctx.closed is True
    assert model.closed is True


def test_context_manager_closes_on_error(smol_path):
    with (
        pytest.raises(RuntimeError, match="inside"),
        llama.load_model(smol_path) as model,
        _ctx(model) as ctx,
    ):
        raise RuntimeError("inside")
    assert ctx.closed is True
    assert model.closed is True


def test_entering_a_closed_object_raises(own_model):
    ctx = _ctx(own_model)
    ctx.close()
    with pytest.raises(ClosedError, match="context is closed"), ctx:
        pass
    own_model.close()
    with pytest.raises(ClosedError, match="model is closed"), own_model:
        pass


# -- every method and property of a closed object ------------------------------------------------------

# Attributes that stay readable after close(), like a closed file's ``name`` and ``closed``.
CONTEXT_READABLE_AFTER_CLOSE = {"closed", "model", "close", "last_stats", "cancel",
                                "kv_cache_type", "flash_attn", "prefix_caching", "cached_tokens",
                                "last_embedding_stats", "last_batch_stats", "busy", "options",
                                "embed_workers"}
_HI = [{"role": "user", "content": "Hi"}]
CONTEXT_CALLS = {
    "generate": lambda c: c.generate("Hi", max_tokens=2, temperature=0.0),
    "tokenize": lambda c: c.tokenize("Hi"),
    "detokenize": lambda c: c.detokenize([1, 2]),
    "token_to_piece": lambda c: c.token_to_piece(1),
    "generate_stream": lambda c: c.generate_stream("Hi", max_tokens=2),
    "generate_async": lambda c: c.generate_async("Hi", max_tokens=2),
    "chat": lambda c: c.chat(_HI, max_tokens=2),
    "chat_stream": lambda c: c.chat_stream(_HI, max_tokens=2),
    "chat_async": lambda c: c.chat_async(_HI, max_tokens=2),
    "get_logits": lambda c: c.get_logits(),
    "clear_cache": lambda c: c.clear_cache(),
    "get_embeddings": lambda c: c.get_embeddings("Hi"),
    "get_embeddings_batch": lambda c: c.get_embeddings_batch(["Hi"]),
    "iter_embeddings": lambda c: c.iter_embeddings(["Hi"]),
    "embed": lambda c: c.embed(["Hi"]),
    "encode": lambda c: c.encode(["Hi"]),
    "get_token_embeddings": lambda c: c.get_token_embeddings(["Hi"]),
    "generate_batch": lambda c: c.generate_batch(["Hi"], max_tokens=2),
    "generate_batch_stream": lambda c: c.generate_batch_stream(["Hi"], max_tokens=2),
    "chat_batch": lambda c: c.chat_batch([_HI], max_tokens=2),
    "generate_with_draft": lambda c: c.generate_with_draft("Hi", "prompt", max_tokens=2),
    "generate_with_draft_stream": lambda c: c.generate_with_draft_stream("Hi", "prompt", max_tokens=2),
    "score": lambda c: c.score(["Hi there"]),
    "score_continuations": lambda c: c.score_continuations("Hi", [" there"]),
    "perplexity": lambda c: c.perplexity("Hi " * 300, n_ctx=64),
    "save_state": lambda c: c.save_state(),
    "load_state": lambda c: c.load_state(b"not a state"),
}
MODEL_READABLE_AFTER_CLOSE = {"closed", "close", "path", "vocab_only", "load_options"}
MODEL_CALLS = {
    "tokenize": lambda m: m.tokenize("Hi"),
    "detokenize": lambda m: m.detokenize([1, 2]),
    "token_to_piece": lambda m: m.token_to_piece(1),
    "is_eog": lambda m: m.is_eog(1),
    "new_context": lambda m: m.new_context(n_ctx=256),
    "tokenize_batch": lambda m: m.tokenize_batch(["Hi"]),
    "count_tokens": lambda m: m.count_tokens(["Hi"]),
    "detokenize_batch": lambda m: m.detokenize_batch([[1, 2]]),
    "encode": lambda m: m.encode("Hi"),
}


def _public(obj) -> list[str]:
    return sorted(name for name in dir(obj) if not name.startswith("_"))


def test_closed_context_raises_for_every_public_method_and_property(smol):
    ctx = _ctx(smol)
    ctx.generate("Hi", max_tokens=1, temperature=0.0)
    names = _public(ctx)
    ctx.close()
    checked = []
    for name in names:
        if name in CONTEXT_READABLE_AFTER_CLOSE:
            continue
        with pytest.raises(ClosedError, match="context is closed"):
            if name in CONTEXT_CALLS:
                CONTEXT_CALLS[name](ctx)
            else:
                value = getattr(ctx, name)
                assert not callable(value), f"add a call for the new method Context.{name}"
        checked.append(name)
    for must in ("generate", "tokenize", "detokenize", "token_to_piece", "n_ctx", "n_batch",
                 "n_ubatch", "n_threads", "n_threads_batch", "n_parallel", "n_ctx_seq",
                 "embeddings", "pooling"):
        assert must in checked
    # The readable ones do not crash either.
    assert ctx.closed is True
    assert ctx.model is smol
    ctx.cancel()
    ctx.close()
    assert ctx.kv_cache_type == "f16"
    assert ctx.last_stats is not None
    # ClosedError is a ValueError, as for a closed file.
    with pytest.raises(ValueError):
        ctx.generate("Hi", max_tokens=1)


def test_closed_model_raises_for_every_public_method_and_property(smol_path):
    model = llama.load_model(smol_path)
    names = _public(model)
    model.close()
    checked = []
    for name in names:
        if name in MODEL_READABLE_AFTER_CLOSE:
            continue
        with pytest.raises(ClosedError, match="model is closed"):
            if name in MODEL_CALLS:
                MODEL_CALLS[name](model)
            else:
                value = getattr(model, name)
                assert not callable(value), f"add a call for the new method Model.{name}"
        checked.append(name)
    for must in ("tokenize", "detokenize", "token_to_piece", "new_context", "n_vocab",
                 "n_ctx_train", "n_embd", "n_layer", "n_params", "size", "architecture",
                 "description", "metadata", "chat_template"):
        assert must in checked
    assert model.path == str(smol_path)
    assert model.closed is True


def test_closed_context_checks_arguments_and_still_raises_closed(smol):
    ctx = _ctx(smol)
    ctx.close()
    # Valid arguments: ClosedError; invalid ones may be reported first, but never a crash.
    with pytest.raises(ClosedError):
        ctx.generate("Hi", max_tokens=1, temperature=0.0, seed=1)
    with pytest.raises((ClosedError, TypeError, LlamaError)):
        ctx.generate(None)


# -- a model and its contexts ---------------------------------------------------------------------------


def test_model_close_with_an_open_context_raises_and_the_model_still_works(own_model, reference):
    ctx = _ctx(own_model)
    with pytest.raises(LlamaError, match="open context"):
        own_model.close()
    assert own_model.closed is False
    assert ctx.closed is False
    assert _greedy(ctx) == reference
    assert own_model.n_vocab == 49152
    assert own_model.detokenize(own_model.tokenize("Hello world")) == "Hello world"
    with _ctx(own_model) as second:
        assert _greedy(second) == reference
        with pytest.raises(LlamaError, match="2 open context"):
            own_model.close()
    ctx.close()
    own_model.close()
    assert own_model.closed is True


def test_model_closes_once_an_unclosed_context_is_garbage(own_model):
    ctx = _ctx(own_model)
    ref = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert ref() is None
    own_model.close()
    assert own_model.closed is True


def test_a_context_keeps_its_model_alive(smol_path, reference):
    model = llama.load_model(smol_path)
    model_ref = weakref.ref(model)
    ctx = _ctx(model)
    del model
    for _ in range(3):
        gc.collect()
    assert model_ref() is not None, "the model was freed under its context"
    assert ctx.model is model_ref()
    assert _greedy(ctx) == reference
    assert ctx.tokenize("Hello").size > 0
    ctx.close()
    assert _greedy(_ctx(ctx.model)) == reference   # a new context on the same model
    del ctx
    for _ in range(3):
        gc.collect()
    assert model_ref() is None, "the model outlived its last context"


def test_a_context_in_a_reference_cycle_is_freed_safely(smol_path, capfd):
    capfd.readouterr()
    model = llama.load_model(smol_path)
    model_ref = weakref.ref(model)
    ctx = _ctx(model)

    class Holder:
        pass

    holder = Holder()
    holder.ctx = ctx
    holder.self = holder                  # a cycle that only the garbage collector frees
    holder.model = model
    del ctx, model, holder
    for _ in range(3):
        gc.collect()
    assert model_ref() is None
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_a_draft_stream_holds_its_draft_context_and_keeps_it_alive(own_model, smol):
    # generate_with_draft_stream takes the draft context too: while the stream is open the
    # draft cannot be used or closed (nor, then, its model), and it lives as long as the stream.
    target = _ctx(smol)
    draft = _ctx(own_model)
    draft_ref = weakref.ref(draft)
    stream = target.generate_with_draft_stream(PROMPT, draft, max_tokens=8, temperature=0.0)
    first = next(stream)
    with pytest.raises(ContextBusyError):
        draft.generate("Hi", max_tokens=1)
    with pytest.raises(ContextBusyError):
        draft.close()
    with pytest.raises(LlamaError, match="open context"):
        own_model.close()
    del draft
    for _ in range(3):
        gc.collect()
    draft = draft_ref()
    assert draft is not None, "the draft context was freed under its stream"
    assert draft.busy
    assert isinstance(first + "".join(stream), str)
    assert not target.busy and not draft.busy
    stream = target.generate_with_draft_stream(PROMPT, draft, max_tokens=8, temperature=0.0)
    next(stream)
    del stream                          # dropped unfinished: both contexts are handed back
    assert not target.busy and not draft.busy
    assert draft.generate("Hi", max_tokens=2, temperature=0.0) is not None
    del draft
    for _ in range(3):
        gc.collect()
    assert draft_ref() is None, "the draft context outlived its last user"
    own_model.close()
    target.close()


# In a child process: a stream collected in a cycle runs its deallocator after the collector
# cleared what it could; handing the draft back must not depend on what was cleared.
DRAFT_STREAM_CYCLE = """
import gc
import llama_cython as llama
m = llama.load_model(llama.models.model_path("smollm2-135m-instruct"))
target, draft = m.new_context(n_ctx=256, n_threads=1), m.new_context(n_ctx=256, n_threads=1)


class Box:
    pass


for shape in ("list", "object"):
    stream = target.generate_with_draft_stream("Once upon a time", draft, max_tokens=16, temperature=0)
    next(stream)
    if shape == "list":
        box = [stream]
        box.append(box)
    else:
        box = Box()
        box.stream, box.me = stream, box
    del stream, box
    gc.collect()
    assert not target.busy and not draft.busy, (shape, target.busy, draft.busy)
    assert draft.generate("Hi", max_tokens=2, temperature=0) is not None
draft.close()
target.close()
m.close()
print("OK")
"""


def test_a_draft_stream_in_a_reference_cycle_hands_both_contexts_back():
    proc = subprocess.run([sys.executable, "-c", DRAFT_STREAM_CYCLE], capture_output=True, text=True,
                          timeout=300, cwd=str(Path(__file__).resolve().parent.parent))
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), (
        f"exit code {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def test_dealloc_is_silent(smol_path, smol, capfd):
    capfd.readouterr()
    refs = []
    for _ in range(3):
        model = llama.load_model(smol_path)
        refs.append(weakref.ref(model))
        ctxs = [_ctx(model) for _ in range(3)]
        ctxs[0].generate("Hi", max_tokens=2, temperature=0.0)
        refs.extend(weakref.ref(c) for c in ctxs)
        del model, ctxs                   # no close() anywhere
    for _ in range(10):
        ctx = _ctx(smol)
        ctx.tokenize("x")
        refs.append(weakref.ref(ctx))
        del ctx
    for _ in range(3):
        gc.collect()
    assert all(r() is None for r in refs)
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_tokens_outlive_their_model(smol_path):
    model = llama.load_model(smol_path)
    ids = model.tokenize("Hello world, this outlives the model")
    expected = ids.copy()
    model.close()
    del model
    gc.collect()
    np.testing.assert_array_equal(ids, expected)   # plain numpy memory, not a view into C
    assert ids.flags.owndata or ids.base is not None


# -- memory ---------------------------------------------------------------------------------------------


def test_creating_and_closing_contexts_does_not_grow_rss(smol):
    def cycle(n: int) -> None:
        for _ in range(n):
            ctx = _ctx(smol)
            ctx.close()

    cycle(5)                                  # warm-up: allocator pools, first-use caches
    gc.collect()
    before = _rss_kib()
    cycle(50)
    gc.collect()
    after = _rss_kib()
    # One leaked context is ~60 MiB here (KV cache + compute buffer); allow 64 MiB in total.
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB"


def test_dropping_contexts_without_close_does_not_grow_rss(smol):
    def cycle(n: int) -> None:
        for _ in range(n):
            ctx = _ctx(smol)
            ctx.tokenize("x")
            del ctx

    cycle(5)
    gc.collect()
    before = _rss_kib()
    cycle(30)
    gc.collect()
    after = _rss_kib()
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB"


def test_loading_and_closing_models_does_not_grow_rss(smol_path):
    def cycle(n: int) -> None:
        for _ in range(n):
            llama.load_model(smol_path).close()

    cycle(2)
    gc.collect()
    before = _rss_kib()
    cycle(10)
    gc.collect()
    after = _rss_kib()
    assert after - before < 64 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB"


def test_many_generations_do_not_grow_rss(smol):
    with _ctx(smol) as ctx:
        for _ in range(5):
            ctx.generate("Hi", max_tokens=1, temperature=0.0)
        before = _rss_kib()
        for i in range(100):
            ctx.generate("Hi", max_tokens=1, temperature=0.5, seed=i)
        after = _rss_kib()
    assert after - before < 16 * 1024, f"RSS grew by {(after - before) / 1024:.0f} MiB"
