"""TokenBatch: the token ids of many texts as one ragged array (flat ids + offsets).

The layout is Arrow's list layout: ``ids`` holds every text's ids end to end and ``offsets``
(``len + 1`` entries, starting at 0) says where each text starts, so ``to_arrow()`` shares the
memory instead of copying it.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from llama_cython._optional import require

if TYPE_CHECKING:
    import numpy.typing as npt

__all__ = ["TokenBatch"]


class TokenBatch(Sequence["npt.NDArray[np.int32]"]):
    """Token ids of many texts: ``ids`` (flat ``int32``) and ``offsets`` (``int64``, N + 1).

    ``batch[i]`` is a zero-copy view of text ``i``'s ids; a slice gives a smaller
    ``TokenBatch``. Made by :meth:`Model.tokenize_batch`.

    >>> batch = TokenBatch(np.array([5, 6, 7], np.int32), np.array([0, 2, 3]))
    >>> len(batch), batch[0], batch.lengths
    (2, array([5, 6], dtype=int32), array([2, 1], dtype=int32))
    >>> batch.to_list()
    [[5, 6], [7]]
    """

    __slots__ = ("ids", "offsets")

    ids: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]

    def __init__(self, ids: npt.ArrayLike, offsets: npt.ArrayLike) -> None:
        ids_arr = np.ascontiguousarray(ids, dtype=np.int32)
        offsets_arr = np.ascontiguousarray(offsets, dtype=np.int64)
        if ids_arr.ndim != 1 or offsets_arr.ndim != 1:
            raise ValueError("ids and offsets must be one-dimensional")
        if offsets_arr.shape[0] < 1 or offsets_arr[0] != 0 or offsets_arr[-1] != ids_arr.shape[0]:
            raise ValueError("offsets must start at 0 and end at len(ids)")
        if offsets_arr.shape[0] > 1 and bool(np.any(offsets_arr[1:] < offsets_arr[:-1])):
            raise ValueError("offsets must not decrease")
        self.ids = ids_arr
        self.offsets = offsets_arr

    # -- sequence protocol -----------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    @overload
    def __getitem__(self, index: int) -> npt.NDArray[np.int32]: ...
    @overload
    def __getitem__(self, index: slice) -> TokenBatch: ...
    def __getitem__(self, index: int | slice) -> npt.NDArray[np.int32] | TokenBatch:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                stop = max(stop, start)
                lo, hi = int(self.offsets[start]), int(self.offsets[stop])
                return TokenBatch(self.ids[lo:hi], self.offsets[start : stop + 1] - lo)
            return self.take(np.arange(start, stop, step))
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"TokenBatch indices must be integers or slices, not {type(index).__name__}"
            ) from None
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"text index {index} is out of range for {n} texts")
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self) -> Iterator[npt.NDArray[np.int32]]:
        ids, offsets = self.ids, self.offsets.tolist()
        for i in range(len(offsets) - 1):
            yield ids[offsets[i] : offsets[i + 1]]

    def __repr__(self) -> str:
        return f"TokenBatch({len(self)} texts, {self.n_tokens} tokens)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenBatch):
            return NotImplemented
        return bool(np.array_equal(self.offsets, other.offsets) and np.array_equal(self.ids, other.ids))

    __hash__ = None  # type: ignore[assignment]

    # -- derived views ----------------------------------------------------------------------

    @property
    def lengths(self) -> npt.NDArray[np.int32]:
        """Number of tokens of each text (``int32``)."""
        return np.diff(self.offsets).astype(np.int32)

    @property
    def n_tokens(self) -> int:
        """Tokens of all texts together."""
        return int(self.ids.shape[0])

    def take(self, indices: npt.ArrayLike) -> TokenBatch:
        """A new batch of the texts at ``indices`` (copied, in that order)."""
        idx = np.asarray(indices, dtype=np.intp)
        n = len(self)
        idx = np.where(idx < 0, idx + n, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"text index out of range for {n} texts")
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        offsets = np.zeros(idx.shape[0] + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        parts = [self.ids[a:b] for a, b in zip(starts.tolist(), ends.tolist())]
        ids = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
        return TokenBatch(ids, offsets)

    def pad(
        self, length: int | None = None, *, pad_id: int = 0, side: str = "right"
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
        """A rectangular ``(N, length)`` int32 array and its mask (True where a token is).

        ``length`` defaults to the longest text; longer texts keep their first ``length``
        tokens. ``side="left"`` puts the padding first (as decoder batches want).

        >>> ids, mask = TokenBatch(np.array([5, 6, 7], np.int32), np.array([0, 2, 3])).pad(pad_id=-1)
        >>> ids
        array([[ 5,  6],
               [ 7, -1]], dtype=int32)
        >>> mask.sum(axis=1)
        array([2, 1])
        """
        if side not in ("right", "left"):
            raise ValueError(f"side must be 'right' or 'left', got {side!r}")
        lengths = np.diff(self.offsets)
        width = int(lengths.max(initial=0)) if length is None else operator.index(length)
        if width < 0:
            raise ValueError(f"length must be >= 0, got {width}")
        keep = np.minimum(lengths, width)
        cols = np.arange(width, dtype=np.int64)[None, :]
        shift = (width - keep)[:, None] if side == "left" else 0
        mask = (cols >= shift) & (cols < shift + keep[:, None])
        ids = np.full((len(self), width), pad_id, dtype=np.int32)
        src = self.offsets[:-1, None] + cols - shift
        ids[mask] = self.ids[src[mask]]
        return ids, mask

    def to_list(self) -> list[list[int]]:
        """The ids as a list of lists of ``int`` (for code that wants plain Python)."""
        flat = self.ids.tolist()
        offsets = self.offsets.tolist()
        return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]

    def to_arrow(self) -> Any:
        """A ``pyarrow.LargeListArray`` of int32 that shares this batch's memory (no copy).

        Needs pyarrow. The arrays stay alive as long as the Arrow array does.
        """
        pa = require("pyarrow", "TokenBatch.to_arrow()")
        values = pa.Array.from_buffers(pa.int32(), self.ids.shape[0], [None, pa.py_buffer(self.ids)])
        offsets = pa.Array.from_buffers(pa.int64(), self.offsets.shape[0], [None, pa.py_buffer(self.offsets)])
        return pa.LargeListArray.from_arrays(offsets, values)

    def to_pandas(self) -> Any:
        """A ``pandas.Series`` with one int32 array (a view) per text. Needs pandas."""
        pd = require("pandas", "TokenBatch.to_pandas()")
        column = np.empty(len(self), dtype=object)
        for i, view in enumerate(self):
            column[i] = view
        return pd.Series(column, name="ids")
