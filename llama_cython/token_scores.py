"""Per-token log-probabilities of many texts, as one flat array and offsets (ragged).

Made by :meth:`Context.score` and :meth:`Context.score_continuations`. Text ``i``'s values are
``values[offsets[i]:offsets[i + 1]]``: for each of its tokens after the first, the natural log
of its probability given the tokens before it; ``tokens`` holds the ids they score, aligned.
The per-text reductions are vectorised (``np.add.reduceat``), no Python loop per text.

>>> import numpy as np
>>> from llama_cython.token_scores import TokenScores
>>> s = TokenScores(np.log(np.array([0.5, 0.25, 0.5], np.float32)),
...                 np.array([7, 8, 9], np.int32), np.array([0, 2, 3], np.int64))
>>> len(s), s.lengths.tolist()
(2, [2, 1])
>>> np.round(s.sum(), 4).tolist(), np.round(s.perplexity(), 4).tolist()
([-2.0794, -0.6931], [2.8284, 2.0])
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

__all__ = ["TokenScores"]


class TokenScores:
    """Ragged per-token log-probabilities: ``values`` (float32), ``tokens`` (int32) and
    ``offsets`` (int64, one more than the texts)."""

    __slots__ = ("offsets", "tokens", "values")

    values: npt.NDArray[np.float32]
    tokens: npt.NDArray[np.int32]
    offsets: npt.NDArray[np.int64]

    def __init__(self, values: npt.NDArray[np.float32], tokens: npt.NDArray[np.int32],
                 offsets: npt.NDArray[np.int64]) -> None:
        if values.shape != tokens.shape or values.ndim != 1:
            raise ValueError("values and tokens must be 1-D arrays of one length")
        if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[-1] != values.shape[0]:
            raise ValueError("offsets must start at 0 and end at len(values)")
        self.values = values
        self.tokens = tokens
        self.offsets = offsets

    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def __getitem__(self, i: int) -> npt.NDArray[np.float32]:
        """Text ``i``'s log-probabilities (a view)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"text index {i} out of range for {n} texts")
        i %= n
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def __iter__(self) -> Iterator[npt.NDArray[np.float32]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def lengths(self) -> npt.NDArray[np.int64]:
        """Scored tokens per text."""
        return np.diff(self.offsets)

    def sum(self) -> npt.NDArray[np.float64]:
        """Per text: the log-probability of its tokens after the first (0.0 for none)."""
        out = np.zeros(len(self), dtype=np.float64)
        lengths = self.lengths
        has = lengths > 0
        if has.any():
            sums = np.add.reduceat(self.values.astype(np.float64), self.offsets[:-1][has])
            out[has] = sums
        return out

    def mean(self) -> npt.NDArray[np.float64]:
        """Per text: the mean log-probability per scored token (nan for none)."""
        lengths = self.lengths
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(lengths > 0, self.sum() / np.maximum(lengths, 1), np.nan)

    def perplexity(self) -> npt.NDArray[np.float64]:
        """Per text: exp(-mean), the usual perplexity (nan for a text with no scored token)."""
        return np.asarray(np.exp(-self.mean()), dtype=np.float64)

    def __repr__(self) -> str:
        return f"<llama_cython.TokenScores {len(self)} texts, {self.values.shape[0]} tokens>"
