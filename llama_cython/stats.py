"""Small result records returned next to generated text."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BatchStats",
    "ChatResponse",
    "ChatUsage",
    "EmbeddingStats",
    "GenerationStats",
    "PerplexityResult",
    "TokenLogprobs",
]


@dataclass(frozen=True)
class TokenLogprobs:
    """Log-probabilities of generated tokens (``logprobs=k`` on a generation call).

    One row per generated token: ``tokens`` (T,) the ids, ``logprobs`` (T,) the natural log of
    each one's probability under the model's distribution at that step (log-softmax of the raw
    logits over the whole vocabulary: before temperature, penalties or a grammar), and the k
    most likely tokens at each step, most likely first: ``top_tokens`` (T, k) int32 and
    ``top_logprobs`` (T, k) float32.
    """

    tokens: npt.NDArray[np.int32] = field(repr=False)
    logprobs: npt.NDArray[np.float32] = field(repr=False)
    top_tokens: npt.NDArray[np.int32] = field(repr=False)
    top_logprobs: npt.NDArray[np.float32] = field(repr=False)

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def k(self) -> int:
        """How many alternatives each step lists."""
        return int(self.top_tokens.shape[1])

    def total(self) -> float:
        """The log-probability of the whole generated sequence (sum over tokens)."""
        return float(np.sum(self.logprobs, dtype=np.float64))

    def perplexity(self) -> float:
        """exp of the mean negative log-probability (nan for no tokens)."""
        if not len(self):
            return float("nan")
        return float(np.exp(-np.mean(self.logprobs, dtype=np.float64)))


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

    ``logprobs`` holds the :class:`TokenLogprobs` of the generated tokens when the call asked
    for them (``logprobs=k``), else ``None``.
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
    logprobs: TokenLogprobs | None = field(default=None, repr=False)

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
    """The answer of :meth:`Context.chat`: the assistant's text, why it ended, token counts.

    With ``json_schema=`` (or a ``grammar=`` made by :meth:`Grammar.from_json_schema`),
    ``parsed`` holds the content read back as JSON (an instance of the pydantic model or
    dataclass given as the schema); otherwise it is ``None``.
    """

    content: str
    finish_reason: str
    usage: ChatUsage
    stats: GenerationStats = field(repr=False)
    parsed: Any = field(default=None, repr=False)

    @property
    def logprobs(self) -> TokenLogprobs | None:
        """The generated tokens' log-probabilities, when the call asked for them."""
        return self.stats.logprobs


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


@dataclass(frozen=True)
class PerplexityResult:
    """The perplexity of a long text by llama.cpp's ``llama-perplexity`` method
    (:meth:`Context.perplexity`).

    The text's tokens are cut into ``n_chunks`` chunks of ``n_ctx`` tokens (the rest is
    dropped), each decoded from an empty cache with its first token replaced by BOS where the
    model adds one; in each chunk only the tokens of its second half are scored, so that every
    scored token has at least ``n_ctx / 2`` tokens of context. ``perplexity`` is
    exp(mean negative log-probability) over all scored tokens and ``uncertainty`` its standard
    error, as the tool prints them (``PPL = x +/- y``); ``chunk_perplexity[i]`` is the
    running value after chunk ``i`` (the tool's ``[i+1]x`` line); ``logprobs`` holds every
    scored token's log-probability, chunk after chunk.
    """

    perplexity: float
    uncertainty: float
    n_ctx: int
    n_chunks: int
    n_tokens: int
    chunk_perplexity: npt.NDArray[np.float64] = field(repr=False)
    logprobs: npt.NDArray[np.float32] = field(repr=False)
