# Context: owns a llama_context* and its batch. One thread at a time.

_KV_REPORT = re.compile(r"K \((\w+)\):.*V \((\w+)\):")
cdef enum:
    _HOLD_CALL = 1
    _HOLD_STREAM = 2

cdef int _KV_PAD = 256       # llama.cpp pads n_ctx and each sequence's share to this


cdef cppbool _abort_callback(void * data) noexcept nogil:
    # Called by llama.cpp's CPU backend after every graph node, without the GIL: a plain read.
    return (<volatile int *>data)[0] != 0


# Data-parallel embedding (see _embed.pxi): the default number of workers of an embeddings
# context. A model without a KV cache (BERT-like encoders) of at most 1 GiB gets one worker per
# batch thread, up to 8 (each worker's context holds its own compute buffers: about 50 MB
# for all-MiniLM); others embed on the context alone, where ggml's ops are long enough for the
# threads to share them, and a second context would double the KV cache.
cdef int _MAX_EMBED_WORKERS = 8
cdef uint64_t _EMBED_WORKERS_MAX_MODEL_BYTES = <uint64_t>1 << 30


cdef int _embed_worker_default(Model model, ll.llama_context * raw, int n_threads_batch,
                               object asked) except -1:
    if asked is not None:
        return asked
    if (n_threads_batch < 2 or ll.llama_get_memory(raw) != NULL
            or ll.llama_model_size(model._model) > _EMBED_WORKERS_MAX_MODEL_BYTES):
        return 1
    return min(n_threads_batch, _MAX_EMBED_WORKERS)


