# Scoring: the log-probability of every token of a text given the tokens before it.
#
# Texts are packed as the embedding loop packs them: as many whole texts as fit the token budget
# go into one decode, one sequence each (at most n_seq_max of them), every position whose
# prediction is wanted marked as an output; after the decode each output row is reduced in C
# (log-softmax at the next token's id: _logprobs.pxi) and the KV cache is cleared. A text longer
# than the budget is decoded alone, in budget-sized pieces of one sequence. Everything between
# two decodes runs without the GIL.
#
# Items are token arrays with a first scored position ``first``: the logits at positions
# first..n-2 predict tokens first+1..n-1. score() uses first = 0; perplexity() uses chunks of
# n_ctx tokens scored from the middle, as llama.cpp's perplexity tool does.

# log_norm_rows (_logsoftmax.h) is declared in _logprobs.pxi.

# The logits of one decode are n_outputs x n_vocab floats that llama.cpp keeps: a batch of 512
# outputs of a 262k vocabulary would take 512 MiB. The budget is cut to keep this under 256 MiB.
cdef int64_t _SCORE_LOGITS_BYTES = 256 * 1024 * 1024


@cython.final
@cython.auto_pickle(False)
cdef class _ScoreRun:
    """One scoring call's state (C containers only; stepped without the GIL)."""

    cdef ll.llama_context * ctx
    cdef ll.llama_batch_ext * batch
    cdef ll.llama_memory_t mem
    cdef volatile int * abort
    cdef vector[ll.llama_token] toks     # every item's tokens, back to back
    cdef vector[int64_t] starts          # per item: its first token in toks
    cdef vector[int32_t] lens            # per item: its tokens
    cdef vector[int32_t] first           # per item: first position whose prediction is kept
    cdef vector[int64_t] out_off         # per item: where its values go in out
    cdef vector[float] out
    cdef vector[int32_t] row0            # per packed item: batch index of its first token
    cdef vector[Py_ssize_t] packed
    cdef int32_t n_vocab
    cdef int32_t n_seq
    cdef int32_t budget
    cdef Py_ssize_t pos                  # next item
    cdef int64_t n_decodes
    cdef int64_t n_tokens                # tokens decoded
    cdef int32_t rc
    # Shared prefix (score_continuations): tokens 0..prefix-1 of every item are in sequence 0
    # already, decoded once; each item's own tokens go into another sequence that starts as a
    # copy of it. prefix_row: the logits at position prefix-1 (they predict token prefix).
    cdef int32_t prefix
    cdef vector[float] prefix_row
    # The rows of the current decode to reduce (_want), reduced together on `threads` threads
    # (_flush): where each value goes and the token it is taken at.
    cdef vector[float *] rows
    cdef vector[float *] dsts
    cdef vector[ll.llama_token] at_tok
    cdef vector[double] norms
    cdef int threads

    cdef int _add(self, ll.llama_seq_id seq, Py_ssize_t item, int32_t frm, int32_t to) except -1 nogil:
        """Tokens frm..to-1 of ``item`` into the batch as sequence ``seq``; -2 when refused."""
        cdef int32_t j, idx
        cdef ll.llama_pos p
        cdef const ll.llama_token * t = self.toks.data() + self.starts[item]
        for j in range(frm, to):
            idx = ll.llama_batch_ext_add_token(self.batch, seq, t[j])
            if idx < 0:
                self.rc = -1
                return -2
            p = j
            ll.llama_batch_ext_set_pos(self.batch, idx, &p)
            if self.first[item] <= j < self.lens[item] - 1:
                ll.llama_batch_ext_set_output_logits(self.batch, idx, True)
            if j == frm:
                self.row0.push_back(idx)
        self.n_tokens += to - frm
        return 0

    cdef int _read(self, Py_ssize_t item, int32_t frm, int32_t to, int32_t row) except -1 nogil:
        """Queue the log-probabilities predicted at positions frm..to-1 of ``item`` (batch rows
        from ``row``); _flush computes them."""
        cdef int32_t j, a = frm, b = to
        cdef const ll.llama_token * t = self.toks.data() + self.starts[item]
        cdef float * dst = self.out.data() + self.out_off[item] - self.first[item]
        if a < self.first[item]:
            a = self.first[item]
        if b > self.lens[item] - 1:
            b = self.lens[item] - 1
        if self.prefix and frm == self.prefix and self.first[item] <= self.prefix - 1:
            self.rows.push_back(self.prefix_row.data())
            self.dsts.push_back(dst + self.prefix - 1)
            self.at_tok.push_back(t[self.prefix])
        for j in range(a, b):
            self.rows.push_back(<float *>ll.llama_get_logits_ith(self.ctx, row + (j - frm)))
            self.dsts.push_back(dst + j)
            self.at_tok.push_back(t[j + 1])
        return 0

    cdef int _flush(self) except -1 nogil:
        """Reduce the queued rows (several threads) and write their values."""
        cdef size_t k, n = self.rows.size()
        if n:
            self.norms.resize(n)
            log_norm_rows(self.rows.data(), <int64_t>n, self.n_vocab, self.norms.data(), self.threads)
            for k in range(n):
                if self.rows[k] == NULL:
                    self.dsts[k][0] = NAN
                else:
                    self.dsts[k][0] = <float>(self.rows[k][self.at_tok[k]] - self.norms[k])
        self.rows.clear()
        self.dsts.clear()
        self.at_tok.clear()
        return 0

    cdef int _decode(self) except -1 nogil:
        self.rc = ll.llama_process(self.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, self.batch)
        if self.rc != 0:
            return 2 if self.rc == 2 else -2
        self.n_decodes += 1
        return 0

    cdef int _fork(self, ll.llama_seq_id seq) except -1 nogil:
        """Sequence ``seq`` becomes a copy of the shared prefix (sequence 0)."""
        ll.llama_memory_seq_rm(self.mem, seq, -1, -1)
        ll.llama_memory_seq_cp(self.mem, 0, seq, -1, -1)
        return 0

    cdef int step(self) except -1 nogil:
        """Score the next pack of items (or one long item). 1: more to do, 0: done,
        2: cancelled, -2: a decode failed (rc)."""
        cdef Py_ssize_t i = self.pos, n = <Py_ssize_t>self.lens.size(), k
        cdef int32_t used = 0, frm, to, own
        cdef int32_t base = 1 if self.prefix else 0     # sequence 0 holds the shared prefix
        cdef int status
        if i >= n:
            return 0
        if self.abort[0] or native_stopping():
            return 2
        if not self.prefix:
            ll.llama_memory_clear(self.mem, True)
        if self.lens[i] - self.prefix > self.budget:
            frm = self.prefix
            if self.prefix:
                self._fork(1)
            while frm < self.lens[i]:
                if frm > self.prefix and (self.abort[0] or native_stopping()):
                    return 2
                to = min(frm + self.budget, self.lens[i])
                ll.llama_batch_ext_clear(self.batch)
                self.row0.clear()
                if self._add(base, i, frm, to):
                    return -2
                status = self._decode()
                if status:
                    return status
                self._read(i, frm, to, self.row0[0])
                self._flush()
                frm = to
            self.pos = i + 1
            return 1 if self.pos < n else 0
        ll.llama_batch_ext_clear(self.batch)
        self.row0.clear()
        self.packed.clear()
        while i < n and <int32_t>self.packed.size() + base < self.n_seq:
            own = self.lens[i] - self.prefix
            if used + own > self.budget:
                break
            if self.prefix:
                self._fork(base + <int32_t>self.packed.size())
            if self._add(base + <ll.llama_seq_id>self.packed.size(), i, self.prefix, self.lens[i]):
                return -2
            self.packed.push_back(i)
            used += own
            i += 1
        status = self._decode()
        if status:
            return status
        for k in range(<Py_ssize_t>self.packed.size()):
            self._read(self.packed[k], self.prefix, self.lens[self.packed[k]], self.row0[k])
        self._flush()
        self.pos = i
        return 1 if i < n else 0

    cdef int decode_prefix(self, const ll.llama_token * toks, int32_t n) except -1 nogil:
        """Decode the shared prefix (n tokens) into sequence 0, keep the logits of its last
        position. 0, 2 (cancelled) or -2 (failed)."""
        cdef int32_t frm = 0, to, j, idx = -1
        cdef int status
        cdef ll.llama_pos p
        cdef const float * row
        ll.llama_memory_clear(self.mem, True)
        while frm < n:
            to = min(frm + self.budget, n)
            ll.llama_batch_ext_clear(self.batch)
            for j in range(frm, to):
                idx = ll.llama_batch_ext_add_token(self.batch, 0, toks[j])
                if idx < 0:
                    self.rc = -1
                    return -2
                p = j
                ll.llama_batch_ext_set_pos(self.batch, idx, &p)
                if j == n - 1:
                    ll.llama_batch_ext_set_output_logits(self.batch, idx, True)
            status = self._decode()
            if status:
                return status
            self.n_tokens += to - frm
            frm = to
        row = ll.llama_get_logits_ith(self.ctx, idx)
        if row == NULL:
            self.rc = -1
            return -2
        self.prefix_row.assign(row, row + self.n_vocab)
        self.prefix = n
        return 0


