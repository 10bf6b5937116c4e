# Tokens in and out: numpy int32 arrays that llama_tokenize writes into directly.

cdef bytes _text_bytes(object text, str what):
    """UTF-8 bytes of a str (bytes pass through); anything else is a TypeError, a str that has
    no UTF-8 form (a lone surrogate) a TokenizeError."""
    if isinstance(text, str):
        try:
            return (<str>text).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizeError(f"{what} is not valid text: {exc.reason} at index {exc.start} "
                                f"({text[exc.start:exc.end]!r})") from None
    if isinstance(text, bytes):
        return <bytes>text
    raise TypeError(f"{what} must be a str, got {type(text).__name__}")


cdef int _check_vocab(Model m) except -1:
    # llama-vocab.cpp asserts (aborts) on any tokenizer call of a vocabulary-less model.
    if ll.llama_vocab_type_of(m._vocab) == ll.LLAMA_VOCAB_TYPE_NONE:
        raise TokenizeError("this model has no vocabulary; it cannot tokenize or detokenize")
    return 0


cdef int _check_specials(Model m, bint add_special) except -1:
    # llama-vocab.cpp also asserts when add_special asks for a BOS/EOS/SEP the vocabulary
    # does not define.
    _check_vocab(m)
    if not add_special:
        return 0
    if ll.llama_vocab_get_add_bos(m._vocab) and ll.llama_vocab_bos(m._vocab) < 0:
        raise TokenizeError("the vocabulary asks for a BOS token but defines none; use add_special=False")
    if ll.llama_vocab_get_add_eos(m._vocab) and ll.llama_vocab_eos(m._vocab) < 0:
        raise TokenizeError("the vocabulary asks for an EOS token but defines none; use add_special=False")
    if (ll.llama_vocab_type_of(m._vocab) == ll.LLAMA_VOCAB_TYPE_WPM and ll.llama_vocab_get_add_sep(m._vocab)
            and ll.llama_vocab_sep(m._vocab) < 0):
        raise TokenizeError("the vocabulary asks for a SEP token but defines none; use add_special=False")
    return 0


cdef object _tokenize(Model m, bytes data, bint add_special, bint parse_special):
    cdef Py_ssize_t nbytes = len(data)
    if nbytes > INT32_MAX:
        raise TokenizeError(f"text of {nbytes} bytes is too long for llama.cpp (at most {INT32_MAX})")
    _check_specials(m, add_special)
    cdef const char * text = data
    # A token covers at least one byte; the slack covers BOS/EOS/SEP and SPM's added space.
    cdef Py_ssize_t cap = nbytes + 16
    if cap > INT32_MAX:
        cap = INT32_MAX
    arr = np.empty(cap, dtype=np.int32)
    cdef int32_t[::1] out = arr
    cdef int32_t n
    try:
        with nogil:
            n = ll.safe_tokenize(m._vocab, text, <int32_t>nbytes, &out[0], <int32_t>cap,
                                  add_special, parse_special)
        if n < 0 and n != INT32_MIN:   # -n is the exact count: size the array to it
            arr = np.empty(-n, dtype=np.int32)
            out = arr
            with nogil:
                n = ll.safe_tokenize(m._vocab, text, <int32_t>nbytes, &out[0], <int32_t>(-n),
                                      add_special, parse_special)
    except AllocationError:
        raise
    except LlamaError as exc:   # std::out_of_range... from a broken vocabulary
        raise _tokenize_error(_TOKENIZE_CPP, "the text", str(exc)) from None
    if n < 0:
        raise _tokenize_status_error(n)
    out = None
    if n != arr.shape[0]:
        arr.resize(n, refcheck=False)   # shrinks in place (realloc), no copy of the ids
    return arr


