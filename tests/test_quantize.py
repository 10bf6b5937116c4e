"""quantize_model's per-tensor types: what llama.cpp's --token-embedding-type, --output-tensor-type
and --tensor-type do, checked by reading the written file with the gguf package."""

from __future__ import annotations

import pytest

import llama_cython as llama

gguf = pytest.importorskip("gguf")


def _types(path):
    reader = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in reader.tensors}


@pytest.fixture(scope="module")
def mini_f32():
    return llama.models.model_path("all-minilm-l6-v2-f32")


def test_tensor_types_override_the_default(tmp_path, mini_f32):
    dst = tmp_path / "mixed.gguf"
    llama.quantize_model(mini_f32, dst, "q8_0", n_threads=1, token_embedding_type="f16",
                         tensor_types={r"attn_v": "f16", r"blk\.0\.ffn_up": "q4_0"})
    types = _types(dst)
    assert types["token_embd.weight"] == "F16"
    assert types["blk.3.attn_v.weight"] == "F16"
    assert types["blk.0.ffn_up.weight"] == "Q4_0"
    assert types["blk.1.ffn_up.weight"] == "Q8_0"
    assert types["blk.2.attn_q.weight"] == "Q8_0"
    with llama.load_model(dst) as m, m.new_context(embeddings=True, n_threads=1) as ctx:
        assert ctx.get_embeddings_batch(["a cat"]).shape == (1, m.n_embd)
    # pairs work as well as a mapping; the first matching pattern wins
    llama.quantize_model(mini_f32, dst, "q8_0", n_threads=1,
                         tensor_types=[(r"attn_q", "f16"), (r"attn_.*", "q4_0")])
    types = _types(dst)
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_k.weight"] == "Q4_0"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"tensor_types": {"(": "f16"}}, llama.OptionError, "regular expression"),
    ({"tensor_types": {"attn": "q9_9"}}, llama.OptionError, "unknown tensor type"),
    ({"tensor_types": {"": "f16"}}, llama.OptionError, "non-empty"),
    ({"tensor_types": {"x" * 600: "f16"}}, llama.OptionError, "at most 512"),
    ({"tensor_types": {"a\0b": "f16"}}, llama.OptionError, "pattern"),
    ({"tensor_types": [("attn",)]}, TypeError, "pairs"),
    ({"tensor_types": 5}, TypeError, "mapping"),
    ({"tensor_types": {1: "f16"}}, llama.OptionError, "pattern"),
    ({"token_embedding_type": "int8"}, llama.OptionError, "unknown tensor type"),
    ({"output_tensor_type": 8}, TypeError, "str"),
])
def test_bad_tensor_types_are_refused_before_converting(tmp_path, mini_f32, kwargs, error, match):
    dst = tmp_path / "x.gguf"
    with pytest.raises(error, match=match):
        llama.quantize_model(mini_f32, dst, "q8_0", n_threads=1, **kwargs)
    assert not dst.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"token_embedding_type": "q4_k"}, "multiple of 256"),     # 384-wide rows: llama.cpp would overflow
    ({"output_tensor_type": "q6_k"}, "multiple of 256"),
    ({"tensor_types": {"attn": "q8_0"}, "ftype": "f16"}, "quantized type"),
])
def test_types_llama_cpp_cannot_apply_are_refused(tmp_path, mini_f32, kwargs, match):
    kwargs = dict(kwargs)
    ftype = kwargs.pop("ftype", "q8_0")
    with pytest.raises(llama.OptionError, match=match):
        llama.quantize_model(mini_f32, tmp_path / "x.gguf", ftype, n_threads=1, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_pattern_std_regex_rejects_fails_cleanly(tmp_path, mini_f32):
    """Python's re accepts (?P<name>...), C++ std::regex (ECMAScript) does not: the conversion
    fails with an exception, in a child process so that an abort would show."""
    import subprocess
    import sys

    code = (f"import llama_cython as llama\n"
            f"try:\n"
            f"    llama.quantize_model({str(mini_f32)!r}, {str(tmp_path / 'x.gguf')!r}, 'q8_0',\n"
            f"                         n_threads=1, tensor_types={{'(?P<n>attn)': 'f16'}})\n"
            f"except llama.LlamaError as exc:\n"
            f"    print('refused', type(exc).__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused")
    assert not (tmp_path / "x.gguf").exists()
