"""Every option of ``Model.new_context`` is read back from llama.cpp.

The context's properties are llama.cpp's effective values, which can differ from the request
(llama.cpp pads ``n_ctx`` to 256, clamps ``n_batch`` to ``n_ctx``, splits ``n_ctx`` between
parallel sequences...). The KV cache type is also checked independently, through the sizes that
llama.cpp logs to the ``llama_cython.llama_cpp`` logger while it creates the context.
"""

from __future__ import annotations

import logging
import os
import re

import pytest

from llama_cython import _cpus
from llama_cython.errors import ContextSizeError, OptionError

PROMPT = "The capital of France is"
LOGGER = "llama_cython.llama_cpp"
# llama_kv_cache: size =   11.25 MiB (   512 cells,  30 layers,  1/1 seqs),
#     K (f16): 5.62 MiB, V (f16): 5.62 MiB
KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB .*K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)


def _pad(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def _new(model, **options):
    options.setdefault("n_ctx", 256)
    options.setdefault("n_threads", 1)
    return model.new_context(**options)


def _kv_reports(caplog) -> list[tuple[float, str, str]]:
    """(total MiB, K type, V type) of every KV cache llama.cpp reported since the last clear."""
    out = []
    for record in caplog.records:
        if record.name != LOGGER:
            continue
        m = KV_LINE.search(record.getMessage())
        if m:
            out.append((float(m.group(1)), m.group(2), m.group(4)))
    return out


def _greedy(ctx, prompt: str = PROMPT, n: int = 8) -> str:
    return ctx.generate(prompt, max_tokens=n, temperature=0.0)


@pytest.fixture(scope="module")
def reference(smol) -> str:
    """Greedy text of the default (f16) configuration."""
    with _new(smol) as ctx:
        return _greedy(ctx)


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "effective"), [(256, 256), (300, 512), (512, 512), (1000, 1024)])
def test_n_ctx_is_padded_to_256(smol, requested, effective):
    with _new(smol, n_ctx=requested) as ctx:
        assert ctx.n_ctx == effective
        assert ctx.n_ctx_seq == effective
        assert type(ctx.n_ctx) is int


def test_n_ctx_zero_means_the_training_context(smol):
    with _new(smol, n_ctx=0, n_batch=64) as ctx:
        assert ctx.n_ctx == smol.n_ctx_train == 8192


def test_n_ctx_at_the_model_maximum(smol):
    with _new(smol, n_ctx=smol.n_ctx_train, n_batch=64) as ctx:
        assert ctx.n_ctx == smol.n_ctx_train
    with pytest.raises(ContextSizeError):
        _new(smol, n_ctx=smol.n_ctx_train + 1)


@pytest.mark.parametrize(
    ("n_ctx", "n_batch", "n_ubatch", "want_batch", "want_ubatch"),
    [
        (512, 128, None, 128, 128),       # n_ubatch defaults to min(512, n_batch)
        (512, 512, None, 512, 512),
        (1024, 1024, None, 1024, 512),
        (512, 128, 64, 128, 64),
        (512, 100, 100, 100, 100),
        (512, 1, None, 1, 1),
        (256, 1024, None, 256, 256),      # llama.cpp clamps n_batch to n_ctx (causal models)
        (300, 512, None, 300, 300),       # ... to the requested n_ctx, before padding
    ],
)
def test_n_batch_and_n_ubatch(smol, n_ctx, n_batch, n_ubatch, want_batch, want_ubatch):
    with _new(smol, n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_ubatch) as ctx:
        assert ctx.n_batch == want_batch
        assert ctx.n_ubatch == want_ubatch


def test_small_batches_still_generate_the_same_text(smol, reference):
    # A prompt fed in chunks of 2 (n_batch) and micro-batches of 1 gives the same continuation.
    with _new(smol, n_batch=2, n_ubatch=1) as ctx:
        assert ctx.n_batch == 2
        assert ctx.n_ubatch == 1
        assert _greedy(ctx) == reference


# -- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n_threads", "n_threads_batch"), [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_threads(smol, n_threads, n_threads_batch):
    if max(n_threads, n_threads_batch) > _cpus.available_cpus():
        pytest.skip("more threads than this process may run on (refused: test_hardening)")
    with _new(smol, n_threads=n_threads, n_threads_batch=n_threads_batch) as ctx:
        assert ctx.n_threads == n_threads
        assert ctx.n_threads_batch == n_threads_batch


def test_threads_default_to_the_usable_cores(smol):
    cores = _cpus.default_threads()
    assert cores <= len(os.sched_getaffinity(0))
    with smol.new_context(n_ctx=256) as ctx:
        assert ctx.n_threads == cores
        assert ctx.n_threads_batch == cores
    with smol.new_context(n_ctx=256, n_threads=1) as ctx:
        assert ctx.n_threads == 1
        assert ctx.n_threads_batch == 1          # follows n_threads


# -- KV cache type --------------------------------------------------------------------------------

BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@pytest.mark.parametrize("kv", ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"])
def test_kv_cache_type_is_what_llama_cpp_allocated(smol, caplog, kv):
    caplog.set_level(logging.INFO, logger=LOGGER)
    caplog.clear()
    with _new(smol, n_ctx=512, kv_cache_type=kv) as ctx:
        assert ctx.kv_cache_type == kv
        reports = _kv_reports(caplog)
        assert reports, "llama.cpp logged no KV cache size"
        assert all(k == kv and v == kv for _, k, v in reports), reports
        if kv != "f16" and kv != "f32" and kv != "bf16":
            assert ctx.flash_attn == "on"        # quantized V needs flash attention
        assert _greedy(ctx, n=2)                 # and it runs


def test_kv_cache_sizes_really_differ(smol, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sizes = {}
    for kv in ("f32", "f16", "q8_0", "q4_0"):
        caplog.clear()
        with _new(smol, n_ctx=512, kv_cache_type=kv) as ctx:
            assert ctx.kv_cache_type == kv
            (size, k, v), = _kv_reports(caplog)
            assert k == v == kv
            sizes[kv] = size
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"] > sizes["q4_0"] > 0
    # Proportional to the bytes per value of each type (the log rounds to 0.01 MiB).
    for kv, size in sizes.items():
        ratio = size / sizes["f16"]
        assert ratio == pytest.approx(BYTES_PER_VALUE[kv] / 2.0, rel=0.02), (kv, sizes)
    # And to the KV geometry: 2 (K and V) x cells x layers x n_embd_k_gqa x bytes.
    n_head_kv = int(smol.metadata["llama.attention.head_count_kv"])
    n_head = int(smol.metadata["llama.attention.head_count"])
    n_embd_kv = smol.n_embd // n_head * n_head_kv
    expected_f16 = 2 * 512 * smol.n_layer * n_embd_kv * 2 / 2**20
    assert sizes["f16"] == pytest.approx(expected_f16, rel=0.01)


def test_kv_cache_type_is_case_insensitive(smol):
    with _new(smol, kv_cache_type="F16") as ctx:
        assert ctx.kv_cache_type == "f16"
    with _new(smol, kv_cache_type="Q8_0") as ctx:
        assert ctx.kv_cache_type == "q8_0"


def test_kv_cache_type_on_a_sliding_window_model(gemma, caplog):
    # Gemma 3 has two KV caches (global and sliding window); both get the requested type.
    caplog.set_level(logging.INFO, logger=LOGGER)
    for kv in ("f16", "q8_0"):
        caplog.clear()
        with _new(gemma, kv_cache_type=kv) as ctx:
            assert ctx.kv_cache_type == kv
            reports = _kv_reports(caplog)
            assert len(reports) == 2, reports
            assert all(k == v == kv for _, k, v in reports)


def test_f32_and_f16_kv_give_the_same_greedy_text(smol, reference):
    with _new(smol, kv_cache_type="f32") as ctx:
        assert _greedy(ctx) == reference
    with _new(smol, kv_cache_type="f16") as ctx:
        assert _greedy(ctx) == reference
    with _new(smol, kv_cache_type="q8_0") as ctx:
        text = _greedy(ctx)                      # may differ a little, but is text
        assert isinstance(text, str) and text.strip()
        assert ctx.last_stats.completion_tokens == 8


# -- flash attention ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "effective", "logged"),
    [("on", "on", "enabled"), ("off", "off", "disabled"), (True, "on", "enabled"),
     (False, "off", "disabled"), ("ON", "on", "enabled"), ("Off", "off", "disabled")],
)
def test_flash_attn_explicit(smol, caplog, requested, effective, logged):
    caplog.set_level(logging.INFO, logger=LOGGER)
    caplog.clear()
    with _new(smol, flash_attn=requested) as ctx:
        assert ctx.flash_attn == effective
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(re.search(rf"flash_attn += {logged}", m) for m in messages), messages


@pytest.mark.parametrize("requested", ["auto", None])
def test_flash_attn_auto_resolves_to_on_or_off(smol, gemma, caplog, requested):
    caplog.set_level(logging.INFO, logger=LOGGER)
    for model in (smol, gemma):
        caplog.clear()
        with _new(model, flash_attn=requested) as ctx:
            assert ctx.flash_attn in ("on", "off")
            messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
            assert any(re.search(r"flash_attn += auto", m) for m in messages)
            enabled = any("Flash Attention enabled" in m for m in messages)
            assert ctx.flash_attn == ("on" if enabled else "off")


def test_flash_attn_on_and_off_give_the_same_greedy_text(smol, reference):
    for fa in ("on", "off"):
        with _new(smol, flash_attn=fa) as ctx:
            assert _greedy(ctx) == reference, fa


def test_quantized_kv_with_auto_flash_attention_turns_it_on(smol):
    with _new(smol, kv_cache_type="q4_0", flash_attn="auto") as ctx:
        assert ctx.flash_attn == "on"
        assert ctx.kv_cache_type == "q4_0"


# -- embeddings and pooling ------------------------------------------------------------------------


@pytest.mark.parametrize("embeddings", [True, False])
def test_embeddings(smol, embeddings):
    with _new(smol, embeddings=embeddings) as ctx:
        assert ctx.embeddings is embeddings


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "none", "MEAN"])
def test_pooling(smol, pooling):
    with _new(smol, embeddings=True, pooling=pooling) as ctx:
        assert ctx.embeddings is True
        assert ctx.pooling == pooling.lower()


