"""Encoding: one text's tokens with where each came from in the text.

llama.cpp returns ids only. The offsets are found by walking the tokens' pieces (the bytes each
token stands for) along the text:

1. A piece that is the text's next bytes covers them exactly (byte-level BPE, SPM with its byte
   fallback: a token may cover part of a UTF-8 character, then several tokens share it).
2. Marker rules: a piece's leading space that is not in the text is the tokenizer's own mark
   (SPM's added prefix space, WordPiece's word start, UGM's "▁") and covers nothing; "▁" in a
   piece stands for a space; whitespace the tokenizer dropped between tokens belongs to no token.
3. Otherwise the piece is compared with the text after normalisation (compatibility
   decomposition, accents dropped, lower case), as WordPiece and UGM tokenizers transform it;
   the token covers the characters it was made from.
4. A token that stands for no text of its own (BOS/CLS/SEP added by ``add_special``) is empty
   at the place it was added; an unknown token (``[UNK]``, ``<unk>``) covers the text between
   its neighbours.
"""

from __future__ import annotations

import html
import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

from llama_cython._optional import require
from llama_cython.vocab import TokenAttr, _kind

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["Encoding"]

_SPACE_MARK = "\u2581".encode()
_ASCII_SPACE = b" \t\n\r\v\f"
_PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa")


def _fold(text: str) -> str:
    """What a normalising tokenizer keeps of ``text``: compatibility-decomposed, no accents or
    control/format characters, lower case, no spaces."""
    out = []
    for ch in unicodedata.normalize("NFKD", text):
        cat = unicodedata.category(ch)
        if cat in ("Mn", "Me", "Cc", "Cf") or ch.isspace() or ch == "\ufffd" or ch == "\u2581":
            continue
        out.append(ch.lower())
    return "".join(out)


class _Aligner:
    """Walks token pieces along a text; yields byte spans (see the module docstring)."""

    def __init__(self, text: str, data: bytes) -> None:
        self.text = text
        self.data = data
        self.byte_pos = 0
        # byte offset of each character boundary, and the folded form of each character
        sizes = np.fromiter(
            (len(c.encode("utf-8", "surrogatepass")) for c in text), dtype=np.int64, count=len(text)
        )
        self.char_bytes = np.zeros(len(text) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self.char_bytes[1:])
        self.folds: list[str] | None = None

    def _skip_ascii_space(self, pos: int) -> int:
        data = self.data
        while pos < len(data) and data[pos] in _ASCII_SPACE:
            pos += 1
        return pos

    def exact(self, piece: bytes) -> tuple[int, int] | None:
        """Rules 1 and 2: the piece's bytes at the current position."""
        data, pos = self.data, self.byte_pos
        if not piece:
            return (pos, pos)
        candidates = [piece]
        if _SPACE_MARK in piece:
            candidates.append(piece.replace(_SPACE_MARK, b" "))
        for cand in candidates:
            if data.startswith(cand, pos):
                return (pos, pos + len(cand))
            stripped = cand.lstrip(b" ")
            if stripped and stripped != cand:
                at = self._skip_ascii_space(pos)
                if data.startswith(stripped, at):
                    return (at, at + len(stripped))
        return None

    def folded(self, piece: bytes, search: bool = False) -> tuple[int, int] | None:
        """Rule 3: the piece against the normalised text, at the current character (or, with
        ``search``, at the first character after it where it matches)."""
        target = _fold(piece.decode("utf-8", "replace"))
        if not target:
            return None
        if self.folds is None:
            self.folds = [_fold(c) for c in self.text]
        c = int(np.searchsorted(self.char_bytes, self.byte_pos, side="left"))
        while c < len(self.text):
            span = self._folded_at(target, c)
            if span is not None or not search:
                return span
            c += 1
        return None

    def _folded_at(self, target: str, c: int) -> tuple[int, int] | None:
        folds, text = self.folds, self.text
        assert folds is not None
        # skip what the tokenizer dropped before the token: spaces, marks, control characters
        while c < len(text) and not folds[c]:
            c += 1
        start, k = c, 0
        while k < len(target) and c < len(text):
            f = folds[c]
            if not f:
                c += 1
                continue
            if target.startswith(f, k):
                k += len(f)
                c += 1
            elif f.startswith(target[k:]):  # the token ends inside this character's expansion
                k = len(target)
                c += 1
            else:
                return None
        if k < len(target):
            return None
        return (int(self.char_bytes[start]), int(self.char_bytes[c]))

    def after_space(self) -> int:
        return self._skip_ascii_space(self.byte_pos)


