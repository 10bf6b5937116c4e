"""TokenEmbeddings: one vector per token for many texts, as a ragged pair of arrays.

What ``get_embeddings_batch`` returns on a context created with ``pooling="none"``: ``values``
is a float32 ``(T, n_embd)`` array holding every text's token vectors end to end, ``offsets``
(``int64``, ``len + 1`` entries) says where each text starts.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["TokenEmbeddings"]


class TokenEmbeddings(Sequence["npt.NDArray[np.float32]"]):
    """Token-level embeddings of many texts: ``values`` ``(T, D)`` and ``offsets`` ``(N + 1,)``.

    ``emb[i]`` is a zero-copy ``(n_tokens_i, D)`` view of text ``i``'s token vectors.

    >>> emb = TokenEmbeddings(np.zeros((3, 2), np.float32), np.array([0, 1, 3]))
    >>> len(emb), emb[1].shape, emb.lengths
    (2, (2, 2), array([1, 2], dtype=int32))
    """

    __slots__ = ("offsets", "values")

    values: npt.NDArray[np.float32]
    offsets: npt.NDArray[np.int64]

    def __init__(self, values: npt.NDArray[np.float32], offsets: npt.NDArray[np.int64]) -> None:
        if values.ndim != 2 or offsets.ndim != 1 or offsets.shape[0] < 1:
            raise ValueError("values must be (T, D) and offsets (N + 1,)")
        if offsets[0] != 0 or offsets[-1] != values.shape[0]:
            raise ValueError("offsets must start at 0 and end at len(values)")
        self.values = values
        self.offsets = offsets

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def __getitem__(self, index: int) -> npt.NDArray[np.float32]:  # type: ignore[override]
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"text index {index} is out of range for {n} texts")
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[npt.NDArray[np.float32]]:
        bounds = self.offsets.tolist()
        for i in range(len(bounds) - 1):
            yield self.values[bounds[i] : bounds[i + 1]]

    def __repr__(self) -> str:
        n_tok, dim = self.values.shape
        return f"TokenEmbeddings({len(self)} texts, {n_tok} tokens, dim {dim})"

    @property
    def lengths(self) -> npt.NDArray[np.int32]:
        """Number of tokens (rows) of each text."""
        return np.diff(self.offsets).astype(np.int32)

    def mean(self) -> npt.NDArray[np.float32]:
        """Mean of each text's token vectors: ``(N, D)`` (a text with no tokens gets zeros)."""
        sums = np.add.reduceat(self.values, self.offsets[:-1], axis=0) if self.values.shape[0] else None
        out = np.zeros((len(self), self.values.shape[1]), dtype=np.float32)
        lengths = self.lengths
        nonempty = lengths > 0
        if sums is not None:
            out[nonempty] = sums[nonempty] / lengths[nonempty, None]
        return out


