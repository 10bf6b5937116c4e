# The decode -> sample -> accept loop. Everything between the prompt and the returned text runs
# here without the GIL and without Python objects. One loop serves every form: ``generate`` runs
# it to the end in one nogil block; the streams (iterator, callback, asyncio) run it until the
# next piece of text can be shown, then return to Python with that piece.
#
# Text is kept as the bytes llama.cpp produced. A piece is shown only once it is whole UTF-8 and
# cannot be the start of a stop string; a stop string found in the text ends generation and is
# cut off, so it never reaches the caller, not even in part.

cdef enum _Finish:
    FINISH_RUNNING = 0
    FINISH_STOP = 1        # an end-of-generation token or a stop string
    FINISH_LENGTH = 2      # max_tokens reached, or the context is full
    FINISH_CANCELLED = 3   # cancel(), a callback returning False, a closed stream, an async cancel
    FINISH_ERROR = 4       # llama_process failed; see rc

cdef tuple _FINISH_NAMES = ("running", "stop", "length", "cancelled", "error")

# The sampling keywords every generation method takes, with their defaults.
_SAMPLING_DEFAULTS = {
    "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0,
    "repetition_penalty": 1.0, "repeat_last_n": 64, "presence_penalty": 0.0,
    "frequency_penalty": 0.0, "ignore_eos": False, "seed": None,
    "grammar": None, "json_schema": None, "logprobs": None,
}


cdef struct _GenLoop:
    ll.llama_context * ctx
    const ll.llama_vocab * vocab
    ll.llama_batch_ext * batch
    ll.llama_sampler * smpl
    volatile int * abort
    vector[ll.llama_token] * kv   # tokens of sequence 0 in the KV cache, in position order
    int32_t * kv_exact            # leading kv entries a fresh context would compute the same way
    int32_t n_ubatch              # llama.cpp's physical batch: the unit of exact reuse
    int32_t n_ctx                 # per-sequence capacity
    int32_t n_batch               # tokens per llama_process call: a multiple of n_ubatch
    int32_t max_tokens
    int32_t n_generated
    int finish
    int32_t rc
    bint logits_ok                # the last decode succeeded: its last position has logits
    int64_t t_start_us
    int64_t t_prompt_us
    int64_t t_end_us
    int64_t t_poll_us             # when signals were last looked for
    void * owner                  # the GenerationStream (borrowed) that keeps a caught signal


# How often (at most) the loop takes the GIL to let Python's signal handlers run: Ctrl-C is
# seen within one decode step, and a busy thread beside the loop costs it nothing measurable.
cdef int64_t _SIGNAL_POLL_US = 50000


cdef int _poll_signals(_GenLoop * g) except -1 nogil:
    """1 when a signal handler raised (the exception is kept by the stream), else 0. Off the
    main thread Python runs no handlers, and this costs one GIL round trip per 50 ms."""
    cdef int64_t now
    if g.owner == NULL:           # no stream is running the loop from Python right now
        return 0
    now = ll.llama_time_us()
    if now - g.t_poll_us < _SIGNAL_POLL_US:
        return 0
    g.t_poll_us = now
    with gil:
        return (<GenerationStream>g.owner)._take_signal()


cdef inline void _forget_kv(_GenLoop * g) noexcept nogil:
    """The KV cache's content is unknown (a failed decode): the next call starts afresh."""
    g.kv.clear()
    g.kv_exact[0] = 0
    g.logits_ok = False


