# Batch tokenization: many texts in, one flat int32 array of ids plus int64 offsets out, filled
# by C++ threads (_token_batch.h) without the GIL. Also the way back (detokenize_batch) and the
# pieces of token ids, which encode() and the vocabulary table are built from.

cdef extern from "_token_batch.h" namespace "llama_cython" nogil:
    cdef cppclass TokenizeBatchJob:
        const ll.llama_vocab * vocab
        const char * const * texts
        const int64_t * sizes
        int64_t n_texts
        cppbool add_special
        cppbool parse_special
        cppbool keep_ids
        int64_t block
        int64_t * counts
        int64_t error_index
        int error_kind
        string error_message
        void run(int n_threads)
        void gather(int32_t * dst)

# Bytes of text worth one more thread: starting a thread costs tens of microseconds, tokenizing
# 32 KiB takes a few milliseconds with any vocabulary.
cdef int64_t _BYTES_PER_THREAD = 32 * 1024


cdef int _batch_threads(object n_threads, int64_t total_bytes, Py_ssize_t n_texts) except -1:
    """Threads for a batch: as asked, or (None) as many as the work pays for, up to the CPUs."""
    cdef int64_t want
    if n_threads is not None:
        _check_int(n_threads, "n_threads", 1, 1024)
        return n_threads
    want = total_bytes // _BYTES_PER_THREAD
    want = min(want, <int64_t>_cpus.available_cpus(), <int64_t>n_texts)
    return <int>max(want, 1)


cdef object _run_tokenize_batch(Model m, object texts, bint add_special, bint parse_special,
                                object n_threads, object errors, bint keep_ids, object nulls):
    """(counts int64, ids int32 or None) for ``texts``; see Model.tokenize_batch."""
    if errors not in ("strict", "replace"):
        raise OptionError(f"errors must be 'strict' or 'replace', got {errors!r}")
    _check_nulls(nulls)
    cdef _TextBuffers buf = _text_input(texts, "use tokenize(text) for one", nulls, True, errors)
    _check_specials(m, add_special)
    return _tokenize_buffers(m, buf, add_special, parse_special,
                             _batch_threads(n_threads, buf.total, buf.ptrs.size()), keep_ids)