def _align(
    text: str,
    data: bytes,
    ids: list[int],
    pieces: list[bytes],
    attrs: list[int],
    vocab_type: str,
    unk: int | None,
) -> npt.NDArray[np.int64]:
    n = len(pieces)
    spans = np.zeros((n, 2), dtype=np.int64)
    al = _Aligner(text, data)
    pending: list[int] = []  # unknown tokens waiting for the next anchored token

    def settle(end: int) -> None:
        start = min(al.after_space(), end)
        while end > start and data[end - 1] in _ASCII_SPACE:
            end -= 1
        for j in pending:
            spans[j] = (start, end)
        pending.clear()

    for i, (tok, piece, attr) in enumerate(zip(ids, pieces, attrs)):
        if attr & TokenAttr.UNKNOWN or (tok == unk and vocab_type != "bpe"):
            pending.append(i)
            continue
        if attr & TokenAttr.CONTROL and not (piece and data.startswith(piece, al.byte_pos)):
            spans[i] = (al.byte_pos, al.byte_pos)  # added by the tokenizer, not in the text
            continue
        if vocab_type == "wpm":
            piece = piece.lstrip(b" ")  # the word-start mark; BERT offsets leave spaces out
        if not piece.strip(b" "):  # a lone space mark: the text's spaces here, or nothing
            at = al.byte_pos
            end = at
            while end < len(data) and end - at < len(piece) and data[end] == 0x20:
                end += 1
            spans[i] = (at, end)
            al.byte_pos = end
            continue
        span = al.exact(piece) or al.folded(piece)
        if span is None:
            # text the tokenizer turned into an unknown token (or dropped) comes first
            found = data.find(piece.lstrip(b" "), al.byte_pos) if piece.strip(b" ") else -1
            span = (found, found + len(piece.lstrip(b" "))) if found >= 0 else al.folded(piece, search=True)
        if span is None:
            pending.append(i)
            continue
        if pending:
            settle(span[0])
        spans[i] = span
        al.byte_pos = span[1]
    if pending:
        settle(len(data))
    return spans


