# Batch embeddings: many texts in, one (N, D) float32 array out.
#
# Python is touched once per text only to borrow the UTF-8 buffer every str already caches
# (PyUnicode_AsUTF8AndSize, no new object); after that everything runs in C without the GIL:
# tokenize all texts into one flat array, sort them by length, pack sequences into batches up
# to the token budget and the sequence limit, decode, and write each sequence's pooled vector
# (L2-normalised on request) straight into its row of the output.
#
# llama.cpp's limits that would abort the process are respected here (llama-cpp-api-map.md
# 2.1 and 4A): a batch never holds more tokens than one ubatch (non-causal models compute a
# batch in a single ubatch, and pooled MEAN/CLS values are per ubatch), nor more sequences than
# the context was created for.

cdef extern from "<algorithm>" namespace "std" nogil:
    void std_sort "std::sort"[Iter](Iter first, Iter last)

# Default token budget of one decode for embeddings. Attention over a packed batch costs the
# square of its tokens on the CPU, so past a few hundred tokens bigger batches are slower.
_EMBED_BATCH_TOKENS = 512


cdef int _tokenize_all(const ll.llama_vocab * vocab, const vector[const char *] * ptrs,
                       const vector[int64_t] * sizes, int32_t max_len,
                       bint truncate, bint keep_last, vector[ll.llama_token] * toks,
                       vector[int64_t] * offs, int64_t * n_truncated,
                       Py_ssize_t * too_long) except -1 nogil:
    """Tokenize every text into ``toks``; text i is toks[offs[i]:offs[i+1]].

    A text longer than ``max_len`` is cut (keeping its last token when ``keep_last``: the
    SEP/EOS the tokenizer appended) or, without ``truncate``, reported in ``too_long``.
    """
    cdef Py_ssize_t i, n = ptrs.size()
    cdef int64_t at = 0
    cdef int32_t cap, k, size
    offs.resize(n + 1)
    offs[0][0] = 0
    for i in range(n):
        size = <int32_t>sizes[0][i]
        cap = size + 8
        if <int64_t>toks.size() < at + cap:
            toks.resize(at + cap + (at >> 1))
        k = ll.safe_tokenize(vocab, ptrs[0][i], size, toks.data() + at, cap, True, False)
        if k < 0:
            toks.resize(at - k)
            k = ll.safe_tokenize(vocab, ptrs[0][i], size, toks.data() + at, -k, True, False)
        if k > max_len:
            if not truncate:
                too_long[0] = i
                return 0
            if keep_last:
                toks[0][at + max_len - 1] = toks[0][at + k - 1]
            k = max_len
            n_truncated[0] += 1
        at += k
        offs[0][i + 1] = at
    return 0


cdef inline void _write_row(const float * src, float * dst, int32_t d, bint normalize) noexcept nogil:
    cdef int32_t j
    cdef double ss = 0.0
    cdef float scale = 1.0
    if normalize:
        for j in range(d):
            ss += <double>src[j] * src[j]
        scale = <float>(1.0 / sqrt(ss)) if ss > 0.0 else 0.0
    for j in range(d):
        dst[j] = src[j] * scale


