# Writing a model file at another precision: llama.cpp's quantizer (llama_model_quantize), with
# the input checked as load_model checks it and the output written atomically.

# Names accepted by quantize_model, with llama.cpp's llama_ftype values.
_FTYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}


# Tensor types accepted per tensor (token_embedding_type, output_tensor_type, tensor_types),
# with ggml's ggml_type values.
_TENSOR_TYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "q2_k": 10,
    "q3_k": 11, "q4_k": 12, "q5_k": 13, "q6_k": 14, "bf16": 30,
}


# Values per block of each tensor type: a row must hold whole blocks.
_TENSOR_BLOCKS = {
    "f32": 1, "f16": 1, "bf16": 1, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32, "q8_0": 32,
    "q2_k": 256, "q3_k": 256, "q4_k": 256, "q5_k": 256, "q6_k": 256,
}


cdef object _embedding_length(bytes bpath):
    """``<arch>.embedding_length`` of a GGUF file (the row width of its token embedding and
    output matrices), or None."""
    cdef ggml.gguf_init_params params
    cdef ggml.gguf_context * g
    cdef const char * cpath = bpath
    cdef int64_t key
    params.no_alloc = True
    params.ctx = NULL
    with nogil:
        g = ggml.gguf_init_from_file(cpath, params)
    _drain_log()
    if g == NULL:
        return None
    try:
        key = ggml.gguf_find_key(g, b"general.architecture")
        if key < 0 or ggml.gguf_get_kv_type(g, key) != ggml.GGUF_TYPE_STRING:
            return None
        arch = <bytes>ggml.gguf_get_val_str(g, key)
        return _gguf_int(g, arch + b".embedding_length")
    finally:
        ggml.gguf_free(g)


cdef int _check_row_type(object width, str name, str what) except -1:
    """llama.cpp applies --token-embedding-type / --output-tensor-type without its fallback
    for rows that do not hold whole blocks (it would overflow a buffer, then abort)."""
    block = _TENSOR_BLOCKS[name.lower()]
    if block == 1:
        return 0
    if width is None:
        raise OptionError(f"{what}={name!r}: the file does not state its embedding length, so "
                          "the row width cannot be checked; use 'f32', 'f16' or 'bf16'")
    if width % block:
        raise OptionError(f"{what}={name!r} needs rows of a multiple of {block} values; this "
                          f"model's rows have {width} (use 'f16', 'q8_0' or another type whose "
                          f"block divides {width})")
    return 0


cdef int _tensor_type(object name, str what) except -1:
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a str, got {type(name).__name__}")
    if name.lower() not in _TENSOR_TYPES:
        raise OptionError(f"unknown tensor type {name!r} for {what}; one of {', '.join(_TENSOR_TYPES)}")
    return _TENSOR_TYPES[name.lower()]


