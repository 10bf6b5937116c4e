"""Model: facts read from llama.cpp, metadata, vocab_only, load options, progress and logging.

Every test runs on the real SmolLM2 / Gemma 3 files. Contexts use ``n_threads=1`` and a small
``n_ctx`` so that the file stays fast even on a busy two-core machine.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import llama_cython as llama
from llama_cython.errors import (
    ContextError,
    LlamaError,
    ModelLoadError,
    OptionError,
)

PROMPT = "The capital of France is"
GREEDY = {"max_tokens": 8, "temperature": 0.0}
TEXTS = [
    "Hello world",
    "  leading spaces and\ttabs\n",
    "Ünïcödé — 日本語 🙂",
    "<|im_start|>user\nHi<|im_end|>",
    "",
    "x" * 300,
]


def _greedy(model, prompt: str = PROMPT) -> str:
    with model.new_context(n_ctx=256, n_threads=1) as ctx:
        return ctx.generate(prompt, **GREEDY)


@pytest.fixture(scope="module")
def smol_greedy(smol) -> str:
    """The shared SmolLM2 model's greedy continuation of PROMPT (the reference text)."""
    return _greedy(smol)


# -- facts --------------------------------------------------------------------------------------


def test_smol_properties(smol, smol_path):
    assert smol.n_vocab == 49152
    assert smol.n_ctx_train == 8192
    assert smol.architecture == "llama"
    for name in ("n_vocab", "n_ctx_train", "n_embd", "n_layer", "n_params", "size"):
        value = getattr(smol, name)
        assert type(value) is int, (name, type(value))
        assert value > 0, name
    assert smol.n_embd == 576
    assert smol.n_layer == 30
    assert 100_000_000 < smol.n_params < 200_000_000   # "135M"
    # The weights of a Q4_1 file: most of the file, never more than it.
    assert 0.5 * smol_path.stat().st_size < smol.size <= smol_path.stat().st_size
    assert isinstance(smol.description, str)
    assert "llama" in smol.description and "Q4_1" in smol.description
    assert smol.path == str(smol_path)
    assert smol.closed is False
    assert smol.vocab_only is False
    assert "closed" not in repr(smol)


def test_gemma_properties(gemma, gemma_path):
    assert gemma.architecture == "gemma3"
    assert gemma.n_vocab == 262144
    assert gemma.n_ctx_train == 32768
    assert gemma.n_embd == 640
    assert gemma.n_layer == 18
    assert gemma.n_swa > 0                  # sliding-window attention
    assert 200_000_000 < gemma.n_params < 350_000_000
    assert 0.5 * gemma_path.stat().st_size < gemma.size <= gemma_path.stat().st_size
    assert "gemma3" in gemma.description
    template = gemma.chat_template
    assert template is None or isinstance(template, str)
    assert gemma.metadata["general.architecture"] == "gemma3"


def test_metadata_is_a_dict_of_strings(smol):
    meta = smol.metadata
    assert isinstance(meta, dict)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == str(smol.n_layer)
    assert meta["llama.context_length"] == str(smol.n_ctx_train)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    # A copy: changing it does not change the model's.
    meta["general.architecture"] = "changed"
    meta["new.key"] = "x"
    assert smol.metadata["general.architecture"] == "llama"
    assert "new.key" not in smol.metadata


def test_chat_template(smol):
    template = smol.chat_template
    assert isinstance(template, str)
    assert "im_start" in template
    assert template == smol.metadata["tokenizer.chat_template"]


# -- vocab_only ------------------------------------------------------------------------------------


def test_vocab_only_tokenizes_like_the_full_model(smol, smol_path):
    with llama.load_model(smol_path, vocab_only=True) as vocab:
        assert vocab.vocab_only is True
        assert vocab.n_vocab == smol.n_vocab
        for text in TEXTS:
            for add_special in (True, False):
                for parse_special in (True, False):
                    got = vocab.tokenize(text, add_special=add_special, parse_special=parse_special)
                    want = smol.tokenize(text, add_special=add_special, parse_special=parse_special)
                    assert got.dtype == np.int32
                    np.testing.assert_array_equal(got, want)
            ids = smol.tokenize(text)
            assert vocab.detokenize(ids) == smol.detokenize(ids)
        for tok in (0, 1, 2, 100, smol.n_vocab - 1):
            assert vocab.token_to_piece(tok) == smol.token_to_piece(tok)
        with pytest.raises(ContextError, match="vocab_only"):
            vocab.new_context(n_ctx=256)
        # The refusal left the model usable.
        np.testing.assert_array_equal(vocab.tokenize("Hello"), smol.tokenize("Hello"))
    assert vocab.closed


