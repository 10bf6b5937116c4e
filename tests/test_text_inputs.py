"""Every function that takes many texts takes them in every form a pipeline holds them: list,
tuple, numpy array of str, pandas Series (object, ``string``, ``string[pyarrow]``, Arrow dtype,
categorical), pyarrow Array / ChunkedArray (string, large_string, string_view, dictionary),
with the same results; embeddings also come out as an Arrow column on the same memory."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import llama_cython as llama

TEXTS = ["a cat sat on the mat", "stock prices fell", "", "héllo wörld ✓", "the sky is blue",
         "x " * 40]
# Packing other texts beside a text changes its vector by float rounding (tests/test_embeddings.py)
BATCH_ATOL = 1e-3
WITH_NULL = ["a cat", None, "a dog", "stock prices"]


def _forms(texts):
    """(name, object) for each input form of ``texts`` (None is a missing value)."""
    filled = ["" if t is None else t for t in texts]
    yield "list", list(texts)
    yield "tuple", tuple(texts)
    yield "numpy_str", np.array(filled)
    yield "numpy_object", np.array(texts, dtype=object)
    yield "series_object", pd.Series(texts, dtype=object, index=range(10, 10 + len(texts)))
    yield "series_string", pd.Series(texts, dtype="string")
    yield "series_pyarrow", pd.Series(texts, dtype="string[pyarrow]")
    yield "series_arrowdtype", pd.Series(texts, dtype=pd.ArrowDtype(pa.string()))
    yield "series_category", pd.Series(texts, dtype="category")
    yield "arrow_string", pa.array(texts, pa.string())
    yield "arrow_large", pa.array(texts, pa.large_string())
    yield "arrow_view", pa.array(texts, pa.string_view())
    yield "arrow_dictionary", pa.array(texts, pa.string()).dictionary_encode()
    yield "arrow_chunked", pa.chunked_array([texts[:2], texts[2:3], [], texts[3:]], pa.string())
    yield "arrow_sliced", pa.array(["zz", *texts, "zz"], pa.string()).slice(1, len(texts))


FORMS = [name for name, _ in _forms(TEXTS)]


def _form(name, texts):
    return dict(_forms(texts))[name]


@pytest.fixture(scope="module")
def minilm():
    model = llama.load_model(llama.models.model_path("all-minilm-l6-v2"))
    yield model


@pytest.fixture(scope="module")
def ectx(minilm):
    with minilm.new_context(embeddings=True) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def want_vectors(ectx):
    return ectx.get_embeddings_batch(TEXTS)


@pytest.mark.parametrize("form", FORMS)
def test_embeddings_from_every_form(ectx, want_vectors, form):
    got = ectx.get_embeddings_batch(_form(form, TEXTS))
    np.testing.assert_array_equal(got, want_vectors)
    blocks = list(ectx.iter_embeddings(_form(form, TEXTS), chunk_size=4))
    assert [b.shape[0] for b in blocks] == [4, 2]
    np.testing.assert_allclose(np.concatenate(blocks), want_vectors, rtol=0, atol=BATCH_ATOL)


@pytest.mark.parametrize("form", FORMS)
def test_tokenize_and_count_from_every_form(smol, form):
    want = smol.tokenize_batch(TEXTS)
    got = smol.tokenize_batch(_form(form, TEXTS))
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.offsets, want.offsets)
    np.testing.assert_array_equal(smol.count_tokens(_form(form, TEXTS)), want.lengths)


@pytest.mark.parametrize("form", [f for f in FORMS if f != "numpy_str"])
def test_nulls_policy_in_every_form(ectx, form):
    texts = _form(form, WITH_NULL)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        ectx.get_embeddings_batch(texts)
    empty = ectx.get_embeddings_batch(texts, nulls="empty")
    np.testing.assert_array_equal(empty, ectx.get_embeddings_batch(["a cat", "", "a dog", "stock prices"]))
    skip = ectx.get_embeddings_batch(texts, nulls="skip")
    np.testing.assert_array_equal(skip, ectx.get_embeddings_batch(["a cat", "a dog", "stock prices"]))


@pytest.mark.parametrize("form", ["list", "series_pyarrow", "arrow_string", "numpy_str"])
def test_generate_batch_prompts_from_every_form(smol, form):
    prompts = ["The capital of France is", "1, 2, 3,"]
    with smol.new_context(n_ctx=512, n_parallel=2) as ctx:
        want = ctx.generate_batch(prompts, max_tokens=6, temperature=0)
        assert ctx.generate_batch(_form(form, prompts), max_tokens=6, temperature=0) == want


def test_embeddings_as_arrow_share_memory(ectx, want_vectors):
    col = ectx.get_embeddings_batch(pa.array(TEXTS), format="arrow")
    assert isinstance(col, pa.FixedSizeListArray)
    assert col.type == pa.list_(pa.float32(), want_vectors.shape[1])
    np.testing.assert_array_equal(col.values.to_numpy().reshape(want_vectors.shape), want_vectors)
    out = np.empty_like(want_vectors)
    col = ectx.get_embeddings_batch(TEXTS, out=out, format="arrow")
    assert col.values.buffers()[1].address == out.ctypes.data      # no copy
    table = pa.table({"text": TEXTS, "embedding": col})
    assert table.num_rows == len(TEXTS)
    chunks = list(ectx.iter_embeddings(TEXTS, chunk_size=4, format="arrow"))
    assert [len(c) for c in chunks] == [4, 2]
    with pytest.raises(llama.OptionError, match="format"):
        ectx.get_embeddings_batch(TEXTS, format="torch")


def test_iter_embeddings_progress(ectx, want_vectors):
    seen = []
    blocks = list(ectx.iter_embeddings(iter(TEXTS), chunk_size=4, progress=seen.append))
    assert sum(seen) == len(TEXTS)
    np.testing.assert_allclose(np.concatenate(blocks), want_vectors, rtol=0, atol=BATCH_ATOL)
    pytest.importorskip("tqdm")
    blocks = list(ectx.iter_embeddings(TEXTS, chunk_size=4, progress=True))
    assert sum(b.shape[0] for b in blocks) == len(TEXTS)
    with pytest.raises(TypeError, match="progress"):
        ectx.iter_embeddings(TEXTS, progress="yes")


def test_non_text_arrow_arrays_are_refused(ectx, smol):
    with pytest.raises(TypeError, match="strings"):
        ectx.get_embeddings_batch(pa.array([1, 2, 3]))
    with pytest.raises(TypeError, match="strings"):
        smol.tokenize_batch(pa.array([b"ab"], pa.binary()))
    with pytest.raises(TypeError, match="one-dimensional"):
        ectx.get_embeddings_batch(pa.table({"text": TEXTS}))


def test_embed_and_encode_like_sentence_transformers(ectx, want_vectors):
    np.testing.assert_array_equal(ectx.embed(TEXTS), want_vectors)
    np.testing.assert_allclose(ectx.embed(TEXTS[0]), want_vectors[0], rtol=0, atol=BATCH_ATOL)
    assert ectx.embed(TEXTS[0]).shape == (want_vectors.shape[1],)
    np.testing.assert_array_equal(ectx.embed(TEXTS, batch_size=2, show_progress_bar=False), want_vectors)
    # encode: sentence-transformers' names and defaults (not normalised unless asked)
    raw = ectx.encode(TEXTS)
    assert not np.allclose(np.linalg.norm(raw[:2], axis=1), 1.0)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True).clip(1e-12),
                               want_vectors, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ectx.encode(TEXTS, normalize_embeddings=True), want_vectors)
    np.testing.assert_array_equal(ectx.encode(TEXTS[1], normalize_embeddings=True), ectx.embed(TEXTS[1]))
    assert isinstance(ectx.encode(TEXTS, convert_to_numpy=False), list)
    np.testing.assert_array_equal(ectx.encode(["sat on the mat", "fell"], prompt="a cat ",
                                              normalize_embeddings=True),
                                  ectx.get_embeddings_batch(["a cat sat on the mat", "a cat fell"]))
    for bad in ({"convert_to_tensor": True}, {"precision": "int8"}, {"device": "cuda"},
                {"output_value": "token_ids"}):
        with pytest.raises(llama.OptionError):
            ectx.encode(TEXTS, **bad)


def test_hand_built_arrow_arrays_with_bad_offsets_are_refused(ectx, smol):
    data = pa.py_buffer(b"abcdef")
    bad_offsets = [np.array([0, 3, 100], dtype=np.int32), np.array([0, 4, 2], dtype=np.int32),
                   np.array([-5, 2, 3], dtype=np.int32)]
    for offsets in bad_offsets:
        try:
            arr = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(offsets.tobytes()), data])
        except pa.ArrowInvalid:
            continue        # pyarrow's own checks caught this one
        with pytest.raises(ValueError, match="invalid Arrow string array"):
            smol.count_tokens(arr)
        with pytest.raises(ValueError, match="invalid Arrow string array"):
            ectx.get_embeddings_batch(arr)
