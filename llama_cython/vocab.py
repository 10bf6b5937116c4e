"""Vocab: a model's vocabulary as numpy arrays, special token ids and lookups.

>>> import llama_cython as llama                                   # doctest: +SKIP
>>> vocab = llama.load_model(path, vocab_only=True).vocab          # doctest: +SKIP
>>> vocab.type, len(vocab), vocab.eos                               # doctest: +SKIP
('bpe', 49152, 2)
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_cython._optional import require


def _core() -> Any:
    """The compiled core, which imports this module while it loads (so not at import time)."""
    import llama_cython._core as core

    return core

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["TokenAttr", "Vocab"]

SPECIAL_NAMES = (
    "bos", "eos", "unk", "eot", "sep", "nl", "pad", "mask",
    "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep",
)  # fmt: skip


class TokenAttr(enum.IntFlag):
    """Attribute bits of a token (llama.h ``llama_token_attr``)."""

    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5
    NORMALIZED = 1 << 6
    LSTRIP = 1 << 7
    RSTRIP = 1 << 8
    SINGLE_WORD = 1 << 9


def _kind(attr: int) -> str:
    """The one word that best names a token's kind, for tables."""
    for flag, name in (
        (TokenAttr.CONTROL, "control"),
        (TokenAttr.UNKNOWN, "unknown"),
        (TokenAttr.BYTE, "byte"),
        (TokenAttr.USER_DEFINED, "user_defined"),
        (TokenAttr.UNUSED, "unused"),
        (TokenAttr.NORMAL, "normal"),
    ):
        if attr & flag:
            return name
    return "undefined"