cdef int64_t _min_tokens(Model m, Py_ssize_t nbytes) except -1:
    """A lower bound on the tokens of a text of ``nbytes`` bytes, without tokenizing it, or 0.

    BPE and SPM vocabularies are lossless: the pieces of a text's tokens spell its bytes again
    (SPM's U+2581 is a space again in the pieces), so a text needs at least its bytes divided
    by the longest piece. Lets a prompt that cannot fit be refused at once: tokenizing 400k
    byte-fallback characters on Gemma 3 took 21 s before the context check (WPM/UGM normalise
    text, so no bound is claimed for them).
    """
    cdef int t = ll.llama_vocab_type_of(m._vocab)
    if t != ll.LLAMA_VOCAB_TYPE_BPE and t != ll.LLAMA_VOCAB_TYPE_SPM:
        return 0
    if m._max_piece == 0:
        _, offsets = _all_pieces(m)
        m._max_piece = max(1, int(np.diff(offsets).max()))
    return nbytes // m._max_piece


cdef tuple _all_pieces(Model m):
    """(pieces bytes, offsets) of every token (special=True), in id order."""
    _check_vocab(m)
    ids = np.arange(m._n_vocab, dtype=np.int32)
    cdef const int32_t[::1] iv = ids
    return _pieces(m, &iv[0], ids.shape[0], True)


cdef int32_t _check_token(Model m, object token) except? -1:
    _check_vocab(m)
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
        raise TypeError(f"token must be an int, got {type(token).__name__}")
    if token < 0 or token >= m._n_vocab:
        raise TokenizeError(f"token id {token} is out of range [0, {m._n_vocab})")
    return <int32_t>token


cdef object _token_array(Model m, object tokens):
    """A C-contiguous int32 copy-free view of ``tokens`` after checking every id's range."""
    if isinstance(tokens, (str, bytes)):
        raise TypeError("tokens must be a sequence of int token ids, not text")
    arr = np.asarray(tokens)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise TypeError(f"tokens must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int32)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= m._n_vocab))
    if bad.size:
        i = int(bad[0])
        raise TokenizeError(f"token id {int(arr[i])} at index {i} is out of range [0, {m._n_vocab})")
    return np.ascontiguousarray(arr, dtype=np.int32)


cdef str _detokenize(Model m, object tokens, bint remove_special, bint unparse_special):
    _check_vocab(m)
    arr = _token_array(m, tokens)
    cdef int32_t[::1] ids = arr
    cdef Py_ssize_t n = arr.shape[0]
    if n == 0:
        return ""
    if n > INT32_MAX:
        raise TokenizeError("too many tokens")
    cdef string buf
    cdef int32_t got
    buf.resize(n * 8 + 16)
    with nogil:
        got = ll.llama_detokenize(m._vocab, &ids[0], <int32_t>n, &buf[0], <int32_t>min(buf.size(), <size_t>INT32_MAX),
                                  remove_special, unparse_special)
        if got < 0:
            buf.resize(-got)
            got = ll.llama_detokenize(m._vocab, &ids[0], <int32_t>n, &buf[0], <int32_t>buf.size(),
                                      remove_special, unparse_special)
    if got < 0:
        raise _detokenize_error(got)
    return PyUnicode_DecodeUTF8(buf.data(), got, "replace")


cdef int _append_piece(const ll.llama_vocab * vocab, ll.llama_token tok, string * out,
                       bint special) except -1 nogil:
    """Append ``tok``'s piece to ``out`` (the one token-to-piece of the core: a stack buffer,
    then the exact size llama.cpp asked for). 0, or 1 if llama.cpp failed (``out`` unchanged);
    C++ exceptions propagate."""
    cdef char small[256]
    cdef int32_t n = ll.llama_token_to_piece(vocab, tok, small, sizeof(small), 0, special)
    cdef size_t old = out.size()
    if n >= 0:
        out.append(small, n)
        return 0
    out.resize(old - n)
    n = ll.llama_token_to_piece(vocab, tok, <char *>out.data() + old, <int32_t>(out.size() - old),
                                0, special)
    out.resize(old + n if n >= 0 else old)
    return 0 if n >= 0 else 1


cdef bytes _token_to_piece(Model m, object token, bint special):
    cdef int32_t tok = _check_token(m, token)
    cdef string piece
    cdef int failed
    with nogil:
        failed = _append_piece(m._vocab, tok, &piece, special)
    if failed:
        raise _piece_error(tok)
    return PyBytes_FromStringAndSize(piece.data(), piece.size())
