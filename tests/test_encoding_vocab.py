"""model.encode -> Encoding (offsets, mask, HTML, pandas) and model.vocab -> Vocab, on real models."""

from __future__ import annotations

import time

import numpy as np
import pytest

import llama_cython as llama
from llama_cython import Encoding, TokenAttr, TokenizeError, Vocab

TEXT = "Héllo wörld, naïve café 日本語 👍🏽\n  spaced\tout"


@pytest.fixture(scope="module", params=["smollm2-135m-instruct", "gemma-3-270m", "all-minilm-l6-v2"])
def vmodel(request):
    model = llama.load_model(llama.models.model_path(request.param), vocab_only=True)
    yield model
    model.close()


def test_encoding_fields(vmodel):
    enc = vmodel.encode(TEXT)
    assert isinstance(enc, Encoding) and enc.text == TEXT
    n = len(enc)
    assert enc.ids.tolist() == vmodel.tokenize(TEXT).tolist()
    assert enc.byte_offsets.shape == (n, 2) and enc.char_offsets.shape == (n, 2)
    assert enc.byte_offsets.dtype == np.int64 and enc.attrs.dtype == np.uint32
    assert list(enc.pieces) == [vmodel.token_to_piece(t) for t in enc.ids.tolist()]
    assert enc.tokens == [vmodel.vocab.id_to_token(t) for t in enc.ids.tolist()]
    # special tokens (BOS/CLS/SEP added by add_special) are empty spans, and the only ones masked
    plain = vmodel.tokenize(TEXT, add_special=False).tolist()
    added = np.array([t not in plain for t in enc.ids.tolist()])
    assert (enc.special_mask == ((enc.attrs & TokenAttr.CONTROL) != 0)).all()
    assert enc.special_mask[added].all()
    assert all(a == b for a, b in enc.byte_offsets[added].tolist())
    # every character of the text that is not space is covered by some token
    covered = np.zeros(len(TEXT), bool)
    for a, b in enc.char_offsets.tolist():
        covered[a:b] = True
    assert all(covered[i] or TEXT[i].isspace() for i in range(len(TEXT)))


def test_offsets_per_vocabulary_type():
    smol = llama.load_model(llama.models.model_path("smollm2-135m-instruct"), vocab_only=True)
    minilm = llama.load_model(llama.models.model_path("all-minilm-l6-v2"), vocab_only=True)
    gemma = llama.load_model(llama.models.model_path("gemma-3-270m"), vocab_only=True)
    # byte-level BPE: pieces are the text's bytes; an emoji cut into several tokens shares its character
    enc = smol.encode("Hi 👍")
    assert b"".join(enc.pieces) == "Hi 👍".encode()
    assert enc.texts[0] == "Hi"
    assert all(t.endswith("👍") for t in enc.texts[1:])
    # SPM (Gemma): BOS empty at 0, spaces belong to the following token
    enc = gemma.encode("Hello world")
    assert enc.texts == ["", "Hello", " world"] and enc.char_offsets[0].tolist() == [0, 0]
    # WPM (MiniLM): lower-cased and accent-stripped pieces map back to the original spelling
    enc = minilm.encode("Héllo, WÖRLD!")
    assert [t for t in enc.texts if t] == ["Héllo", ",", "WÖRLD", "!"]
    assert enc.char_offsets[-1].tolist() == [13, 13]   # [SEP] at the end
    # WPM unknown token: covers the word it replaced
    enc = minilm.encode("a 🦙 b")
    assert enc.texts[enc.ids.tolist().index(minilm.vocab.unk)] == "🦙"
    # parse_special: a chat marker written in the text is one special token covering it
    enc = smol.encode("<|im_start|>user", parse_special=True)
    assert enc.texts[0] == "<|im_start|>" and enc.special_mask[0]
    for m in (smol, minilm, gemma):
        m.close()