def _char_offsets(data: bytes, byte_spans: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Character spans covering the byte spans (a span inside a character covers all of it)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    is_start = (raw & 0xC0) != 0x80
    char_of_byte = np.empty(len(data) + 1, dtype=np.int64)
    char_of_byte[:-1] = np.cumsum(is_start) - 1
    char_of_byte[-1] = int(is_start.sum())
    starts, ends = byte_spans[:, 0], byte_spans[:, 1]
    c0 = char_of_byte[starts]
    c1 = np.where(ends > starts, char_of_byte[np.maximum(ends - 1, 0)] + 1, c0)
    return np.stack([c0, c1], axis=1) if len(byte_spans) else np.zeros((0, 2), dtype=np.int64)


class Encoding:
    """One text's tokens: ids, pieces, offsets into the text, special mask and attributes.

    ``byte_offsets`` and ``char_offsets`` are ``(n, 2)`` int64 arrays of ``[start, end)``
    spans into ``text.encode()`` and ``text``. Tokens added by the tokenizer (BOS, CLS, SEP)
    have empty spans where they were added; see :mod:`llama_cython.encoding` for the rules.
    Made by :meth:`Model.encode`.
    """

    __slots__ = ("attrs", "byte_offsets", "char_offsets", "ids", "pieces", "text", "tokens", "vocab_type")

    text: str
    ids: npt.NDArray[np.int32]
    pieces: npt.NDArray[np.object_]
    tokens: list[str]
    attrs: npt.NDArray[np.uint32]
    byte_offsets: npt.NDArray[np.int64]
    char_offsets: npt.NDArray[np.int64]
    vocab_type: str

    @classmethod
    def _build(
        cls,
        text: str,
        data: bytes,
        ids: npt.NDArray[np.int32],
        pieces: npt.NDArray[np.object_],
        tokens: list[str],
        attrs: npt.NDArray[np.uint32],
        vocab_type: str,
        unk: int | None,
    ) -> Encoding:
        self = cls.__new__(cls)
        self.text = text
        self.ids = ids
        self.pieces = pieces
        self.tokens = tokens
        self.attrs = attrs
        self.vocab_type = vocab_type
        self.byte_offsets = _align(text, data, ids.tolist(), list(pieces), attrs.tolist(), vocab_type, unk)
        self.char_offsets = _char_offsets(data, self.byte_offsets)
        return self

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else self.text[:37] + "..."
        return f"<Encoding {len(self)} tokens of {shown!r}>"

    @property
    def special_mask(self) -> npt.NDArray[np.bool_]:
        """True for control tokens: BOS, EOS, CLS, SEP, chat markers (and [UNK] in BERT vocabularies)."""
        mask: npt.NDArray[np.bool_] = (self.attrs & int(TokenAttr.CONTROL)) != 0
        return mask

    @property
    def texts(self) -> list[str]:
        """The text each token covers (``text[start:end]`` of its character span)."""
        return [self.text[a:b] for a, b in self.char_offsets.tolist()]

    def to_pandas(self) -> Any:
        """One row per token: id, token, piece, text, byte/char start and end, special, kind.

        Needs pandas.
        """
        pd = require("pandas", "Encoding.to_pandas()")
        return pd.DataFrame(
            {
                "id": self.ids,
                "token": self.tokens,
                "piece": self.pieces,
                "text": self.texts,
                "byte_start": self.byte_offsets[:, 0],
                "byte_end": self.byte_offsets[:, 1],
                "char_start": self.char_offsets[:, 0],
                "char_end": self.char_offsets[:, 1],
                "special": self.special_mask,
                "kind": [_kind(int(a)) for a in self.attrs.tolist()],
            }
        )

    def _repr_html_(self) -> str:
        """The text cut into coloured tokens, each with its id (Jupyter shows this)."""
        esc = html.escape
        parts = [
            f'<div style="font-size:90%;color:#555">{len(self)} tokens, {len(self.text)} characters'
            f" ({self.vocab_type})</div>",
            '<div style="font-family:monospace;white-space:pre-wrap;line-height:2.1">',
        ]
        at = 0
        for i, ((c0, c1), tok_id, token) in enumerate(
            zip(self.char_offsets.tolist(), self.ids.tolist(), self.tokens)
        ):
            if c0 > at:
                parts.append(esc(self.text[at:c0]))  # text no token covers (dropped spaces)
            shown = self.text[max(c0, at) : c1] if c1 > at else ""
            at = max(at, c1)
            title = esc(f"id {tok_id}: {token!r}", quote=True)
            sub = f'<sub style="font-size:60%;color:#444">{tok_id}</sub>'
            if shown:
                colour = _PALETTE[i % len(_PALETTE)]
                parts.append(
                    f'<span title="{title}" style="background:{colour};border-radius:3px;padding:1px">'
                    f"{esc(shown)}{sub}</span>"
                )
            else:  # a token with no text of its own (BOS, SEP) or sharing a character
                parts.append(
                    f'<span title="{title}" style="border:1px dashed #999;border-radius:3px;'
                    f'padding:0 2px;color:#666">{esc(token)}{sub}</span>'
                )
        if at < len(self.text):
            parts.append(esc(self.text[at:]))
        parts.append("</div>")
        return "".join(parts)