cdef int _score_budget(Context ctx) except -1:
    """Tokens per decode: n_batch, cut so that the logits of one decode stay under
    _SCORE_LOGITS_BYTES."""
    cdef int64_t n_vocab = ctx.model._n_vocab
    cdef int64_t cap = _SCORE_LOGITS_BYTES // (n_vocab * 4)
    return <int32_t>max(1, min(<int64_t>ll.llama_n_batch(ctx._ctx), cap))


cdef _ScoreRun _new_score_run(Context ctx):
    cdef _ScoreRun run = _ScoreRun.__new__(_ScoreRun)
    run.ctx = ctx._ctx
    run.batch = ctx._batch
    run.mem = ll.llama_get_memory(ctx._ctx)
    run.abort = &ctx._abort
    run.n_vocab = ctx.model._n_vocab
    run.budget = _score_budget(ctx)
    run.n_seq = <int32_t>ll.llama_n_seq_max(ctx._ctx)
    run.threads = max(1, ll.llama_n_threads_batch(ctx._ctx))
    if ll.llama_model_n_swa(ctx.model._model) > 0:
        # As for embeddings (see _embed_into): sliding-window layers see other sequences of
        # the same decode on this llama.cpp, so one sequence per decode.
        run.n_seq = 1
    return run


cdef int _add_item(_ScoreRun run, const int32_t * ids, int32_t n, int32_t first) except -1:
    """Append an item; its values go after the previous items'. An item with nothing to score
    (fewer than two tokens, or none after ``first``) is not decoded at all."""
    cdef int64_t off = run.out.size()
    if n - 1 <= first:
        return 0
    run.starts.push_back(<int64_t>run.toks.size())
    run.toks.insert(run.toks.end(), ids, ids + n)
    run.lens.push_back(n)
    run.first.push_back(first)
    run.out_off.push_back(off)
    run.out.resize(off + n - 1 - first)
    return 0