cdef object _tokenize_buffers(Model m, _TextBuffers buf, bint add_special, bint parse_special,
                              int threads, bint keep_ids):
    """(counts int64, ids int32 or None): the texts of ``buf`` tokenized by C++ threads."""
    cdef Py_ssize_t n = buf.ptrs.size()
    counts = np.zeros(n, dtype=np.int64)
    if n == 0:
        return counts, (np.empty(0, dtype=np.int32) if keep_ids else None)
    cdef int64_t[::1] cv = counts
    cdef int32_t[::1] iv
    cdef TokenizeBatchJob * job = new TokenizeBatchJob()
    try:
        job.vocab = m._vocab
        job.texts = buf.ptrs.data()
        job.sizes = buf.sizes.data()
        job.n_texts = n
        job.add_special = add_special
        job.parse_special = parse_special
        job.keep_ids = keep_ids
        job.counts = &cv[0]
        # One block per thread would leave threads idle behind a block of long texts; many
        # small blocks are taken in turn. One thread: one block, one buffer.
        job.block = n if threads == 1 else max(1, min(256, n // (threads * 16)))
        with nogil:
            job.run(threads)
        if job.error_index >= 0:
            raise _tokenize_error(job.error_kind, f"texts[{job.error_index}]",
                                  job.error_message.decode("utf-8", "replace"))
        if not keep_ids:
            return counts, None
        ids = np.empty(int(counts.sum()), dtype=np.int32)
        if ids.shape[0]:
            iv = ids
            with nogil:
                job.gather(&iv[0])
        return counts, ids
    finally:
        del job


cdef object _flat_token_lists(Model m, object sequences):
    """(ids int32, offsets int64) of a TokenBatch-like object or a sequence of id sequences."""
    ids = getattr(sequences, "ids", None)
    offsets = getattr(sequences, "offsets", None)
    if ids is None or offsets is None:
        if isinstance(sequences, (str, bytes)) or not hasattr(sequences, "__iter__"):
            raise TypeError("expected a TokenBatch or a sequence of token id sequences, "
                            f"got {type(sequences).__name__}")
        parts = []
        for i, seq in enumerate(sequences):
            try:
                parts.append(_token_array(m, seq))
            except TokenizeError as exc:
                raise TokenizeError(f"sequences[{i}]: {exc}") from None
            except TypeError as exc:
                raise TypeError(f"sequences[{i}]: {exc}") from None
        lengths = np.fromiter((p.shape[0] for p in parts), dtype=np.int64, count=len(parts))
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(parts) if parts else np.empty(0, dtype=np.int32)
        return np.ascontiguousarray(ids, dtype=np.int32), offsets
    ids = _token_array(m, ids)
    offsets = np.ascontiguousarray(offsets, dtype=np.int64)
    if (offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0 or offsets[offsets.shape[0] - 1] != ids.shape[0]
            or (offsets.shape[0] > 1 and np.any(np.diff(offsets) < 0))):
        raise ValueError("offsets must rise from 0 to len(ids)")
    return ids, offsets


cdef list _detokenize_batch(Model m, object sequences, bint remove_special, bint unparse_special):
    _check_vocab(m)
    ids, offsets = _flat_token_lists(m, sequences)
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    cdef const int32_t[::1] iv = ids if ids.shape[0] else np.zeros(1, dtype=np.int32)
    cdef const int64_t[::1] ov = offsets
    cdef vector[int64_t] ends
    cdef string text
    cdef int64_t at = 0, k, room
    cdef int32_t got = 0
    if np.any(np.diff(offsets) > INT32_MAX):
        raise TokenizeError("a sequence has more than 2**31 tokens")
    ends.resize(n)
    with nogil:
        for i in range(n):
            k = ov[i + 1] - ov[i]
            if k > 0:
                room = k * 8 + 16
                if room > INT32_MAX:
                    room = INT32_MAX
                text.resize(at + room)
                got = ll.llama_detokenize(m._vocab, &iv[ov[i]], <int32_t>k, &text[at], <int32_t>room,
                                          remove_special, unparse_special)
                if got < 0:
                    text.resize(at - got)
                    got = ll.llama_detokenize(m._vocab, &iv[ov[i]], <int32_t>k, &text[at], -got,
                                              remove_special, unparse_special)
                    if got < 0:
                        break
                at += got
            ends[i] = at
    if got < 0:
        raise _detokenize_error(got)
    cdef list out = [None] * n
    cdef const char * base = text.data()
    at = 0
    for i in range(n):
        out[i] = PyUnicode_DecodeUTF8(base + at, ends[i] - at, "replace")
        at = ends[i]
    return out


cdef tuple _pieces(Model m, const int32_t * ids, Py_ssize_t n, bint special):
    """The pieces of ``n`` checked ids: (bytes of them all, int64 offsets (n + 1))."""
    offsets = np.empty(n + 1, dtype=np.int64)
    cdef int64_t[::1] ov = offsets
    cdef string flat
    cdef Py_ssize_t i
    ov[0] = 0
    with nogil:
        flat.reserve(n * 6)
        for i in range(n):
            _append_piece(m._vocab, ids[i], &flat, special)   # a failed piece is empty
            ov[i + 1] = flat.size()
    return PyBytes_FromStringAndSize(flat.data(), flat.size()), offsets


cdef object _split_bytes(bytes flat, object offsets):
    """A numpy object array of the bytes between consecutive offsets."""
    cdef Py_ssize_t n = offsets.shape[0] - 1, i
    cdef const int64_t[::1] ov = offsets
    cdef const char * base = flat
    out = np.empty(n, dtype=object)
    cdef object[:] view = out
    for i in range(n):
        view[i] = PyBytes_FromStringAndSize(base + ov[i], ov[i + 1] - ov[i])
    return out