cdef list _tensor_overrides(object tensor_types):
    """[(pattern bytes, ggml type)] from a mapping or pairs of (regex, type name)."""
    items = tensor_types.items() if hasattr(tensor_types, "items") else tensor_types
    out = []
    try:
        pairs = list(items)
    except TypeError:
        raise TypeError("tensor_types must be a mapping or pairs of (pattern, type)") from None
    if len(pairs) > 1024:
        raise OptionError(f"tensor_types has {len(pairs)} entries; at most 1024")
    for pair in pairs:
        try:
            pattern, name = pair
        except (TypeError, ValueError):
            raise TypeError("tensor_types must be a mapping or pairs of (pattern, type)") from None
        if not isinstance(pattern, str) or not pattern or len(pattern) > 512 or "\0" in pattern:
            raise OptionError(f"tensor_types: a pattern must be a non-empty str of at most 512 "
                              f"characters, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise OptionError(f"tensor_types: bad regular expression {pattern!r}: {exc}") from None
        out.append((pattern.encode(), _tensor_type(name, f"tensor_types[{pattern!r}]")))
    return out


def quantize_model(src, dst, ftype, *, allow_requantize=False, n_threads=None,
                   token_embedding_type=None, output_tensor_type=None, tensor_types=None):
    """Write the model ``src`` to ``dst`` with its weights at precision ``ftype``.

    Parameters
    ----------
    src, dst : str or os.PathLike
        The GGUF file to read and the one to write. ``dst`` appears only once it is whole (it
        is written next to itself under a temporary name, then renamed).
    ftype : str
        ``"f32"``, ``"f16"``, ``"bf16"``, ``"q8_0"``, ``"q4_0"``, ``"q4_1"``, ``"q5_0"``,
        ``"q5_1"``, ``"q2_k"``, ``"q3_k_s"``/``"_m"``/``"_l"``, ``"q4_k_s"``/``"_m"``,
        ``"q5_k_s"``/``"_m"`` or ``"q6_k"`` (llama.cpp's ``llama-quantize`` names, lowercase).
    allow_requantize : bool
        Also convert tensors that are already quantized (llama.cpp refuses by default, since
        quantizing twice loses more than once). Turning a quantized file into ``"f32"`` or
        ``"f16"`` needs it: the values are dequantized exactly, nothing is lost.
    n_threads : int, optional
        Threads for the conversion (default: all cores).
    token_embedding_type, output_tensor_type : str, optional
        Another type for the token embedding table / the output matrix (``"f16"``,
        ``"q8_0"``...; llama.cpp's ``--token-embedding-type`` / ``--output-tensor-type``).
    tensor_types : mapping of str to str, optional
        Per-tensor types: a regular expression on tensor names (``"attn_.*"``,
        ``"blk\\.0\\..*"``) to a type, as llama.cpp's ``--tensor-type``; the first match wins.
        Only with a quantized ``ftype``. Patterns are ECMAScript regular expressions (C++
        ``std::regex``); a pattern it cannot compile fails the conversion.

    Raises
    ------
    ModelNotFoundError, ModelLoadError
        ``src`` is missing or not a GGUF file llama.cpp can read (checked as by
        :func:`load_model`), or llama.cpp failed to convert it.
    OptionError
        An unknown ``ftype``.

    Examples
    --------
    >>> llama.quantize_model("SmolLM2.Q4_1.gguf", "SmolLM2.F32.gguf", "f32",
    ...                      allow_requantize=True)                          # doctest: +SKIP
    """
    cdef bytes bsrc = _fs_path(src, "src")
    cdef bytes bdst = _fs_path(dst, "dst")
    if not isinstance(ftype, str):
        raise TypeError(f"ftype must be a str, got {type(ftype).__name__}")
    if ftype.lower() not in _FTYPES:
        raise OptionError(f"unknown ftype {ftype!r}; one of {', '.join(_FTYPES)}")
    _check_bool(allow_requantize, "allow_requantize")
    if n_threads is not None:
        _check_int(n_threads, "n_threads", 1, 4096)
    _precheck_gguf(bsrc, os.fsdecode(src))
    cdef ll.llama_model_quantize_params params = ll.llama_model_quantize_default_params()
    params.nthread = n_threads or 0
    params.ftype = <ll.llama_ftype><int>_FTYPES[ftype.lower()]
    params.allow_requantize = allow_requantize
    if token_embedding_type is not None:
        params.token_embedding_type = <ggml.ggml_type>_tensor_type(token_embedding_type, "token_embedding_type")
    if output_tensor_type is not None:
        params.output_tensor_type = <ggml.ggml_type>_tensor_type(output_tensor_type, "output_tensor_type")
    if token_embedding_type is not None or output_tensor_type is not None:
        width = _embedding_length(bsrc)
        if token_embedding_type is not None:
            _check_row_type(width, token_embedding_type, "token_embedding_type")
        if output_tensor_type is not None:
            _check_row_type(width, output_tensor_type, "output_tensor_type")
    if tensor_types is not None and _TENSOR_BLOCKS.get(ftype.lower(), 0) == 1:
        raise OptionError(f"tensor_types applies only when ftype is a quantized type (llama.cpp "
                          f"overrides quantized tensors only), not {ftype!r}")
    cdef vector[ll.llama_model_tensor_override] overrides
    cdef ll.llama_model_tensor_override end
    keep = _tensor_overrides(tensor_types) if tensor_types is not None else []
    if keep:
        overrides.resize(len(keep) + 1)
        for i, (pattern, t) in enumerate(keep):
            overrides[i].pattern = <const char *>pattern
            overrides[i].type = <ggml.ggml_type><int>t
        end.pattern = NULL
        overrides[len(keep)] = end
        params.tt_overrides = overrides.data()
    if not bdst or os.path.isdir(bdst) or bdst.endswith(b"/"):
        raise OptionError(f"dst must name a file, got {os.fsdecode(dst)!r}")
    folder = os.path.dirname(os.path.abspath(bdst))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"dst: no folder {os.fsdecode(folder)!r}")
    cdef bytes btmp = os.path.join(folder, b".%s.%d.tmp" % (os.path.basename(bdst), os.getpid()))
    cdef const char * csrc = bsrc
    cdef const char * ctmp = btmp
    cdef uint32_t rc
    cdef int64_t mark = _log_mark()
    _native_begin()
    try:
        with nogil:
            rc = ll.llama_model_quantize(csrc, ctmp, &params)
    except BaseException:
        _remove_quietly(btmp)
        raise
    finally:
        native_end()
    if rc != 0:
        _remove_quietly(btmp)
        raise ModelLoadError(f"llama.cpp could not convert {os.fsdecode(src)!r} to {ftype}"
                             f"{_log_since(mark)}")
    try:
        os.replace(btmp, bdst)
    except BaseException:
        _remove_quietly(btmp)
        raise
    _drain_log()


cdef _remove_quietly(bytes path):
    try:
        os.unlink(path)
    except OSError:
        pass
