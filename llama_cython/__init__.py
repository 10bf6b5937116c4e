"""llama_cython: llama.cpp for Python, through Cython, with numpy in and out.

>>> import llama_cython as llama
>>> model = llama.load_model(llama.models.model_path())          # doctest: +SKIP
>>> with model.new_context(n_ctx=1024) as ctx:                     # doctest: +SKIP
...     print(ctx.generate("The capital of France is", max_tokens=16, temperature=0))
"""

from __future__ import annotations

import logging as _logging
import os as _os

# ggml forks gdb to print a backtrace before aborting unless this is set; never do that inside
# a Python process (llama_cython checks inputs so that llama.cpp does not abort at all).
_os.environ.setdefault("GGML_NO_BACKTRACE", "1")

# Silent by default: llama.cpp's log goes to this logger, which prints nothing unless the
# application configures logging.
_logging.getLogger("llama_cython").addHandler(_logging.NullHandler())

# The compiled core exists once per CPU variant; load the one this CPU runs best before
# anything imports llama_cython._core (see _loader.py).
from llama_cython._loader import load_core as _load_core  # noqa: E402

_load_core()

from llama_cython import models  # noqa: E402
from llama_cython._core import (  # noqa: E402
    BatchGenerationStream,
    Context,
    GenerationStream,
    Model,
    load_model,
    max_devices,
    quantize_model,
    supports_gpu_offload,
)
from llama_cython._pickling import clear_model_cache  # noqa: E402
from llama_cython.chat import ChatMessage  # noqa: E402
from llama_cython.encoding import Encoding  # noqa: E402
from llama_cython.errors import (  # noqa: E402
    AllocationError,
    ClosedError,
    ContextBusyError,
    ContextError,
    ContextSizeError,
    DecodeError,
    GrammarError,
    JobResumeError,
    LlamaError,
    ModelChecksumError,
    ModelFetchError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    SchemaError,
    StateError,
    TemplateError,
    TokenizeError,
)
from llama_cython.grammar import Grammar  # noqa: E402
from llama_cython.stats import (  # noqa: E402
    BatchStats,
    ChatResponse,
    ChatUsage,
    EmbeddingStats,
    GenerationStats,
    PerplexityResult,
    TokenLogprobs,
)
from llama_cython.streaming import AsyncGenerationStream  # noqa: E402
from llama_cython.system import SystemInfo, system_info  # noqa: E402
from llama_cython.token_batch import TokenBatch  # noqa: E402
from llama_cython.token_embeddings import TokenEmbeddings  # noqa: E402
from llama_cython.token_scores import TokenScores  # noqa: E402
from llama_cython.vocab import TokenAttr, Vocab  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "AllocationError",
    "AsyncGenerationStream",
    "BatchGenerationStream",
    "BatchStats",
    "ChatMessage",
    "ChatResponse",
    "ChatUsage",
    "ClosedError",
    "Context",
    "ContextBusyError",
    "ContextError",
    "ContextSizeError",
    "DecodeError",
    "EmbeddingStats",
    "Encoding",
    "GenerationStats",
    "GenerationStream",
    "Grammar",
    "GrammarError",
    "JobResumeError",
    "LlamaError",
    "Model",
    "ModelChecksumError",
    "ModelFetchError",
    "ModelLoadError",
    "ModelNotFoundError",
    "OptionError",
    "PerplexityResult",
    "SchemaError",
    "StateError",
    "SystemInfo",
    "TemplateError",
    "TokenAttr",
    "TokenBatch",
    "TokenEmbeddings",
    "TokenLogprobs",
    "TokenScores",
    "TokenizeError",
    "Vocab",
    "__version__",
    "clear_model_cache",
    "load_model",
    "max_devices",
    "models",
    "quantize_model",
    "supports_gpu_offload",
    "system_info",
]