cdef int _decode_tokens(_GenLoop * g, const ll.llama_token * toks, int32_t n) except -1 nogil:
    """Decode ``n`` tokens after those in the KV cache, in chunks of n_batch; logits for the last.

    n_batch is a multiple of n_ubatch, so llama.cpp's physical batches start at multiples of
    n_ubatch when the first token's position is one: see ``_start_prompt``.

    Returns 0, or 1 with ``g.rc`` set to llama_process's code (2: aborted, also by a signal
    such as Ctrl-C between chunks). After a failure the KV cache may hold part of the batch
    (llama.h), so the record is emptied: the next call starts afresh. A C++ exception from
    llama.cpp (std::bad_alloc...) propagates as a Python exception (-1), the record emptied too.
    """
    cdef int32_t i = 0, m, j, idx = -1
    cdef ll.llama_pos pos
    while i < n:
        m = n - i
        if m > g.n_batch:
            m = g.n_batch
        ll.llama_batch_ext_clear(g.batch)
        for j in range(m):
            # The ext API checks capacity, token id and seq id here (negative = refused).
            idx = ll.llama_batch_ext_add_token(g.batch, 0, toks[i + j])
            if idx < 0:
                g.rc = -1
                _forget_kv(g)
                return 1
            pos = <ll.llama_pos>g.kv.size() + j
            ll.llama_batch_ext_set_pos(g.batch, idx, &pos)
        if i + m == n:
            ll.llama_batch_ext_set_output_logits(g.batch, idx, True)
        g.rc = ll.llama_process(g.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, g.batch)
        if g.rc != 0:
            _forget_kv(g)
            return 1
        g.kv.insert(g.kv.end(), toks + i, toks + i + m)
        i += m
        if i < n and _poll_signals(g):
            g.rc = 2
            return 1
    g.logits_ok = True
    return 0


cdef size_t _utf8_complete_end(const string * text, size_t start, size_t end) noexcept nogil:
    """``end``, moved back before a UTF-8 character that is not complete yet."""
    cdef size_t j = end
    cdef unsigned char lead
    cdef size_t need
    while j > start and end - j < 3 and (<unsigned char>text[0][j - 1] & 0xC0) == 0x80:
        j -= 1
    if j == start:
        return end
    lead = <unsigned char>text[0][j - 1]
    if (lead & 0xE0) == 0xC0:
        need = 2
    elif (lead & 0xF0) == 0xE0:
        need = 3
    elif (lead & 0xF8) == 0xF0:
        need = 4
    else:
        return end        # ASCII, or an invalid byte that no continuation can complete
    if end - (j - 1) < need:
        return j - 1
    return end


@cython.final
cdef size_t _find_stop_in(const string * text, const vector[string] * stops, size_t max_stop,
                          size_t start) noexcept nogil:
    """Earliest position of a stop string in ``text`` that ends after ``start``; npos if none."""
    cdef size_t best = <size_t>-1, pos, i
    cdef size_t frm = start - (max_stop - 1) if start >= max_stop - 1 else 0
    for i in range(stops.size()):
        pos = text.find(stops[0][i], frm)
        if pos < best:
            best = pos
    return best


cdef size_t _shown_end_of(const string * text, size_t emitted, const vector[string] * stops,
                          size_t max_stop, bint ended) noexcept nogil:
    """How far a prompt's text may be shown: not into a possible stop string or a half UTF-8
    character, unless it has ended (then all of it)."""
    cdef size_t n = text.size(), end = n, k, i
    if ended:
        return n
    if max_stop > 1:
        k = max_stop - 1
        if k > n - emitted:
            k = n - emitted
        while k > 0 and end == n:
            for i in range(stops.size()):
                if stops[0][i].size() > k and \
                        memcmp(text.data() + n - k, stops[0][i].data(), k) == 0:
                    end = n - k
                    break
            k -= 1
    return _utf8_complete_end(text, emitted, end)