def _split(flat: bytes, offsets: npt.NDArray[np.int64], decode: bool) -> npt.NDArray[np.object_]:
    out = np.empty(offsets.shape[0] - 1, dtype=object)
    bounds = offsets.tolist()
    parts = [flat[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    out[:] = [p.decode("utf-8", "replace") for p in parts] if decode else parts
    return out


class Vocab:
    """The vocabulary of a :class:`Model` (``model.vocab``).

    Special ids are ``None`` when the vocabulary has no such token. The whole-vocabulary
    arrays (``tokens``, ``pieces``, ``scores``, ``attrs``) are built in one pass in C on first
    use and kept by the model.

    ``tokens`` are the strings as the vocabulary stores them (``"Ġworld"``, ``"▁world"``,
    ``"<0x0A>"``); ``pieces`` are the bytes each token stands for in text (``b" world"``,
    ``b"\\n"``), what :meth:`Model.token_to_piece` returns.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._info: dict[str, Any] = _core().vocab_info(model)
        self._tokens: npt.NDArray[np.object_] | None = None
        self._pieces: npt.NDArray[np.object_] | None = None
        self._ids: dict[str, int] | None = None

    def __repr__(self) -> str:
        return f"<Vocab type={self.type!r} size={len(self)}>"

    def __len__(self) -> int:
        return int(self._info["size"])

    @property
    def type(self) -> str:
        """Tokenizer family: 'spm', 'bpe', 'wpm', 'ugm', 'rwkv', 'plamo2' or 'none'."""
        return str(self._info["type"])

    @property
    def size(self) -> int:
        """Number of tokens (same as ``len(vocab)`` and ``model.n_vocab``)."""
        return len(self)

    def _special(self, name: str) -> int | None:
        value = self._info.get(name)
        return None if value is None else int(value)

    @property
    def bos(self) -> int | None:
        """Beginning-of-sequence id, or None."""
        return self._special("bos")

    @property
    def eos(self) -> int | None:
        """End-of-sequence id, or None."""
        return self._special("eos")

    @property
    def unk(self) -> int | None:
        """Unknown-token id, or None."""
        return self._special("unk")

    @property
    def eot(self) -> int | None:
        """End-of-turn id, or None."""
        return self._special("eot")

    @property
    def sep(self) -> int | None:
        """Separator id (BERT's [SEP]), or None."""
        return self._special("sep")

    @property
    def nl(self) -> int | None:
        """Newline id, or None."""
        return self._special("nl")

    @property
    def pad(self) -> int | None:
        """Padding id, or None."""
        return self._special("pad")

    @property
    def mask(self) -> int | None:
        """Mask id (BERT's [MASK]), or None."""
        return self._special("mask")

    @property
    def fim_pre(self) -> int | None:
        """Fill-in-the-middle prefix id, or None."""
        return self._special("fim_pre")

    @property
    def fim_suf(self) -> int | None:
        """Fill-in-the-middle suffix id, or None."""
        return self._special("fim_suf")

    @property
    def fim_mid(self) -> int | None:
        """Fill-in-the-middle middle id, or None."""
        return self._special("fim_mid")

    @property
    def fim_pad(self) -> int | None:
        """Fill-in-the-middle padding id, or None."""
        return self._special("fim_pad")

    @property
    def fim_rep(self) -> int | None:
        """Fill-in-the-middle repository id, or None."""
        return self._special("fim_rep")

    @property
    def fim_sep(self) -> int | None:
        """Fill-in-the-middle file separator id, or None."""
        return self._special("fim_sep")


    @property
    def add_bos(self) -> bool:
        """Whether ``tokenize(..., add_special=True)`` puts BOS first."""
        return bool(self._info.get("add_bos", False))

    @property
    def add_eos(self) -> bool:
        """Whether ``tokenize(..., add_special=True)`` puts EOS last."""
        return bool(self._info.get("add_eos", False))

    @property
    def add_sep(self) -> bool:
        """Whether ``tokenize(..., add_special=True)`` puts SEP last (BERT-like models)."""
        return bool(self._info.get("add_sep", False))

    @property
    def special_ids(self) -> dict[str, int]:
        """Every special id the vocabulary defines, by name (``{"bos": 1, "eos": 2, ...}``)."""
        return {name: int(self._info[name]) for name in SPECIAL_NAMES if self._info.get(name) is not None}

    # -- whole-vocabulary arrays ------------------------------------------------------------

    @property
    def tokens(self) -> npt.NDArray[np.object_]:
        """Every token's stored string (``str``), by id."""
        if self._tokens is None:
            flat, offsets, _, _ = _core().vocab_table(self._model)
            self._tokens = _split(flat, offsets, decode=True)
        return self._tokens

    @property
    def pieces(self) -> npt.NDArray[np.object_]:
        """Every token's piece (``bytes``: what it stands for in text), by id."""
        if self._pieces is None:
            flat, offsets = _core().vocab_pieces(self._model)
            self._pieces = _split(flat, offsets, decode=False)
        return self._pieces

    @property
    def scores(self) -> npt.NDArray[np.float32]:
        """Every token's score (``float32``; SPM/UGM log-probabilities, BPE merge ranks)."""
        return np.asarray(_core().vocab_table(self._model)[2])

    @property
    def attrs(self) -> npt.NDArray[np.uint32]:
        """Every token's attribute bits (``uint32``; see :class:`TokenAttr`)."""
        return np.asarray(_core().vocab_table(self._model)[3])

    # -- lookups ----------------------------------------------------------------------------

    def token_to_id(self, token: str) -> int:
        """The id of a stored token string (``"Ġworld"``); KeyError if there is none."""
        if self._ids is None:
            self._ids = {t: i for i, t in enumerate(self.tokens.tolist())}
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a token of this vocabulary") from None

    def id_to_token(self, token_id: int) -> str:
        """The stored string of a token id."""
        return str(self.tokens[self._check_id(token_id)])

    def id_to_piece(self, token_id: int) -> bytes:
        """The bytes a token id stands for in text."""
        return bytes(self.pieces[self._check_id(token_id)])

    def __contains__(self, token: object) -> bool:
        if not isinstance(token, str):
            return False
        try:
            self.token_to_id(token)
        except KeyError:
            return False
        return True

    def _check_id(self, token_id: int) -> int:
        if isinstance(token_id, bool) or not isinstance(token_id, (int, np.integer)):
            raise TypeError(f"token id must be an int, got {type(token_id).__name__}")
        if not 0 <= token_id < len(self):
            from llama_cython.errors import TokenizeError

            raise TokenizeError(f"token id {token_id} is out of range [0, {len(self)})")
        return int(token_id)

    def to_pandas(self) -> Any:
        """One row per token: id, token, piece, score, kind, attrs. Needs pandas."""
        pd = require("pandas", "Vocab.to_pandas()")
        attrs = self.attrs
        kinds = {int(a): _kind(int(a)) for a in np.unique(attrs)}
        return pd.DataFrame(
            {
                "token": self.tokens,
                "piece": self.pieces,
                "score": self.scores,
                "kind": pd.Categorical([kinds[int(a)] for a in attrs.tolist()]),
                "attrs": attrs,
            },
            index=pd.RangeIndex(len(self), name="id"),
        )
