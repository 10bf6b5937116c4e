"""Small result records returned next to generated text."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["GenerationStats"]


@dataclass(frozen=True)
class GenerationStats:
    """What the last generation on a context did, read from the C loop's counters.

    ``tokens`` holds the generated token ids (int32), in order; ``finish_reason`` is ``"stop"``
    (an end-of-generation token), ``"length"`` (``max_tokens`` reached or the context is full)
    or ``"cancelled"``.
    """

    prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    generation_ms: float
    finish_reason: str
    tokens: npt.NDArray[np.int32] = field(repr=False)

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second, prompt processing excluded."""
        if self.generation_ms <= 0:
            return 0.0
        return self.completion_tokens * 1000.0 / self.generation_ms

    @property
    def prompt_tokens_per_second(self) -> float:
        """Prompt tokens processed per second."""
        if self.prompt_ms <= 0:
            return 0.0
        return self.prompt_tokens * 1000.0 / self.prompt_ms
