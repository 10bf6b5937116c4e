# Model: owns a llama_model* (weights + vocabulary). Safe to share between threads.

# Loads are serialised: llama.cpp's own thread-safety test loads models one after another.
_load_lock = threading.Lock()


cdef extern from "_progress.h" namespace "llama_cython":
    cdef cppclass ProgressState:
        PyObject * fn
        PyObject * error
        cppbool cancelled
    cppbool _progress_callback "llama_cython::progress_callback"(float progress, void * user_data) noexcept nogil


def load_model(path, *, n_gpu_layers=-1, use_mmap=True, use_mlock=False, main_gpu=0,
               tensor_split=None, vocab_only=False, check_tensors=False, verbose=False,
               progress=None):
    """Load a GGUF model file and return a :class:`Model`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.gguf`` file.
    n_gpu_layers : int
        Layers to offload to the GPU; ``-1`` (default) offloads all of them. Ignored by a
        CPU-only build.
    use_mmap, use_mlock : bool
        Map the file instead of reading it (default), and/or lock the weights in RAM.
    main_gpu : int
        The GPU that holds the model when it is not split.
    tensor_split : sequence of float, optional
        Fraction of the model for each GPU (at most :func:`max_devices` values).
    vocab_only : bool
        Load only the tokenizer (fast; no weights): tokenization works, contexts do not.
    check_tensors : bool
        Validate the tensor data (NaN/Inf) while loading.
    verbose : bool
        Echo llama.cpp's log of this load to stderr. By default llama.cpp is silent; its
        log always goes to the ``llama_cython.llama_cpp`` logger.
    progress : callable, optional
        ``progress(fraction) -> bool | None``; called on the loading thread with a value
        between 0 and 1. Returning ``False`` (or raising) cancels the load, which then raises
        :class:`ModelLoadError` (or re-raises the callable's exception).

    Raises
    ------
    ModelNotFoundError
        The file does not exist ("model file not found").
    ModelLoadError
        It is not a valid GGUF file, or llama.cpp failed to load it.

    Examples
    --------
    >>> import llama_cython as llama
    >>> model = llama.load_model(llama.models.model_path())        # doctest: +SKIP
    >>> model.architecture, model.n_vocab                          # doctest: +SKIP
    ('llama', 49152)
    """
    cdef bytes bpath = _fs_path(path, "path")
    shown = os.fsdecode(path)
    _check_int(n_gpu_layers, "n_gpu_layers", -1, INT32_MAX)
    _check_int(main_gpu, "main_gpu", 0, INT32_MAX)
    _check_bool(use_mmap, "use_mmap")
    _check_bool(use_mlock, "use_mlock")
    _check_bool(vocab_only, "vocab_only")
    _check_bool(check_tensors, "check_tensors")
    _check_bool(verbose, "verbose")
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable, got {type(progress).__name__}")
    cdef size_t n_dev = ll.llama_max_devices()
    # llama.cpp reads tensor_split as exactly llama_max_devices() floats: always pass a full buffer.
    cdef float[::1] split = np.zeros(max(<Py_ssize_t>n_dev, 1), dtype=np.float32)
    if tensor_split is not None:
        try:
            values = np.asarray(tensor_split, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            raise TypeError(f"tensor_split must be a sequence of numbers, got {tensor_split!r}") from None
        if values.size > <Py_ssize_t>n_dev:
            raise OptionError(f"tensor_split has {values.size} values; this build supports {n_dev} devices")
        if values.size and (not np.all(np.isfinite(values)) or np.any(values < 0) or values.sum() <= 0):
            raise OptionError("tensor_split must hold finite, non-negative values with a positive sum")
        for i in range(values.size):
            split[i] = values[i]

    cdef bint has_head = _precheck_gguf(bpath, shown)
    # What pickle carries (see _pickling.py): the options, the absolute path, the file's identity.
    options = {"n_gpu_layers": int(n_gpu_layers), "use_mmap": bool(use_mmap), "use_mlock": bool(use_mlock),
               "main_gpu": int(main_gpu), "vocab_only": bool(vocab_only),
               "check_tensors": bool(check_tensors),
               "tensor_split": None if tensor_split is None else tuple(float(v) for v in values)}
    try:
        identity = _pickling.file_identity(bpath)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {shown}: {exc}") from None

    cdef ll.llama_model_params params = ll.llama_model_default_params()
    params.n_gpu_layers = n_gpu_layers
    params.main_gpu = main_gpu
    params.tensor_split = &split[0]
    params.vocab_only = vocab_only
    params.check_tensors = check_tensors
    if use_mmap and use_mlock:
        params.load_mode = ll.LLAMA_LOAD_MODE_MMAP_MLOCK
    elif use_mmap:
        params.load_mode = ll.LLAMA_LOAD_MODE_MMAP
    elif use_mlock:
        params.load_mode = ll.LLAMA_LOAD_MODE_MLOCK
    else:
        params.load_mode = ll.LLAMA_LOAD_MODE_NONE
    cdef ProgressState state      # llama.cpp calls the user's callable through it (_progress.h)
    if progress is not None:
        state.fn = <PyObject *>progress
        params.progress_callback = _progress_callback
        params.progress_callback_user_data = <void *>&state
    else:
        # Without a callback llama.cpp prints progress dots through the log: keep it quiet.
        params.progress_callback = NULL

    cdef const char * cpath = bpath
    cdef ll.llama_model * raw = NULL
    _log_sync_level()
    mark = _log_mark()
    with _load_lock:
        with nogil:
            raw = ll.llama_model_load_from_file(cpath, params)
    _drain_log(verbose)
    error = None
    if state.error != NULL:
        error = <object>state.error      # a new reference of its own...
        Py_DECREF(error)                 # ...so the state's is given up
        state.error = NULL
    if raw == NULL:
        if error is not None:
            raise error
        if state.cancelled:
            raise ModelLoadError(f"loading {shown} was cancelled by the progress callback")
        raise ModelLoadError(f"llama.cpp failed to load the model {shown}{_log_since(mark)}")
    cdef Model model = Model.__new__(Model)
    model._attach(raw, shown, vocab_only)
    model._has_cls_head = has_head
    model._options = options
    model._abspath = os.path.abspath(shown)
    model._identity = identity
    if model.metadata.get("tokenizer.ggml.pre") == "whitespace":
        ll.guard_spaces(model._vocab, True)
        model._spaces_guarded = True
    return model


@cython.final
cdef class Model:
    """A loaded GGUF model: weights, vocabulary and metadata. Create it with :func:`load_model`.

    A model is safe to share between threads: tokenization and context creation may run in
    several threads at once. Generation happens on a :class:`Context` (``model.new_context()``),
    one per thread. ``close()`` frees the weights; it refuses while contexts are open.
    """

    cdef ll.llama_model * _model
    cdef const ll.llama_vocab * _vocab
    cdef readonly str path
    cdef readonly bint vocab_only
    cdef bint _has_cls_head      # cls / cls.output tensors: what pooling="rank" reads
    cdef int64_t _max_piece      # bytes of the longest token piece (0: not computed yet)
    cdef bint _spaces_guarded    # registered with _tokenize.h's guard_spaces
    cdef int32_t _n_vocab
    cdef object _contexts        # WeakSet of open Contexts
    cdef int _users              # calls holding the model (see _acquire); guarded by the GIL
    cdef dict _holders           # thread ident -> calls of that thread holding the model
    cdef dict _metadata
    cdef tuple _vocab_arrays     # the vocabulary table, built on first use (no reference back)
    cdef dict _options           # load_model's options, as pickle carries them
    cdef str _abspath            # the file, absolute
    cdef tuple _identity         # (size, sha256 of a sample of its bytes) when loaded
    cdef dict _grammars          # (text, root) -> _CompiledGrammar, most recently used last
    cdef object __weakref__

    def __cinit__(self):
        self._model = NULL
        self._vocab = NULL
        self._users = 0
        self._holders = {}

    def __init__(self, *args, **kwargs):
        raise TypeError("Model cannot be created directly; use llama_cython.load_model(path)")

    cdef _attach(self, ll.llama_model * raw, str path, bint vocab_only):
        self._model = raw
        self._vocab = ll.llama_model_get_vocab(raw)
        self._n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        self.path = path
        self.vocab_only = vocab_only
        self._contexts = weakref.WeakSet()
        self._metadata = None
        self._vocab_arrays = None

    cdef void _free(self) noexcept:
        self._grammars = None    # compiled grammars point into the vocabulary
        if self._spaces_guarded:
            self._spaces_guarded = False
            ll.unguard_spaces(self._vocab)
        ll.llama_model_free(self._model)
        self._model = NULL
        self._vocab = NULL

    def __dealloc__(self):
        # Contexts hold a strong reference to their model, so none is alive here.
        if self._model != NULL:
            self._free()

    cdef inline int _check_open(self) except -1:
        if self._model == NULL:
            raise ClosedError("model is closed")
        return 0

    # The one guard of every entry point that reaches llama.cpp through this model: _acquire
    # checks that the model is open and counts the call; close() refuses while any call holds
    # it; _release, in a ``finally``, after the last C call. Whatever runs in between (a
    # generator being read, an int subclass's __lt__, a callback, another thread) cannot free
    # the weights under the call.

    cdef int _acquire(self) except -1:
        if self._model == NULL:
            raise ClosedError("model is closed")
        _native_begin()
        ident = threading.get_ident()
        self._holders[ident] = self._holders.get(ident, 0) + 1
        self._users += 1
        return 0

    cdef int _release(self) except -1:
        ident = threading.get_ident()
        left = self._holders.pop(ident, 1) - 1
        if left > 0:
            self._holders[ident] = left
        self._users -= 1
        native_end()
        return 0

    # -- lifetime ---------------------------------------------------------------------------

    def close(self):
        """Free the weights now. Idempotent; raises while contexts of this model are open."""
        if self._model == NULL:
            return
        open_contexts = [c for c in self._contexts if not (<Context>c).closed]
        if open_contexts:
            raise LlamaError(
                f"model has {len(open_contexts)} open context(s); close them before the model")
        if self._users:
            if self._holders.get(threading.get_ident()):
                raise ContextBusyError(
                    "model is in use by a call running in this thread (close() was called from "
                    "a callback or from an input the call is reading); close it after that call returns")
            raise ContextBusyError("model is in use by another thread; close it when that call returns")
        self._free()

    @property
    def closed(self):
        """True once :meth:`close` has run."""
        return self._model == NULL

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        if self._model == NULL:
            return f"<llama_cython.Model path={self.path!r} closed>"
        return (f"<llama_cython.Model {self.description!r} path={self.path!r} "
                f"n_vocab={self._n_vocab} n_ctx_train={self.n_ctx_train}>")

    # -- pickling ---------------------------------------------------------------------------

    @property
    def load_options(self):
        """The options :func:`load_model` was given (without ``progress`` and ``verbose``),
        as a new dict: what a pickled model is loaded with again."""
        return dict(self._options)

    cdef dict _spec(self):
        if self._model == NULL:
            raise ClosedError("model is closed")
        _pickling.remember(self, self._abspath, self._identity, self._options)
        return _pickling.model_spec(self._abspath, self._identity, self._options)

    def __reduce__(self):
        """Pickle as what the model was loaded from (see :mod:`pickle` and the pipelines
        guide): the receiving process loads the same file with the same options, once, after
        checking the file is the same (size and a sha256 over a sample of its bytes)."""
        return (_pickling.restore_model, (self._spec(),))

    def __dask_tokenize__(self):
        return _pickling.model_token(self._spec())

    # -- facts ------------------------------------------------------------------------------

    @property
    def n_vocab(self):
        """Number of tokens in the vocabulary."""
        self._check_open()
        return self._n_vocab

    @property
    def n_ctx_train(self):
        """The context length the model was trained with: the largest ``n_ctx`` allowed."""
        self._check_open()
        return ll.llama_model_n_ctx_train(self._model)

    @property
    def n_embd(self):
        """Width of the hidden state."""
        self._check_open()
        return ll.llama_model_n_embd(self._model)

    @property
    def n_embd_out(self):
        """Width of the embedding vectors a context returns (usually ``n_embd``)."""
        self._check_open()
        return ll.llama_model_n_embd_out(self._model)

    @property
    def n_layer(self):
        """Number of transformer blocks."""
        self._check_open()
        return ll.llama_model_n_layer(self._model)

    @property
    def n_head(self):
        """Number of attention heads."""
        self._check_open()
        return ll.llama_model_n_head(self._model)

    @property
    def n_swa(self):
        """Sliding-window attention size (0 when the model has none)."""
        self._check_open()
        return ll.llama_model_n_swa(self._model)

    @property
    def n_params(self):
        """Number of parameters."""
        self._check_open()
        return ll.llama_model_n_params(self._model)

    @property
    def size(self):
        """Total size of the weights in bytes."""
        self._check_open()
        return ll.llama_model_size(self._model)

    @property
    def has_encoder(self):
        """True for encoder(-decoder) models."""
        self._check_open()
        return ll.llama_model_has_encoder(self._model)

    @property
    def description(self):
        """llama.cpp's one-line description, e.g. ``'llama ?B Q4_1'``."""
        self._check_open()
        cdef char buf[256]
        cdef int32_t n = ll.llama_model_desc(self._model, buf, sizeof(buf))
        if n < 0:
            return ""
        return buf[:min(n, <int32_t>sizeof(buf) - 1)].decode("utf-8", "replace")

    @property
    def architecture(self):
        """The GGUF ``general.architecture`` (``'llama'``, ``'gemma3'``, ``'bert'``...)."""
        return self.metadata.get("general.architecture", "")

    @property
    def metadata(self):
        """Every scalar GGUF key as a ``dict`` of str to str (arrays are not included)."""
        self._check_open()
        if self._metadata is None:
            self._metadata = self._read_metadata()
        return dict(self._metadata)

    cdef dict _read_metadata(self):
        cdef int32_t count = ll.llama_model_meta_count(self._model)
        cdef dict out = {}
        for i in range(count):
            key = self._meta_string(i, True)
            if key is not None:
                out[key] = self._meta_string(i, False)
        return out

    cdef object _meta_string(self, int32_t i, bint want_key):
        cdef string buf
        cdef int32_t n
        buf.resize(256)
        while True:
            if want_key:
                n = ll.llama_model_meta_key_by_index(self._model, i, &buf[0], buf.size())
            else:
                n = ll.llama_model_meta_val_str_by_index(self._model, i, &buf[0], buf.size())
            if n < 0:
                return None
            if <size_t>n < buf.size():
                return PyUnicode_DecodeUTF8(buf.data(), n, "replace")
            buf.resize(n + 1)

    @property
    def chat_template(self):
        """The model's ``tokenizer.chat_template`` (Jinja source), or ``None``."""
        self._check_open()
        cdef const char * tmpl = ll.llama_model_chat_template(self._model, NULL)
        if tmpl == NULL:
            return None
        return (<bytes>tmpl).decode("utf-8", "replace")

    # -- tokens -----------------------------------------------------------------------------

    def tokenize(self, text, add_special=True, parse_special=False):
        """Text to token ids, as a 1-D ``int32`` numpy array written by llama.cpp directly.

        ``add_special`` adds the model's BOS/EOS as its tokenizer is configured to;
        ``parse_special`` turns special-token text such as ``<|im_start|>`` into those tokens
        instead of spelling it out. ``text`` is a ``str`` (or UTF-8 ``bytes``).

        >>> ids = model.tokenize("Hello world")                      # doctest: +SKIP
        >>> ids.dtype, ids.ndim                                       # doctest: +SKIP
        (dtype('int32'), 1)
        """
        self._acquire()
        try:
            return _tokenize(self, _text_bytes(text, "text"), _check_bool(add_special, "add_special"),
                             _check_bool(parse_special, "parse_special"))
        finally:
            self._release()

    def detokenize(self, tokens, remove_special=False, unparse_special=False):
        """Token ids back to text (``str``). Bytes that are not valid UTF-8 become U+FFFD."""
        self._acquire()
        try:
            return _detokenize(self, tokens, _check_bool(remove_special, "remove_special"),
                               _check_bool(unparse_special, "unparse_special"))
        finally:
            self._release()

    def token_to_piece(self, token, special=True):
        """The bytes one token stands for (``bytes``: a piece can be part of a UTF-8 character)."""
        self._acquire()
        try:
            return _token_to_piece(self, token, _check_bool(special, "special"))
        finally:
            self._release()

    def tokenize_batch(self, texts, *, add_special=True, parse_special=False, n_threads=None,
                       errors="strict", nulls="raise"):
        """Tokenize many texts at once into a :class:`~llama_cython.TokenBatch`.

        The ids of all texts land in one flat ``int32`` array with ``int64`` offsets
        (``len(texts) + 1``): text ``i`` is ``batch.ids[batch.offsets[i]:batch.offsets[i + 1]]``,
        which ``batch[i]`` returns as a view. The work runs in C++ threads without the GIL;
        ``n_threads=None`` uses as many as the amount of text pays for, up to the CPUs.

        Items are ``str`` or UTF-8 ``bytes``. Bytes that are not valid UTF-8 raise
        :class:`TokenizeError` naming the text (``errors="strict"``) or are replaced with
        U+FFFD first (``errors="replace"``). A pyarrow ``string``/``large_string`` Array or
        ChunkedArray (a Parquet column) is read straight from its buffers, with no Python
        object per text. ``texts`` must be one-dimensional: a DataFrame, a 2-D array or a
        table is a TypeError (pass one column).

        Missing values (``None``, ``NaN``, ``pd.NA``, Arrow nulls) follow ``nulls``:
        ``"raise"`` (default) is a TypeError naming the index, ``"empty"`` reads each as
        ``""``, ``"skip"`` leaves them out (the result then has fewer rows than ``texts``).
        The ids are those of :meth:`tokenize` for each text, whatever the number of threads.

        >>> batch = model.tokenize_batch(["Hello world", "Bonjour"])   # doctest: +SKIP
        >>> len(batch), batch.lengths                                   # doctest: +SKIP
        (2, array([2, 3], dtype=int32))
        """
        self._acquire()
        try:
            counts, ids = _run_tokenize_batch(self, texts, _check_bool(add_special, "add_special"),
                                              _check_bool(parse_special, "parse_special"),
                                              n_threads, errors, True, nulls)
        finally:
            self._release()
        offsets = np.zeros(counts.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return TokenBatch(ids, offsets)

    def count_tokens(self, texts, *, add_special=True, parse_special=False, n_threads=None,
                     errors="strict", nulls="raise"):
        """Number of tokens of each text: an ``int32`` array (an ``int`` for a single text).

        Same rules as :meth:`tokenize_batch`, without keeping the ids.
        """
        single = isinstance(texts, (str, bytes))
        self._acquire()
        try:
            counts, _ = _run_tokenize_batch(self, (texts,) if single else texts,
                                            _check_bool(add_special, "add_special"),
                                            _check_bool(parse_special, "parse_special"),
                                            n_threads, errors, False, nulls)
        finally:
            self._release()
        if single:
            return int(counts[0])
        return counts.astype(np.int32)

    def detokenize_batch(self, sequences, *, remove_special=False, unparse_special=False):
        """Many id sequences back to text: a list of ``str``, one per sequence.

        ``sequences`` is a :class:`~llama_cython.TokenBatch` or any sequence of id sequences
        (lists, arrays). Every id is range-checked first; bytes that are not valid UTF-8
        become U+FFFD, as in :meth:`detokenize`.
        """
        self._acquire()
        try:
            return _detokenize_batch(self, sequences, _check_bool(remove_special, "remove_special"),
                                     _check_bool(unparse_special, "unparse_special"))
        finally:
            self._release()

    def encode(self, text, *, add_special=True, parse_special=False):
        """Tokenize one text into an :class:`~llama_cython.Encoding`: ids with their pieces,
        byte and character offsets into ``text``, special-token mask and attributes.

        In a notebook the encoding shows itself as the text cut into coloured tokens.

        >>> enc = model.encode("Hello world")                           # doctest: +SKIP
        >>> [enc.text[a:b] for a, b in enc.char_offsets]                # doctest: +SKIP
        ['Hello', ' world']
        """
        cdef const int32_t[::1] iv
        cdef uint32_t[::1] av
        cdef Py_ssize_t n, i
        if isinstance(text, bytes):
            try:
                text = (<bytes>text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TokenizeError(f"text is not valid UTF-8: {exc}") from None
        elif not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        data = _text_bytes(text, "text")
        self._acquire()
        try:
            ids = _tokenize(self, data, _check_bool(add_special, "add_special"),
                            _check_bool(parse_special, "parse_special"))
            iv = ids if ids.shape[0] else np.zeros(1, dtype=np.int32)
            n = ids.shape[0]
            pieces_flat, piece_offsets = _pieces(self, &iv[0], n, True)
            attrs = np.empty(n, dtype=np.uint32)
            av = attrs
            tokens = [None] * n
            for i in range(n):
                av[i] = ll.llama_vocab_get_attr(self._vocab, iv[i])
                tokens[i] = (<bytes>ll.llama_vocab_get_text(self._vocab, iv[i])).decode("utf-8", "replace")
            info = _vocab_info(self)
            return Encoding._build(text, data, ids, _split_bytes(pieces_flat, piece_offsets), tokens,
                                   attrs, info["type"], info.get("unk"))
        finally:
            self._release()

    @property
    def vocab(self):
        """The model's :class:`~llama_cython.Vocab`: special ids, type, and the whole
        vocabulary as numpy arrays (``vocab_only=True`` models have it too)."""
        self._check_open()
        return Vocab(self)

    def is_eog(self, token):
        """True if ``token`` ends generation (EOS, EOT...)."""
        cdef int32_t tok
        self._acquire()
        try:
            tok = _check_token(self, token)
            return ll.llama_vocab_is_eog(self._vocab, tok)
        finally:
            self._release()

    # -- contexts ---------------------------------------------------------------------------

    def new_context(self, *, n_ctx=None, n_batch=512, n_ubatch=None, n_threads=None,
                    n_threads_batch=None, kv_cache_type="f16", flash_attn="auto",
                    embeddings=False, pooling=None, n_parallel=None, prefix_caching=True,
                    kv_unified=None, embed_workers=None):
        """Create a :class:`Context` (a KV cache and the state of one conversation).

        Every option is checked here and read back from llama.cpp afterwards: the context's
        properties (``ctx.n_ctx``, ``ctx.n_batch``...) are llama.cpp's effective values.

        Parameters
        ----------
        n_ctx : int, optional
            Tokens the context holds (prompt + generated), at most :attr:`n_ctx_train`;
            ``0`` means :attr:`n_ctx_train`, ``None`` (the default) 2048 or the model's
            maximum if that is smaller. llama.cpp rounds it up to a multiple of 256.
        n_batch : int
            Most tokens submitted to one decode call (prompts are fed in chunks of this size).
        n_ubatch : int, optional
            Physical micro-batch size (default ``min(512, n_batch)``).
        n_threads, n_threads_batch : int, optional
            CPU threads for generation and for prompt/batch processing (default: the cores
            this process may use).
        kv_cache_type : {"f16", "f32", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"}
            Type of the KV cache; quantized types need flash attention.
        flash_attn : {"auto", "on", "off"} or bool
            Flash attention; ``"auto"`` lets llama.cpp decide per device.
        embeddings : bool
            Make the context return embeddings instead of logits.
        pooling : {None, "none", "mean", "cls", "last", "rank"}
            How embeddings are pooled per sequence; ``None`` uses the model's own setting.
        n_parallel : int, optional
            Number of sequences the context can hold at once (1 to 256). Default: 1, or for an
            ``embeddings=True`` context up to 128 (as many texts as one batch may pack).
        prefix_caching : {"exact", "any", "off"} or bool
            What a generation may reuse of the KV cache the previous one left. ``"exact"``
            (or True, the default): whole physical batches (``n_ubatch`` tokens) of earlier
            prompts, so results are bit-identical to a fresh context's (a smaller ``n_ubatch``
            reuses more finely, prompts decode a little slower). ``"any"``: the longest common
            prefix, answers included; llama.cpp's rounding depends on batch shapes (flash
            attention most), so greedy output may differ from a fresh context's at near ties.
            ``"off"`` (or False): decode every prompt in full.
        kv_unified : bool, optional
            With ``n_parallel`` > 1: one KV cache of ``n_ctx`` cells shared by all sequences
            (True), or ``n_ctx // n_parallel`` cells for each (False). Default: shared for
            ``embeddings=True`` contexts, split otherwise (batched generation gives every
            sequence room of its own). Shared suits :meth:`Context.score` of many short texts:
            llama.cpp then decodes a packed batch in one pass, as its own tools do; batched
            generation on a shared cache fails with a ``DecodeError`` once the sequences
            together outgrow it.
        embed_workers : int, optional
            For ``embeddings=True``: how many llama.cpp contexts embed batches side by side,
            each with ``n_threads_batch // embed_workers`` threads (1 to ``n_threads_batch``).
            The batches are planned as one context would pack them, so the vectors do not
            depend on this. Default: one worker per batch thread (up to 8) for a model
            without a KV cache (BERT-like encoders) of at most 1 GiB, whose ops are too short
            to keep several threads busy; 1 otherwise. The other workers' contexts are
            created at the first batch call that uses them and freed by :meth:`Context.close`.
        """
        cdef Context ctx
        self._acquire()
        try:
            ctx = Context._create(self, n_ctx, n_batch, n_ubatch, n_threads, n_threads_batch,
                                  kv_cache_type, flash_attn, embeddings, pooling, n_parallel,
                                  prefix_caching, kv_unified, embed_workers)
        finally:
            self._release()
        # What a pickled context is created with again (checked values, as given).
        ctx._spec = {"n_ctx": n_ctx, "n_batch": n_batch, "n_ubatch": n_ubatch,
                     "n_threads": n_threads, "n_threads_batch": n_threads_batch,
                     "kv_cache_type": kv_cache_type, "flash_attn": flash_attn,
                     "embeddings": embeddings, "pooling": pooling, "n_parallel": n_parallel,
                     "prefix_caching": prefix_caching, "kv_unified": kv_unified,
                     "embed_workers": embed_workers}
        return ctx
