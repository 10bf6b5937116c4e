"""model.tokenize_batch / count_tokens / detokenize_batch and TokenBatch, on real vocabularies."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import TokenBatch, TokenizeError

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return json.loads((DATA / "embedding_sentences.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"])
def vocab_model(request):
    model = llama.load_model(llama.models.model_path(request.param), vocab_only=True)
    yield model
    model.close()


def test_same_ids_as_tokenize_for_any_thread_count(vocab_model, sentences):
    texts = sentences * 3 + ["", " ", "\n\n", "a" * 5000]
    expected = [vocab_model.tokenize(t).tolist() for t in texts]
    for n_threads in (None, 1, 2, 3, 8):
        batch = vocab_model.tokenize_batch(texts, n_threads=n_threads)
        assert isinstance(batch, TokenBatch)
        assert batch.ids.dtype == np.int32 and batch.offsets.dtype == np.int64
        assert batch.ids.flags.c_contiguous
        assert len(batch) == len(texts) and batch.offsets[0] == 0 and batch.offsets[-1] == batch.n_tokens
        assert batch.to_list() == expected, n_threads
    for flags in ((False, False), (True, True), (False, True)):
        got = vocab_model.tokenize_batch(texts[:50], add_special=flags[0], parse_special=flags[1])
        assert got.to_list() == [vocab_model.tokenize(t, *flags).tolist() for t in texts[:50]]


def test_counts(vocab_model, sentences):
    counts = vocab_model.count_tokens(sentences, n_threads=2)
    assert counts.dtype == np.int32 and counts.shape == (len(sentences),)
    assert counts.tolist() == vocab_model.tokenize_batch(sentences).lengths.tolist()
    assert vocab_model.count_tokens(sentences[0]) == len(vocab_model.tokenize(sentences[0]))
    assert vocab_model.count_tokens(sentences[0].encode()) == counts[0]
    assert vocab_model.count_tokens([]).shape == (0,)


def test_round_trip_detokenize_batch(vocab_model, sentences):
    batch = vocab_model.tokenize_batch(sentences[:200], add_special=False)
    back = vocab_model.detokenize_batch(batch)
    assert back == [vocab_model.detokenize(ids) for ids in batch]
    assert vocab_model.detokenize_batch([list(ids) for ids in batch]) == back
    assert vocab_model.detokenize_batch(batch[5:9]) == back[5:9]
    assert vocab_model.detokenize_batch([]) == []


def test_inputs_of_every_kind(smol):
    texts = ["one", "two words", "thrée"]
    ref = smol.tokenize_batch(texts)
    assert smol.tokenize_batch(tuple(texts)) == ref
    assert smol.tokenize_batch(np.array(texts)) == ref
    assert smol.tokenize_batch(t for t in texts) == ref
    assert smol.tokenize_batch([t.encode() for t in texts]) == ref
    assert smol.tokenize_batch(["one", b"two words", "thr\u00e9e"]) == ref
    empty = smol.tokenize_batch([])
    assert len(empty) == 0 and empty.ids.shape == (0,) and empty.offsets.tolist() == [0]


def test_bad_inputs(smol):
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str or bytes, got int"):
        smol.tokenize_batch(["a", 3])
    with pytest.raises(TypeError, match="not a single text"):
        smol.tokenize_batch("just one")
    with pytest.raises(TypeError, match="sequence of str"):
        smol.tokenize_batch(42)
    with pytest.raises(TokenizeError, match=r"texts\[1\] is not valid UTF-8 \(byte 2"):
        smol.tokenize_batch(["ok", b"ab\xff\xfe"])
    with pytest.raises(TokenizeError, match="not valid text"):
        smol.tokenize_batch(["\ud800"])   # a lone surrogate has no UTF-8 form
    with pytest.raises(llama.OptionError, match="errors"):
        smol.tokenize_batch(["a"], errors="ignore")
    with pytest.raises(llama.OptionError):
        smol.tokenize_batch(["a"], n_threads=0)
    # errors="replace": invalid bytes become U+FFFD, as Python's decoder replaces them
    got = smol.tokenize_batch([b"ab\xff"], errors="replace")
    assert got[0].tolist() == smol.tokenize("ab\ufffd").tolist()
    # the model still works afterwards
    assert smol.tokenize_batch(["fine"]).n_tokens > 0


def test_detokenize_batch_checks_ids(smol):
    with pytest.raises(TokenizeError, match=r"sequences\[1\]: token id 99999999 at index 0 is out of range"):
        smol.detokenize_batch([[1, 2], [99999999]])
    with pytest.raises(TokenizeError, match="out of range"):
        smol.detokenize_batch(TokenBatch(np.array([1, -5], np.int32), np.array([0, 2])))
    with pytest.raises(TypeError):
        smol.detokenize_batch(5)
    with pytest.raises(TypeError):
        smol.detokenize_batch([["a"]])


def test_text_over_int32_is_refused_before_llama_cpp(smol):
    huge = b"a" * (2**31)   # 2 GiB: llama_tokenize takes the length as int32
    with pytest.raises(TokenizeError, match=r"texts\[0\] is too long \(2147483648 bytes"):
        smol.tokenize_batch([huge])
    del huge


def test_closed_model(smol_path):
    model = llama.load_model(smol_path, vocab_only=True)
    model.close()
    for call in (lambda: model.tokenize_batch(["a"]), lambda: model.count_tokens(["a"]),
                 lambda: model.detokenize_batch([[1]]), lambda: model.vocab, lambda: model.encode("a")):
        with pytest.raises(llama.ClosedError):
            call()


def test_batch_from_many_python_threads(smol, sentences):
    expected = smol.tokenize_batch(sentences)
    results: list[TokenBatch] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(smol.tokenize_batch(sentences, n_threads=2))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(r == expected for r in results)


def test_token_batch_views_and_slices():
    batch = TokenBatch(np.arange(10, dtype=np.int32), np.array([0, 3, 3, 7, 10]))
    assert len(batch) == 4 and batch.n_tokens == 10
    assert batch[0].tolist() == [0, 1, 2] and batch[1].tolist() == [] and batch[-1].tolist() == [7, 8, 9]
    assert np.shares_memory(batch[2], batch.ids)   # a view, not a copy
    assert batch.lengths.tolist() == [3, 0, 4, 3] and batch.lengths.dtype == np.int32
    sub = batch[1:3]
    assert isinstance(sub, TokenBatch) and sub.to_list() == [[], [3, 4, 5, 6]]
    assert batch[::2].to_list() == [[0, 1, 2], [3, 4, 5, 6]]
    assert batch.take([3, 0]).to_list() == [[7, 8, 9], [0, 1, 2]]
    assert [v.tolist() for v in batch] == batch.to_list()
    assert "4 texts, 10 tokens" in repr(batch)
    with pytest.raises(IndexError):
        batch[4]
    with pytest.raises(TypeError):
        batch["a"]
    with pytest.raises(ValueError):
        TokenBatch(np.arange(3, dtype=np.int32), np.array([0, 2]))
    with pytest.raises(ValueError):
        TokenBatch(np.arange(3, dtype=np.int32), np.array([0, 2, 1, 3]))


def test_to_arrow_shares_memory(smol, sentences):
    pa = pytest.importorskip("pyarrow")
    batch = smol.tokenize_batch(sentences[:100])
    arr = batch.to_arrow()
    assert isinstance(arr, pa.LargeListArray) and len(arr) == 100
    assert arr.to_pylist() == batch.to_list()
    values = arr.values.buffers()[1]
    assert values.address == batch.ids.ctypes.data   # no copy of the ids
    assert arr.offsets.buffers()[1].address == batch.offsets.ctypes.data


def test_to_pandas(smol, sentences):
    pytest.importorskip("pandas")
    batch = smol.tokenize_batch(sentences[:20])
    series = batch.to_pandas()
    assert len(series) == 20 and series.name == "ids"
    assert [s.tolist() for s in series] == batch.to_list()


def test_arrow_strings_are_read_from_their_buffers(smol, sentences):
    pa = pytest.importorskip("pyarrow")
    texts = [*sentences[:300], "", "é" * 10]
    expected = smol.tokenize_batch(texts)
    for arr in (pa.array(texts), pa.array(texts, pa.large_string()),
                pa.chunked_array([texts[:100], texts[100:250], [], texts[250:]])):
        assert smol.tokenize_batch(arr, n_threads=2) == expected
        assert smol.count_tokens(arr).tolist() == expected.lengths.tolist()
    sliced = pa.array(texts)[17:40]   # a slice starts at an offset into the buffers
    assert smol.tokenize_batch(sliced) == expected[17:40]
    assert len(smol.tokenize_batch(pa.array([], pa.string()))) == 0
    with pytest.raises(TypeError, match=r"texts\[2\] is null"):
        smol.tokenize_batch(pa.array(["a", "b", None]))
    with pytest.raises(TypeError, match="must be strings"):
        smol.tokenize_batch(pa.array([1, 2]))
    bad = pa.Array.from_buffers(pa.string(), 2, [None, pa.py_buffer(np.array([0, 1, 3], np.int32)),
                                                 pa.py_buffer(b"a\xff\xfe")])
    with pytest.raises(TokenizeError, match=r"texts\[1\] is not valid UTF-8"):
        smol.tokenize_batch(bad)
    assert smol.tokenize_batch(pa.array(["still fine"])).n_tokens > 0


def test_pad_to_a_rectangle(smol, sentences):
    batch = smol.tokenize_batch(sentences[:50])
    ids, mask = batch.pad(pad_id=-1)
    assert ids.dtype == np.int32 and ids.shape == (50, batch.lengths.max()) and mask.shape == ids.shape
    for i, row in enumerate(batch):
        assert ids[i, mask[i]].tolist() == row.tolist() and (ids[i, ~mask[i]] == -1).all()
        assert mask[i, : len(row)].all()
    left, lmask = batch.pad(side="left")
    for i, row in enumerate(batch):
        assert left[i, lmask[i]].tolist() == row.tolist() and lmask[i, left.shape[1] - len(row):].all()
    cut, cut_mask = batch.pad(8)
    assert cut_mask.sum() == np.minimum(batch.lengths, 8).sum()
    assert cut.shape == (50, 8) and all(cut[i, : min(8, n)].tolist() == batch[i][:8].tolist()
                                        for i, n in enumerate(batch.lengths))
    empty, emask = llama.TokenBatch(np.empty(0, np.int32), np.zeros(1, np.int64)).pad()
    assert empty.shape == (0, 0) and emask.shape == (0, 0)
    with pytest.raises(ValueError):
        batch.pad(side="middle")
    with pytest.raises(ValueError):
        batch.pad(-1)