@cython.no_gc_clear
@cython.final
cdef class Context:
    """One KV cache and the state of one conversation, on a :class:`Model`.

    Create it with ``model.new_context(...)``. A context is used by one thread at a time: a
    second thread calling it while it is busy gets :class:`ContextBusyError` at once. Use one
    context per thread; they share the model's weights and run in parallel.
    """

    cdef ll.llama_context * _ctx
    cdef ll.llama_batch_ext * _batch
    cdef readonly Model model
    cdef bint _held                   # a call or a stream holds the context; guarded by the GIL
    cdef unsigned long _owner         # thread ident of the holder
    cdef int _owner_kind              # what holds it: _HOLD_CALL or _HOLD_STREAM
    cdef volatile int _abort
    cdef readonly str prefix_caching  # "exact", "any" or "off"
    cdef readonly object kv_cache_type
    cdef readonly str flash_attn
    cdef readonly object last_stats
    cdef readonly int cached_tokens   # prompt tokens the last generation took from the KV cache
    cdef vector[ll.llama_token] _kv   # tokens of sequence 0 in the KV cache, in position order
    cdef int32_t _kv_exact            # leading _kv entries computed as a fresh context would
    cdef bint _logits_ok              # the last decode left logits for its last position
    cdef readonly object last_embedding_stats
    cdef readonly object last_batch_stats
    cdef bint _embeddings
    cdef dict _spec                   # new_context's options, as pickle carries them
    cdef ll.llama_context_params _params   # what the context was created with
    cdef readonly int embed_workers   # contexts that embed batches side by side (1: this one)
    cdef int _worker_threads          # threads of each when embed_workers > 1
    cdef vector[ll.llama_context *] _wctx       # the other workers' contexts, made at first use
    cdef vector[ll.llama_batch_ext *] _wbatch
    cdef object __weakref__

    def __cinit__(self):
        self._ctx = NULL
        self._batch = NULL
        self._abort = 0

    def __init__(self, *args, **kwargs):
        raise TypeError("Context cannot be created directly; use model.new_context()")

    @staticmethod
    cdef Context _create(Model model, object n_ctx, object n_batch, object n_ubatch,
                         object n_threads, object n_threads_batch, object kv_cache_type,
                         object flash_attn, object embeddings, object pooling,
                         object n_parallel, object prefix_caching, object kv_unified=None,
                         object embed_workers=None):
        cdef int32_t n_ctx_train = ll.llama_model_n_ctx_train(model._model)
        if model.vocab_only:
            raise ContextError("the model was loaded with vocab_only=True; it has no weights to run")
        if n_ctx is None:
            n_ctx = min(2048, n_ctx_train) if n_ctx_train > 0 else 2048
        _check_int(n_ctx, "n_ctx", 0, INT32_MAX)
        if n_ctx_train <= 0 and n_ctx == 0:
            raise OptionError("the model does not state its trained context length; pass n_ctx > 0")
        if 0 < n_ctx_train < n_ctx:
            raise ContextSizeError(
                f"context size exceeds model maximum: n_ctx={n_ctx} but the model was trained "
                f"for {n_ctx_train} tokens")
        _check_int(n_batch, "n_batch", 1, INT32_MAX)
        if n_ubatch is None:
            n_ubatch = min(512, n_batch)
        _check_int(n_ubatch, "n_ubatch", 1, n_batch)
        n_cpus = _cpus.available_cpus()
        if n_threads is None:
            n_threads = _cpus.default_threads()
        _check_threads(n_threads, "n_threads", n_cpus)
        if n_threads_batch is None:
            n_threads_batch = n_threads
        _check_threads(n_threads_batch, "n_threads_batch", n_cpus)
        if embed_workers is not None:
            _check_int(embed_workers, "embed_workers", 1, n_threads_batch)
            if embed_workers > 1 and embeddings is not True:
                raise OptionError("embed_workers > 1 needs an embeddings=True context")
        cdef int max_seq = <int>ll.llama_max_parallel_sequences()
        if n_parallel is None:
            n_parallel = 1
            if embeddings is True:
                n_parallel = min(128, max_seq, n_batch, n_ctx if n_ctx else n_ctx_train)
        _check_int(n_parallel, "n_parallel", 1, max_seq)
        if not isinstance(kv_cache_type, str):
            raise TypeError(f"kv_cache_type must be a str, got {type(kv_cache_type).__name__}")
        kv = _lookup(_KV_TYPES, kv_cache_type.lower(), "kv_cache_type")
        if not isinstance(flash_attn, (str, bool, type(None))):
            raise TypeError(f"flash_attn must be 'auto', 'on', 'off' or a bool, got {type(flash_attn).__name__}")
        fa = _lookup(_FLASH_ATTN, flash_attn.lower() if isinstance(flash_attn, str) else flash_attn,
                     "flash_attn")
        if not isinstance(pooling, (str, type(None))):
            raise TypeError(f"pooling must be a str or None, got {type(pooling).__name__}")
        pool = _lookup(_POOLING, pooling.lower() if isinstance(pooling, str) else pooling, "pooling")
        if not isinstance(embeddings, bool):
            raise TypeError(f"embeddings must be a bool, got {type(embeddings).__name__}")
        if embeddings and pool == ll.LLAMA_POOLING_TYPE_UNSPECIFIED:
            # A model that states no pooling (a causal LM such as SmolLM2: llama.cpp would give
            # one vector per token) is mean-pooled: an embeddings context gives one vector per
            # text unless pooling="none" is asked for.
            meta = model.metadata
            if f"{meta.get('general.architecture', '')}.pooling_type" not in meta:
                pool = ll.LLAMA_POOLING_TYPE_MEAN
        if not isinstance(prefix_caching, (str, bool)):
            raise TypeError(f"prefix_caching must be 'exact', 'any', 'off' or a bool, "
                            f"got {type(prefix_caching).__name__}")
        prefix_mode = _lookup(_PREFIX_CACHING, prefix_caching.lower()
                              if isinstance(prefix_caching, str) else prefix_caching,
                              "prefix_caching")
        if ggml.ggml_is_quantized(<ggml.ggml_type>kv) and fa == ll.LLAMA_FLASH_ATTN_TYPE_DISABLED:
            # llama.cpp refuses a quantized V cache without flash attention (returns NULL).
            raise OptionError(f"kv_cache_type={kv_cache_type!r} needs flash attention; "
                              "use flash_attn='auto' or 'on'")
        # One output per sequence must fit the batch, or llama.cpp aborts while creating the
        # context (output_reserve asserts n_seq_max <= n_outputs_max = n_batch).
        eff_ctx = n_ctx if n_ctx else n_ctx_train
        if n_parallel > min(eff_ctx, n_batch):
            raise OptionError(f"n_parallel={n_parallel} must not exceed n_batch ({n_batch}) "
                              f"or n_ctx ({eff_ctx})")
        if kv_unified is not None and not isinstance(kv_unified, bool):
            raise TypeError(f"kv_unified must be a bool or None, got {type(kv_unified).__name__}")
        unified = (embeddings if kv_unified is None else kv_unified) and n_parallel > 1
        if n_parallel > 1 and not unified:
            # Each sequence gets its own share of the cache: n_ctx // n_parallel tokens, which
            # llama.cpp rounds UP to a multiple of 256 (n_ctx=512 with n_parallel=256 would
            # allocate 256 x 256 = 65,536 cells). Round the share down instead, so that the
            # total never exceeds what was asked for, and refuse shares below 256.
            per_seq = (eff_ctx // n_parallel) // _KV_PAD * _KV_PAD
            if per_seq < _KV_PAD:
                raise OptionError(
                    f"n_ctx={eff_ctx} split over n_parallel={n_parallel} sequences leaves "
                    f"{eff_ctx // n_parallel} tokens each; llama.cpp gives every sequence a "
                    f"multiple of {_KV_PAD} tokens, so n_ctx must be at least "
                    f"{_KV_PAD * n_parallel} (or use fewer sequences)")
            n_ctx = per_seq * n_parallel

        cdef ll.llama_context_params p = ll.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = n_ubatch
        p.n_seq_max = n_parallel
        p.n_threads = n_threads
        p.n_threads_batch = n_threads_batch
        p.type_k = <ggml.ggml_type>kv
        p.type_v = <ggml.ggml_type>kv
        p.flash_attn_type = <ll.llama_flash_attn_type>fa
        p.pooling_type = <ll.llama_pooling_type>pool
        p.embeddings = embeddings
        # Embedding batches pack many short sequences: one KV cache for all of them (as
        # llama.cpp's embedding example does), not n_ctx / n_parallel tokens each.
        p.kv_unified = unified
        p.no_perf = True

        cdef Context self = Context.__new__(Context)
        self.model = model
        self.prefix_caching = prefix_mode
        self._embeddings = embeddings
        p.abort_callback = _abort_callback
        p.abort_callback_data = <void *>&self._abort

        cdef ll.llama_context * raw = NULL
        _log_sync_level()
        mark = _log_mark()
        with _global_lock:   # also serialises the log capture of concurrent creations
            _log_capture_begin()
            try:
                with nogil:
                    raw = ll.llama_init_from_model(model._model, p)
            finally:
                report = _log_capture_end()
        _drain_log()
        if raw == NULL:
            raise _creation_error("new_context", mark, "llama.cpp could not create the context")
        self._ctx = raw
        self._batch = ll.llama_batch_ext_init(raw)
        if self._batch == NULL:
            ll.llama_free(raw)
            self._ctx = NULL
            raise AllocationError("new_context: failed to allocate the batch")
        self._read_report(report, fa)
        self._params = p
        self.embed_workers = 1
        if embeddings:
            self.embed_workers = _embed_worker_default(model, raw, n_threads_batch, embed_workers)
        self._worker_threads = max(1, n_threads_batch // self.embed_workers)
        if (embeddings and ll.llama_pooling_type_of(raw) == ll.LLAMA_POOLING_TYPE_RANK
                and not model._has_cls_head):
            # llama.cpp would keep n_cls_out (1) float per sequence of the plain hidden state.
            ll.llama_batch_ext_free(self._batch)
            self._batch = NULL
            ll.llama_free(raw)
            self._ctx = NULL
            raise OptionError("pooling='rank' needs a model with a classification head (a reranker: "
                              "cls / cls.output tensors); this model has none")
        model._contexts.add(self)
        return self

    cdef _read_report(self, list lines, object fa):
        """Effective KV type and flash attention, as llama.cpp reported them while creating."""
        self.kv_cache_type = None         # models without a KV cache (BERT-like) report none
        for line in lines:
            m = _KV_REPORT.search(line)
            if m is not None:
                self.kv_cache_type = m.group(1) if m.group(1) == m.group(2) else f"{m.group(1)}/{m.group(2)}"
        if fa == ll.LLAMA_FLASH_ATTN_TYPE_ENABLED:
            self.flash_attn = "on"
        elif fa == ll.LLAMA_FLASH_ATTN_TYPE_DISABLED:
            self.flash_attn = "off"
        else:
            self.flash_attn = "off"
            for line in lines:
                if "Flash Attention enabled" in line:
                    self.flash_attn = "on"
        for line in lines:
            if "enabling flash_attn" in line:
                self.flash_attn = "on"

    cdef void _free_workers(self) noexcept:
        cdef size_t i
        for i in range(self._wbatch.size()):
            ll.llama_batch_ext_free(self._wbatch[i])
        self._wbatch.clear()
        for i in range(self._wctx.size()):
            ll.llama_free(self._wctx[i])
        self._wctx.clear()

    cdef int _embed_worker_count(self, int64_t n_batches) except -1:
        """How many workers embed ``n_batches`` batches (at most one per batch); the contexts of
        workers 1.. are created the first time they are needed and kept until close()."""
        cdef int k = <int>min(<int64_t>self.embed_workers, max(n_batches, <int64_t>1))
        cdef ll.llama_context_params p = self._params
        cdef ll.llama_context * raw
        cdef ll.llama_batch_ext * batch
        p.n_threads = self._worker_threads
        p.n_threads_batch = self._worker_threads
        while <int>self._wctx.size() < k - 1:
            with nogil:
                raw = ll.llama_init_from_model(self.model._model, p)
            _drain_log()
            if raw == NULL:
                raise AllocationError("llama.cpp could not create an embedding worker's context "
                                      "(new_context(embed_workers=1) embeds on this one alone)")
            batch = ll.llama_batch_ext_init(raw)
            if batch == NULL:
                ll.llama_free(raw)
                raise AllocationError("could not allocate an embedding worker's batch")
            self._wctx.push_back(raw)
            self._wbatch.push_back(batch)
        return k

    def __dealloc__(self):
        self._free_workers()
        if self._batch != NULL:
            ll.llama_batch_ext_free(self._batch)
            self._batch = NULL
        if self._ctx != NULL:
            ll.llama_free(self._ctx)
            self._ctx = NULL

    # -- guards -----------------------------------------------------------------------------

    cdef inline int _check_open(self) except -1:
        if self._ctx == NULL:
            raise ClosedError("context is closed")
        if self.model._model == NULL:      # cannot happen: the model refuses to close first
            raise ClosedError("model is closed")
        return 0

    # The one guard of every operation that reaches llama.cpp through this context: _enter
    # takes the context (or fails at once with ContextBusyError) and checks that it is open;
    # _leave, in a ``finally`` (or when a stream ends), after the last C call. close() takes
    # it too, so it cannot free the context under a running call. Taking never waits, and
    # every test-and-set runs with the GIL held, so a flag is the whole lock; _leave cannot
    # fail, so a stream's deallocator can always hand the context back.

    cdef str _busy_reason(self):
        if self._owner == threading.get_ident():
            if self._owner_kind == _HOLD_STREAM:
                return ("an open GenerationStream of this thread holds it; exhaust or close() "
                        "the stream first")
            return ("a call on it is running in this thread (this was called from a callback "
                    "or from an input that call is reading)")
        what = "an open GenerationStream" if self._owner_kind == _HOLD_STREAM else "a call"
        return f"{what} in another thread is using it (use one context per thread)"

    cdef int _enter(self, int kind=_HOLD_CALL) except -1:
        """Take the context for this thread and check it is open, or fail at once if busy."""
        self._check_open()
        if self._held:
            raise ContextBusyError(f"context is busy: {self._busy_reason()}")
        if kind == _HOLD_CALL:
            _native_begin()         # a stream counts only while it runs (GenerationStream._run)
        self._held = True
        self._owner = PyThread_get_thread_ident()
        self._owner_kind = kind
        self._abort = 0
        return 0

    cdef inline void _leave(self) noexcept:
        if self._owner_kind == _HOLD_CALL:
            native_end()
        self._owner = 0
        self._owner_kind = 0
        self._held = False

    # -- lifetime ---------------------------------------------------------------------------

    def close(self):
        """Free the KV cache now. Idempotent; raises ContextBusyError while another thread uses it."""
        if self._ctx == NULL:
            return
        if self._held:
            raise ContextBusyError(f"cannot close the context now: {self._busy_reason()}")
        self._held = True
        try:
            self._free_workers()
            if self._batch != NULL:
                ll.llama_batch_ext_free(self._batch)
                self._batch = NULL
            with nogil:
                ll.llama_free(self._ctx)
            self._ctx = NULL
            self.model._contexts.discard(self)
        finally:
            self._held = False

    @property
    def closed(self):
        """True once :meth:`close` has run."""
        return self._ctx == NULL

    @property
    def options(self):
        """The options :meth:`Model.new_context` was given, as a new dict (what a pickled
        context is created with again)."""
        return dict(self._spec)

    def __reduce__(self):
        """Pickle as the model plus the creation options: unpickling creates a fresh context
        on the (reloaded) model. The KV cache and conversation do not travel."""
        self._check_open()
        return (_pickling.restore_context, (self.model, dict(self._spec)))

    def __dask_tokenize__(self):
        self._check_open()
        return ("llama_cython.Context", self.model.__dask_tokenize__(),
                tuple(sorted((k, repr(v)) for k, v in self._spec.items())))

    @property
    def busy(self):
        """True while a call or an open :class:`GenerationStream` holds the context (another
        thread's call would get :class:`ContextBusyError`). A snapshot: it may change at once."""
        return self._held

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._ctx == NULL:
            return "<llama_cython.Context closed>"
        return (f"<llama_cython.Context n_ctx={self.n_ctx} n_batch={self.n_batch} "
                f"n_threads={self.n_threads} kv_cache_type={self.kv_cache_type!r}>")

    # -- effective options, read back from llama.cpp ------------------------------------------

    @property
    def n_ctx(self):
        """Tokens the context holds (llama.cpp's effective value, padded to 256)."""
        self._check_open()
        return ll.llama_n_ctx(self._ctx)

    @property
    def n_ctx_seq(self):
        """Tokens each parallel sequence may hold."""
        self._check_open()
        return ll.llama_n_ctx_seq(self._ctx)

    @property
    def n_batch(self):
        """Most tokens per decode call."""
        self._check_open()
        return ll.llama_n_batch(self._ctx)

    @property
    def n_ubatch(self):
        """Physical micro-batch size."""
        self._check_open()
        return ll.llama_n_ubatch(self._ctx)

    @property
    def n_threads(self):
        """Threads used for generation."""
        self._check_open()
        return ll.llama_n_threads(self._ctx)

    @property
    def n_threads_batch(self):
        """Threads used for prompt and batch processing."""
        self._check_open()
        return ll.llama_n_threads_batch(self._ctx)

    @property
    def n_parallel(self):
        """Sequences the context can hold at once."""
        self._check_open()
        return ll.llama_n_seq_max(self._ctx)

    @property
    def kv_unified(self):
        """True when the parallel sequences share one KV cache (``kv_unified=True``, the default
        of an embedding context with ``n_parallel`` > 1): read back from llama.cpp, where each
        sequence may then use the whole cache (``n_ctx_seq == n_ctx``). False with one sequence."""
        self._check_open()
        return (ll.llama_n_seq_max(self._ctx) > 1
                and ll.llama_n_ctx_seq(self._ctx) == ll.llama_n_ctx(self._ctx))

    @property
    def embeddings(self):
        """True when the context computes embeddings (llama.cpp allocated an embedding buffer)."""
        self._check_open()
        return ll.llama_get_embeddings(self._ctx) != NULL

    @property
    def pooling(self):
        """Effective pooling of embeddings: 'none', 'mean', 'cls', 'last' or 'rank'."""
        self._check_open()
        return _POOLING_NAMES.get(ll.llama_pooling_type_of(self._ctx), "none")

    @property
    def n_past(self):
        """Tokens currently in the KV cache of sequence 0."""
        self._check_open()
        return ll.llama_memory_seq_pos_max(ll.llama_get_memory(self._ctx), 0) + 1

    # -- tokens -----------------------------------------------------------------------------

    def tokenize(self, text, add_special=True, parse_special=False):
        """Same as :meth:`Model.tokenize` (the vocabulary belongs to the model)."""
        self._check_open()
        return self.model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens, remove_special=False, unparse_special=False):
        """Same as :meth:`Model.detokenize`."""
        self._check_open()
        return self.model.detokenize(tokens, remove_special, unparse_special)

    def token_to_piece(self, token, special=True):
        """Same as :meth:`Model.token_to_piece`."""
        self._check_open()
        return self.model.token_to_piece(token, special)

    # -- generation -------------------------------------------------------------------------
    #
    # Sampling keywords (``**sampling``), the same for every method below:
    #   temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, typical_p=1.0,
    #   repetition_penalty=1.0, repeat_last_n=64, presence_penalty=0.0, frequency_penalty=0.0,
    #   ignore_eos=False, seed=None

    def generate(self, prompt, *, max_tokens=128, stop=None, **sampling):
        """Continue ``prompt`` and return the generated text (``str``).

        The whole loop (decode the prompt, then sample, accept, decode one token at a time)
        runs in C with the GIL released. Generation ends at an end-of-generation token of the
        model, at a stop string, after ``max_tokens`` tokens, or when the context is full;
        ``ctx.last_stats`` tells which (``finish_reason``), with token counts and timings.

        With ``prefix_caching`` (``"exact"`` by default), the beginning of the prompt that is
        already in the KV cache from the previous call is not decoded again
        (``ctx.cached_tokens`` tells how many tokens were reused). ``"exact"`` reuses only
        whole ``n_ubatch`` batches of earlier prompts, so the output is bit for bit what a fresh
        context gives; ``"any"`` reuses the longest common prefix, up to rounding.

        Parameters
        ----------
        prompt : str
            The text to continue. Special-token text (``<|im_start|>``...) is parsed as tokens.
        max_tokens : int
            Most tokens to generate.
        stop : str or sequence of str, optional
            Generation ends where the text contains one of these; the stop string itself is
            not returned. Matched on the text, across token boundaries.
        temperature : float
            0 picks the most likely token every time (greedy, deterministic); higher is more random.
        top_k, top_p, min_p, typical_p : int, float, float, float
            Keep the ``top_k`` most likely tokens (0: all), the smallest set whose probability
            reaches ``top_p`` (1: all), tokens at least ``min_p`` times as likely as the best
            one (0: all), and the locally typical set of mass ``typical_p`` (1: off).
        repetition_penalty, presence_penalty, frequency_penalty : float
            Penalties on tokens seen in the last ``repeat_last_n`` generated tokens (-1: all):
            divide their logits (1.0: off), subtract a constant once (0: off), subtract in
            proportion to their count (0: off).
        ignore_eos : bool
            Never pick an end-of-generation token: generate ``max_tokens`` tokens.
        seed : int, optional
            Seed of the random sampler; the same seed gives the same text. ``None``: random.

        Examples
        --------
        >>> ctx = model.new_context(n_ctx=512)                            # doctest: +SKIP
        >>> ctx.generate("The capital of France is", max_tokens=8, temperature=0)  # doctest: +SKIP
        ' Paris. It is the largest city in France'
        """
        return _start_generation(self, prompt, True, max_tokens, stop, sampling)._run_to_end()

    def generate_stream(self, prompt, *, max_tokens=128, stop=None, callback=None, **sampling):
        """Like :meth:`generate`, but the text comes as it is made: a :class:`GenerationStream`.

        Iterate over it for ``str`` pieces; each is whole UTF-8 and holds no part of a stop
        string, and the pieces add up to what :meth:`generate` returns for the same seed.

        With ``callback``, the stream is run here: ``callback(piece)`` is called for every
        piece, and returning ``False`` stops generation (``finish_reason == "cancelled"``). The
        finished stream is returned (its ``text``, ``finish_reason``, ``stats``).

        >>> for piece in ctx.generate_stream("Once upon a time", max_tokens=32):  # doctest: +SKIP
        ...     print(piece, end="", flush=True)
        """
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        cdef GenerationStream stream = _start_generation(self, prompt, True, max_tokens, stop, sampling)
        if callback is not None:
            _drive_callback(stream, callback)
        return stream

    def generate_async(self, prompt, *, max_tokens=128, stop=None, **sampling):
        """Like :meth:`generate_stream`, as an async iterator for asyncio.

        Decoding runs in a worker thread, so the event loop is never blocked. Cancelling the
        task that iterates (``task.cancel()``, ``asyncio.timeout``...) stops generation within
        one token and hands the context back before the cancellation propagates; so does
        ``await stream.aclose()``.

        >>> async for piece in ctx.generate_async("Once upon a time"):  # doctest: +SKIP
        ...     print(piece, end="")
        """
        from llama_cython.streaming import AsyncGenerationStream
        return AsyncGenerationStream(_start_generation(self, prompt, True, max_tokens, stop, sampling))

    # -- speculative decoding ---------------------------------------------------------------

    def generate_with_draft(self, prompt, draft, *, n_draft=16, adaptive=True, max_tokens=128,
                            stop=None, **sampling):
        """Like :meth:`generate`, faster: ``draft`` proposes tokens, this model checks them in
        one decode (speculative decoding). The text is what :meth:`generate` gives.

        Parameters
        ----------
        prompt : str
            The text to continue, as for :meth:`generate`.
        draft : Context or "prompt"
            A context of a smaller model with the same vocabulary (checked: a draft whose
            tokens mean other things is refused with ``OptionError``); it is busy during the
            call. Or ``"prompt"``: prompt lookup, no second model. The tokens that followed
            the latest earlier occurrence of the text's last few tokens (2 to 8, longest
            first; prompt and output) are proposed. It pays where the answer copies its input:
            extraction, quoting, summaries, code edits.
        n_draft : int
            Most tokens proposed per step (1-64).
        adaptive : bool
            Choose each step's draft length from this generation's own measurements
            (acceptance at each draft position, decode time by batch size), drafting nothing
            when drafting does not pay. ``False`` always drafts ``n_draft`` tokens (prompt
            lookup: as many as it finds), as llama.cpp's example does.
        max_tokens, stop, temperature, top_k, top_p, min_p, typical_p, repetition_penalty,
        repeat_last_n, presence_penalty, frequency_penalty, ignore_eos, seed
            As for :meth:`generate`.

        Notes
        -----
        Every token is sampled from this model's own distribution at its position, as
        :meth:`generate` samples it; a drafted token is kept only when it is the token sampled.
        Greedy output (``temperature=0``) is therefore :meth:`generate`'s, up to the rounding
        of batched arithmetic (see the guide); with sampling the text has the same
        distribution. With a draft model and ``temperature > 0`` a drafted token x is kept with
        probability min(1, p(x)/q(x)) (p: this model's distribution, q: the draft's) and
        otherwise replaced by a draw from max(0, p - q): the standard rule, which keeps p and
        accepts more than drawing from p and comparing. ``seed`` makes sampled text repeat
        with prompt lookup, and with a draft model when ``adaptive=False`` (adaptive draft
        lengths follow timings, and the rule draws where it drafts).
        ``ctx.last_stats`` counts ``draft_tokens``, ``accepted_tokens`` and ``decodes``
        (``acceptance_rate``, ``tokens_per_decode``).

        Examples
        --------
        >>> draft_ctx = small_model.new_context(n_ctx=2048)                   # doctest: +SKIP
        >>> ctx.generate_with_draft("The capital of France is", draft_ctx,
        ...                         max_tokens=32, temperature=0)             # doctest: +SKIP
        >>> ctx.generate_with_draft(document + "\nQuote the title:", "prompt")  # doctest: +SKIP
        """
        return _start_generation(self, prompt, True, max_tokens, stop, sampling,
                                 draft, n_draft, adaptive)._run_to_end()

    def generate_with_draft_stream(self, prompt, draft, *, n_draft=16, adaptive=True,
                                   max_tokens=128, stop=None, callback=None, **sampling):
        """:meth:`generate_with_draft` as a :class:`GenerationStream` (see
        :meth:`generate_stream`): pieces come as drafts are accepted, several tokens at once."""
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        cdef GenerationStream stream = _start_generation(self, prompt, True, max_tokens, stop,
                                                         sampling, draft, n_draft, adaptive)
        if callback is not None:
            _drive_callback(stream, callback)
        return stream

    # -- chat -------------------------------------------------------------------------------

    cdef GenerationStream _start_chat(self, object messages, object template, object template_kwargs,
                                      object add_generation_prompt, object max_tokens, object stop,
                                      dict sampling):
        self._check_open()
        from llama_cython.chat import render_model_chat
        text, add_special = render_model_chat(
            self.model, messages, template=template, template_kwargs=template_kwargs,
            add_generation_prompt=add_generation_prompt)
        return _start_generation(self, text, add_special, max_tokens, stop, sampling)

    def chat(self, messages, *, max_tokens=512, stop=None, template=None, template_kwargs=None,
             add_generation_prompt=True, **sampling):
        """Answer a conversation; returns a :class:`ChatResponse` (content, finish_reason, usage).

        ``messages`` is a sequence of :class:`ChatMessage` or dicts with ``role`` and
        ``content``. The prompt is rendered with the model's own chat template
        (``model.chat_template``) in a sandboxed Jinja2 environment, or with ``template``;
        ``template_kwargs`` are extra template variables (e.g. ``{"enable_thinking": False}``).
        Sampling keywords are those of :meth:`generate`. Turns that share a long beginning
        (a system prompt) reuse its KV cache unless ``prefix_caching`` is off.

        >>> reply = ctx.chat([{"role": "user", "content": "What is the capital of France?"}],
        ...                  temperature=0)                            # doctest: +SKIP
        >>> reply.content                                              # doctest: +SKIP
        'The capital of France is Paris.'
        """
        cdef GenerationStream stream = self._start_chat(
            messages, template, template_kwargs, add_generation_prompt, max_tokens, stop, sampling)
        content = stream._run_to_end()
        st = stream._stats
        parsed = None
        if stream._grammar is not None and stream._grammar.schema is not None and st.finish_reason == "stop":
            parsed = stream._grammar.parse(content)
        return ChatResponse(content=content, finish_reason=st.finish_reason,
                            usage=ChatUsage(st.prompt_tokens, st.completion_tokens, st.cached_tokens),
                            stats=st, parsed=parsed)

    def chat_stream(self, messages, *, max_tokens=512, stop=None, template=None, template_kwargs=None,
                    add_generation_prompt=True, callback=None, **sampling):
        """:meth:`chat` as a :class:`GenerationStream` of pieces (see :meth:`generate_stream`)."""
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable, got {type(callback).__name__}")
        cdef GenerationStream stream = self._start_chat(
            messages, template, template_kwargs, add_generation_prompt, max_tokens, stop, sampling)
        if callback is not None:
            _drive_callback(stream, callback)
        return stream

    def chat_async(self, messages, *, max_tokens=512, stop=None, template=None, template_kwargs=None,
                   add_generation_prompt=True, **sampling):
        """:meth:`chat` as an async iterator of pieces (see :meth:`generate_async`)."""
        from llama_cython.streaming import AsyncGenerationStream
        return AsyncGenerationStream(self._start_chat(
            messages, template, template_kwargs, add_generation_prompt, max_tokens, stop, sampling))

    # -- embeddings ---------------------------------------------------------------------------

    cdef int _check_embeddings(self) except -1:
        self._check_open()
        if not self._embeddings:
            raise ContextError("this context was created without embeddings=True; "
                               "use model.new_context(embeddings=True) to get embeddings")
        return 0

    def get_embeddings_batch(self, texts, *, normalize=True, out=None, truncate=True,
                             progress=None, batch_tokens=None, nulls="raise", format="numpy"):
        """Embed many texts: a float32 array of shape ``(len(texts), n_embd)``, rows in input order.

        Texts are tokenized, sorted by length and packed into batches in C with the GIL
        released; each text's pooled vector (pooling as the model says, or as chosen with
        ``new_context(pooling=...)``) is written straight into its row, L2-normalised when
        ``normalize`` is true.

        A context created with ``pooling="none"`` gives one vector per token instead: use
        :meth:`get_token_embeddings` there (this method raises :class:`ContextError`).

        Parameters
        ----------
        texts : sequence of str
            A list, tuple, numpy array of str, pandas Series, pyarrow (large) string Array or
            ChunkedArray (read straight from its buffers, as is a Series of
            ``string[pyarrow]``), or any iterable of str. An empty sequence gives a
            ``(0, n_embd)`` array. A text with no tokens (an empty string on a model that adds
            no special tokens) gets a row of zeros.
        normalize : bool
            L2-normalise each row (cosine similarity is then a dot product).
        out : numpy.ndarray, optional
            A C-contiguous, writeable float32 array of shape ``(len(texts), n_embd)`` to fill
            in place (and return).
        truncate : bool
            Cut texts longer than the context can embed in one batch (and the model's trained
            length) to that many tokens; ``ctx.last_embedding_stats.truncated`` counts them.
            With ``False`` such a text raises :class:`ContextSizeError` naming its index.
        progress : callable or bool, optional
            ``progress(n)`` is called after each decoded batch with the number of texts
            embedded since the last call (with several :attr:`embed_workers`, those of every
            worker; returning ``False`` stops with :class:`DecodeError`); ``True`` shows a
            tqdm bar.
        batch_tokens : int, optional
            Most tokens per decode (default: 256, and at most the context's ``n_ubatch``).
        nulls : {"raise", "empty", "skip"}
            Missing values (``None``, ``NaN``, ``pd.NA``): a TypeError naming the index, the
            embedding of ``""``, or left out (fewer rows than ``texts``). As in
            :meth:`Model.tokenize_batch`.
        format : {"numpy", "arrow"}
            ``"arrow"`` returns the same memory as a ``pyarrow.FixedSizeListArray`` of
            float32 (a column for ``pa.table`` or Parquet; needs the ``arrow`` extra).

        On a context created with ``pooling="rank"`` (a reranker with a classification head)
        each row holds the model's ``n_cls_out`` scores, not normalised.

        >>> ctx = model.new_context(embeddings=True)                      # doctest: +SKIP
        >>> vectors = ctx.get_embeddings_batch(["a cat", "a dog", "a car"])  # doctest: +SKIP
        >>> vectors.shape, float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])  # doctest: +SKIP
        ((3, 384), True)
        """
        _check_format(format)
        result = self._embed_call(texts, normalize, out, truncate, progress, batch_tokens, nulls, False)
        return _embeddings_as_arrow(result) if format == "arrow" else result

    def get_token_embeddings(self, texts, *, normalize=True, truncate=True, progress=None,
                             batch_tokens=None, nulls="raise"):
        """One vector per token of each text, as :class:`~llama_cython.TokenEmbeddings`.

        Needs a context created with ``embeddings=True, pooling="none"``. The result holds
        ``values`` (``(T, n_embd)`` float32, every text's token vectors end to end) and
        ``offsets`` (``(len(texts) + 1,)``); ``result[i]`` is text i's ``(n_tokens_i, n_embd)``
        view. Each token vector is normalised when ``normalize`` is true. The other options
        are those of :meth:`get_embeddings_batch`.
        """
        return self._embed_call(texts, normalize, None, truncate, progress, batch_tokens, nulls, True)

    cdef object _embed_call(self, object texts, object normalize, object out, object truncate,
                            object progress, object batch_tokens, object nulls, bint tokens_wanted):
        """get_embeddings_batch (one vector per text) or get_token_embeddings (per token)."""
        cdef int32_t budget
        cdef float[:, ::1] view
        self._check_embeddings()
        normalize = _check_bool(normalize, "normalize")
        truncate = _check_bool(truncate, "truncate")
        _check_nulls(nulls)
        cdef _TextBuffers buf = _text_input(texts, "use get_embeddings(text) for one", nulls,
                                            False, "strict", INT32_MAX // 2)
        n = buf.ptrs.size()
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
            if out.dtype != np.float32:
                raise TypeError(f"out must have dtype float32, got {out.dtype}")
            if not out.flags.c_contiguous or not out.flags.writeable:
                raise ValueError("out must be C-contiguous and writeable")
        bar = None
        if progress is True:
            tqdm = require("tqdm.auto", "progress=True (or pass a callable)").tqdm
        elif progress is not None and progress is not False and not callable(progress):
            raise TypeError(f"progress must be callable or a bool, got {type(progress).__name__}")
        # From here on the context is held: nothing (another thread, the input, a callback)
        # can close it until the last C call has returned.
        self._enter()
        t0 = ll.llama_time_us()
        try:
            self._check_embeddings()
            pooling_type = ll.llama_pooling_type_of(self._ctx)
            per_token = pooling_type == ll.LLAMA_POOLING_TYPE_NONE
            if per_token and not tokens_wanted:
                raise ContextError("this context gives one vector per token (pooling 'none'): "
                                   "use ctx.get_token_embeddings(texts), or create the context "
                                   "with a pooling ('mean', 'cls', 'last') for one per text")
            if tokens_wanted and not per_token:
                raise ContextError(f"this context pools one vector per text (pooling "
                                   f"{self.pooling!r}); create it with pooling='none' for one "
                                   "vector per token")
            rank = pooling_type == ll.LLAMA_POOLING_TYPE_RANK
            # rank pooling: llama.cpp keeps n_cls_out scores per sequence, not a vector
            d = (ll.llama_model_n_cls_out(self.model._model) if rank
                 else ll.llama_model_n_embd_out(self.model._model))
            n_ubatch = ll.llama_n_ubatch(self._ctx)
            if batch_tokens is None:
                budget = min(_EMBED_BATCH_TOKENS, n_ubatch)
            else:
                _check_int(batch_tokens, "batch_tokens", 1, n_ubatch)
                budget = batch_tokens
            if out is None:
                result = np.empty((0 if per_token else n, d), dtype=np.float32)
            else:
                if out.shape != (n, d):
                    raise ValueError(f"out must have shape {(n, d)}, got {out.shape}")
                result = out
            if n == 0:
                if per_token:
                    return TokenEmbeddings(np.empty((0, d), dtype=np.float32), np.zeros(1, dtype=np.int64))
                return result
            if progress is True:
                bar = tqdm(total=n, unit="text")
                progress = bar.update
            elif progress is False:
                progress = None
            view = result
            tokens, truncated, batches, values, offsets = _embed_into(
                self, buf, view, normalize and not rank, truncate, progress, budget, per_token, d)
        finally:
            self._leave()
            if bar is not None:
                bar.close()
            _drain_log()
        self.last_embedding_stats = EmbeddingStats(
            texts=n, tokens=tokens, truncated=truncated, batches=batches,
            ms=(ll.llama_time_us() - t0) / 1000.0)
        if per_token:
            return TokenEmbeddings(values, offsets)
        return result

    def get_embeddings(self, text, *, normalize=True, truncate=True):
        """The embedding of one text: a float32 array of shape ``(n_embd,)``.

        On a context whose pooling is ``'none'`` use ``ctx.get_token_embeddings([text])[0]``.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self.get_embeddings_batch((text,), normalize=normalize, truncate=truncate)[0]

    def embed(self, texts, *, normalize=True, batch_size=None, show_progress_bar=False,
              nulls="raise", format="numpy"):
        """Embeddings in one call, as sentence-transformers users expect: a single ``str``
        gives a ``(n_embd,)`` array, a sequence an ``(N, n_embd)`` array.

        ``show_progress_bar=True`` shows a tqdm bar. ``batch_size`` is accepted for
        familiarity and changes nothing: texts are packed into decodes by tokens (see
        ``batch_tokens`` of :meth:`get_embeddings_batch`, which this calls), not by count.
        :meth:`encode` takes sentence-transformers' own parameter names and defaults.

        >>> ctx.embed("a cat").shape, ctx.embed(["a cat", "a dog"]).shape   # doctest: +SKIP
        ((384,), (2, 384))
        """
        if batch_size is not None:
            _check_int(batch_size, "batch_size", 1, INT32_MAX)
        _check_bool(show_progress_bar, "show_progress_bar")
        if isinstance(texts, str):
            _check_format(format)
            one = self.get_embeddings_batch((texts,), normalize=normalize,
                                            progress=True if show_progress_bar else None)
            return _embeddings_as_arrow(one)[0] if format == "arrow" else one[0]
        return self.get_embeddings_batch(texts, normalize=normalize, nulls=nulls, format=format,
                                         progress=True if show_progress_bar else None)

    def encode(self, sentences, *, prompt=None, batch_size=32, show_progress_bar=False,
               output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
               convert_to_tensor=False, device=None, normalize_embeddings=False):
        """sentence-transformers' ``SentenceTransformer.encode``, same names and defaults.

        ``normalize_embeddings`` is False by default, as there (:meth:`embed` and
        :meth:`get_embeddings_batch` normalise by default). ``prompt`` is prepended to each
        sentence. ``output_value="token_embeddings"`` needs a context created with
        ``pooling="none"`` and returns a list of ``(n_tokens, n_embd)`` arrays. Only float32
        numpy output on this process's device exists: ``convert_to_tensor=True``, another
        ``precision`` or a ``device`` other than ``None``/``"cpu"`` raise
        :class:`OptionError`. ``batch_size`` changes nothing (packing is by tokens).

        >>> ctx.encode(["a cat", "a dog"], normalize_embeddings=True).shape   # doctest: +SKIP
        (2, 384)
        """
        if convert_to_tensor:
            raise OptionError("convert_to_tensor=True: llama_cython returns numpy arrays; "
                              "wrap the result with torch.from_numpy(...) for a tensor")
        if precision != "float32":
            raise OptionError(f"precision={precision!r}: only 'float32' embeddings are produced "
                              "(quantize the model itself for smaller weights)")
        if device is not None and device != "cpu":
            raise OptionError(f"device={device!r}: the device is chosen when the model is loaded "
                              "(load_model(n_gpu_layers=...)); pass device=None")
        if output_value not in ("sentence_embedding", "token_embeddings"):
            raise OptionError(f"output_value must be 'sentence_embedding' or 'token_embeddings', "
                              f"got {output_value!r}")
        _check_int(batch_size, "batch_size", 1, INT32_MAX)
        _check_bool(show_progress_bar, "show_progress_bar")
        _check_bool(convert_to_numpy, "convert_to_numpy")
        single = isinstance(sentences, str)
        texts = (sentences,) if single else _text_tuple(sentences, "", "raise")
        if prompt is not None:
            if not isinstance(prompt, str):
                raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
            texts = tuple(prompt + t if isinstance(t, str) else t for t in texts)
        bar = True if show_progress_bar else None
        if output_value == "token_embeddings":
            per_token = self.get_token_embeddings(texts, normalize=normalize_embeddings, progress=bar)
            rows = [per_token[i] for i in range(len(texts))]
            return rows[0] if single else rows
        out = self.get_embeddings_batch(texts, normalize=normalize_embeddings, progress=bar)
        if single:
            return out[0]
        return out if convert_to_numpy else list(out)

    def iter_embeddings(self, texts, *, chunk_size=1024, normalize=True, truncate=True,
                        nulls="raise", progress=None, format="numpy"):
        """Embed an iterable of texts of any length, chunk by chunk, for pipelines.

        Yields float32 arrays of shape ``(chunk_size, n_embd)`` (the last one may be shorter),
        in input order, holding only one chunk of texts and vectors at a time. A list, numpy
        array, pandas Series or pyarrow array is cut into slices (Arrow's without a copy); any
        other iterable is read ``chunk_size`` texts at a time.

        ``progress``: ``True`` shows one tqdm bar over all chunks (its total is ``len(texts)``
        when the input has a length), or a callable ``progress(n)`` called after each decoded
        batch with the texts it embedded. ``format="arrow"`` yields
        ``pyarrow.FixedSizeListArray`` chunks instead (the same memory).

        >>> for block in ctx.iter_embeddings(open("corpus.txt"), chunk_size=4096):  # doctest: +SKIP
        ...     sink.write(block)
        """
        self._check_embeddings()
        if ll.llama_pooling_type_of(self._ctx) == ll.LLAMA_POOLING_TYPE_NONE:
            raise ContextError("this context gives one vector per token (pooling 'none'); "
                               "iter_embeddings yields one vector per text")
        _check_int(chunk_size, "chunk_size", 1, INT32_MAX)
        _check_nulls(nulls)
        _check_format(format)
        if isinstance(texts, (str, bytes)):
            raise TypeError("texts must be an iterable of str, not a single text")
        if progress is True:
            require("tqdm.auto", "progress=True (or pass a callable)")
        elif progress is not None and progress is not False and not callable(progress):
            raise TypeError(f"progress must be callable or a bool, got {type(progress).__name__}")
        arrow = _arrow_of(texts)
        if arrow is not None:
            texts = arrow
        sliceable = arrow is not None or isinstance(texts, (list, tuple, np.ndarray))
        if not sliceable and (type(texts).__module__ or "").startswith("pandas") and hasattr(texts, "iloc"):
            texts = texts.iloc          # positional slices of a Series
            sliceable = True
        try:
            total = len(texts.obj if hasattr(texts, "obj") else texts)
        except TypeError:
            total = None
        return _iter_embeddings(self, texts if sliceable else iter(texts), sliceable, total,
                                chunk_size, normalize, truncate, nulls, progress, format)

    # -- scoring ------------------------------------------------------------------------------

    def score(self, texts, *, add_special=True, progress=None, nulls="raise"):
        """The log-probability of every token of each text given the tokens before it.

        Returns a :class:`~llama_cython.token_scores.TokenScores`: ragged float32 values (one
        per token after the first of each text; with ``add_special`` a BOS token is first, so
        every token of the text is scored) with ``.sum()``, ``.mean()`` and ``.perplexity()``
        per text as numpy arrays. Uses: perplexity filtering of a dataset, ranking answers,
        log-likelihood evaluations.

        Many texts share one decode, each as its own sequence: create the context with
        ``n_parallel`` > 1 and ``kv_unified=True`` (one cache shared by the sequences, as
        llama.cpp's tools score) to score short texts quickly. A text longer than a sequence
        may hold (``ctx.n_ctx_seq``) is a ``ContextSizeError``; use :meth:`perplexity` for long
        documents. The loop runs without the GIL; the KV cache is left empty.

        >>> ctx = model.new_context(n_ctx=2048, n_parallel=32, kv_unified=True)  # doctest: +SKIP
        >>> ctx.score(["The cat sat on the mat.", "Mat the on sat cat the."]).sum()  # doctest: +SKIP
        array([-21.9, -48.3])
        """
        return _score_texts(self, texts, add_special, progress, nulls)

    def score_continuations(self, prompt, candidates, *, add_special=True):
        """Log-probabilities of each candidate continuation of ``prompt`` (multiple choice).

        Returns a :class:`~llama_cython.token_scores.TokenScores` with one row per candidate:
        the log-probability of each of its tokens given the prompt and the candidate's tokens
        before it; ``.sum()`` ranks the candidates (``.mean()`` normalises by length). Each
        candidate is tokenized as part of ``prompt + candidate``, so that a token spanning the
        boundary is scored as the model would see it; the tokens the prompt and a candidate
        share at the start are context, the rest is scored.

        The shared prompt is decoded once only on a context with ``n_parallel`` >= 2 (it is
        copied to each candidate's sequence); with one sequence each prompt + candidate is
        scored whole, which gives the same values more slowly.

        >>> s = ctx.score_continuations("The capital of France is", [" Paris", " Rome"])  # doctest: +SKIP
        >>> int(s.sum().argmax())                                                        # doctest: +SKIP
        0
        """
        return _score_continuations(self, prompt, candidates, add_special)

    def perplexity(self, text, *, n_ctx=None, stride=None, progress=None):
        """Perplexity of a long text by llama.cpp's ``llama-perplexity`` method.

        The text is tokenized once (with BOS where the model adds one) and cut into chunks of
        ``n_ctx`` tokens (default: this context's sequence length; the last partial chunk is
        dropped; at least two chunks are needed). Each chunk is decoded from an empty cache
        with its first token replaced by BOS, and only the tokens of its second half are
        scored. The result (a :class:`~llama_cython.stats.PerplexityResult`) carries the
        perplexity and its uncertainty as the tool prints them, the running value after each
        chunk and every scored log-probability. Chunks share decodes as sequences when the
        context has ``n_parallel`` > 1.

        With ``stride``, windows of ``n_ctx`` tokens start every ``stride`` tokens and each
        scores its last ``stride`` tokens (the first window all of them): each token up to the
        end of the last whole window is scored once, with at least ``n_ctx - stride`` tokens
        of context after the first window (the sliding-window evaluation of Hugging Face's
        guide). llama.cpp's ``--ppl-stride`` differs in details (its window is the padded
        context size) and is not reproduced.

        >>> ctx.perplexity(open("wiki.test.raw").read(), n_ctx=512).perplexity  # doctest: +SKIP
        """
        return _perplexity(self, text, n_ctx, stride, progress)

    # -- state ------------------------------------------------------------------------------

    def save_state(self, path=None):
        """Save the KV cache and the record of the tokens in it; ``path=None`` returns bytes.

        Load it with :meth:`load_state` into a context of the same model created with the same
        options (``n_ctx``, ``n_parallel``, ``kv_cache_type``, ``flash_attn``): a long prompt
        (a system prompt, a document) is then decoded once and reused across processes and
        restarts, prefix caching working from the loaded tokens as if they had been decoded
        here. The file is written atomically (a temporary file renamed into place).

        >>> ctx.generate(system_prompt, max_tokens=1)          # doctest: +SKIP
        >>> ctx.save_state("system.state")                      # doctest: +SKIP
        >>> other.load_state("system.state")                   # doctest: +SKIP
        """
        data = _state_save(self)
        if path is None:
            return data
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return None

    def load_state(self, source):
        """Load a state saved by :meth:`save_state`: a path, or the bytes it returned.

        Everything is checked before llama.cpp sees it: a file that is not a state, truncated
        or corrupt (its checksums), saved from another model or from a context with other
        options raises :class:`~llama_cython.errors.StateError` and leaves this context as it
        was. The last logits are not part of a state: generation after loading decodes at
        least the prompt's last token again.
        """
        self._check_open()
        if isinstance(source, (bytes, bytearray, memoryview)):
            data = source
        elif isinstance(source, (str, os.PathLike)):
            with open(source, "rb") as f:
                data = f.read()
        else:
            raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")
        _state_load(self, data)

    def get_logits(self):
        """The logits of the last evaluated position: a float32 ``(n_vocab,)`` copy.

        After :meth:`generate`, that is the position of the last token that was decoded (the
        prompt's last token when no token was generated). Raises :class:`ContextError` when
        nothing was decoded yet or the last decode failed.
        """
        cdef const float * ptr
        cdef float[::1] view
        self._enter()
        try:
            if not self._logits_ok:
                raise ContextError("no logits: nothing was decoded on this context yet "
                                   "(or the last decode failed)")
            ptr = ll.llama_get_logits_ith(self._ctx, -1)
            if ptr == NULL:
                raise ContextError("llama.cpp has no logits for the last position")
            out = np.empty(self.model._n_vocab, dtype=np.float32)
            view = out
            memcpy(&view[0], ptr, self.model._n_vocab * sizeof(float))
            return out
        finally:
            self._leave()

    def clear_cache(self):
        """Empty the KV cache: the next call decodes its whole prompt."""
        self._enter()
        try:
            with nogil:
                ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
            self._kv.clear()
            self._kv_exact = 0
            self._logits_ok = False
        finally:
            self._leave()

    # -- many prompts at once -------------------------------------------------------------

    def generate_batch(self, prompts, *, max_tokens=128, stop=None, progress=None, **sampling):
        """Continue many prompts; a list of ``str`` in input order.

        Up to ``n_parallel`` prompts (see :meth:`Model.new_context`) are decoded together:
        each llama.cpp decode carries one token of every sequence that is generating and the
        prompt tokens of newly admitted ones, and a finished sequence's slot goes to the next
        prompt at once (continuous batching). The whole loop runs in C without the GIL; it
        comes back to Python between decodes only for Ctrl-C and ``progress``.

        Each prompt has its own sampler, stop strings (``stop`` applies to each) and
        ``max_tokens``; with ``seed``, prompt i samples from a seed derived from ``seed`` and
        ``i``, so its text does not depend on the other prompts or on the slot it got.
        ``ctx.last_batch_stats`` (:class:`BatchStats`) has every prompt's token counts and
        finish reason, the number of decodes and the aggregate tokens/s. Prompts are tokenized
        first, all of them: a prompt longer than a sequence's share of the context
        (``n_ctx // n_parallel``) raises :class:`ContextSizeError` naming its index before
        anything is decoded. :meth:`cancel` (from another thread) ends the call early: prompts
        not finished keep the text they have and finish as ``"cancelled"``.

        Greedy output equals :meth:`generate`'s for the same prompt only where llama.cpp's
        arithmetic does not depend on the batch; see the guide ("Batch generation").

        Parameters
        ----------
        prompts : sequence of str
        max_tokens : int
            The most tokens generated for each prompt.
        stop : str or sequence of str, optional
        progress : callable or bool, optional
            ``progress(n)`` after each decode in which ``n`` prompts finished; ``True`` shows
            a tqdm bar (the ``progress`` extra).
        **sampling
            As for :meth:`generate`.

        >>> ctx = model.new_context(n_parallel=8)                              # doctest: +SKIP
        >>> ctx.generate_batch(["The capital of France is", "2 + 2 ="], max_tokens=8,
        ...                    temperature=0)                                  # doctest: +SKIP
        [' Paris.', ' 4']
        """
        items = _prompt_items(prompts)
        texts, _ = _generate_batch(self, items, max_tokens, stop, progress, sampling,
                                   [True] * len(items))
        return texts

    def generate_batch_stream(self, prompts, *, max_tokens=128, stop=None, progress=None,
                              **sampling):
        """Like :meth:`generate_batch`, with the text as it is made: a
        :class:`BatchGenerationStream` of ``(index, piece)`` tuples.

        Pieces of different prompts interleave as the batch decodes them; the pieces of one
        index add up to its text from :meth:`generate_batch` (same options, same seed). The
        context is busy until the stream is exhausted or closed; closing it early (or
        ``stream.cancel()``, ``ctx.cancel()`` from another thread) ends every unfinished prompt
        as ``"cancelled"``, and ``stream.stats`` / ``ctx.last_batch_stats`` say so.

        >>> texts = {}                                                       # doctest: +SKIP
        >>> for i, piece in ctx.generate_batch_stream(prompts, max_tokens=32):  # doctest: +SKIP
        ...     texts[i] = texts.get(i, "") + piece
        """
        items = _prompt_items(prompts)
        return _start_batch(self, items, max_tokens, stop, progress, sampling,
                            [True] * len(items), True)

    def chat_batch(self, conversations, *, max_tokens=512, stop=None, template=None,
                   template_kwargs=None, add_generation_prompt=True, progress=None, **sampling):
        """Answer many conversations as :meth:`generate_batch` continues prompts; a list of
        :class:`ChatResponse` in input order (each with its own ``usage`` and ``stats``).

        Every conversation is rendered with the chat template (see :meth:`chat`) before any
        decoding.
        """
        from llama_cython.chat import render_model_chat
        self._check_open()
        if isinstance(conversations, (str, bytes)) or not hasattr(conversations, "__iter__"):
            raise TypeError("conversations must be a sequence of message lists, got "
                            f"{type(conversations).__name__}")
        texts = []
        flags = []
        for k, messages in enumerate(conversations):
            try:
                text, add_special = render_model_chat(
                    self.model, messages, template=template, template_kwargs=template_kwargs,
                    add_generation_prompt=add_generation_prompt)
            except (TypeError, ValueError) as exc:
                try:
                    named = type(exc)(f"conversations[{k}]: {exc}")
                except Exception:
                    raise exc from None
                raise named from exc
            texts.append(text)
            flags.append(add_special)
        grammar = _grammar_option(sampling.pop("grammar", None), sampling.pop("json_schema", None))
        if grammar is not None:
            sampling["grammar"] = grammar
        contents, stats = _generate_batch(self, tuple(texts), max_tokens, stop, progress, sampling,
                                          flags)
        schema = grammar is not None and grammar.schema is not None
        return [ChatResponse(content=c, finish_reason=st.finish_reason,
                             usage=ChatUsage(st.prompt_tokens, st.completion_tokens, 0), stats=st,
                             parsed=grammar.parse(c) if schema and st.finish_reason == "stop" else None)
                for c, st in zip(contents, stats)]

    def cancel(self):
        """Ask a running generation on this context to stop (safe from any thread).

        The loop notices within one token (or one graph node of a long prompt) and returns what
        it has, with ``finish_reason == "cancelled"``.
        """
        self._abort = 1


cdef tuple _prompt_items(object prompts):
    """``prompts`` as a tuple of str (one-dimensional; each item checked by index)."""
    items = _text_tuple(prompts, "use generate(prompt) for one")
    for k in range(len(items)):
        if not isinstance(items[k], str):
            raise TypeError(f"prompts[{k}] must be a str, got {type(items[k]).__name__}")
    return items


cdef _drive_callback(GenerationStream stream, object callback):
    """The callback form of streaming: call ``callback(piece)`` until it returns False."""
    try:
        for piece in stream:
            if callback(piece) is False:
                stream.cancel()
                stream.close()
                break
    finally:
        stream.close()


def _iter_embeddings(Context ctx, object texts, bint sliceable, object total, int chunk_size,
                     object normalize, object truncate, str nulls, object progress, str format):
    bar = None
    if progress is True:
        bar = require("tqdm.auto", "progress=True").tqdm(total=total, unit="text")
        progress = bar.update
    elif progress is False:
        progress = None
    try:
        if sliceable:
            for start in range(0, total, chunk_size):
                yield ctx.get_embeddings_batch(texts[start:start + chunk_size], normalize=normalize,
                                               truncate=truncate, nulls=nulls, progress=progress,
                                               format=format)
            return
        chunk = []
        for text in texts:
            chunk.append(text)
            if len(chunk) == chunk_size:
                yield ctx.get_embeddings_batch(chunk, normalize=normalize, truncate=truncate,
                                               nulls=nulls, progress=progress, format=format)
                chunk = []
        if chunk:
            yield ctx.get_embeddings_batch(chunk, normalize=normalize, truncate=truncate,
                                           nulls=nulls, progress=progress, format=format)
    finally:
        if bar is not None:
            bar.close()


cdef int _check_format(object format) except -1:
    if not isinstance(format, str) or format not in ("numpy", "arrow"):
        raise OptionError(f"format must be 'numpy' or 'arrow', got {format!r}")
    return 0


cdef object _embeddings_as_arrow(object rows):
    """An (N, D) float32 array as a pyarrow FixedSizeListArray on the same memory."""
    pa = require("pyarrow", "format='arrow'")
    flat = pa.array(rows.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, rows.shape[1])
