"""Bad input of every kind gets a clear exception, and leaves everything usable.

After each error the same model and context are used again (a short greedy generation must
give the reference text). Every exception is a ``LlamaError`` or a ``TypeError``. GGUF files
with corrupt metadata are written here with the ``gguf`` package (a tiny random llama); loads
that could abort llama.cpp are also run in a subprocess, to prove that the interpreter survives.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython.errors import (
    ClosedError,
    ContextBusyError,
    ContextError,
    ContextSizeError,
    DecodeError,
    LlamaError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    TokenizeError,
)

PROMPT = "The capital of France is"

gguf = pytest.importorskip("gguf")


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(smol):
    with smol.new_context(n_ctx=256, n_threads=1) as context:
        yield context


@pytest.fixture(scope="module")
def reference(ctx) -> str:
    return ctx.generate(PROMPT, max_tokens=2, temperature=0.0)


@pytest.fixture()
def usable(smol, ctx, reference):
    """Call after an error: the shared model and the module's context still work."""

    def check() -> None:
        assert ctx.closed is False
        assert smol.closed is False
        assert ctx.generate(PROMPT, max_tokens=2, temperature=0.0) == reference
        assert ctx.last_stats.finish_reason == "length"
        assert smol.detokenize(smol.tokenize("Hello world")) == "Hello world"

    return check


def _raises(exc_type, fn, *args, match: str | None = None, **kwargs):
    """pytest.raises, plus: the exception is a LlamaError or a TypeError."""
    with pytest.raises(exc_type, match=match) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, (LlamaError, TypeError)), type(info.value)
    return info.value


