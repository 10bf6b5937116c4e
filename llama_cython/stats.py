"""Small result records returned next to generated text."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["BatchStats", "ChatResponse", "ChatUsage", "EmbeddingStats", "GenerationStats"]


@dataclass(frozen=True)
class GenerationStats:
    """What the last generation on a context did, read from the C loop's counters.

    ``tokens`` holds the generated token ids (int32), in order; ``finish_reason`` is ``"stop"``
    (an end-of-generation token or a stop string), ``"length"`` (``max_tokens`` reached or the
    context is full) or ``"cancelled"``; ``cached_tokens`` is how many prompt tokens were taken
    from the KV cache (prefix caching) instead of being decoded again.

    ``decodes`` counts the model's decode calls after the prompt's: one per token in plain
    generation, fewer with speculative decoding (:meth:`Context.generate_with_draft`), where
    ``draft_tokens`` tokens were proposed and ``accepted_tokens`` of them kept.
    """

    prompt_tokens: int
    completion_tokens: int
    prompt_ms: float
    generation_ms: float
    finish_reason: str
    tokens: npt.NDArray[np.int32] = field(repr=False)
    cached_tokens: int = 0
    decodes: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        """The share of drafted tokens the model kept (0.0 when nothing was drafted)."""
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_decode(self) -> float:
        """Generated tokens per decode after the prompt: 1.0 in plain generation (a little less,
        the last token needs none), more when drafts are accepted."""
        return self.completion_tokens / self.decodes if self.decodes else 0.0

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


@dataclass(frozen=True)
class ChatUsage:
    """Token counts of one chat turn."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatResponse:
    """The answer of :meth:`Context.chat`: the assistant's text, why it ended, token counts."""

    content: str
    finish_reason: str
    usage: ChatUsage
    stats: GenerationStats = field(repr=False)


@dataclass(frozen=True)
class EmbeddingStats:
    """What the last ``get_embeddings_batch`` on a context did."""

    texts: int
    tokens: int
    truncated: int
    batches: int
    ms: float

    @property
    def texts_per_second(self) -> float:
        return self.texts * 1000.0 / self.ms if self.ms > 0 else 0.0


@dataclass(frozen=True)
class BatchStats:
    """What the last ``generate_batch``/``chat_batch`` on a context did.

    ``prompt_tokens`` and ``completion_tokens`` are int32 arrays in input order;
    ``finish_reasons`` says for each prompt ``"stop"``, ``"length"`` or ``"cancelled"`` (a
    prompt never started counts as cancelled); ``decodes`` is the number of llama.cpp decode
    calls the whole batch took, ``n_parallel`` how many sequences could be decoded at once;
    ``cached_tokens`` (int32, input order) counts each prompt's leading tokens that were copied
    from another sequence sharing them instead of being decoded again.
    """

    prompts: int
    prompt_tokens: npt.NDArray[np.int32] = field(repr=False)
    completion_tokens: npt.NDArray[np.int32] = field(repr=False)
    finish_reasons: list[str] = field(repr=False)
    decodes: int
    n_parallel: int
    ms: float
    cached_tokens: npt.NDArray[np.int32] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int32), repr=False)

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens taken from a shared prefix instead of decoded, over the whole batch."""
        return int(self.cached_tokens.sum())

    @property
    def total_completion_tokens(self) -> int:
        return int(self.completion_tokens.sum())

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second over the whole call, prompt processing included."""
        return self.total_completion_tokens * 1000.0 / self.ms if self.ms > 0 else 0.0