@cython.no_gc_clear
cdef class GenerationStream:
    """Text as it is generated: an iterator of ``str`` pieces.

    Made by :meth:`Context.generate_stream` and :meth:`Context.chat_stream`. Each piece is whole
    UTF-8 (a character split across tokens waits for its last byte) and never contains any part
    of a stop string. The decoding between two pieces runs without the GIL.

    The context is busy while the stream is open: it closes when it is exhausted, on
    :meth:`close` (or leaving a ``with`` block), or when the stream is garbage-collected.
    ``finish_reason``, ``text`` and ``stats`` tell the outcome.

    >>> with ctx.generate_stream("Once upon a time", max_tokens=16) as stream:  # doctest: +SKIP
    ...     for piece in stream:
    ...         print(piece, end="", flush=True)
    """

    cdef Context ctx
    cdef _GenLoop g
    cdef vector[ll.llama_token] prompt
    cdef vector[ll.llama_token] out_tokens
    cdef string text
    cdef size_t emitted
    cdef vector[string] stops
    cdef size_t max_stop
    cdef int32_t n_reuse         # prompt tokens taken from the KV cache instead of decoded
    cdef ll.llama_token pending  # sampled but not decoded yet
    cdef bint has_pending
    cdef bint started            # the prompt phase has run
    cdef bint busy               # a step runs right now (in some thread)
    cdef bint close_pending      # close() was asked during a step: the step's thread finishes
    cdef bint released           # the context was handed back
    cdef int64_t mark
    cdef object _stats
    cdef object _interrupt       # the exception a signal handler raised during a step (Ctrl-C)
    cdef _Speculator spec        # speculative decoding (generate_with_draft); None otherwise
    cdef int32_t n_decodes       # decodes after the prompt's
    cdef int32_t n_vocab
    cdef object _grammar         # the Grammar constraining this generation, or None
    cdef ll.llama_sampler * gsmpl  # the grammar's sampler (a clone, owned), or NULL
    cdef vector[ll.llama_token_data] cand
    cdef _LogprobRecord lp       # logprobs=k; None otherwise
    cdef bint want_lp

    def __init__(self, *args, **kwargs):
        raise TypeError("GenerationStream cannot be created directly; use ctx.generate_stream()")

    def __dealloc__(self):
        # Quiet: free C memory and hand the contexts back; no stats, no exceptions.
        if self.g.smpl != NULL:
            ll.llama_sampler_free(self.g.smpl)
            self.g.smpl = NULL
        if self.gsmpl != NULL:
            ll.llama_sampler_free(self.gsmpl)
            self.gsmpl = NULL
        if self.spec is not None:
            self.spec.release()
        if not self.released and self.ctx is not None:
            self.released = True
            self.ctx._leave()

    # -- the loop, without the GIL -------------------------------------------------------------

    cdef size_t _find_stop(self, size_t start) noexcept nogil:
        """Earliest position of a stop string that ends after ``start``; npos if none."""
        return _find_stop_in(&self.text, &self.stops, self.max_stop, start)

    cdef int _take_signal(self) except -1:
        """With the GIL: run Python's signal handlers; keep what they raise for _run."""
        try:
            PyErr_CheckSignals()
        except BaseException as exc:
            self._interrupt = exc
            return 1
        return 0

    cdef size_t _shown_end(self) noexcept nogil:
        """How far the text may be shown now: not into a possible stop string or a half character."""
        return _shown_end_of(&self.text, self.emitted, &self.stops, self.max_stop,
                             self.g.finish != FINISH_RUNNING)

    cdef int _step(self) except -1 nogil:
        """Decode the pending token, sample the next, record it. 0 once generation ended; C++
        exceptions from llama.cpp propagate (-1)."""
        cdef _GenLoop * g = &self.g
        cdef ll.llama_token tok
        cdef int64_t t0
        if g.abort[0] or native_stopping():
            g.finish = FINISH_CANCELLED
            return 0
        if _poll_signals(g):
            g.finish = FINISH_CANCELLED
            return 0
        if self.has_pending:
            if self.spec is not None:
                return self._spec_step()
            self.has_pending = False
            if _decode_tokens(g, &self.pending, 1):
                g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
                return 0
            self.n_decodes += 1
        # Valid: the last decode marked its last token as an output (llama.cpp asserts that).
        if self.spec is not None and self.spec.lev:
            tok = self.spec.sample_target(g.ctx, -1)
        else:
            tok = self._sample(-1)
        if not self._emit(tok):
            return 0
        self.pending = tok
        self.has_pending = True
        return 1

    cdef ll.llama_token _sample(self, int32_t idx) except -2 nogil:
        """Sample the next token from the logits at ``idx``: -1 when a grammar allows none."""
        cdef const float * row
        if self.want_lp:
            row = ll.llama_get_logits_ith(self.g.ctx, idx)
            if row != NULL:
                self.lp.prepare(row, self.n_vocab)
        if self.gsmpl != NULL:
            return _sample_checked(self.g.smpl, self.gsmpl, self.g.ctx, idx, self.n_vocab, &self.cand)
        return ll.llama_sampler_sample(self.g.smpl, self.g.ctx, idx)

    cdef int _emit(self, ll.llama_token tok) except -1 nogil:
        """Record a sampled token: its text, stop strings, limits. 0 when it ends generation
        (an end-of-generation token is not recorded), else 1."""
        cdef _GenLoop * g = &self.g
        cdef size_t before, cut
        if tok < 0 or ll.llama_vocab_is_eog(g.vocab, tok):   # < 0: nothing left to sample
            g.finish = FINISH_STOP
            return 0
        self.out_tokens.push_back(tok)
        if self.want_lp:
            self.lp.record(tok)
        g.n_generated += 1
        before = self.text.size()
        _append_piece(g.vocab, tok, &self.text, False)   # a failed piece adds no text
        if self.stops.size():
            cut = self._find_stop(before)
            if cut != <size_t>-1:
                self.text.resize(cut)
                g.finish = FINISH_STOP
                return 0
        if g.n_generated >= g.max_tokens or <int32_t>g.kv.size() >= g.n_ctx:
            g.finish = FINISH_LENGTH
            return 0
        return 1

    cdef int _spec_step(self) except -1 nogil:
        """One speculative step: draft k tokens after the pending one, decode the pending token
        and the draft in one batch, sample the target at each position as plain generation
        would, keep the drafted tokens up to the first it disagrees with.

        ``pending`` is counted in n_generated already, and every position decoded here needs a
        place in the context: so at most max_tokens - n_generated - 1 tokens are drafted, and
        no more than the context and n_batch have room for.
        """
        cdef _GenLoop * g = &self.g
        cdef int32_t n_kv = <int32_t>g.kv.size(), k_cap, k, i, j = 0, idx
        cdef ll.llama_token tok
        cdef ll.llama_pos pos
        cdef int64_t t0
        cdef bint going = True, kept
        k_cap = g.max_tokens - g.n_generated - 1
        if k_cap > g.n_ctx - n_kv - 1:
            k_cap = g.n_ctx - n_kv - 1
        if k_cap > g.n_batch - 1:
            k_cap = g.n_batch - 1
        self.spec.d.owner = g.owner
        k = self.spec.propose(g.kv, self.pending, self.spec.choose(k_cap))
        ll.llama_batch_ext_clear(g.batch)
        for i in range(k + 1):
            idx = ll.llama_batch_ext_add_token(g.batch, 0, self.pending if i == 0 else self.spec.out[i - 1])
            if idx < 0:
                g.rc = -1
                _forget_kv(g)
                g.finish = FINISH_ERROR
                return 0
            pos = n_kv + i
            ll.llama_batch_ext_set_pos(g.batch, idx, &pos)
            ll.llama_batch_ext_set_output_logits(g.batch, idx, True)
        t0 = ll.llama_time_us()
        g.rc = ll.llama_process(g.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, g.batch)
        if g.rc != 0:
            _forget_kv(g)
            g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
            return 0
        self.spec.record_decode(k + 1, ll.llama_time_us() - t0)
        self.n_decodes += 1
        g.kv.push_back(self.pending)
        self.has_pending = False
        for i in range(k + 1):
            if self.spec.lev:
                tok = self.spec.verify(g.ctx, i, &kept)
            else:
                tok = self._sample(i)
                kept = i < k and tok == self.spec.out[i]
            if not self._emit(tok):
                going = False
                break
            if kept:
                g.kv.push_back(tok)       # the draft token, decoded at its place: kept
                j += 1
                continue
            self.pending = tok
            self.has_pending = True
            break
        if k > 0:
            self.spec.record_verdict(k, j)
        # The rejected draft tokens leave the cache; so do accepted ones after a stop.
        g.logits_ok = j == k and going
        if not _keep_prefix(g, <int32_t>g.kv.size()):
            self._rebuild_kv()
        return 1 if going else 0

    cdef int _rebuild_kv(self) except -1 nogil:
        """Decode the recorded tokens again into an emptied cache (after a sliding window lost
        positions to rejected draft tokens; rare)."""
        cdef _GenLoop * g = &self.g
        cdef vector[ll.llama_token] toks = g.kv[0]
        ll.llama_memory_clear(ll.llama_get_memory(g.ctx), True)
        g.kv.clear()
        g.kv_exact[0] = 0
        g.logits_ok = False
        if toks.size() and _decode_tokens(g, toks.data(), <int32_t>toks.size()):
            g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
        return 0

    cdef int _start_prompt(self) except -1 nogil:
        """Reuse the cached prefix (or clear the cache), then decode the rest of the prompt.

        Exactness: llama.cpp's results for a token depend on the shape of the physical batch
        it was computed in (kernels tile, and flash attention chunks, by batch size). A
        prefix whose KV entries all came from whole n_ubatch-sized batches starting at
        multiples of n_ubatch, decoded from such a prefix, holds what a fresh context would
        compute for it, bit for bit; ``kv_exact`` counts those entries. Generated tokens
        (decoded one at a time) and a prompt's last, partial batch are not part of it.
        """
        cdef _GenLoop * g = &self.g
        cdef ll.llama_memory_t mem = ll.llama_get_memory(g.ctx)
        cdef ll.llama_pos pos_min, keep_from
        cdef int32_t n_swa, exact, n_prompt = <int32_t>self.prompt.size()
        cdef bint aligned
        self.started = True
        g.t_start_us = ll.llama_time_us()
        if self.n_reuse > 0:
            # llama.h: seq_rm "returns false if a partial sequence cannot be removed" (recurrent
            # memory). With sliding-window attention the cache may also have dropped positions
            # the rest of the prompt still attends to: then the prefix is of no use either.
            if not ll.llama_memory_seq_rm(mem, 0, self.n_reuse, -1):
                self.n_reuse = 0
            else:
                n_swa = ll.llama_model_n_swa(ll.llama_get_model(g.ctx))
                pos_min = ll.llama_memory_seq_pos_min(mem, 0)
                keep_from = self.n_reuse - n_swa if n_swa > 0 else 0
                if keep_from < 0:
                    keep_from = 0
                if pos_min < 0 or pos_min > keep_from:
                    self.n_reuse = 0
        exact = g.kv_exact[0]
        if self.n_reuse > 0:
            g.kv.resize(self.n_reuse)
            if exact > self.n_reuse:
                exact = self.n_reuse
        else:
            ll.llama_memory_clear(mem, True)
            g.kv.clear()
            exact = 0
        # The rest is decoded in batches aligned as a fresh context's would be when it starts
        # at the end of an exact prefix at a multiple of n_ubatch.
        aligned = exact == self.n_reuse and self.n_reuse % g.n_ubatch == 0
        g.kv_exact[0] = exact - exact % g.n_ubatch
        if _decode_tokens(g, self.prompt.data() + self.n_reuse, n_prompt - self.n_reuse):
            g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
        elif aligned:
            g.kv_exact[0] = n_prompt - n_prompt % g.n_ubatch
        g.t_prompt_us = ll.llama_time_us()
        return 0

    cdef int _advance(self, bint to_end) except -1 nogil:
        """Run until generation ends or (``to_end`` false) a new piece can be shown."""
        if not self.started:
            self._start_prompt()
        while self.g.finish == FINISH_RUNNING:
            if not self._step():
                break
            if not to_end and self._shown_end() > self.emitted:
                return 0
        self.g.t_end_us = ll.llama_time_us()
        return 0

    # -- Python side ---------------------------------------------------------------------------

    cdef object _run(self, bint to_end):
        """One call into the loop (no GIL inside); the new text, or None once all is shown."""
        cdef size_t end
        if self.released:
            return None
        if self.busy:
            raise ContextBusyError("this stream is already being advanced by another thread")
        if self.g.finish == FINISH_RUNNING:
            self.busy = True
            self.g.owner = <void *>self
            try:
                _native_begin()
            except BaseException:
                self.busy = False
                self.g.owner = NULL
                self.g.finish = FINISH_CANCELLED
                self._finish()
                raise
            try:
                with nogil:
                    try:
                        self._advance(to_end)
                    finally:
                        native_end()
            except BaseException:
                # A C++ exception from llama.cpp (AllocationError...): the KV cache is in an
                # unknown state, so its record is dropped and the next call starts afresh.
                _forget_kv(&self.g)
                self.g.finish = FINISH_ERROR
                self._finish()
                raise
            finally:
                self.busy = False
                self.g.owner = NULL
        if self.close_pending:
            self._finish()
            return None
        if self._interrupt is not None:
            # Ctrl-C (or another signal handler's exception) between two decodes: the stream
            # ends as cancelled, the context is handed back usable, and the exception goes on.
            exc, self._interrupt = self._interrupt, None
            self._finish()
            raise exc
        if self.g.finish == FINISH_ERROR:
            self._finish()
            raise _decode_error(self.g.rc, "generate", self.g.n_ctx, self.mark)
        end = self.text.size() if to_end else self._shown_end()
        if end > self.emitted:
            piece = PyUnicode_DecodeUTF8(self.text.data() + self.emitted, end - self.emitted, "replace")
            self.emitted = end
        else:
            piece = None
        if self.g.finish != FINISH_RUNNING and self.emitted == self.text.size():
            self._finish()
        return piece

    cdef _finish(self):
        """Hand the context back and record the stats (idempotent).

        ``released`` is set before any Python code runs: building the stats may run the garbage
        collector, and so other threads, one of which may close this stream; a second _finish
        would then hand the context back twice, dropping the hold of a stream opened since.
        """
        if self.released:
            return
        self.released = True
        cdef _GenLoop * g = &self.g
        if g.finish == FINISH_RUNNING:
            g.finish = FINISH_CANCELLED
            if not self.started:
                g.t_start_us = g.t_prompt_us = ll.llama_time_us()
            g.t_end_us = ll.llama_time_us()
        if g.smpl != NULL:
            ll.llama_sampler_free(g.smpl)
            g.smpl = NULL
        if self.gsmpl != NULL:
            ll.llama_sampler_free(self.gsmpl)
            self.gsmpl = NULL
        ids = np.empty(self.out_tokens.size(), dtype=np.int32)
        cdef int32_t[::1] view
        if self.out_tokens.size():
            view = ids
            memcpy(&view[0], self.out_tokens.data(), self.out_tokens.size() * sizeof(ll.llama_token))
        self._stats = GenerationStats(
            prompt_tokens=<int>self.prompt.size(),
            completion_tokens=g.n_generated,
            prompt_ms=(g.t_prompt_us - g.t_start_us) / 1000.0,
            generation_ms=(g.t_end_us - g.t_prompt_us) / 1000.0,
            finish_reason=_FINISH_NAMES[g.finish],
            tokens=ids,
            cached_tokens=self.n_reuse,
            decodes=self.n_decodes,
            draft_tokens=self.spec.drafted if self.spec is not None else 0,
            accepted_tokens=self.spec.accepted if self.spec is not None else 0,
            logprobs=self.lp.result(&self.out_tokens) if self.want_lp else None,
        )
        if self.spec is not None:
            self.spec.release()
            if self.spec.kind == SPEC_MODEL:
                self.spec.draft._logits_ok = False
        self.ctx.last_stats = self._stats
        self.ctx.cached_tokens = self.n_reuse
        self.ctx._logits_ok = g.logits_ok
        self.ctx._leave()
        _drain_log()

    cdef str _run_to_end(self):
        piece = self._run(True)
        return "" if piece is None else piece

    def __iter__(self):
        return self

    def __next__(self):
        piece = self._run(False)
        if piece is None:
            raise StopIteration
        return piece

    def next_piece(self):
        """The next piece, or ``None`` once generation has ended (what ``__next__`` returns
        without the ``StopIteration``; the async stream calls this in a worker thread)."""
        return self._run(False)

    def cancel(self):
        """Stop generation within one token (safe from any thread); the stream then ends."""
        if not self.released:
            self.g.abort[0] = 1

    def close(self):
        """End the stream now and hand the context back. Idempotent.

        Called while another thread is inside a step (an async worker), it asks that step to
        stop; the step's thread hands the context back when it returns, within one token.
        """
        if self.released:
            return
        if self.busy:
            self.close_pending = True
            self.g.abort[0] = 1
            return
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def closed(self):
        """True once the context was handed back (exhausted, closed or cancelled)."""
        return self.released

    @property
    def finish_reason(self):
        """``"stop"``, ``"length"`` or ``"cancelled"`` once ended; ``None`` while running."""
        if self.g.finish == FINISH_RUNNING and not self.released:
            return None
        return _FINISH_NAMES[self.g.finish]

    @property
    def text(self):
        """All the text shown so far."""
        return PyUnicode_DecodeUTF8(self.text.data(), self.emitted, "replace")

    @property
    def stats(self):
        """The :class:`GenerationStats` of this generation, once it has ended; else ``None``."""
        return self._stats

    def __repr__(self):
        state = "open" if not self.released else f"ended ({self.finish_reason})"
        return f"<llama_cython.GenerationStream {state}, {self.g.n_generated} tokens>"