cdef object _run_scoring(Context ctx, _ScoreRun run, object progress, str call, Py_ssize_t total=-1):
    """Step ``run`` to the end with the context held by the caller; progress(k) after each
    decode (k: items done; the items with nothing to score are reported at the end, so that
    the counts add up to ``total``); Ctrl-C between decodes."""
    cdef int status = 1
    cdef Py_ssize_t before, reported = 0
    cdef int64_t mark = _log_mark()
    ctx._kv.clear()            # the KV cache holds scoring batches now: no prefix to reuse
    ctx._kv_exact = 0
    ctx._logits_ok = False
    while status == 1:
        before = run.pos
        with nogil:
            status = run.step()
        PyErr_CheckSignals()
        if progress is not None and run.pos > before:
            reported += run.pos - before
            if progress(run.pos - before) is False:
                status = 2
                break
    with nogil:
        ll.llama_memory_clear(run.mem, True)
    if status == -2:
        raise _decode_error(run.rc, call, ll.llama_n_ctx(ctx._ctx), mark)
    if status == 2:
        raise _decode_error(2, call, ll.llama_n_ctx(ctx._ctx), mark)
    if progress is not None and total > reported:
        progress(total - reported)
    return None


cdef object _float_array(const vector[float] * v):
    out = np.empty(v.size(), dtype=np.float32)
    cdef float[::1] view = out
    if v.size():
        memcpy(&view[0], v.data(), v.size() * sizeof(float))
    return out


cdef int _check_scoring_context(Context ctx) except -1:
    ctx._check_open()
    if ctx._embeddings:
        raise ContextError("this context computes embeddings (embeddings=True); scoring needs "
                           "logits: use a context created without embeddings=True")
    if ll.llama_get_memory(ctx._ctx) == NULL:
        raise ContextError("this model computes embeddings only (it has no KV cache and no "
                           "logits); it cannot score text")
    return 0


cdef int _check_progress(object progress) except -1:
    if progress is not None and not isinstance(progress, bool) and not callable(progress):
        raise TypeError(f"progress must be callable or a bool, got {type(progress).__name__}")
    return 0


cdef tuple _progress_callable(object progress, object total, str unit):
    """(callable or None, tqdm bar or None) for ``progress=``: True draws a bar (the ``tqdm``
    extra), a callable is called with the number of items done since its last call."""
    if progress is True:
        tqdm = require("tqdm.auto", "progress=True (or pass a callable)").tqdm
        bar = tqdm(total=total, unit=unit)
        return bar.update, bar
    if progress is None or progress is False:
        return None, None
    return progress, None


