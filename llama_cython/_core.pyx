# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: embedsignature=True, binding=True
# distutils: language = c++
"""The compiled core of llama_cython: llama.cpp linked statically, wrapped in Cython.

This file is the table of contents; each part is one ``.pxi`` with one responsibility:

====================  =========================================================
``_log.pxi``          llama.cpp's log, collected without the GIL, sent to ``logging``
``_errors.pxi``       return codes and NULLs turned into exceptions, in one place
``_options.pxi``      option tables and the checks every option goes through
``_gguf_check.pxi``   the GGUF pre-check: files llama.cpp would abort on are refused first
``_model.pxi``        ``load_model`` and ``Model`` (weights, vocabulary, metadata, pickling)
``_quantize.pxi``     ``quantize_model``: llama.cpp's quantizer, input checked, output atomic
``_texts.pxi``        many texts in: borrowed UTF-8 buffers for loops without the GIL
``_tokens.pxi``       tokenize / detokenize into numpy arrays filled in C
``_token_batch.pxi``  tokenize many texts in C++ threads (``_token_batch.h``); pieces
``_vocab.pxi``        the vocabulary as arrays: texts, scores, attributes, special ids
``_context.pxi``      ``Context`` (KV cache, options read back from llama.cpp)
``_sampler.pxi``      sampler chains, always ending in a selecting sampler
``_grammar.pxi``      grammars and JSON schemas: compiled per model, sampled safely
``_logprobs.pxi``     log-softmax and top-k of a row of logits, without the GIL
``_generate.pxi``     the decode-sample-accept loop, run without the GIL
``_speculative.pxi``  draft proposals (a draft model or prompt lookup) and their verification
``_generate_batch.pxi`` many prompts decoded together in n_parallel slots (continuous batching)
``_embed.pxi``        batch embeddings: tokenize, pack, decode, pool into (N, D) arrays
``_score.pxi``        token log-probabilities of many texts, packed as embeddings are
``_state.pxi``        saving and loading a context's KV cache, checked before llama.cpp reads it
====================  =========================================================

C++ headers beside them, for what must run without the GIL or catch C++ exceptions:
``_errors.h`` (C++ exceptions to Python errors), ``_log.h`` (the log buffer), ``_native.h``
(counting long native calls, stopped at exit), ``_tokenize.h`` (tokenization on a stack big
enough for std::regex), ``_progress.h`` and ``_token_batch.h`` (threaded tokenizing),
``_logsoftmax.h`` (log-softmax rows of a scoring decode on several threads), ``_json_schema.h``
(llama.cpp's JSON-schema converter, compiled with ``_json_schema.cpp``).

Layers. Below the core: llama.cpp and ggml (``includes/*.pxd`` declare their headers), and
pure-Python modules the core builds its results from, which never import it at import time:
``errors``, ``stats``, ``encoding``, ``token_batch``, ``token_embeddings``, ``vocab``,
``_optional``, ``_cpus``, ``_pickling`` (what a pickled model carries; it imports the core only
when unpickling). Above it: ``chat`` (templates; calls ``chat_specials``),
``vocab.Vocab`` (calls ``vocab_info``, ``vocab_table``, ``vocab_pieces``), ``streaming``,
``system``, ``jobs`` (resumable file jobs), ``cli`` (the console script), ``integrations``
(Ray, Dask) and the package's ``__init__``, which loads the core through ``_loader`` (one CPU
variant per process). The layers above use the core's public names and these module
functions only, never private attributes of ``Model`` or ``Context``.

Users import :mod:`llama_cython`, not this module.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.pythread cimport PyThread_get_thread_ident
from cpython.ref cimport PyObject, Py_DECREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.math cimport INFINITY, NAN, exp, expf, fmax, isfinite, log, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t, uintptr_t, INT32_MAX, INT32_MIN
from libc.string cimport memcmp, memcpy, memset, strcmp
from libcpp cimport bool as cppbool
from libcpp.deque cimport deque
from libcpp.mutex cimport mutex
from libcpp.pair cimport pair
from libcpp.string cimport string, to_string
from libcpp.unordered_set cimport unordered_set
from libcpp.vector cimport vector

from llama_cython.includes cimport ggml
from llama_cython.includes cimport llama as ll

import atexit
import collections
import logging
import os
import re
import threading
import weakref

import numpy as np

from llama_cython.errors import (
    AllocationError,
    ClosedError,
    ContextBusyError,
    ContextError,
    ContextSizeError,
    DecodeError,
    GrammarError,
    LlamaError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    SchemaError,
    StateError,
    TokenizeError,
)
from llama_cython import _pickling
from llama_cython._optional import require
from llama_cython.encoding import Encoding
from llama_cython.stats import (
    BatchStats, ChatResponse, ChatUsage, EmbeddingStats, GenerationStats, TokenLogprobs,
)
from llama_cython.token_batch import TokenBatch
from llama_cython.token_embeddings import TokenEmbeddings
from llama_cython.vocab import Vocab

include "_log.pxi"
include "_errors.pxi"
include "_options.pxi"
include "_texts.pxi"
include "_gguf_check.pxi"
include "_model.pxi"
include "_quantize.pxi"
include "_tokens.pxi"
include "_token_batch.pxi"
include "_vocab.pxi"
include "_context.pxi"
include "_sampler.pxi"
include "_grammar.pxi"
include "_logprobs.pxi"
include "_generate.pxi"
include "_speculative.pxi"
include "_generate_batch.pxi"
include "_embed.pxi"
include "_score.pxi"
include "_state.pxi"


# Process-wide setup, once, at import: the log callback first so that nothing reaches stderr,
# then the backends.
atexit.register(_stop_native_work)
ll.llama_log_set(_log_callback, NULL)
with nogil:
    ll.llama_backend_init()
_drain_log()


def llama_system_info() -> str:
    """llama.cpp's own line on the backends and CPU features this build uses
    (``llama_print_system_info``); :func:`llama_cython.system_info` parses it."""
    with _global_lock:   # llama_print_system_info returns a static std::string buffer
        return (<bytes>ll.llama_print_system_info()).decode("utf-8", "replace")


def supports_gpu_offload() -> bool:
    """True when this build has a GPU backend (CUDA, Metal, Vulkan...) that can hold layers."""
    return ll.llama_supports_gpu_offload()


def max_devices() -> int:
    """The most devices ``tensor_split`` can name (llama.cpp's ``llama_max_devices()``)."""
    return ll.llama_max_devices()