cdef list _stop_list(object stop):
    """``stop`` as a list of non-empty UTF-8 byte strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = (stop,)
    out = []
    try:
        items = list(stop)
    except TypeError:
        raise TypeError(f"stop must be a str or a sequence of str, got {type(stop).__name__}") from None
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise TypeError(f"stop[{i}] must be a str, got {type(s).__name__}")
        if not s:
            raise OptionError(f"stop[{i}] is an empty string; it would match everywhere")
        try:
            out.append((<str>s).encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise OptionError(f"stop[{i}] is not valid text: {exc.reason} at index {exc.start}") from None
    return out


cdef object _grammar_option(object grammar, object json_schema):
    """``grammar=`` / ``json_schema=`` as one Grammar, or None."""
    if grammar is None and json_schema is None:
        return None
    from llama_cython.grammar import Grammar
    if grammar is not None and json_schema is not None:
        raise OptionError("pass grammar= or json_schema=, not both")
    if json_schema is not None:
        return Grammar.from_json_schema(json_schema)
    if grammar is None or isinstance(grammar, Grammar):
        return grammar
    if isinstance(grammar, str):
        return Grammar(grammar)
    raise TypeError(f"grammar must be a str (GBNF) or a llama_cython.Grammar, "
                    f"got {type(grammar).__name__}")


cdef dict _sampling_kwargs(dict given):
    """The defaults updated with ``given``; an unknown keyword is a TypeError, as for a def."""
    for key in given:
        if key not in _SAMPLING_DEFAULTS:
            raise TypeError(f"unexpected keyword argument {key!r}")
    merged = dict(_SAMPLING_DEFAULTS)
    merged.update(given)
    return merged


cdef GenerationStream _start_generation(Context self, object prompt, bint add_special,
                                        object max_tokens, object stop, dict sampling,
                                        object draft=None, object n_draft=16, object adaptive=True):
    """Check everything, take the context, tokenize and plan the prefix reuse; decode nothing.

    The returned stream owns the context (and the draft context, with ``draft``) until it is
    finished or closed.
    """
    self._check_open()
    cdef bytes data = _text_bytes(prompt, "prompt") if isinstance(prompt, str) else None
    if data is None:
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    _check_int(max_tokens, "max_tokens", 1, INT32_MAX)
    cdef list stops = _stop_list(stop)
    cdef dict kw = _sampling_kwargs(sampling)
    grammar = _grammar_option(kw.pop("grammar"), kw.pop("json_schema"))
    cdef int32_t n_logprobs = _check_logprobs(kw.pop("logprobs"), self.model._n_vocab)
    if draft is not None and (grammar is not None or n_logprobs >= 0):
        raise OptionError("grammar=, json_schema= and logprobs= are not supported with "
                          "speculative decoding; use generate()")
    cdef _SamplingParams sp = _sampling_params(kw)
    cdef GenerationStream s = GenerationStream.__new__(GenerationStream)
    cdef _CompiledGrammar cg = None
    cdef int32_t[::1] toks
    cdef int32_t n_prompt, n_ctx, n, n_ubatch
    cdef size_t i, n_common
    self._enter(_HOLD_STREAM)    # busy: ContextBusyError at once, whatever the prompt
    s.released = True        # until the stream owns the context, its dealloc hands back nothing
    s.ctx = self
    try:
        _native_begin()      # the prompt is tokenized without the GIL
    except BaseException:
        self._leave()
        raise
    try:
        if ll.llama_get_memory(self._ctx) == NULL:
            # BERT-like models have no KV cache and no logits: llama_sampler_sample would abort.
            raise ContextError("this model computes embeddings only (it has no KV cache and no "
                               "logits); it cannot generate")
        if draft is not None:
            s.spec = _make_speculator(self, draft, n_draft, adaptive)
        s.mark = _log_mark()
        n_ctx = ll.llama_n_ctx_seq(self._ctx)
        n = <int32_t>min(_min_tokens(self.model, len(data)), <int64_t>INT32_MAX)
        if n > n_ctx:
            raise ContextSizeError(
                f"prompt is at least {n} tokens ({len(data)} bytes, at most "
                f"{self.model._max_piece} per token), longer than the context ({n_ctx} tokens)")
        # parse_special: chat markers such as <|im_start|> in a prompt are tokens, as in llama.cpp's examples
        prompt_ids = _tokenize(self.model, data, add_special, True)
        n_prompt = prompt_ids.shape[0]
        if n_prompt == 0:
            raise TokenizeError("the prompt is empty (it tokenizes to no tokens)")
        if n_prompt > n_ctx:
            raise ContextSizeError(
                f"prompt is {n_prompt} tokens, longer than the context ({n_ctx} tokens)")
        if s.spec is not None and s.spec.kind == SPEC_MODEL and n_prompt >= s.spec.d.n_ctx:
            raise ContextSizeError(
                f"prompt is {n_prompt} tokens; the draft context holds {s.spec.d.n_ctx}: give "
                "the draft a context as long as the target's")
        toks = prompt_ids
        s.prompt.assign(&toks[0], &toks[0] + n_prompt)
        for b in stops:
            s.stops.push_back(<string>b)
            if len(<bytes>b) > s.max_stop:
                s.max_stop = len(<bytes>b)
        # Reuse the longest common prefix of the tokens already in the cache, but decode at
        # least the last prompt token: its logits are what the first sample needs. "exact"
        # reuses only what a fresh context would compute identically (see _start_prompt).
        n_common = 0
        n_ubatch = ll.llama_n_ubatch(self._ctx)
        if self.prefix_caching != "off":
            n = min(<int32_t>self._kv.size(), n_prompt - 1)
            if self.prefix_caching == "exact":
                n = min(n, self._kv_exact)
            while n_common < <size_t>n and self._kv[n_common] == s.prompt[n_common]:
                n_common += 1
            if self.prefix_caching == "exact":
                n_common -= n_common % <size_t>n_ubatch
        s.n_reuse = <int32_t>n_common
        self.cached_tokens = 0     # set for real once the prompt phase has run
        s.g.ctx = self._ctx
        s.g.vocab = self.model._vocab
        s.g.batch = self._batch
        s.g.abort = &self._abort
        s.g.kv = &self._kv
        s.g.kv_exact = &self._kv_exact
        s.g.n_ubatch = n_ubatch
        s.g.n_ctx = n_ctx
        s.g.n_batch = ll.llama_n_batch(self._ctx)
        s.g.n_batch -= s.g.n_batch % n_ubatch
        s.g.max_tokens = max_tokens
        s.g.finish = FINISH_RUNNING
        s.g.logits_ok = self._logits_ok
        # A penalty window longer than the context means the whole context (and -1 says so);
        # llama.cpp would allocate the window as asked on every call (2**31-1: 8 GiB).
        if sp.repeat_last_n < 0 or sp.repeat_last_n > n_ctx:
            sp.repeat_last_n = n_ctx
        s.n_vocab = self.model._n_vocab
        if grammar is not None:
            cg = _compiled_grammar(self.model, grammar)
            s._grammar = grammar
            s.gsmpl = ll.llama_sampler_clone(cg.smpl)
        if n_logprobs >= 0:
            s.lp = _LogprobRecord.__new__(_LogprobRecord)
            s.lp.k = n_logprobs
            s.want_lp = True
        s.g.smpl = _build_sampler(&sp, self.model._vocab, self.model._n_vocab)
        if s.spec is not None:
            s.spec.setup_sampling(&sp, self.model._vocab)
    except BaseException:
        if s.spec is not None:
            s.spec.release()
        self._leave()
        raise
    finally:
        native_end()
    s.released = False
    return s