def write_tiny_llama(
    path: Path,
    *,
    arch: str = "llama",
    block_count: int = 2,
    overrides: dict[str, tuple[str, object]] | None = None,
    drop: tuple[str, ...] = (),
    tensors: bool = True,
    byte_tokens: bool = True,
    duplicate_token: bool = False,
) -> Path:
    """A tiny random-weight llama GGUF (32 wide, SPM vocabulary of 262 tokens).

    ``overrides`` maps a key to ``(gguf add_* type, value)``; ``drop`` leaves keys out.
    """
    n_embd, n_head, n_ff = 32, 4, 64
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch)
    kv: dict[str, tuple[str, object]] = {
        f"{arch}.block_count": ("uint32", block_count),
        f"{arch}.context_length": ("uint32", 256),
        f"{arch}.embedding_length": ("uint32", n_embd),
        f"{arch}.feed_forward_length": ("uint32", n_ff),
        f"{arch}.attention.head_count": ("uint32", n_head),
        f"{arch}.attention.head_count_kv": ("uint32", n_head),
        f"{arch}.attention.layer_norm_rms_epsilon": ("float32", 1e-5),
        f"{arch}.rope.dimension_count": ("uint32", n_embd // n_head),
    }
    kv.update(overrides or {})
    for key, (kind, value) in kv.items():
        if key not in drop:
            getattr(writer, f"add_{kind}")(key, value)
    byte_range = range(256) if byte_tokens else range(0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in byte_range] + ["\u2581", "h", "i"]
    if duplicate_token:
        tokens[-1] = tokens[-2]            # the same text for two ids
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([2, 3, 3] + [6] * len(byte_range) + [1, 1, 1])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def weight(name: str, *shape: int) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    if tensors:
        weight("token_embd.weight", len(tokens), n_embd)
        writer.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
        for i in range(block_count if 0 < block_count <= 4 else 2):
            writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, np.float32))
            writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, np.float32))
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                weight(f"blk.{i}.{name}.weight", n_embd, n_embd)
            weight(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
            weight(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
            weight(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


A = "llama"
# Corrupt metadata that llama.cpp must refuse at load time: (name, write_tiny_llama options).
LOAD_ERRORS = {
    "block_count_0": {"block_count": 0},
    "block_count_10000": {"block_count": 10000},
    "block_count_513": {"overrides": {f"{A}.block_count": ("uint32", 513)}},
    "block_count_int32": {"overrides": {f"{A}.block_count": ("int32", 10000)}},
    "block_count_uint64": {"overrides": {f"{A}.block_count": ("uint64", 10000)}},
    "block_count_int32_negative": {"overrides": {f"{A}.block_count": ("int32", -1)}},
    "block_count_string": {"overrides": {f"{A}.block_count": ("string", "two")}},
    "block_count_3_tensors_for_2": {"overrides": {f"{A}.block_count": ("uint32", 3)}},
    "head_count_0": {"overrides": {f"{A}.attention.head_count": ("uint32", 0)}},
    "head_count_kv_0": {"overrides": {f"{A}.attention.head_count_kv": ("uint32", 0)}},
    "head_count_kv_3": {"overrides": {f"{A}.attention.head_count_kv": ("uint32", 3)}},
    "head_count_5": {"overrides": {f"{A}.attention.head_count": ("uint32", 5)}},
    "embedding_length_0": {"overrides": {f"{A}.embedding_length": ("uint32", 0)}},
    "embedding_length_33": {"overrides": {f"{A}.embedding_length": ("uint32", 33)}},
    "feed_forward_length_0": {"overrides": {f"{A}.feed_forward_length": ("uint32", 0)}},
    "rope_dimension_1000": {"overrides": {f"{A}.rope.dimension_count": ("uint32", 1000)}},
    "no_embedding_length": {"drop": (f"{A}.embedding_length",)},
    "no_block_count": {"drop": (f"{A}.block_count",)},
    "unknown_architecture": {"arch": "nosucharch"},
    "no_tensors": {"tensors": False},
}
# Files that load, but hold values that must not crash anything afterwards.
LOAD_OK = {
    "rms_epsilon_nan": {"overrides": {f"{A}.attention.layer_norm_rms_epsilon": ("float32", math.nan)}},
    "rms_epsilon_negative": {"overrides": {f"{A}.attention.layer_norm_rms_epsilon": ("float32", -1.0)}},
    "rope_freq_base_nan": {"overrides": {f"{A}.rope.freq_base": ("float32", math.nan)}},
    "rope_freq_base_0": {"overrides": {f"{A}.rope.freq_base": ("float32", 0.0)}},
    "context_length_0": {"overrides": {f"{A}.context_length": ("uint32", 0)}},
}


# Corrupt files that llama.cpp aborts on (GGML_ASSERT) unless they are refused first: only ever
# loaded in a subprocess.
LOAD_ABORTS = {
    "duplicate_token": {"duplicate_token": True},
    # found by scripts/fuzz_gguf.py: each aborts inside llama.cpp's load_hparams
    "nextn_above_block_count": {"overrides": {"llama.nextn_predict_layers": ("uint32", 3)}},
    "too_many_experts": {"overrides": {"llama.expert_count": ("uint32", 65536)}},
    "experts_used_without_experts": {"overrides": {"llama.expert_used_count": ("uint32", 1)}},
    "experts_none_used": {"overrides": {"llama.expert_count": ("uint32", 1)}},
    "expert_groups_without_experts": {"overrides": {"llama.expert_group_count": ("uint32", 1)}},
    "rope_scaling_type_unknown": {"overrides": {"llama.rope.scaling.type": ("string", "bogus")}},
}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic_gguf")
    write_tiny_llama(folder / "ok.gguf")
    for name, options in {**LOAD_ERRORS, **LOAD_OK, **LOAD_ABORTS}.items():
        write_tiny_llama(folder / f"{name}.gguf", **options)
    write_tiny_llama(folder / "no_byte_tokens.gguf", byte_tokens=False)
    return folder


# The script run in a subprocess: load, then (if it loaded) tokenize, create a context and
# generate. It prints one JSON line per step; a crash shows as a negative return code.
_SURVIVE = textwrap.dedent(
    """
    import json, sys
    import llama_cython as llama
    def step(name, fn):
        try:
            value = fn()
            print(json.dumps({"step": name, "ok": True, "value": repr(value)[:200]}), flush=True)
            return value
        except Exception as exc:
            print(json.dumps({"step": name, "ok": False, "type": type(exc).__name__,
                              "llama": isinstance(exc, (llama.LlamaError, TypeError)),
                              "message": str(exc)[:300]}), flush=True)
            return None
    for path in sys.argv[1:]:
        model = step("load:" + path, lambda: llama.load_model(path))
        if model is None:
            continue
        step("tokenize", lambda: model.tokenize("hi").tolist())
        for n_ctx in (0, 256):
            ctx = step("new_context", lambda: model.new_context(n_ctx=n_ctx, n_threads=1))
            if ctx is not None:
                step("generate", lambda: ctx.generate("hi", max_tokens=4, temperature=0.0))
                ctx.close()
        model.close()
    print("SURVIVED", flush=True)
    """
)


def _survive(*paths: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run(
        [sys.executable, "-c", _SURVIVE, *map(str, paths)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, steps


# -- paths -----------------------------------------------------------------------------------------


def test_missing_file(tmp_path, usable):
    path = tmp_path / "no" / "such" / "model.gguf"
    exc = _raises(ModelNotFoundError, llama.load_model, path, match="model file not found")
    assert isinstance(exc, FileNotFoundError)
    assert str(path) in str(exc)
    _raises(ModelNotFoundError, llama.load_model, str(path))
    _raises(ModelNotFoundError, llama.load_model, os.fsencode(path))
    usable()


def test_missing_file_with_a_non_utf8_name(tmp_path, usable):
    path = os.fsencode(tmp_path) + b"/caf\xe9-\xff.gguf"
    _raises(ModelNotFoundError, llama.load_model, path, match="model file not found")
    usable()


def test_directory(tmp_path, usable):
    exc = _raises(ModelLoadError, llama.load_model, tmp_path, match="directory")
    assert isinstance(exc, OSError)
    usable()


def test_empty_file(tmp_path, usable):
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    _raises(ModelLoadError, llama.load_model, path, match="empty")
    usable()


@pytest.mark.parametrize(
    "content",
    [
        b"this is a text file, not a model\n" * 20,
        bytes(range(256)) * 40,
        np.random.default_rng(1).bytes(100_000),
        b"GGU",
        b"GGML" + b"\0" * 100,
        b"\x7fELF" + b"\0" * 100,
    ],
    ids=["text", "bytes", "random", "3 bytes", "ggml", "elf"],
)
def test_not_a_gguf_file(tmp_path, usable, content):
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    _raises(ModelLoadError, llama.load_model, path)
    usable()


@pytest.mark.parametrize(
    "garbage",
    [b"GGUF", b"GGUF" + b"\xff" * 60, b"GGUF\x03\0\0\0" + b"\xff" * 16,
     b"GGUF\x03\0\0\0" + (2**62).to_bytes(8, "little") * 2],
    ids=["magic only", "bad version", "huge counts", "2**62 counts"],
)
def test_gguf_magic_then_garbage(tmp_path, usable, garbage):
    path = tmp_path / "garbage.gguf"
    path.write_bytes(garbage)
    _raises(ModelLoadError, llama.load_model, path)
    usable()


@pytest.fixture(scope="module")
def smol_bytes(smol_path) -> bytes:
    return smol_path.read_bytes()


@pytest.mark.parametrize("cut", [4, 24, 100, 10_000, 1_000_000, "half", "minus 1"])
def test_truncated_gguf(tmp_path, smol_bytes, usable, cut):
    n = {"half": len(smol_bytes) // 2, "minus 1": len(smol_bytes) - 1}.get(cut, cut)
    path = tmp_path / "truncated.gguf"
    path.write_bytes(smol_bytes[:n])
    exc = _raises(ModelLoadError, llama.load_model, path)
    assert str(path) in str(exc)
    usable()


def test_unreadable_file(tmp_path, usable):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "secret.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 100)
    path.chmod(0)
    _raises(ModelLoadError, llama.load_model, path)
    usable()


@pytest.mark.parametrize("path", [None, 123, 1.5, ["a.gguf"], object()])
def test_path_of_the_wrong_type(path, usable):
    _raises(TypeError, llama.load_model, path, match="path")
    usable()


def test_path_types_that_work(smol_path, smol):
    for path in (smol_path, str(smol_path), os.fsencode(smol_path)):
        with llama.load_model(path, vocab_only=True) as model:
            assert model.n_vocab == smol.n_vocab


# -- synthetic GGUF files with corrupt metadata ---------------------------------------------------------


def test_synthetic_model_is_valid(synth_dir):
    # The generator itself is right: the unmodified tiny model loads and generates.
    with llama.load_model(synth_dir / "ok.gguf") as model:
        assert model.n_layer == 2
        assert model.n_vocab == 262
        with model.new_context(n_ctx=256, n_threads=1) as ctx:
            assert isinstance(ctx.generate("hi", max_tokens=4, temperature=0.0), str)
            assert ctx.last_stats.completion_tokens == 4


@pytest.mark.parametrize("name", sorted(LOAD_ERRORS))
def test_corrupt_metadata_in_process(synth_dir, usable, name):
    _raises(ModelLoadError, llama.load_model, synth_dir / f"{name}.gguf")
    usable()


def test_block_count_is_checked_before_llama_cpp_asserts(synth_dir):
    for name, count in (("block_count_0", 0), ("block_count_10000", 10000), ("block_count_513", 513)):
        exc = _raises(ModelLoadError, llama.load_model, synth_dir / f"{name}.gguf")
        assert f"block_count is {count}" in str(exc)


def test_corrupt_metadata_in_a_subprocess(synth_dir):
    paths = [synth_dir / f"{name}.gguf" for name in sorted(LOAD_ERRORS)]
    proc, steps = _survive(*paths)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SURVIVED" in proc.stdout
    assert proc.stderr == ""
    loads = [s for s in steps if s["step"].startswith("load:")]
    assert len(loads) == len(paths)
    for step in loads:
        assert not step["ok"], step
        assert step["type"] == "ModelLoadError", step


@pytest.mark.parametrize("name", sorted(LOAD_OK))
def test_odd_metadata_does_not_crash_later(synth_dir, name):
    """Loads, then tokenize / new_context / generate: errors are fine, aborting is not."""
    proc, steps = _survive(synth_dir / f"{name}.gguf")
    assert proc.returncode == 0, (
        f"the interpreter died (return code {proc.returncode}) after steps {steps}; "
        f"stderr: {proc.stderr[-1000:]}"
    )
    assert "SURVIVED" in proc.stdout
    for step in steps:
        assert step["ok"] or step["llama"], step


@pytest.mark.parametrize("name", sorted(LOAD_ABORTS))
def test_files_llama_cpp_would_abort_on_are_refused(synth_dir, name):
    """E.g. a vocabulary with two ids for one text: llama-vocab.cpp asserts on it while loading."""
    proc, steps = _survive(synth_dir / f"{name}.gguf")
    assert proc.returncode == 0, (
        f"the interpreter died (return code {proc.returncode}) after steps {steps}; "
        f"stderr: {proc.stderr[-1000:]}"
    )
    assert steps and steps[0]["step"].startswith("load:")
    assert not steps[0]["ok"] and steps[0]["type"] == "ModelLoadError", steps[0]


def test_vocabulary_without_byte_tokens_tokenize_error(synth_dir):
    # An SPM vocabulary without <0xNN> byte-fallback tokens: llama.cpp throws
    # std::out_of_range from its byte lookup; that must surface as a TokenizeError.
    with llama.load_model(synth_dir / "no_byte_tokens.gguf") as model:
        assert model.tokenize("hi", add_special=False).tolist() == [3, 4, 5]   # all in the vocab
        with pytest.raises(Exception) as info:
            model.tokenize("hi there")
        assert isinstance(info.value, TokenizeError), f"{type(info.value).__name__}: {info.value}"
        assert model.tokenize("hi", add_special=False).tolist() == [3, 4, 5]


# -- context options -----------------------------------------------------------------------------------


def test_n_ctx_above_the_model_maximum(smol, usable):
    exc = _raises(ContextSizeError, smol.new_context, n_ctx=smol.n_ctx_train + 1,
                  match="context size exceeds model maximum")
    assert isinstance(exc, ValueError)
    assert str(smol.n_ctx_train) in str(exc)
    _raises(ContextSizeError, smol.new_context, n_ctx=10**6)
    usable()


def test_prompt_longer_than_the_context(ctx, smol, usable):
    prompt = "word " * 400
    assert len(smol.tokenize(prompt)) > ctx.n_ctx
    exc = _raises(ContextSizeError, ctx.generate, prompt, max_tokens=4, temperature=0.0)
    assert str(ctx.n_ctx) in str(exc)
    usable()


def test_generation_stops_when_the_context_is_full(ctx, smol, usable):
    prompt = "word " * 240                       # fits, leaves only a few positions
    n_prompt = len(smol.tokenize(prompt))
    assert n_prompt < ctx.n_ctx
    ctx.generate(prompt, max_tokens=1000, temperature=0.0)
    stats = ctx.last_stats
    assert stats.finish_reason in ("length", "stop")
    # The KV cache holds at most n_ctx tokens; the last sampled token needs no slot.
    assert stats.prompt_tokens + stats.completion_tokens <= ctx.n_ctx + 1
    if stats.finish_reason == "length":
        assert stats.prompt_tokens + stats.completion_tokens == ctx.n_ctx + 1
    usable()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kv_cache_type": "q3"}, "kv_cache_type"),
        ({"kv_cache_type": ""}, "kv_cache_type"),
        ({"flash_attn": "maybe"}, "flash_attn"),
        ({"pooling": "max"}, "pooling"),
        ({"n_ctx": -1}, "n_ctx"),
        ({"n_ctx": 2**40}, "n_ctx"),
        ({"n_batch": 0}, "n_batch"),
        ({"n_batch": -5}, "n_batch"),
        ({"n_ubatch": 0}, "n_ubatch"),
        ({"n_batch": 128, "n_ubatch": 256}, "n_ubatch"),
        ({"n_threads": 0}, "n_threads"),
        ({"n_threads": -1}, "n_threads"),
        ({"n_threads": 100_000}, "n_threads"),
        ({"n_threads_batch": 0}, "n_threads_batch"),
        ({"n_parallel": 0}, "n_parallel"),
        ({"n_parallel": 300}, "n_parallel"),
        ({"n_parallel": 64, "n_batch": 32}, "n_parallel"),
        ({"kv_cache_type": "q8_0", "flash_attn": "off"}, "flash"),
        ({"kv_cache_type": "q4_0", "flash_attn": False}, "flash"),
        ({"prefix_caching": "no"}, "prefix_caching"),
    ],
)
def test_bad_context_option_values(smol, usable, options, match):
    options = {"n_ctx": 256, "n_threads": 1, **options}
    exc = _raises(OptionError, smol.new_context, match=match, **options)
    assert isinstance(exc, ValueError)
    usable()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n_ctx": "512"}, "n_ctx"),
        ({"n_ctx": 512.0}, "n_ctx"),
        ({"n_ctx": True}, "n_ctx"),
        ({"n_batch": "512"}, "n_batch"),
        ({"n_threads": 1.5}, "n_threads"),
        ({"n_parallel": "2"}, "n_parallel"),
        ({"embeddings": "yes"}, "embeddings"),
        ({"embeddings": 1}, "embeddings"),
        ({"prefix_caching": 1}, "prefix_caching"),
        ({"prefix_caching": None}, "prefix_caching"),
        ({"kv_cache_type": None}, "kv_cache_type"),
        ({"kv_cache_type": 16}, "kv_cache_type"),
        ({"flash_attn": 2}, "flash_attn"),
        ({"flash_attn": 1}, "flash_attn"),
        ({"flash_attn": ["on"]}, "flash_attn"),
        ({"pooling": ["mean"]}, "pooling"),
    ],
)
def test_wrong_context_option_types(smol, usable, options, match):
    options = {"n_ctx": 256, "n_threads": 1, **options}
    _raises(TypeError, smol.new_context, match=match, **options)
    usable()


def test_unknown_context_option(smol, usable):
    _raises(TypeError, smol.new_context, n_ctx=256, n_gpu_layers=1)
    _raises(TypeError, smol.new_context, 256)      # keyword-only
    usable()


def test_numpy_integers_are_accepted(smol):
    with smol.new_context(n_ctx=np.int64(256), n_batch=np.int32(64), n_threads=np.int16(1)) as c:
        assert (c.n_ctx, c.n_batch, c.n_threads) == (256, 64, 1)


# -- tokens ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [-1, 49152, 10**10, 2**31, -(2**31) - 1, 2**64])
def test_token_id_out_of_range(smol, ctx, usable, token):
    _raises(TokenizeError, smol.token_to_piece, token, match="out of range")
    _raises(TokenizeError, ctx.token_to_piece, token, match="out of range")
    _raises(TokenizeError, smol.is_eog, token, match="out of range")
    if token < 2**63:
        _raises(TokenizeError, smol.detokenize, [1, token], match="out of range")
        _raises(TokenizeError, ctx.detokenize, np.array([token], dtype=np.int64))
    usable()


@pytest.mark.parametrize("token", [1.0, "5", None, True, b"\x01", [5]])
def test_token_of_the_wrong_type(smol, usable, token):
    _raises(TypeError, smol.token_to_piece, token)
    _raises(TypeError, smol.is_eog, token)
    usable()


@pytest.mark.parametrize(
    "tokens",
    [
        np.array([1.0, 2.0]),
        [1.5],
        [[1, 2], [3, 4]],
        "hello",
        b"hello",
        [True, False],
        [2**64],
        ["1"],
        None,
        [None],
        np.array([1 + 2j]),
    ],
    ids=["float array", "float list", "2-d", "str", "bytes", "bools", "2**64", "strs", "None",
         "[None]", "complex"],
)
def test_detokenize_bad_arrays(smol, usable, tokens):
    _raises(TypeError, smol.detokenize, tokens)
    usable()


def test_detokenize_unsigned_and_empty(smol):
    ids = smol.tokenize("Hello world", add_special=False)
    assert smol.detokenize(ids.astype(np.uint16)) == "Hello world"
    assert smol.detokenize(ids.astype(np.uint64)) == "Hello world"
    assert smol.detokenize([]) == ""
    assert smol.detokenize(np.array([], dtype=np.float64)) == ""
    _raises(TokenizeError, smol.detokenize, np.array([2**63], dtype=np.uint64))


@pytest.mark.parametrize("text", [None, 123, 1.5, ["a"], object()])
def test_tokenize_non_text(smol, ctx, usable, text):
    _raises(TypeError, smol.tokenize, text, match="text")
    _raises(TypeError, ctx.tokenize, text, match="text")
    usable()


def test_tokenize_invalid_utf8_bytes_does_not_crash(smol, usable):
    ids = smol.tokenize(b"\xff\xfe caf\xe9")
    assert ids.dtype == np.int32
    assert ids.size > 0
    usable()


def test_text_with_nul_characters(smol, ctx, usable):
    ids = smol.tokenize("a\0b")
    assert ids.size >= 2
    assert isinstance(ctx.generate("a\0b", max_tokens=2, temperature=0.0), str)
    usable()


# -- prompts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, 123, 1.5, b"bytes", ["a"], bytearray(b"x")])
def test_prompt_of_the_wrong_type(ctx, usable, prompt):
    _raises(TypeError, ctx.generate, prompt, max_tokens=2, temperature=0.0, match="prompt")
    usable()


def test_empty_prompt(ctx, usable):
    # SmolLM2 adds no BOS, so "" is no token at all.
    _raises(TokenizeError, ctx.generate, "", max_tokens=2, temperature=0.0, match="empty")
    usable()


# -- sampling values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "exc_type"),
    [
        ({"temperature": -1}, OptionError),
        ({"temperature": -1e-9}, OptionError),
        ({"temperature": math.nan}, OptionError),
        ({"temperature": math.inf}, OptionError),
        ({"temperature": "0"}, TypeError),
        ({"temperature": None}, TypeError),
        ({"top_p": 0}, OptionError),
        ({"top_p": 1.5}, OptionError),
        ({"top_p": -0.1}, OptionError),
        ({"top_p": math.nan}, OptionError),
        ({"min_p": 2}, OptionError),
        ({"min_p": -0.5}, OptionError),
        ({"repetition_penalty": 0}, OptionError),
        ({"repetition_penalty": -1.0}, OptionError),
        ({"repetition_penalty": math.inf}, OptionError),
        ({"repeat_last_n": -2}, OptionError),
        ({"max_tokens": 0}, OptionError),
        ({"max_tokens": -1}, OptionError),
        ({"max_tokens": 2**31}, OptionError),
        ({"max_tokens": 1.5}, TypeError),
        ({"max_tokens": None}, TypeError),
        ({"max_tokens": True}, TypeError),
        ({"seed": -1}, OptionError),
        ({"seed": 2**32}, OptionError),
        ({"seed": 1.0}, TypeError),
        ({"seed": "1"}, TypeError),
        ({"top_k": -1}, OptionError),
        ({"top_k": 2.0}, TypeError),
        ({"typical_p": 0}, OptionError),
        ({"typical_p": 1.01}, OptionError),
        ({"typical_p": math.nan}, OptionError),
        ({"presence_penalty": math.nan}, OptionError),
        ({"frequency_penalty": math.inf}, OptionError),
        ({"frequency_penalty": "1"}, TypeError),
        ({"ignore_eos": 1}, TypeError),
        ({"ignore_eos": "yes"}, TypeError),
        ({"stop": ""}, OptionError),
        ({"stop": ["ok", ""]}, OptionError),
        ({"stop": [b"bytes"]}, TypeError),
        ({"stop": 5}, TypeError),
    ],
)
def test_bad_sampling_values(ctx, usable, options, exc_type):
    args = {"max_tokens": 2, "temperature": 0.7, **options}
    before = ctx.last_stats
    exc = _raises(exc_type, ctx.generate, PROMPT, **args)
    assert next(iter(options)) in str(exc)
    assert ctx.last_stats is before          # refused before any C call: no generation ran
    usable()


def test_unknown_generate_keyword(ctx, usable):
    _raises(TypeError, ctx.generate, PROMPT, max_tokens=2, temprature=0.0)
    usable()


def test_sampling_edge_values_are_accepted(ctx, usable):
    for options in (
        {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
        {"temperature": 1e6, "seed": 0xFFFFFFFE},
        {"temperature": 0.5, "top_k": 1, "top_p": 1e-6, "min_p": 1.0, "seed": 0},
        {"temperature": 0.8, "repetition_penalty": 1e6, "repeat_last_n": -1, "seed": 1},
        {"temperature": 0.8, "repetition_penalty": 1.1, "repeat_last_n": 0, "seed": np.int64(3)},
        {"temperature": np.float32(0.7), "top_p": np.float64(0.9), "seed": 5},
    ):
        text = ctx.generate(PROMPT, max_tokens=3, **options)
        assert isinstance(text, str), options
    usable()


def test_seeded_sampling_is_reproducible(ctx, usable):
    a = ctx.generate(PROMPT, max_tokens=8, temperature=1.0, seed=1234)
    b = ctx.generate(PROMPT, max_tokens=8, temperature=1.0, seed=1234)
    assert a == b
    usable()


# -- the hierarchy --------------------------------------------------------------------------------------


def test_every_error_class_is_a_llama_error():
    for exc_type in (ModelNotFoundError, ModelLoadError, ContextError, ContextSizeError,
                     ClosedError, ContextBusyError, DecodeError, TokenizeError, OptionError,
                     llama.AllocationError, llama.TemplateError):
        assert issubclass(exc_type, LlamaError)
    assert issubclass(ModelNotFoundError, FileNotFoundError)
    assert issubclass(ModelLoadError, OSError)
    assert issubclass(ContextSizeError, ValueError)
    assert issubclass(ClosedError, ValueError)
    assert issubclass(OptionError, ValueError)
    assert issubclass(TokenizeError, ValueError)
    assert issubclass(llama.AllocationError, MemoryError)
    assert DecodeError("x", 3).code == 3


def test_error_messages_quote_llama_cpp(tmp_path, smol_bytes):
    # A failure inside llama.cpp appends what llama.cpp said.
    path = tmp_path / "half.gguf"
    path.write_bytes(smol_bytes[: len(smol_bytes) // 2])
    exc = _raises(ModelLoadError, llama.load_model, path)
    assert "llama.cpp said" in str(exc)
