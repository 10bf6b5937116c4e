# Typed surface of the compiled extension llama_cython._core.


import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, TypeAlias, TypedDict, final, overload, type_check_only

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 11):
    from typing import Never, Self, Unpack
else:   # a stub only: type checkers read it, nothing imports it at run time
    from typing_extensions import Never, Self, Unpack

from llama_cython.chat import ChatMessage
from llama_cython.encoding import Encoding
from llama_cython.grammar import Grammar
from llama_cython.stats import BatchStats, ChatResponse, EmbeddingStats, GenerationStats, PerplexityResult
from llama_cython.streaming import AsyncGenerationStream
from llama_cython.token_batch import TokenBatch
from llama_cython.token_embeddings import TokenEmbeddings
from llama_cython.token_scores import TokenScores
from llama_cython.vocab import Vocab

_Path: TypeAlias = str | bytes | os.PathLike[str] | os.PathLike[bytes]
_Tokens: TypeAlias = Sequence[int] | npt.NDArray[np.integer]
_KVCacheType: TypeAlias = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
_FlashAttn: TypeAlias = Literal["auto", "on", "off"] | bool | None
_Pooling: TypeAlias = Literal["none", "mean", "cls", "last", "rank"] | None
_Stop: TypeAlias = str | Sequence[str] | None
_Messages: TypeAlias = Sequence[ChatMessage | Mapping[str, Any]]
_Callback: TypeAlias = Callable[[str], bool | None]
_ArrowStrings: TypeAlias = Any  # a pyarrow string/large_string Array or ChunkedArray
_Texts: TypeAlias = Sequence[str | bytes] | Iterable[str | bytes] | _ArrowStrings
_Errors: TypeAlias = Literal["strict", "replace"]
_Nulls: TypeAlias = Literal["raise", "empty", "skip"]
# The aliases above exist only in this stub, not in the compiled module, so they are private
# (tests/test_typing.py checks every public name here against the module with stubtest).

# The keyword arguments **sampling of generate() and chat(); a name for type checkers only
# (import it under `if TYPE_CHECKING:`), hence @type_check_only.
@type_check_only
class SamplingOptions(TypedDict, total=False):
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    typical_p: float
    repetition_penalty: float
    repeat_last_n: int
    presence_penalty: float
    frequency_penalty: float
    ignore_eos: bool
    seed: int | None
    grammar: str | Grammar | None
    json_schema: Mapping[str, Any] | type | None
    logprobs: bool | int | None

def llama_system_info() -> str: ...
def supports_gpu_offload() -> bool: ...
def max_devices() -> int: ...
def json_schema_to_gbnf(schema_json: str) -> str: ...
def quantize_model(
    src: _Path,
    dst: _Path,
    ftype: str,
    *,
    allow_requantize: bool = False,
    n_threads: int | None = None,
    token_embedding_type: str | None = None,
    output_tensor_type: str | None = None,
    tensor_types: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
) -> None: ...
def load_model(
    path: _Path,
    *,
    n_gpu_layers: int = -1,
    use_mmap: bool = True,
    use_mlock: bool = False,
    main_gpu: int = 0,
    tensor_split: Sequence[float] | None = None,
    vocab_only: bool = False,
    check_tensors: bool = False,
    verbose: bool = False,
    progress: Callable[[float], bool | None] | None = None,
) -> Model: ...