# -- the Context methods' bodies (Context.score, score_continuations, perplexity) ----------------

cdef object _score_texts(Context self, object texts, object add_special, object progress, object nulls):
    _check_scoring_context(self)
    add_special = _check_bool(add_special, "add_special")
    _check_nulls(nulls)
    cdef _TextBuffers buf = _text_input(texts, "use score([text]) for one", nulls, False,
                                        "strict", INT32_MAX // 2)
    return _score_buffers(self, buf, add_special, progress)


cdef object _score_buffers(Context self, _TextBuffers buf, bint add_special, object progress):
    cdef Py_ssize_t n = buf.ptrs.size(), i
    cdef const int64_t[::1] cv
    cdef const int32_t[::1] iv
    cdef int64_t at = 0
    cdef int32_t n_ctx_seq
    cdef _ScoreRun run
    _check_progress(progress)
    bar = None
    self._enter()
    try:
        progress, bar = _progress_callable(progress, n, "text")
        _check_scoring_context(self)
        _check_specials(self.model, add_special)
        counts, ids = _tokenize_buffers(self.model, buf, add_special, False,
                                        _batch_threads(None, buf.total, n), True)
        n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)
        run = _new_score_run(self)
        if n:
            cv = counts
            iv = ids if ids.shape[0] else np.zeros(1, dtype=np.int32)
            for i in range(n):
                if cv[i] > n_ctx_seq:
                    raise ContextSizeError(
                        f"texts[{i}] is {cv[i]} tokens, longer than a sequence of this context "
                        f"({n_ctx_seq} tokens); use ctx.perplexity(text) for long texts")
            for i in range(n):
                _add_item(run, &iv[at], <int32_t>cv[i], 0)
                at += cv[i]
            _run_scoring(self, run, progress, "score", n)
        values = _float_array(&run.out)
        # every token but each text's first is scored
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.maximum(counts - 1, 0), out=offsets[1:])
        keep = np.ones(ids.shape[0], dtype=bool)
        starts = np.cumsum(counts) - counts
        keep[starts[counts > 0]] = False
        tokens = np.ascontiguousarray(ids[keep])
    finally:
        self._leave()
        if bar is not None:
            bar.close()
        _drain_log()
    from llama_cython.token_scores import TokenScores
    return TokenScores(values, tokens, offsets)


cdef object _score_continuations(Context self, object prompt, object candidates, object add_special):
    _check_scoring_context(self)
    add_special = _check_bool(add_special, "add_special")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if isinstance(candidates, str):
        raise TypeError("candidates must be a sequence of str, not one str")
    cands = list(candidates)
    for k, c in enumerate(cands):
        if not isinstance(c, str):
            raise TypeError(f"candidates[{k}] must be a str, got {type(c).__name__}")
    cdef Py_ssize_t n = len(cands), i, j, m
    cdef int32_t n_ctx_seq, shared = INT32_MAX, n_items = 0
    cdef _ScoreRun run
    cdef int32_t[::1] wv
    cdef int32_t[::1] pv
    cdef int status = 0
    self._enter()
    try:
        _check_scoring_context(self)
        _check_specials(self.model, add_special)
        p_ids = _tokenize(self.model, _text_bytes(prompt, "prompt"), add_special, False)
        n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)
        run = _new_score_run(self)
        firsts = []
        wholes = []
        for i in range(n):
            w = _tokenize(self.model, _text_bytes(prompt + cands[i], f"candidates[{i}]"),
                          add_special, False)
            m = min(p_ids.shape[0], w.shape[0])
            j = 0
            while j < m and w[j] == p_ids[j]:
                j += 1
            if w.shape[0] > n_ctx_seq:
                raise ContextSizeError(
                    f"prompt + candidates[{i}] is {w.shape[0]} tokens, longer than a sequence "
                    f"of this context ({n_ctx_seq} tokens)")
            # tokens j.. are the candidate's; the logits at j-1 predict the first of them
            first = max(j - 1, 0)
            wholes.append(w)
            firsts.append(first)
            wv = w if w.shape[0] else np.zeros(1, dtype=np.int32)
            _add_item(run, &wv[0], <int32_t>w.shape[0], <int32_t>first)
            if w.shape[0] - 1 > first:
                n_items += 1
                shared = min(shared, <int32_t>j)
        # The prompt tokens every candidate starts with are decoded once, in sequence 0, and
        # copied into each candidate's sequence (a context with n_parallel >= 2).
        if n_items >= 2 and shared >= 2 and run.n_seq >= 2:
            pv = p_ids
            mark = _log_mark()
            with nogil:
                status = run.decode_prefix(&pv[0], shared)
            if status:
                with nogil:
                    ll.llama_memory_clear(run.mem, True)
                self._kv.clear()
                self._kv_exact = 0
                self._logits_ok = False
                raise _decode_error(run.rc if status == -2 else 2, "score_continuations",
                                    ll.llama_n_ctx(self._ctx), mark)
        if n_items:
            _run_scoring(self, run, None, "score_continuations")
        values = _float_array(&run.out)
        offsets = np.zeros(n + 1, dtype=np.int64)
        tokens = np.empty(values.shape[0], dtype=np.int32)
        for i in range(n):
            w = wholes[i]
            k = max(w.shape[0] - 1 - firsts[i], 0)
            offsets[i + 1] = offsets[i] + k
            if k:
                tokens[offsets[i]:offsets[i + 1]] = w[firsts[i] + 1:]
    finally:
        self._leave()
        _drain_log()
    from llama_cython.token_scores import TokenScores
    return TokenScores(values, tokens, offsets)


