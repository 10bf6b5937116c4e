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


@pytest.mark.parametrize("path", VOCAB_FILES, ids=[_vocab_id(p) for p in VOCAB_FILES])
def test_tokenizer_vectors_batch(path: Path) -> None:
    """The same vectors through tokenize_batch, all inputs of a vocabulary in one call, 1 and 2 threads."""
    tests = read_tests(path)
    model = _vocab(path)
    texts = list(tests)
    for n_threads in (1, 2):
        batch = model.tokenize_batch(
            texts, add_special=ADD_SPECIAL, parse_special=PARSE_SPECIAL, n_threads=n_threads
        )
        wrong = [t for t, ids in zip(texts, batch) if ids.tolist() != tests[t]]
        assert not wrong, f"{path.name}: {len(wrong)} differ, n_threads={n_threads}; first {wrong[0]!r}"
    counts = model.count_tokens(texts, add_special=ADD_SPECIAL, parse_special=PARSE_SPECIAL)
    assert counts.tolist() == [len(tests[t]) for t in texts]


# Offsets: every vocabulary type llama.cpp has. The test vectors cover SPM, BPE and WPM; the UGM
# vocabulary (nomic-bert-moe, no .inp of its own) is given the inputs of the others.
UGM_FILE = MODELS_DIR / "ggml-vocab-nomic-bert-moe.gguf"
OFFSET_CASES = [(p, p) for p in VOCAB_FILES] + [(UGM_FILE, VOCAB_FILES[0])]


def _fold(data: bytes) -> str:
    from llama_cython.encoding import _fold as fold

    return fold(data.decode("utf-8", "replace"))


@pytest.mark.parametrize(
    ("path", "inputs"), OFFSET_CASES, ids=[_vocab_id(p) for p, _ in OFFSET_CASES]
)
def test_offsets_cover_what_each_token_stands_for(path: Path, inputs: Path) -> None:
    """For every token of every input, the text at its offsets is the text the token stands for.

    The rules (llama_cython/encoding.py): byte-exact for byte-level BPE and SPM (a leading space
    of the piece that is not in the text is the tokenizer's mark; "▁" stands for a space);
    after normalisation (NFKD, no accents, lower case) for WPM and UGM; tokens added by
    add_special are empty; the unknown token covers the text between its neighbours.
    """
    model = _vocab(path)
    vocab = model.vocab
    exact = vocab.type in ("bpe", "spm")
    problems: list[str] = []
    for raw in read_tests(inputs):
        text = raw.decode("utf-8")
        enc = model.encode(text, add_special=True)
        assert enc.ids.tolist() == model.tokenize(text, add_special=True).tolist()
        spans = enc.byte_offsets.tolist()
        assert all(0 <= a <= b <= len(raw) for a, b in spans)
        assert [a for a, _ in spans] == sorted(a for a, _ in spans), "starts must not go back"
        chars = enc.char_offsets.tolist()
        rows = zip(spans, chars, enc.pieces, enc.attrs.tolist(), enc.ids.tolist())
        for (b0, b1), (c0, c1), piece, attr, tok in rows:
            got = raw[b0:b1]
            assert text[c0:c1].encode().find(got) >= 0   # char spans cover the byte spans
            if tok == vocab.unk or attr & llama.TokenAttr.UNKNOWN:
                ok = True
            elif attr & llama.TokenAttr.CONTROL:
                ok = b0 == b1 or got == piece
            elif not piece.strip(b" "):
                ok = not got.strip()
            elif exact:
                marked = piece[1:] if piece[:1] == b" " else piece
                ok = got in (piece, marked, piece.replace("▁".encode(), b" "))
            else:
                fp, fg = _fold(piece), _fold(got)
                ok = fp == fg or (fp in fg and b1 - b0 <= 4)   # a token inside one expanded character
            if not ok:
                problems.append(f"{text[:40]!r}: token {tok} piece {piece!r} -> {got!r}")
    assert not problems, f"{path.name}: {len(problems)} tokens off; first: {problems[:3]}"
