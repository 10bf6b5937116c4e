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

cdef extern from "_workers.h" namespace "llama_cython" nogil:
    ctypedef void (*worker_fn)(void * arg, int index) noexcept nogil
    cdef cppclass WorkerThreads:
        void start(int n, worker_fn fn, void * arg) except +
        bint wait_for(int ms)
        void join()
    cdef cppclass BatchCounter:
        int64_t take()
        void add_done(int64_t n)
        int64_t done()
        void stop()
        bint stopped()
    int32_t batch_add_token_nothrow(ll.llama_batch_ext * batch, ll.llama_seq_id seq_id,
                                    ll.llama_token id) noexcept
    int32_t process_nothrow(ll.llama_context * ctx, ll.llama_process_type type,
                            ll.llama_batch_ext * batch) noexcept
    int32_t PROCESS_BAD_ALLOC
    int32_t PROCESS_THREW

# Data-parallel embedding (ctx.embed_workers > 1): the batches are planned first (the same
# packing as one context would do, so the results do not depend on the workers), then each
# worker, a llama_context of its own with n_threads_batch // workers threads, takes whole
# batches from a shared counter and writes its rows of the output. On a small model each
# ggml op is too short to keep two threads busy between its barriers, so two contexts of one
# thread each embed more texts per second than one context of two threads (measured:
# benchmarks/bench_embeddings.py). The calling thread is worker 0 and returns to Python
# between its batches (progress, Ctrl-C); the others are C++ threads that never touch Python.

# Default token budget of one decode for embeddings. Attention over a packed batch costs the
# square of its tokens on the CPU, so past a few hundred tokens bigger batches are slower;
# below, each decode's fixed cost (graph, thread barriers) weighs more. Measured with all-MiniLM
# (benchmarks/bench_embeddings.py, 2 threads): on an AVX-512 EPYC (Zen 4) 256 beat 512 by 6-10 %
# on one context and on two workers, and 128 was within noise of 256; on an AVX2 EPYC 128 was
# best for llama.cpp's own loop; on a Zen 5, 512.
_EMBED_BATCH_TOKENS = 256


cdef int _truncate_all(const int32_t * ids, const int64_t * counts, Py_ssize_t n,
                       int32_t max_len, bint truncate, bint keep_last,
                       vector[ll.llama_token] * toks, vector[int64_t] * offs,
                       int64_t * n_truncated, Py_ssize_t * too_long) except -1 nogil:
    """Lay the texts' ids out as toks[offs[i]:offs[i+1]], each cut to ``max_len`` tokens.

    A cut text keeps its last token when ``keep_last`` (the SEP/EOS the tokenizer appended);
    without ``truncate`` the first text that is too long is reported in ``too_long``.
    """
    cdef Py_ssize_t i
    cdef int64_t src = 0, at = 0, k
    offs.resize(n + 1)
    offs[0][0] = 0
    for i in range(n):
        k = counts[i]
        if k > max_len:
            if not truncate:
                too_long[0] = i
                return 0
            n_truncated[0] += 1
            toks.insert(toks.end(), ids + src, ids + src + max_len)
            if keep_last:
                toks[0][at + max_len - 1] = ids[src + k - 1]
            at += max_len
        else:
            toks.insert(toks.end(), ids + src, ids + src + k)
            at += k
        src += k
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


cdef struct _EmbedLoop:
    ll.llama_context * ctx
    ll.llama_batch_ext * batch
    ll.llama_memory_t mem
    const ll.llama_token * toks      # text i's tokens: toks[offs[i]:offs[i + 1]]
    const int64_t * offs
    const pair[int32_t, int32_t] * order   # (length, text index), shortest first
    Py_ssize_t n
    Py_ssize_t pos                   # the batch being packed: order[pos:pos_end]
    Py_ssize_t pos_end
    int32_t * rows                   # text index of each sequence of the current batch
    int32_t * first                  # batch index of each sequence's first token
    int32_t n_seq                    # sequences in the current batch
    float * out                      # pooled: row i of (n, d); per token: row offs[i] + k
    int32_t d
    bint normalize
    int32_t rc                       # llama_process's code, or _EMBED_NO_OUTPUT
    int status                       # how this worker's last batch ended (_EMBED_*)
    volatile int * abort