cdef object _perplexity(Context self, object text, object n_ctx, object stride, object progress):
    _check_scoring_context(self)
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cdef int32_t n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)
    if n_ctx is None:
        n_ctx = n_ctx_seq
    _check_int(n_ctx, "n_ctx", 2, n_ctx_seq)
    if stride is not None:
        _check_int(stride, "stride", 1, n_ctx - 1)
    cdef int32_t chunk = n_ctx, first = chunk // 2, c, n_chunks, step
    cdef int32_t[::1] tv
    cdef _ScoreRun run
    cdef bint add_bos
    cdef ll.llama_token bos
    cdef vector[ll.llama_token] piece
    _check_progress(progress)
    bar = None
    self._enter()
    try:
        progress, bar = _progress_callable(progress, None, "chunk")
        _check_scoring_context(self)
        toks = _tokenize(self.model, _text_bytes(text, "text"), True, False)
        if stride is None:
            # llama-perplexity: disjoint chunks, the second half of each scored
            step = chunk
            if toks.shape[0] < 2 * chunk:
                raise ContextSizeError(
                    f"text is {toks.shape[0]} tokens; perplexity with n_ctx={chunk} needs at "
                    f"least {2 * chunk} (two chunks)")
            n_chunks = <int32_t>(toks.shape[0] // chunk)
        else:
            # sliding windows: one every `stride` tokens, each scoring its last `stride`
            # tokens (the first window all of its tokens after the first)
            step = stride
            if toks.shape[0] < chunk:
                raise ContextSizeError(
                    f"text is {toks.shape[0]} tokens; perplexity with n_ctx={chunk} needs at "
                    f"least {chunk} (one window)")
            n_chunks = <int32_t>((toks.shape[0] - chunk) // stride + 1)
        if bar is not None:
            bar.total = n_chunks
        tv = toks
        add_bos = ll.llama_vocab_get_add_bos(self.model._vocab)
        bos = ll.llama_vocab_bos(self.model._vocab)
        run = _new_score_run(self)
        per_chunk = []
        for c in range(n_chunks):
            piece.assign(&tv[c * step], &tv[c * step] + chunk)
            if add_bos:
                piece[0] = bos
            if stride is not None:
                first = 0 if c == 0 else chunk - 1 - step
            _add_item(run, piece.data(), chunk, first)
            per_chunk.append(chunk - 1 - first)
        _run_scoring(self, run, progress, "perplexity", n_chunks)
        logprobs = _float_array(&run.out)
    finally:
        self._leave()
        if bar is not None:
            bar.close()
        _drain_log()
    nll = -logprobs.astype(np.float64)
    counts = np.array(per_chunk, dtype=np.int64)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    running = np.exp(np.cumsum(np.add.reduceat(nll, bounds[:-1])) / bounds[1:])
    count = nll.shape[0]
    mean = float(nll.mean())
    var = float((nll * nll).mean()) - mean * mean
    ppl = float(np.exp(mean))
    err = float(np.sqrt(var / (count - 1)) * ppl) if var > 0 and count > 1 else 0.0
    from llama_cython.stats import PerplexityResult
    return PerplexityResult(perplexity=ppl, uncertainty=err, n_ctx=chunk, n_chunks=n_chunks,
                            n_tokens=count, chunk_perplexity=running, logprobs=logprobs)