# -- progress ----------------------------------------------------------------------------------------


def test_progress_is_called_with_increasing_floats_ending_at_one(smol_path, smol_greedy):
    values: list[float] = []
    with llama.load_model(smol_path, progress=values.append) as model:
        assert len(values) >= 2
        assert all(type(v) is float for v in values)
        assert all(0.0 <= v <= 1.0 for v in values)
        assert all(b >= a for a, b in itertools.pairwise(values)), "progress went backwards"
        assert values[-1] == 1.0
        assert _greedy(model) == smol_greedy


@pytest.mark.parametrize("stop_at", [0.0, 0.5])
def test_progress_returning_false_cancels_the_load(smol_path, smol, stop_at):
    calls: list[float] = []

    def progress(value: float) -> bool:
        calls.append(value)
        return value < stop_at

    with pytest.raises(ModelLoadError, match="cancelled"):
        llama.load_model(smol_path, progress=progress)
    assert calls, "the callback was never called"
    assert calls[-1] >= stop_at
    # Loading again (with a callback that says yes: None counts as yes) works.
    with llama.load_model(smol_path, progress=lambda v: None) as model:
        assert model.n_vocab == smol.n_vocab


class _Boom(Exception):
    pass


@pytest.mark.parametrize("exc_type", [_Boom, KeyboardInterrupt])
def test_progress_exception_is_re_raised(smol_path, smol, exc_type):
    seen: list[float] = []

    def progress(value: float) -> bool:
        seen.append(value)
        if value > 0.2:
            raise exc_type("stop loading")
        return True

    with pytest.raises(exc_type, match="stop loading"):
        llama.load_model(smol_path, progress=progress)
    assert seen and seen[-1] > 0.2
    assert all(v <= seen[-1] for v in seen)   # not called again after it raised
    with llama.load_model(smol_path) as model:
        assert model.n_vocab == smol.n_vocab


def test_progress_must_be_callable(smol_path):
    with pytest.raises(TypeError, match="progress"):
        llama.load_model(smol_path, progress=5)


# -- load options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"use_mmap": False},
        {"use_mlock": True},
        {"use_mmap": False, "use_mlock": True},
        {"check_tensors": True},
        {"n_gpu_layers": 0},
        {"tensor_split": [1.0]},
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_load_options_give_the_same_greedy_text(smol_path, smol, smol_greedy, options):
    with llama.load_model(smol_path, **options) as model:
        assert model.n_vocab == smol.n_vocab
        assert model.n_params == smol.n_params
        assert _greedy(model) == smol_greedy


def test_tensor_split_with_too_many_values(smol_path, smol):
    n = llama.max_devices()
    assert n >= 1
    with pytest.raises(OptionError, match="tensor_split"):
        llama.load_model(smol_path, tensor_split=[1.0] * (n + 1))
    assert smol.tokenize("still fine").size > 0


@pytest.mark.parametrize(
    "split", [[-1.0], [0.0], [0.0, 0.0], [float("nan")], [float("inf")], [1.0, -0.5]]
)
def test_tensor_split_bad_values(smol_path, split):
    with pytest.raises(OptionError, match="tensor_split"):
        llama.load_model(smol_path, tensor_split=split)


@pytest.mark.parametrize("split", ["abc", ["a", "b"], [object()]])
def test_tensor_split_non_numeric_is_a_clear_error(smol_path, split):
    # Not numbers at all: a TypeError or an OptionError naming the option, not numpy's
    # bare "could not convert string to float".
    with pytest.raises((TypeError, OptionError)) as info:
        llama.load_model(smol_path, tensor_split=split)
    assert isinstance(info.value, (TypeError, LlamaError))
    assert "tensor_split" in str(info.value)