def test_pooling_default_is_the_models(smol):
    # SmolLM2 is a causal LM: its GGUF sets no pooling, so an embeddings context mean-pools
    # (one vector per text); a generation context has no pooling.
    with _new(smol, embeddings=True) as ctx:
        assert ctx.pooling == "mean"
        assert ctx.get_embeddings_batch(["one text", "another"]).shape == (2, smol.n_embd_out)
    with _new(smol) as ctx:
        assert ctx.pooling == "none"


def test_an_embeddings_context_can_still_generate(smol, reference):
    with _new(smol, embeddings=True, pooling="mean") as ctx:
        assert _greedy(ctx) == reference


# -- parallel sequences ----------------------------------------------------------------------------


@pytest.mark.parametrize(("n_parallel", "n_ctx"), [(1, 512), (1, 1000), (2, 512), (4, 1024),
                                                   (3, 1000), (3, 2048)])
def test_n_parallel_splits_the_context(smol, n_parallel, n_ctx):
    with _new(smol, n_ctx=n_ctx, n_parallel=n_parallel) as ctx:
        assert ctx.n_parallel == n_parallel
        if n_parallel == 1:
            seq = _pad(n_ctx)                 # llama.cpp pads n_ctx up to a multiple of 256
        else:
            seq = n_ctx // n_parallel // 256 * 256   # each share rounded down: never above n_ctx
        assert ctx.n_ctx_seq == seq
        assert ctx.n_ctx == seq * n_parallel
        assert n_parallel == 1 or ctx.n_ctx <= n_ctx


@pytest.mark.parametrize(("kv_unified", "embeddings", "n_parallel", "unified"), [
    (True, False, 4, True), (False, False, 4, False), (None, False, 4, False),
    (None, True, 4, True), (False, True, 4, False), (True, False, 1, False)])
def test_kv_unified_is_read_back(smol, kv_unified, embeddings, n_parallel, unified):
    """A shared cache lets each sequence use the whole of it (llama.cpp's n_ctx_seq == n_ctx);
    split, each sequence gets its share. Embedding contexts share by default."""
    with _new(smol, n_ctx=1024, n_parallel=n_parallel, kv_unified=kv_unified,
              embeddings=embeddings) as ctx:
        assert ctx.kv_unified is unified
        assert ctx.n_ctx == 1024
        assert ctx.n_ctx_seq == (1024 if unified or n_parallel == 1 else 1024 // n_parallel)


def test_kv_unified_must_be_a_bool(smol):
    with pytest.raises(TypeError, match="kv_unified"):
        _new(smol, n_parallel=2, kv_unified="yes")


@pytest.mark.parametrize(("n_parallel", "n_ctx"), [(3, 512), (256, 512), (2, 300)])
def test_n_parallel_needs_256_tokens_per_sequence(smol, n_parallel, n_ctx):
    with pytest.raises(OptionError, match=f"at least {256 * n_parallel}"):
        _new(smol, n_ctx=n_ctx, n_parallel=n_parallel)


def test_n_parallel_limits_a_prompt_to_one_sequence(smol, reference):
    with _new(smol, n_ctx=512, n_parallel=2) as ctx:
        assert ctx.n_ctx_seq == 256
        assert _greedy(ctx) == reference
        long_prompt = "word " * 300                    # ~300 tokens: fits n_ctx, not n_ctx_seq
        n_tokens = len(smol.tokenize(long_prompt))
        assert ctx.n_ctx_seq < n_tokens < ctx.n_ctx
        with pytest.raises(ContextSizeError):
            ctx.generate(long_prompt, max_tokens=1, temperature=0.0)
        assert _greedy(ctx) == reference


# -- prefix caching ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix_caching, stored", [(True, "exact"), (False, "off"), ("any", "any")])
def test_prefix_caching_is_stored(smol, reference, prefix_caching, stored):
    with _new(smol, prefix_caching=prefix_caching) as ctx:
        assert ctx.prefix_caching == stored
        assert _greedy(ctx) == reference
        assert _greedy(ctx) == reference       # the second call gives the same text


def test_defaults(smol):
    with smol.new_context(n_threads=1) as ctx:
        assert ctx.n_ctx == 2048
        assert ctx.n_batch == 512
        assert ctx.n_ubatch == 512
        assert ctx.n_parallel == 1
        assert ctx.n_ctx_seq == 2048
        assert ctx.kv_cache_type == "f16"
        assert ctx.flash_attn in ("on", "off")
        assert ctx.embeddings is False
        assert ctx.pooling == "none"
        assert ctx.prefix_caching == "exact"
        assert ctx.last_stats is None
        assert ctx.model is smol
        assert "n_ctx=2048" in repr(ctx)