cdef int _embed_plan(const pair[int32_t, int32_t] * order, Py_ssize_t pos, Py_ssize_t n,
                     int32_t budget, int32_t n_seq_max, vector[int64_t] * plan) except -1 nogil:
    """Cut order[pos:n] (length order) into batches: plan[b]:plan[b + 1] is batch b. A batch
    takes texts while their tokens fit ``budget`` and there are fewer than ``n_seq_max``; a
    text longer than the budget gets a batch alone."""
    cdef int32_t n_tok, n_seq, L
    plan.push_back(pos)
    while pos < n:
        n_tok = 0
        n_seq = 0
        while pos < n and n_seq < n_seq_max:
            L = order[pos].first
            if n_seq > 0 and n_tok + L > budget:
                break
            n_tok += L
            n_seq += 1
            pos += 1
        plan.push_back(pos)
    return 0


cdef int _embed_pack(_EmbedLoop * e) noexcept nogil:
    """Fill the batch with the planned texts order[pos:pos_end], one sequence each. 0, or 1 (rc -1)."""
    cdef int32_t n_tok = 0, L, j, k
    cdef int64_t start
    cdef ll.llama_pos p
    ll.llama_batch_ext_clear(e.batch)
    e.n_seq = 0
    while e.pos < e.pos_end:
        L = e.order[e.pos].first
        start = e.offs[e.order[e.pos].second]
        e.first[e.n_seq] = n_tok
        for j in range(L):
            k = batch_add_token_nothrow(e.batch, e.n_seq, e.toks[start + j])
            if k < 0:
                e.rc = -1
                return 1
            p = j
            ll.llama_batch_ext_set_pos(e.batch, k, &p)
            ll.llama_batch_ext_set_output_logits(e.batch, k, True)   # pooling reads every token
        e.rows[e.n_seq] = e.order[e.pos].second
        e.n_seq += 1
        n_tok += L
        e.pos += 1
    return 0


cdef int _embed_write_pooled(_EmbedLoop * e) noexcept nogil:
    """Each sequence's pooled vector into its text's row. 0, or 1 (rc _EMBED_NO_OUTPUT)."""
    cdef int32_t j
    cdef const float * src
    for j in range(e.n_seq):
        src = ll.llama_get_embeddings_seq(e.ctx, j)
        if src == NULL:
            e.rc = _EMBED_NO_OUTPUT
            return 1
        _write_row(src, e.out + <int64_t>e.rows[j] * e.d, e.d, e.normalize)
    return 0


cdef int _embed_write_tokens(_EmbedLoop * e) noexcept nogil:
    """Every token's vector into its row of the (T, d) values. 0, or 1 (rc _EMBED_NO_OUTPUT)."""
    cdef int32_t j, k, L
    cdef int64_t row0
    cdef const float * src
    for j in range(e.n_seq):
        row0 = e.offs[e.rows[j]]
        L = <int32_t>(e.offs[e.rows[j] + 1] - row0)
        for k in range(L):
            src = ll.llama_get_embeddings_ith(e.ctx, e.first[j] + k)
            if src == NULL:
                e.rc = _EMBED_NO_OUTPUT
                return 1
            _write_row(src, e.out + (row0 + k) * e.d, e.d, e.normalize)
    return 0


# What one call of _embed_batch ended with.
cdef int _EMBED_DONE = 0, _EMBED_FAILED = 1, _EMBED_CANCELLED = 2


cdef int _embed_batch(_EmbedLoop * e, bint per_token) noexcept nogil:
    """Pack, decode and write one batch; the caller returns to Python after each."""
    if e.abort[0] or native_stopping():
        return _EMBED_CANCELLED
    ll.llama_memory_clear(e.mem, True)       # a no-op (NULL) for memory-less models
    if _embed_pack(e):
        return _EMBED_FAILED
    e.rc = process_nothrow(e.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, e.batch)
    if e.rc != 0:
        return _EMBED_FAILED
    if (_embed_write_tokens(e) if per_token else _embed_write_pooled(e)):
        return _EMBED_FAILED
    return _EMBED_DONE