def test_encoding_views(smol):
    enc = smol.encode("a <b> & c")
    html = enc._repr_html_()
    assert "&lt;" in html and "&amp;" in html and "<b>" not in html.replace("<b>", "", 0)  # escaped
    for tok in enc.ids.tolist():
        assert f">{tok}</sub>" in html
    assert "tokens" in repr(enc) or "Encoding" in repr(enc)
    pd = pytest.importorskip("pandas")
    df = enc.to_pandas()
    assert isinstance(df, pd.DataFrame) and len(df) == len(enc)
    assert list(df.columns) == ["id", "token", "piece", "text", "byte_start", "byte_end", "char_start",
                                "char_end", "special", "kind"]
    assert "".join(df["text"]) == "a <b> & c"


def test_encode_bad_input(smol):
    with pytest.raises(TypeError):
        smol.encode(["a"])
    with pytest.raises(TokenizeError, match="not valid UTF-8"):
        smol.encode(b"\xff")
    assert smol.encode(b"ok").text == "ok"
    empty = smol.encode("")
    assert len(empty) == 0 and empty.byte_offsets.shape == (0, 2)
    assert empty._repr_html_()


def test_vocab(vmodel):
    vocab = vmodel.vocab
    assert isinstance(vocab, Vocab) and len(vocab) == vocab.size == vmodel.n_vocab
    assert vocab.type in ("bpe", "spm", "wpm")
    n = len(vocab)
    assert vocab.tokens.shape == (n,) and vocab.pieces.shape == (n,)
    assert vocab.scores.dtype == np.float32 and vocab.scores.shape == (n,)
    assert vocab.attrs.dtype == np.uint32 and vocab.attrs.shape == (n,)
    rng = np.random.default_rng(0)
    for i in rng.integers(0, n, 200).tolist():
        assert vocab.pieces[i] == vmodel.token_to_piece(i)
        assert vocab.id_to_piece(i) == vocab.pieces[i]
        tok = vocab.id_to_token(i)
        assert vocab.tokens[vocab.token_to_id(tok)] == tok and tok in vocab
    for name, tid in vocab.special_ids.items():
        assert 0 <= tid < n and getattr(vocab, name) == tid
    assert vocab.eos is not None and vmodel.is_eog(vocab.eos)
    control = (vocab.attrs & TokenAttr.CONTROL) != 0
    assert control[vocab.eos] or vocab.type == "wpm"
    with pytest.raises(KeyError):
        vocab.token_to_id("this is surely not a token \u2603\u2603")
    with pytest.raises(TokenizeError):
        vocab.id_to_token(n)
    with pytest.raises(TypeError):
        vocab.id_to_piece("1")
    assert 5 not in vocab


def test_vocab_known_values():
    smol = llama.load_model(llama.models.model_path("smollm2-135m-instruct"), vocab_only=True)
    v = smol.vocab
    assert (v.type, len(v), v.bos, v.eos, v.add_bos) == ("bpe", 49152, 1, 2, False)
    assert v.tokens[1] == "<|im_start|>" and v.token_to_id("Ġworld") == smol.tokenize(" world", False)[0]
    minilm = llama.load_model(llama.models.model_path("all-minilm-l6-v2"), vocab_only=True)
    v = minilm.vocab
    assert (v.type, len(v), v.unk, v.sep, v.mask) == ("wpm", 30522, 100, 102, 103)
    assert v.tokens[100] == "[UNK]"
    for m in (smol, minilm):
        m.close()


def test_vocab_table_is_fast_and_pandas():
    gemma = llama.load_model(llama.models.model_path("gemma-3-270m"), vocab_only=True)
    t0 = time.perf_counter()
    v = gemma.vocab
    assert len(v.tokens) == 262144 and len(v.scores) == 262144
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0, elapsed   # one pass in C (about 0.1 s here), not a Python call per token
    assert v.eot == 106 and v.type == "spm" and v.add_bos
    pytest.importorskip("pandas")
    df = v.to_pandas()
    assert len(df) == 262144 and list(df.columns) == ["token", "piece", "score", "kind", "attrs"]
    assert df.index.name == "id" and df.loc[106, "kind"] == "control"
    assert (df["kind"] == "byte").sum() == 256
    gemma.close()
