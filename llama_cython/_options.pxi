# Options: the tables of named values and the checks every option goes through before any
# value reaches llama.cpp (types first: a bool is not an int, "no" is not a flag).

from llama_cython import _cpus

_MAX_THREADS = 512   # GGML_MAX_N_THREADS

cdef dict _KV_TYPES = {
    "f32": ggml.GGML_TYPE_F32, "f16": ggml.GGML_TYPE_F16, "bf16": ggml.GGML_TYPE_BF16,
    "q8_0": ggml.GGML_TYPE_Q8_0, "q4_0": ggml.GGML_TYPE_Q4_0, "q4_1": ggml.GGML_TYPE_Q4_1,
    "q5_0": ggml.GGML_TYPE_Q5_0, "q5_1": ggml.GGML_TYPE_Q5_1, "iq4_nl": ggml.GGML_TYPE_IQ4_NL,
}
cdef dict _FLASH_ATTN = {
    "auto": ll.LLAMA_FLASH_ATTN_TYPE_AUTO, None: ll.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": ll.LLAMA_FLASH_ATTN_TYPE_ENABLED, True: ll.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": ll.LLAMA_FLASH_ATTN_TYPE_DISABLED, False: ll.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
# prefix_caching: what a generation may take from the KV cache of the previous one.
cdef dict _PREFIX_CACHING = {
    "exact": "exact", True: "exact", "any": "any", "off": "off", False: "off",
}
cdef dict _POOLING = {
    None: ll.LLAMA_POOLING_TYPE_UNSPECIFIED, "none": ll.LLAMA_POOLING_TYPE_NONE,
    "mean": ll.LLAMA_POOLING_TYPE_MEAN, "cls": ll.LLAMA_POOLING_TYPE_CLS,
    "last": ll.LLAMA_POOLING_TYPE_LAST, "rank": ll.LLAMA_POOLING_TYPE_RANK,
}
cdef dict _POOLING_NAMES = {
    ll.LLAMA_POOLING_TYPE_NONE: "none", ll.LLAMA_POOLING_TYPE_MEAN: "mean",
    ll.LLAMA_POOLING_TYPE_CLS: "cls", ll.LLAMA_POOLING_TYPE_LAST: "last",
    ll.LLAMA_POOLING_TYPE_RANK: "rank",
}
cdef inline int _check_int(object value, str name, int64_t lo, int64_t hi) except -1:
    """Check that an option is an int in [lo, hi]; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or value > hi:
        raise OptionError(f"{name} must be between {lo} and {hi}, got {value}")
    return 0


cdef inline bint _check_bool(object value, str name) except -1:
    """Check that a flag is a bool (numpy bools too); "no" or None are not read as truth values."""
    if isinstance(value, (bool, np.bool_)):
        return <bint>value
    raise TypeError(f"{name} must be a bool, got {type(value).__name__}")


cdef inline double _check_float(object value, str name, double lo, double hi,
                                 bint lo_open=False) except? -1:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    cdef double v = value
    if not isfinite(v):
        raise OptionError(f"{name} must be finite, got {value!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        lo_s = f"({lo}" if lo_open else f"[{lo}"
        raise OptionError(f"{name} must be in {lo_s}, {hi}], got {value!r}")
    return v


cdef object _lookup(dict table, object value, str name):
    try:
        return table[value]
    except (KeyError, TypeError):
        choices = ", ".join(repr(k) for k in table if isinstance(k, str))
        raise OptionError(f"{name} must be one of {choices}; got {value!r}") from None


cdef int _check_threads(object value, str name, int n_cpus) except -1:
    """A thread count between 1 and the CPUs this process may run on: llama.cpp's threads wait
    for each other after every operation, so one more than can run at once stalls them all."""
    _check_int(value, name, 1, _MAX_THREADS)
    if value > n_cpus:
        raise OptionError(
            f"{name}={value} is more than the {n_cpus} CPU(s) this process may run on; "
            "llama.cpp's threads would wait for each other at every step (use at most "
            f"{n_cpus}; the default is {_cpus.default_threads()}, the physical cores)")
    return 0