@final
class Model:
    # The compiled class cannot be subclassed (@cython.final), and __init__ only raises
    # TypeError: use load_model(path).
    def __init__(self, *args: Never, **kwargs: Never) -> None: ...
    @property
    def path(self) -> str: ...
    @property
    def vocab_only(self) -> bool: ...
    @property
    def load_options(self) -> dict[str, Any]: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __dask_tokenize__(self) -> tuple[Any, ...]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    @property
    def n_embd(self) -> int: ...
    @property
    def n_embd_out(self) -> int: ...
    @property
    def n_layer(self) -> int: ...
    @property
    def n_head(self) -> int: ...
    @property
    def n_swa(self) -> int: ...
    @property
    def n_params(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def has_encoder(self) -> bool: ...
    @property
    def description(self) -> str: ...
    @property
    def architecture(self) -> str: ...
    @property
    def metadata(self) -> dict[str, str]: ...
    @property
    def chat_template(self) -> str | None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def tokenize(
        self, text: str | bytes, add_special: bool = True, parse_special: bool = False
    ) -> npt.NDArray[np.int32]: ...
    def detokenize(
        self, tokens: _Tokens, remove_special: bool = False, unparse_special: bool = False
    ) -> str: ...
    def token_to_piece(self, token: int, special: bool = True) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def tokenize_batch(
        self,
        texts: _Texts,
        *,
        add_special: bool = True,
        parse_special: bool = False,
        n_threads: int | None = None,
        errors: _Errors = "strict",
        nulls: _Nulls = "raise",
    ) -> TokenBatch: ...
    @overload
    def count_tokens(  # type: ignore[overload-overlap]
        self,
        texts: str | bytes,
        *,
        add_special: bool = True,
        parse_special: bool = False,
        n_threads: int | None = None,
        errors: _Errors = "strict",
        nulls: _Nulls = "raise",
    ) -> int: ...
    @overload
    def count_tokens(
        self,
        texts: _Texts,
        *,
        add_special: bool = True,
        parse_special: bool = False,
        n_threads: int | None = None,
        errors: _Errors = "strict",
        nulls: _Nulls = "raise",
    ) -> npt.NDArray[np.int32]: ...
    def detokenize_batch(
        self,
        sequences: TokenBatch | Iterable[_Tokens],
        *,
        remove_special: bool = False,
        unparse_special: bool = False,
    ) -> list[str]: ...
    def encode(
        self, text: str | bytes, *, add_special: bool = True, parse_special: bool = False
    ) -> Encoding: ...
    @property
    def vocab(self) -> Vocab: ...
    def new_context(
        self,
        *,
        n_ctx: int | None = None,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        kv_cache_type: _KVCacheType = "f16",
        flash_attn: _FlashAttn = "auto",
        embeddings: bool = False,
        pooling: _Pooling = None,
        n_parallel: int | None = None,
        prefix_caching: bool | Literal["exact", "any", "off"] = True,
        kv_unified: bool | None = None,
        embed_workers: int | None = None,
    ) -> Context: ...

@final
class Context:
    # The compiled class cannot be subclassed (@cython.final), and __init__ only raises
    # TypeError: use Model.new_context().
    def __init__(self, *args: Never, **kwargs: Never) -> None: ...
    @property
    def model(self) -> Model: ...
    @property
    def options(self) -> dict[str, Any]: ...
    def __reduce__(self) -> tuple[Any, ...]: ...
    def __dask_tokenize__(self) -> tuple[Any, ...]: ...
    @property
    def closed(self) -> bool: ...
    @property
    def prefix_caching(self) -> Literal["exact", "any", "off"]: ...
    @property
    def kv_cache_type(self) -> str | None: ...
    @property
    def flash_attn(self) -> Literal["on", "off"]: ...
    @property
    def last_stats(self) -> GenerationStats | None: ...
    @property
    def n_ctx(self) -> int: ...
    @property
    def n_ctx_seq(self) -> int: ...
    @property
    def n_batch(self) -> int: ...
    @property
    def n_ubatch(self) -> int: ...
    @property
    def n_threads(self) -> int: ...
    @property
    def n_threads_batch(self) -> int: ...
    @property
    def n_parallel(self) -> int: ...
    @property
    def kv_unified(self) -> bool: ...
    @property
    def embed_workers(self) -> int: ...
    @property
    def embeddings(self) -> bool: ...
    @property
    def pooling(self) -> Literal["none", "mean", "cls", "last", "rank"]: ...
    @property
    def n_past(self) -> int: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    def tokenize(
        self, text: str | bytes, add_special: bool = True, parse_special: bool = False
    ) -> npt.NDArray[np.int32]: ...
    def detokenize(
        self, tokens: _Tokens, remove_special: bool = False, unparse_special: bool = False
    ) -> str: ...
    def token_to_piece(self, token: int, special: bool = True) -> bytes: ...
    @property
    def cached_tokens(self) -> int: ...
    def generate(
        self, prompt: str, *, max_tokens: int = 128, stop: _Stop = None,
        **sampling: Unpack[SamplingOptions],
    ) -> str: ...
    def generate_stream(
        self, prompt: str, *, max_tokens: int = 128, stop: _Stop = None,
        callback: _Callback | None = None, **sampling: Unpack[SamplingOptions],
    ) -> GenerationStream: ...
    def generate_async(
        self, prompt: str, *, max_tokens: int = 128, stop: _Stop = None,
        **sampling: Unpack[SamplingOptions],
    ) -> AsyncGenerationStream: ...
    def generate_with_draft(
        self, prompt: str, draft: Context | Literal["prompt"], *, n_draft: int = 16,
        adaptive: bool = True, max_tokens: int = 128, stop: _Stop = None,
        **sampling: Unpack[SamplingOptions],
    ) -> str: ...
    def generate_with_draft_stream(
        self, prompt: str, draft: Context | Literal["prompt"], *, n_draft: int = 16,
        adaptive: bool = True, max_tokens: int = 128, stop: _Stop = None,
        callback: _Callback | None = None, **sampling: Unpack[SamplingOptions],
    ) -> GenerationStream: ...
    def chat(
        self, messages: _Messages, *, max_tokens: int = 512, stop: _Stop = None,
        template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True, **sampling: Unpack[SamplingOptions],
    ) -> ChatResponse: ...
    def chat_stream(
        self, messages: _Messages, *, max_tokens: int = 512, stop: _Stop = None,
        template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True, callback: _Callback | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> GenerationStream: ...
    def chat_async(
        self, messages: _Messages, *, max_tokens: int = 512, stop: _Stop = None,
        template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True, **sampling: Unpack[SamplingOptions],
    ) -> AsyncGenerationStream: ...
    @property
    def last_batch_stats(self) -> BatchStats | None: ...
    def generate_batch(
        self, prompts: Iterable[str], *, max_tokens: int = 128, stop: _Stop = None,
        progress: Callable[[int], object] | bool | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> list[str]: ...
    def generate_batch_stream(
        self, prompts: Iterable[str], *, max_tokens: int = 128, stop: _Stop = None,
        progress: Callable[[int], object] | bool | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> BatchGenerationStream: ...
    def chat_batch(
        self, conversations: Iterable[_Messages], *, max_tokens: int = 512, stop: _Stop = None,
        template: str | None = None, template_kwargs: Mapping[str, Any] | None = None,
        add_generation_prompt: bool = True, progress: Callable[[int], object] | bool | None = None,
        **sampling: Unpack[SamplingOptions],
    ) -> list[ChatResponse]: ...
    @property
    def last_embedding_stats(self) -> EmbeddingStats | None: ...
    @overload
    def get_embeddings_batch(
        self,
        texts: Iterable[str],
        *,
        normalize: bool = True,
        out: npt.NDArray[np.float32] | None = None,
        truncate: bool = True,
        progress: Callable[[int], bool | None] | bool | None = None,
        batch_tokens: int | None = None,
        nulls: _Nulls = "raise",
        format: Literal["numpy"] = "numpy",
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def get_embeddings_batch(
        self,
        texts: Iterable[str],
        *,
        normalize: bool = True,
        out: npt.NDArray[np.float32] | None = None,
        truncate: bool = True,
        progress: Callable[[int], bool | None] | bool | None = None,
        batch_tokens: int | None = None,
        nulls: _Nulls = "raise",
        format: Literal["arrow"],
    ) -> Any: ...
    def get_token_embeddings(
        self,
        texts: Iterable[str],
        *,
        normalize: bool = True,
        truncate: bool = True,
        progress: Callable[[int], bool | None] | bool | None = None,
        batch_tokens: int | None = None,
        nulls: _Nulls = "raise",
    ) -> TokenEmbeddings: ...
    def get_embeddings(
        self, text: str, *, normalize: bool = True, truncate: bool = True
    ) -> npt.NDArray[np.float32]: ...
    def iter_embeddings(
        self, texts: Iterable[str], *, chunk_size: int = 1024, normalize: bool = True,
        truncate: bool = True, nulls: _Nulls = "raise",
        progress: Callable[[int], bool | None] | bool | None = None,
        format: Literal["numpy", "arrow"] = "numpy",
    ) -> Iterator[Any]: ...
    @overload
    def embed(
        self, texts: str, *, normalize: bool = True, batch_size: int | None = None,
        show_progress_bar: bool = False, nulls: _Nulls = "raise",
        format: Literal["numpy"] = "numpy",
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self, texts: Iterable[str], *, normalize: bool = True, batch_size: int | None = None,
        show_progress_bar: bool = False, nulls: _Nulls = "raise",
        format: Literal["numpy"] = "numpy",
    ) -> npt.NDArray[np.float32]: ...
    @overload
    def embed(
        self, texts: str | Iterable[str], *, normalize: bool = True,
        batch_size: int | None = None, show_progress_bar: bool = False,
        nulls: _Nulls = "raise", format: Literal["arrow"],
    ) -> Any: ...
    def encode(
        self, sentences: str | Iterable[str], *, prompt: str | None = None,
        batch_size: int = 32, show_progress_bar: bool = False,
        output_value: Literal["sentence_embedding", "token_embeddings"] = "sentence_embedding",
        precision: Literal["float32"] = "float32", convert_to_numpy: bool = True,
        convert_to_tensor: Literal[False] = False, device: Literal["cpu"] | None = None,
        normalize_embeddings: bool = False,
    ) -> Any: ...
    @property
    def busy(self) -> bool: ...
    def score(
        self, texts: _Texts, *, add_special: bool = True,
        progress: Callable[[int], object] | bool | None = None, nulls: _Nulls = "raise",
    ) -> TokenScores: ...
    def score_continuations(
        self, prompt: str, candidates: Sequence[str], *, add_special: bool = True,
    ) -> TokenScores: ...
    def perplexity(
        self, text: str, *, n_ctx: int | None = None, stride: int | None = None,
        progress: Callable[[int], object] | bool | None = None,
    ) -> PerplexityResult: ...
    @overload
    def save_state(self, path: None = None) -> bytes: ...
    @overload
    def save_state(self, path: str | os.PathLike[str]) -> None: ...
    def load_state(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None: ...
    def get_logits(self) -> npt.NDArray[np.float32]: ...
    def clear_cache(self) -> None: ...
    def cancel(self) -> None: ...

@final
class GenerationStream:
    # The compiled class cannot be subclassed (@cython.final), and __init__ only raises
    # TypeError: use Context.generate_stream() or chat_stream().
    def __init__(self, *args: Never, **kwargs: Never) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> str: ...
    def next_piece(self) -> str | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def finish_reason(self) -> Literal["stop", "length", "cancelled"] | None: ...
    @property
    def text(self) -> str: ...
    @property
    def stats(self) -> GenerationStats | None: ...

# The core's interface for llama_cython.vocab and llama_cython.chat (not exported by the package).
def vocab_info(model: Model) -> dict[str, Any]: ...
def vocab_table(
    model: Model,
) -> tuple[bytes, npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.uint32]]: ...
def vocab_pieces(model: Model) -> tuple[bytes, npt.NDArray[np.int64]]: ...
def chat_specials(model: Model) -> tuple[str | None, str | None, bool]: ...


@final
class BatchGenerationStream:
    def __init__(self, *args: Never, **kwargs: Never) -> None: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> tuple[int, str]: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def stats(self) -> BatchStats | None: ...
    def texts(self) -> list[str]: ...
