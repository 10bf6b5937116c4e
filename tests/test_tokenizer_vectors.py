"""llama.cpp's own tokenizer test vectors (tests/test-tokenizer-0.cpp), run through our API.

For every ``vendor/llama.cpp/models/ggml-vocab-<name>.gguf`` with ``.inp`` and ``.out`` files,
each input must tokenize to exactly the ids in the matching ``.out`` line. The parsing and the
flags follow test-tokenizer-0.cpp exactly:

- ``.inp`` is split on ``"\\n__ggml_vocab_test__\\n"`` (the file ends with that marker, so no
  empty trailing input is produced);
- ``.out`` is read line by line (``std::getline``), each line stripped (``string_strip``) and
  split on single spaces into ids; an empty line is an empty expectation;
- the pairs go into a ``std::map``, so a repeated input keeps the expectation of its last
  occurrence;
- tokenization is ``common_tokenize(ctx, text, add_special=false, parse_special=false)``.

test-tokenizer-0 prints ``common_detokenize`` of the result but does not check it, so no
round-trip assertion is made here either.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from fetch_llama_cpp import ensure_llama_cpp

import llama_cython as llama

SEPARATOR = b"\n__ggml_vocab_test__\n"
ADD_SPECIAL = False  # test-tokenizer-0.cpp: const bool add_special = false;
PARSE_SPECIAL = False  # common_tokenize(ctx, text, add_special, false)

LLAMA_CPP = ensure_llama_cpp()
MODELS_DIR = LLAMA_CPP / "models"


def _vocab_files() -> list[Path]:
    return sorted(
        p
        for p in MODELS_DIR.glob("ggml-vocab-*.gguf")
        if p.with_name(p.name + ".inp").is_file() and p.with_name(p.name + ".out").is_file()
    )


def _vocab_id(path: Path) -> str:
    return path.name[len("ggml-vocab-") : -len(".gguf")]


VOCAB_FILES = _vocab_files()


def _strip(line: bytes) -> bytes:
    """common.cpp's string_strip: std::isspace from both ends (C locale)."""
    return line.strip(b" \t\n\v\f\r")


def read_tests(path: Path) -> dict[bytes, list[int]]:
    """The same (input -> expected ids) map test-tokenizer-0.cpp's read_tests builds."""
    raw = path.with_name(path.name + ".inp").read_bytes()
    out = path.with_name(path.name + ".out").read_bytes()

    inputs: list[bytes] = []
    pos = 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt == -1:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)

    # std::getline: "a\nb\n" and "a\nb" both give two lines.
    lines = out.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()

    assert len(inputs) == len(lines), f"{path.name}: {len(inputs)} inputs but {len(lines)} output lines"
    tests: dict[bytes, list[int]] = {}
    for inp, line in zip(inputs, lines):
        stripped = _strip(line)
        tests[inp] = [int(t) for t in stripped.split(b" ")] if stripped else []
    return tests


_VOCABS: dict[Path, llama.Model] = {}


def _vocab(path: Path) -> llama.Model:
    model = _VOCABS.get(path)
    if model is None:
        model = _VOCABS[path] = llama.load_model(path, vocab_only=True)
    return model


@pytest.fixture(scope="module", autouse=True)
def _close_vocabs():
    yield
    for model in _VOCABS.values():
        model.close()
    _VOCABS.clear()


def _describe(model: llama.Model, ids: list[int]) -> str:
    return ", ".join(f"{t} {model.token_to_piece(t, special=True)!r}" for t in ids)


def test_vocab_files_found() -> None:
    """Every vocab llama.cpp registers for test-tokenizer-0 in tests/CMakeLists.txt is here."""
    cmake = (LLAMA_CPP / "tests" / "CMakeLists.txt").read_text(encoding="utf-8")
    registered = set(
        re.findall(r"llama_test\(test-tokenizer-0 .*?models/ggml-vocab-([\w.-]+)\.gguf\)", cmake)
    )
    assert registered, "no test-tokenizer-0 registrations found in tests/CMakeLists.txt"
    found = {_vocab_id(p) for p in VOCAB_FILES}
    assert registered <= found, f"registered but missing .inp/.out: {sorted(registered - found)}"


@pytest.mark.parametrize("path", VOCAB_FILES, ids=[_vocab_id(p) for p in VOCAB_FILES])
def test_tokenizer_vectors(path: Path) -> None:
    tests = read_tests(path)
    assert tests, f"{path.name}: no tests"
    model = _vocab(path)
    assert model.n_vocab > 0

    t0 = time.perf_counter()
    failures: list[str] = []
    for text, expected in tests.items():
        got = model.tokenize(text, add_special=ADD_SPECIAL, parse_special=PARSE_SPECIAL)
        assert isinstance(got, np.ndarray)
        assert got.dtype == np.int32 and got.ndim == 1
        if got.tolist() != expected:
            failures.append(
                f"input {text!r}\n  expected {expected}\n           [{_describe(model, expected)}]"
                f"\n  got      {got.tolist()}\n           [{_describe(model, got.tolist())}]"
            )
            continue
        # The same text given as str must give the same ids (inputs are UTF-8 text).
        try:
            as_str = text.decode("utf-8")
        except UnicodeDecodeError:
            continue
        got_str = model.tokenize(as_str, add_special=ADD_SPECIAL, parse_special=PARSE_SPECIAL)
        if got_str.tolist() != expected:
            failures.append(
                f"input {as_str!r} (as str)\n  expected {expected}\n  got      {got_str.tolist()}"
            )
    elapsed = time.perf_counter() - t0

    assert not failures, f"{path.name}: {len(failures)} of {len(tests)} inputs differ; first:\n{failures[0]}"
    assert elapsed < 5.0, f"{path.name}: tokenizing {len(tests)} inputs took {elapsed:.2f} s"
