# Writing a model file at another precision: llama.cpp's quantizer (llama_model_quantize), with
# the input checked as load_model checks it and the output written atomically.

# Names accepted by quantize_model, with llama.cpp's llama_ftype values.
_FTYPES = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9,
    "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12, "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15,
    "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "bf16": 32,
}


def quantize_model(src, dst, ftype, *, allow_requantize=False, n_threads=None):
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
