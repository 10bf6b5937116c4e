# Return codes and NULLs become exceptions here, and only here.

cdef str _closed_message(str what):
    return f"{what} is closed"


cdef object _decode_error(int32_t code, str call, uint32_t n_ctx, int64_t mark):
    """The exception for a non-zero llama_process return code."""
    tail = _log_since(mark)
    if code == 1:
        return ContextSizeError(
            f"{call}: no room left in the KV cache (context of {n_ctx} tokens is full){tail}")
    if code == 2:
        return DecodeError(f"{call}: decoding was aborted{tail}", code)
    if code == -1:
        return DecodeError(f"{call}: llama.cpp rejected the batch as invalid{tail}", code)
    return DecodeError(f"{call}: llama.cpp failed to decode (code {code}){tail}", code)


cdef object _creation_error(str call, int64_t mark, str fallback):
    """The exception for a NULL returned by a constructor (model or context)."""
    tail = _log_since(mark)
    if "alloc" in tail.lower():
        return AllocationError(f"{call}: failed to allocate{tail}")
    return ContextError(f"{call}: {fallback}{tail}")


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