# No planned batch is left for the worker (or another worker failed or was stopped).
cdef int _EMBED_NONE = 3


cdef struct _EmbedJob:
    _EmbedLoop * loops               # one per worker; loops[0] is the calling thread's
    const int64_t * plan             # batch b is order[plan[b]:plan[b + 1]]
    int64_t n_batches
    BatchCounter * counter           # the next batch to take, texts done, stop flag
    bint per_token


cdef int _embed_next(_EmbedJob * job, int w) noexcept nogil:
    """Worker ``w`` takes the next planned batch and embeds it: an _EMBED_* status."""
    cdef _EmbedLoop * e = &job.loops[w]
    cdef int64_t b
    if job.counter.stopped():
        return _EMBED_NONE
    b = job.counter.take()
    if b >= job.n_batches:
        return _EMBED_NONE
    e.pos = job.plan[b]
    e.pos_end = job.plan[b + 1]
    e.status = _embed_batch(e, job.per_token)
    if e.status == _EMBED_DONE:
        job.counter.add_done(e.n_seq)
    else:
        job.counter.stop()           # the others finish the batch they hold, then return
    return e.status


cdef void _embed_worker(void * arg, int w) noexcept nogil:
    """A worker thread's whole life: batches until none is left."""
    cdef _EmbedJob * job = <_EmbedJob *>arg
    while _embed_next(job, w) == _EMBED_DONE:
        pass