@pytest.mark.parametrize(
    "options",
    [{"vocab_only": "no"}, {"use_mmap": "no"}, {"check_tensors": None}],
    ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_load_model_bool_options_are_strict(smol_path, options):
    # Like new_context(embeddings="yes"): a non-bool is a TypeError, not its truthiness
    # (vocab_only="no" must not load a vocabulary-only model).
    with pytest.raises(TypeError):
        llama.load_model(smol_path, **options).close()


@pytest.mark.parametrize(
    "options", [{"n_gpu_layers": 1.5}, {"n_gpu_layers": "1"}, {"main_gpu": 0.5}, {"main_gpu": None}],
    ids=lambda o: ",".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_load_model_int_options_are_strict(smol_path, options):
    with pytest.raises(TypeError):
        llama.load_model(smol_path, **options).close()


def test_bad_gpu_options(smol_path):
    with pytest.raises(OptionError, match="n_gpu_layers"):
        llama.load_model(smol_path, n_gpu_layers=-2)
    with pytest.raises(OptionError, match="main_gpu"):
        llama.load_model(smol_path, main_gpu=-1)


# -- logging and verbosity -------------------------------------------------------------------------


def test_verbose_true_echoes_llama_cpp_to_stderr(smol_path, capfd):
    capfd.readouterr()
    with llama.load_model(smol_path, verbose=True) as model:
        assert model.n_vocab == 49152
    out, err = capfd.readouterr()
    assert "llama_model_loader" in err
    assert "general.architecture" in err
    assert len(err.splitlines()) > 20
    assert "llama_model_loader" not in out


def test_verbose_false_writes_nothing(smol_path, capfd):
    capfd.readouterr()
    with llama.load_model(smol_path) as model, model.new_context(n_ctx=256, n_threads=1) as ctx:
        ctx.generate(PROMPT, max_tokens=2, temperature=0)
        model.tokenize("hello")
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


def test_a_fresh_interpreter_is_silent(smol_path):
    """Import, load, create a context, generate, close: not one byte on stdout or stderr."""
    code = textwrap.dedent(
        f"""
        import llama_cython as llama
        model = llama.load_model({str(smol_path)!r})
        with model.new_context(n_ctx=256, n_threads=1) as ctx:
            ctx.generate("Hi", max_tokens=2, temperature=0)
        model.close()
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def _llama_cpp_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llama_cython.llama_cpp"]


def test_log_goes_to_the_llama_cpp_logger_at_info(smol_path, caplog):
    caplog.set_level(logging.INFO, logger="llama_cython.llama_cpp")
    with llama.load_model(smol_path) as model:
        records = _llama_cpp_records(caplog)
        messages = [r.getMessage() for r in records]
        assert any("llama_model_loader" in m for m in messages)
        assert any("general.architecture" in m for m in messages)
        assert all(r.levelno >= logging.INFO for r in records)
        # One record per line, no trailing newlines.
        assert all("\n" not in m for m in messages)
        caplog.clear()
        with model.new_context(n_ctx=256, n_threads=1):
            pass
        messages = [r.getMessage() for r in _llama_cpp_records(caplog)]
        assert any("llama_context" in m for m in messages)
        assert any("llama_kv_cache" in m for m in messages)


def test_log_at_debug_has_more_lines(smol_path, caplog):
    caplog.set_level(logging.INFO, logger="llama_cython.llama_cpp")
    llama.load_model(smol_path).close()
    n_info = len(_llama_cpp_records(caplog))
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="llama_cython.llama_cpp")
    llama.load_model(smol_path).close()
    records = _llama_cpp_records(caplog)
    assert any(r.levelno == logging.DEBUG for r in records)
    assert len(records) > n_info > 0


def test_debug_lines_of_new_context_reach_the_logger(smol_path, smol, caplog):
    # The logger's level when the context is created decides, not its level at the last load.
    caplog.set_level(logging.INFO, logger="llama_cython.llama_cpp")
    llama.load_model(smol_path, vocab_only=True).close()
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="llama_cython.llama_cpp")
    with smol.new_context(n_ctx=256, n_threads=1):
        pass
    records = _llama_cpp_records(caplog)
    assert any(r.levelno == logging.INFO for r in records)
    assert any(r.levelno == logging.DEBUG for r in records), "no DEBUG line from new_context"


def test_log_level_warning_hides_info(smol_path, caplog):
    caplog.set_level(logging.WARNING, logger="llama_cython.llama_cpp")
    llama.load_model(smol_path).close()
    assert all(r.levelno >= logging.WARNING for r in _llama_cpp_records(caplog))


def test_model_cannot_be_constructed_directly():
    with pytest.raises(TypeError):
        llama.Model()
    with pytest.raises(TypeError):
        llama.Context()