cdef object _embed_into(Context self, tuple texts, float[:, ::1] out, bint normalize,
                        bint truncate, object progress, int32_t budget, bint per_token,
                        int32_t d):
    """Embed ``texts`` into the rows of ``out``; returns (tokens, truncated, batches, None, None).

    ``d`` floats are read per row: n_embd_out, or n_cls_out for rank pooling (scores). The
    caller holds the context (``_enter``). The KV cache is left empty, whatever happens.

    With ``per_token`` (a context whose pooling is 'none'), ``out`` is ignored: every token's
    vector is written into a new ``(T, D)`` array, text i's rows being offsets[i]:offsets[i + 1];
    returns (tokens, truncated, batches, values, offsets).
    """
    cdef const ll.llama_vocab * vocab = self.model._vocab
    cdef ll.llama_context * ctx = self._ctx
    cdef ll.llama_batch_ext * batch = self._batch
    cdef ll.llama_memory_t mem = ll.llama_get_memory(ctx)
    cdef Py_ssize_t n = len(texts), i, pos = 0, too_long = -1
    cdef int32_t n_seq_max = ll.llama_n_seq_max(ctx)
    cdef int32_t max_len = ll.llama_n_ubatch(self._ctx)   # a text must fit one ubatch
    cdef int32_t n_train = ll.llama_model_n_ctx_train(self.model._model)
    cdef int32_t n_seq, n_tok, L, j, k, rc = 0
    cdef int64_t n_truncated = 0, n_batches = 0, start
    cdef ll.llama_pos p
    cdef const float * src
    cdef bint keep_last = (ll.llama_vocab_get_add_eos(vocab) or ll.llama_vocab_get_add_sep(vocab))
    cdef vector[ll.llama_token] toks
    cdef vector[int64_t] offs
    cdef vector[pair[int32_t, int32_t]] order
    cdef vector[int32_t] rows
    cdef vector[int32_t] first       # batch index of each sequence's first token (per_token)
    cdef int64_t row0
    cdef bint failed = False, cancelled = False, stop_asked = False
    cdef bint has_progress = progress is not None
    self._kv.clear()           # the KV cache will hold embedding batches: no prefix to reuse
    self._kv_exact = 0
    self._logits_ok = False
    cdef int64_t mark = _log_mark()
    if 0 < n_train < max_len:
        max_len = n_train
    if ll.llama_model_n_swa(self.model._model) > 0:
        # Measured on Gemma 3 (this llama.cpp): with sliding-window layers, a sequence's pooled
        # vector changes with the other sequences packed beside it (by up to 0.007 on unit
        # vectors; SmolLM2 shows none). Until that is understood, one sequence per decode.
        n_seq_max = 1
    _check_specials(self.model, True)
    cdef _TextBuffers buf = _TextBuffers(texts, False, "strict", INT32_MAX // 2)
    rows.resize(n_seq_max)
    first.resize(n_seq_max)
    with nogil:
        _tokenize_all(vocab, &buf.ptrs, &buf.sizes, max_len, truncate, keep_last, &toks, &offs,
                      &n_truncated, &too_long)
    PyErr_CheckSignals()
    if too_long >= 0:
        raise ContextSizeError(
            f"texts[{too_long}] is longer than {max_len} tokens, the most one batch of this context "
            f"(and the model) can embed; pass truncate=True to cut it")
    values = offsets = None
    if per_token:
        offsets = np.empty(n + 1, dtype=np.int64)
        for i in range(n + 1):
            offsets[i] = offs[i]
        values = np.empty((offs[n], d), dtype=np.float32)
        if offs[n] == 0:
            return 0, n_truncated, 0, values, offsets
        out = values
    order.resize(n)
    for i in range(n):
        order[i].first = <int32_t>(offs[i + 1] - offs[i])
        order[i].second = <int32_t>i
    with nogil:
        std_sort(order.begin(), order.end())
        # Texts with no tokens (an empty string on a model that adds no special tokens) have
        # no embedding: their rows are zeros.
        while pos < n and order[pos].first == 0:
            if not per_token:
                memset(&out[order[pos].second, 0], 0, d * sizeof(float))
            pos += 1
    while pos < n:
        with nogil:
            while pos < n:
                if self._abort or native_stopping():
                    cancelled = True
                    break
                ll.llama_memory_clear(mem, True)       # a no-op (NULL) for memory-less models
                ll.llama_batch_ext_clear(batch)
                n_seq = 0
                n_tok = 0
                while pos < n and n_seq < n_seq_max:
                    L = order[pos].first
                    if n_seq > 0 and n_tok + L > budget:
                        break      # the budget is a target; a longer text gets a batch alone
                    start = offs[order[pos].second]
                    first[n_seq] = n_tok
                    for j in range(L):
                        k = ll.llama_batch_ext_add_token(batch, n_seq, toks[start + j])
                        if k < 0:
                            break
                        p = j
                        ll.llama_batch_ext_set_pos(batch, k, &p)
                        ll.llama_batch_ext_set_output_logits(batch, k, True)   # pooling reads every token
                    if k < 0:
                        rc = -1
                        failed = True
                        break
                    rows[n_seq] = order[pos].second
                    n_seq += 1
                    n_tok += L
                    pos += 1
                if failed:
                    break
                rc = ll.llama_process(ctx, ll.LLAMA_PROCESS_TYPE_DECODE, batch)
                if rc != 0:
                    failed = True
                    break
                for j in range(n_seq):
                    if per_token:
                        row0 = offs[rows[j]]
                        L = <int32_t>(offs[rows[j] + 1] - row0)
                        for k in range(L):
                            src = ll.llama_get_embeddings_ith(ctx, first[j] + k)
                            if src == NULL:
                                break
                            _write_row(src, &out[row0 + k, 0], d, normalize)
                    else:
                        src = ll.llama_get_embeddings_seq(ctx, j)
                    if src == NULL:
                        rc = _EMBED_NO_OUTPUT
                        failed = True
                        break
                    if not per_token:
                        _write_row(src, &out[rows[j], 0], d, normalize)
                if failed:
                    break
                n_batches += 1
                break              # to Python after each batch: signals (Ctrl-C), progress
        if failed or cancelled:
            break
        PyErr_CheckSignals()       # KeyboardInterrupt between two batches; the context stays usable
        if has_progress and pos <= n:
            if progress(n_seq) is False:
                stop_asked = True
                break
    if failed:
        raise _embed_error(rc, self.pooling, self.n_ctx, mark)
    if cancelled or stop_asked:
        raise _decode_error(2, "get_embeddings_batch", self.n_ctx, mark)
    return offs[n], n_truncated, n_batches, values, offsets