cdef object _embed_into(Context self, _TextBuffers buf, float[:, ::1] out, bint normalize,
                        bint truncate, object progress, int32_t budget, bint per_token,
                        int32_t d):
    """Embed the texts of ``buf`` into the rows of ``out``; returns (tokens, truncated, batches, None, None).

    ``d`` floats are read per row: n_embd_out, or n_cls_out for rank pooling (scores). The
    caller holds the context (``_enter``). The KV cache is left empty, whatever happens.

    With ``per_token`` (a context whose pooling is 'none'), ``out`` is ignored: every token's
    vector is written into a new ``(T, D)`` array, text i's rows being offsets[i]:offsets[i + 1];
    returns (tokens, truncated, batches, values, offsets).
    """
    cdef const ll.llama_vocab * vocab = self.model._vocab
    cdef Py_ssize_t n = buf.ptrs.size(), i, too_long = -1
    cdef int32_t n_seq_max = ll.llama_n_seq_max(self._ctx)
    cdef int32_t max_len = ll.llama_n_ubatch(self._ctx)   # a text must fit one ubatch
    cdef int32_t n_train = ll.llama_model_n_ctx_train(self.model._model)
    cdef int64_t n_truncated = 0, n_batches = 0
    cdef bint keep_last = (ll.llama_vocab_get_add_eos(vocab) or ll.llama_vocab_get_add_sep(vocab))
    cdef vector[ll.llama_token] toks
    cdef vector[int64_t] offs
    cdef vector[pair[int32_t, int32_t]] order
    cdef _EmbedLoop e
    cdef int status = _EMBED_DONE
    cdef bint stop_asked = False
    cdef const int32_t[::1] idv
    cdef const int64_t[::1] cv
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
    # Tokenized as tokenize_batch does (C++ threads, as many as the text volume pays for),
    # then cut to what one batch can hold.
    counts, ids = _tokenize_buffers(self.model, buf, True, False,
                                    _batch_threads(None, buf.total, n), True)
    if n:
        cv = counts
        idv = ids if ids.shape[0] else np.zeros(1, dtype=np.int32)
        with nogil:
            toks.reserve(idv.shape[0])
            _truncate_all(&idv[0], &cv[0], n, max_len, truncate, keep_last, &toks, &offs,
                          &n_truncated, &too_long)
    else:
        offs.push_back(0)
    counts = ids = None
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
    e.toks = toks.data()
    e.offs = offs.data()
    e.order = order.data()
    e.n = n
    e.pos = 0
    e.out = &out[0, 0] if out.shape[0] else NULL
    e.d = d
    e.normalize = normalize
    e.rc = 0
    e.status = _EMBED_DONE
    e.abort = &self._abort
    cdef vector[int64_t] plan
    with nogil:
        std_sort(order.begin(), order.end())
        # Texts with no tokens (an empty string on a model that adds no special tokens) have
        # no embedding: their rows are zeros.
        while e.pos < n and order[e.pos].first == 0:
            if not per_token:
                memset(e.out + <int64_t>order[e.pos].second * d, 0, d * sizeof(float))
            e.pos += 1
        _embed_plan(order.data(), e.pos, n, budget, n_seq_max, &plan)
    n_batches = <int64_t>plan.size() - 1
    # Worker 0 is this thread on the context itself; workers 1.. run on contexts of their own.
    cdef int n_workers = self._embed_worker_count(n_batches)
    cdef vector[_EmbedLoop] loops
    cdef vector[int32_t] scratch
    cdef BatchCounter counter
    cdef WorkerThreads threads
    cdef _EmbedJob job
    cdef int w
    loops.resize(n_workers)
    scratch.resize(2 * n_seq_max * n_workers)
    for w in range(n_workers):
        loops[w] = e
        loops[w].ctx = self._ctx if w == 0 else self._wctx[w - 1]
        loops[w].batch = self._batch if w == 0 else self._wbatch[w - 1]
        loops[w].mem = ll.llama_get_memory(loops[w].ctx)
        loops[w].rows = scratch.data() + 2 * n_seq_max * w
        loops[w].first = loops[w].rows + n_seq_max
    job.loops = loops.data()
    job.plan = plan.data()
    job.n_batches = n_batches
    job.counter = &counter
    job.per_token = per_token
    cdef int64_t reported = 0, done
    cdef bint all_returned = n_workers == 1
    cdef int32_t own_threads = ll.llama_n_threads(self._ctx)
    cdef int32_t own_threads_batch = ll.llama_n_threads_batch(self._ctx)
    if n_workers > 1:
        # worker 0 (this context) runs with one worker's share of the threads, as the others
        ll.llama_set_n_threads(self._ctx, self._worker_threads, self._worker_threads)
    try:
        if n_workers > 1:
            threads.start(n_workers - 1, _embed_worker, &job)
        while True:
            with nogil:
                status = _embed_next(&job, 0)
            if status != _EMBED_DONE:
                break
            PyErr_CheckSignals()       # KeyboardInterrupt between two batches; the context stays usable
            if progress is not None:
                done = counter.done()
                if done > reported:
                    if progress(done - reported) is False:
                        stop_asked = True
                        counter.stop()     # the other workers finish the batch they hold
                        break
                    reported = done
        while not all_returned:        # the other workers' last batches
            with nogil:
                all_returned = threads.wait_for(100)
            PyErr_CheckSignals()
            if progress is not None and not stop_asked:
                done = counter.done()
                if done > reported:
                    if progress(done - reported) is False:
                        stop_asked = True
                        counter.stop()
                    reported = done
    finally:
        counter.stop()                 # an exception or a stop: no worker takes another batch
        with nogil:
            threads.join()
        if n_workers > 1:
            ll.llama_set_n_threads(self._ctx, own_threads, own_threads_batch)
    for w in range(n_workers):
        if loops[w].status == _EMBED_FAILED:
            raise _embed_error(loops[w].rc, self.pooling, self.n_ctx, mark)
    for w in range(n_workers):
        if loops[w].status == _EMBED_CANCELLED:
            raise _decode_error(2, "get_embeddings_batch", self.n_ctx, mark)
    if stop_asked:
        raise _decode_error(2, "get_embeddings_batch", self.n_ctx, mark)
    return offs[n], n_truncated, n_batches, values, offsets
