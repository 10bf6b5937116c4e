# Return codes and NULLs become exceptions here, and only here. C++ exceptions are translated
# by _errors.h (declared on every throwing function in includes/llama.pxd), with the classes
# handed over below.

cdef extern from "_errors.h" namespace "llama_cython":
    void _set_error_types "llama_cython::set_error_types"(object allocation, object base)

_set_error_types(AllocationError, LlamaError)

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


# Tokenizer statuses. llama_tokenize returns the count, -count when the buffer is too small,
# INT32_MIN when the count overflows int32; _token_batch.h reports a text's failure as a kind.
cdef int _TOKENIZE_OVERFLOW = 1, _TOKENIZE_NO_MEMORY = 2, _TOKENIZE_CPP = 3, _TOKENIZE_FAILED = 4
cdef int _TOKENIZE_EXITING = 5


cdef object _tokenize_error(int kind, str where, str detail):
    """The exception for a text that llama.cpp could not tokenize; ``where`` names it."""
    if kind == _TOKENIZE_OVERFLOW:
        return TokenizeError(f"{where} produces more tokens than llama.cpp can count (2**31)")
    if kind == _TOKENIZE_NO_MEMORY:
        return AllocationError(f"out of memory while tokenizing {where}")
    if kind == _TOKENIZE_EXITING:
        return ClosedError("the interpreter is shutting down; the batch was stopped")
    return TokenizeError(f"llama.cpp could not tokenize {where}: {detail}")


cdef object _tokenize_status_error(int32_t n):
    """The exception for a final negative llama_tokenize return (after the resize)."""
    if n == INT32_MIN:
        return _tokenize_error(_TOKENIZE_OVERFLOW, "the text", "")
    return _tokenize_error(_TOKENIZE_FAILED, "the text", f"llama_tokenize returned {n}")


cdef object _detokenize_error(int32_t got):
    """The exception for a negative llama_detokenize return after the buffer was resized."""
    return TokenizeError(f"llama_detokenize failed ({got})")


cdef object _piece_error(int32_t tok):
    """The exception for a negative llama_token_to_piece return after the buffer was resized."""
    return TokenizeError(f"llama_token_to_piece failed for token {tok}")


# The embedding loop's own status, beside llama_process's codes.
cdef int32_t _EMBED_NO_OUTPUT = -3     # llama_get_embeddings_seq/ith gave NULL


cdef object _embed_error(int32_t code, str pooling, uint32_t n_ctx, int64_t mark):
    """The exception for a failed embedding batch."""
    if code == _EMBED_NO_OUTPUT:
        return ContextError("llama.cpp returned no embedding for a text; the context's pooling "
                            f"is {pooling!r}")
    if code == PROCESS_BAD_ALLOC:
        return AllocationError(f"get_embeddings_batch: out of memory while decoding{_log_since(mark)}")
    if code == PROCESS_THREW:
        return DecodeError(f"get_embeddings_batch: llama.cpp raised a C++ exception while decoding"
                           f"{_log_since(mark)}", code)
    return _decode_error(code, "get_embeddings_batch", n_ctx, mark)


cdef object _creation_error(str call, int64_t mark, str fallback):
    """The exception for a NULL returned by a constructor (model or context)."""
    tail = _log_since(mark)
    if "alloc" in tail.lower():
        return AllocationError(f"{call}: failed to allocate{tail}")
    return ContextError(f"{call}: {fallback}{tail}")


# -- native work and interpreter exit (_native.h) ------------------------------------------------

cdef extern from "_native.h" namespace "llama_cython" nogil:
    bint native_begin()
    void native_end()
    bint native_stopping()
    void native_stop()
    int native_count()
    int usleep_ "usleep"(unsigned int us)


cdef int _native_begin() except -1:
    """Count one call that will run without the GIL; refused once the interpreter exits."""
    if not native_begin():
        raise ClosedError("the interpreter is shutting down; llama_cython accepts no new work")
    return 0


def _stop_native_work(double timeout=60.0):
    """atexit: ask running loops to stop at their next text, batch or token, and wait (without
    the GIL, so that their threads can finish) until none runs, before the interpreter and
    llama.cpp's static tables are torn down."""
    cdef int waited_us = 0
    cdef int limit_us = <int>(timeout * 1e6)
    native_stop()
    with nogil:
        while native_count() > 0 and waited_us < limit_us:
            usleep_(1000)
            waited_us += 1000
