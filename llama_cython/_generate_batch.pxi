# Batched generation: many prompts, up to n_parallel of them decoded together (continuous
# batching). Each decode carries one token of every sequence that is generating plus prompt
# tokens of newly admitted ones, within n_batch; a finished sequence frees its slot (its KV
# cells are removed) and the next prompt takes it. Every step runs without the GIL; the loop
# returns to Python between decodes only for signals (Ctrl-C) and progress.
#
# Each prompt has its own sampler chain. With a seed, prompt i's chain draws from a seed
# derived from (seed, i), so its text does not depend on which slot or step it got.

cdef struct _BatchSlot:
    int32_t prompt          # index of the prompt this slot holds; -1: free
    ll.llama_sampler * smpl
    ll.llama_sampler * gsmpl  # its grammar (grammar=/json_schema=), or NULL
    int32_t n_past          # this sequence's tokens in the KV cache
    int32_t n_fed           # prompt tokens placed in batches so far
    ll.llama_token pending  # sampled, to be decoded in the next batch
    bint has_pending
    int32_t out_idx         # batch index whose logits this slot samples after the decode; -1: none
    int32_t fed_now         # prompt tokens of this slot in the current batch
    int32_t wait_for        # slot whose prompt shares this one's first `share` tokens; -1: none
    int32_t share           # tokens to copy from it once it has decoded them


cdef int32_t _SHARE_MIN = 8      # a shorter common prefix is decoded, not copied


cdef inline uint32_t _derived_seed(uint32_t seed, uint32_t i) noexcept nogil:
    """A seed for prompt ``i`` from the call's ``seed`` (splitmix32-style mixing): the same
    prompt index always gets the same seed, whatever slot or step it is decoded in."""
    cdef uint32_t z = seed + 0x9E3779B9u * (i + 1)
    z = (z ^ (z >> 16)) * 0x85EBCA6Bu
    z = (z ^ (z >> 13)) * 0xC2B2AE35u
    z = z ^ (z >> 16)
    return z if z != <uint32_t>ll.LLAMA_DEFAULT_SEED else 0


@cython.final
@cython.auto_pickle(False)
cdef class _BatchJob:
    """The state of one generate_batch call, C++ containers only (used without the GIL)."""

    cdef ll.llama_context * ctx
    cdef const ll.llama_vocab * vocab
    cdef ll.llama_batch_ext * batch
    cdef ll.llama_memory_t mem
    cdef volatile int * abort
    cdef vector[vector[ll.llama_token]] prompts
    cdef vector[string] texts
    cdef vector[int32_t] n_generated
    cdef vector[vector[ll.llama_token]] out_tokens
    cdef vector[int64_t] t_admit       # per prompt, llama_time_us: admitted, first token, ended
    cdef vector[int64_t] t_first
    cdef vector[int64_t] t_end
    cdef vector[int] finish
    cdef vector[_BatchSlot] slots
    cdef vector[string] stops
    cdef size_t max_stop
    cdef _SamplingParams sp
    cdef vector[ll.llama_logit_bias] ban
    cdef uint32_t seed
    cdef int32_t n_vocab
    cdef int32_t n_ctx_seq
    cdef int32_t n_batch
    cdef int32_t max_tokens
    cdef Py_ssize_t next_prompt
    cdef Py_ssize_t n_done
    cdef int64_t n_decodes
    cdef int32_t rc
    cdef vector[int32_t] touched     # prompts whose text grew or that ended in the last step
    cdef vector[int32_t] reused      # per prompt: leading tokens copied from another sequence
    cdef bint share_prefix           # copy shared prompt prefixes between sequences
    cdef bint share_exact            # only whole n_ubatch blocks of them (prefix_caching="exact")
    cdef int32_t n_ubatch
    cdef int32_t n_swa               # the model's sliding window (0: none)
    cdef _CompiledGrammar grammar    # grammar=/json_schema=: cloned into every prompt's chain
    cdef const ll.llama_sampler * grammar_tpl
    cdef vector[ll.llama_token_data] cand

    def __dealloc__(self):
        self.free_samplers()

    cdef void free_samplers(self) noexcept nogil:
        cdef size_t s
        for s in range(self.slots.size()):
            if self.slots[s].smpl != NULL:
                ll.llama_sampler_free(self.slots[s].smpl)
                self.slots[s].smpl = NULL
            if self.slots[s].gsmpl != NULL:
                ll.llama_sampler_free(self.slots[s].gsmpl)
                self.slots[s].gsmpl = NULL

    cdef int _end(self, size_t s, int why) except -1 nogil:
        """Prompt of slot ``s`` is done: record why, free its cells and its sampler."""
        cdef _BatchSlot * slot = &self.slots[s]
        cdef size_t t
        self.touched.push_back(slot.prompt)
        self.finish[slot.prompt] = why
        self.t_end[slot.prompt] = ll.llama_time_us()
        ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, -1, -1)
        if slot.smpl != NULL:
            ll.llama_sampler_free(slot.smpl)
            slot.smpl = NULL
        if slot.gsmpl != NULL:
            ll.llama_sampler_free(slot.gsmpl)
            slot.gsmpl = NULL
        slot.prompt = -1
        slot.has_pending = False
        slot.wait_for = -1
        self.n_done += 1
        for t in range(self.slots.size()):      # who waited for its prefix decodes their own
            if self.slots[t].wait_for == <int32_t>s:
                self.slots[t].wait_for = -1
        return 0

    cdef int _admit(self) except -1 nogil:
        """Give every free slot the next prompt."""
        cdef size_t s
        cdef _BatchSlot * slot
        for s in range(self.slots.size()):
            slot = &self.slots[s]
            if slot.prompt >= 0 or self.next_prompt >= <Py_ssize_t>self.prompts.size():
                continue
            ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, -1, -1)
            slot.smpl = _chain_from(&self.sp, &self.ban, self.n_vocab,
                                    _derived_seed(self.seed, <uint32_t>self.next_prompt))
            if self.grammar_tpl != NULL:
                slot.gsmpl = ll.llama_sampler_clone(self.grammar_tpl)
            slot.prompt = <int32_t>self.next_prompt
            self.t_admit[slot.prompt] = ll.llama_time_us()
            self.next_prompt += 1
            slot.n_past = 0
            slot.n_fed = 0
            slot.has_pending = False
            slot.wait_for = -1
            if self.share_prefix:
                self._find_donor(s)
        return 0

    cdef int _find_donor(self, size_t s) except -1 nogil:
        """Plan slot ``s``'s prompt to start from the longest prefix it shares with the prompt
        of another live sequence (one that is not itself waiting); the last prompt token is
        always decoded here, its logits are the first sample's."""
        cdef const vector[ll.llama_token] * a = &self.prompts[self.slots[s].prompt]
        cdef const vector[ll.llama_token] * b
        cdef size_t t, n, lim, best_n = 0
        cdef int32_t best = -1
        for t in range(self.slots.size()):
            if t == s or self.slots[t].prompt < 0 or self.slots[t].wait_for >= 0:
                continue
            b = &self.prompts[self.slots[t].prompt]
            lim = a.size() - 1
            if b.size() < lim:
                lim = b.size()
            n = 0
            while n < lim and a[0][n] == b[0][n]:
                n += 1
            if n > best_n:
                best_n = n
                best = <int32_t>t
        if self.share_exact:
            best_n -= best_n % <size_t>self.n_ubatch
        if best >= 0 and best_n >= _SHARE_MIN:
            self.slots[s].wait_for = best
            self.slots[s].share = <int32_t>best_n
        return 0

    cdef int _take_shared(self) except -1 nogil:
        """Copy the shared prefix into each waiting sequence whose donor has decoded it.

        The donor's KV cells are copied, then those from position ``share`` on dropped. With a
        sliding window the donor may already have let go of positions the copy needs (those
        within the window of ``share``): then the copy is undone and the prompt decoded whole.
        """
        cdef size_t s
        cdef _BatchSlot * slot
        cdef _BatchSlot * donor
        cdef ll.llama_pos pos_min
        cdef int32_t keep_from
        for s in range(self.slots.size()):
            slot = &self.slots[s]
            if slot.prompt < 0 or slot.wait_for < 0:
                continue
            donor = &self.slots[slot.wait_for]
            if donor.n_past < slot.share:
                continue
            ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, -1, -1)
            # Each sequence has a stream of its own (kv_unified off), and llama.cpp copies
            # between streams only whole (a partial range aborts): copy all, drop the rest.
            ll.llama_memory_seq_cp(self.mem, <ll.llama_seq_id>slot.wait_for, <ll.llama_seq_id>s,
                                   -1, -1)
            slot.wait_for = -1
            if not ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, slot.share, -1):
                ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, -1, -1)
                continue
            if self.n_swa > 0:
                pos_min = ll.llama_memory_seq_pos_min(self.mem, <ll.llama_seq_id>s)
                keep_from = slot.share - self.n_swa if slot.share > self.n_swa else 0
                if pos_min < 0 or pos_min > keep_from:
                    ll.llama_memory_seq_rm(self.mem, <ll.llama_seq_id>s, -1, -1)
                    continue
            slot.n_fed = slot.share
            slot.n_past = slot.share
            self.reused[slot.prompt] = slot.share
        return 0

    cdef int _fill(self) except -1 nogil:
        """The next batch: the pending token of each generating sequence, then prompt tokens.
        Returns the number of tokens placed (0: nothing left to decode)."""
        cdef size_t s
        cdef int32_t used = 0, m, j, idx
        cdef ll.llama_pos pos
        cdef _BatchSlot * slot
        cdef const vector[ll.llama_token] * p
        if self.share_prefix:
            self._take_shared()
        ll.llama_batch_ext_clear(self.batch)
        for s in range(self.slots.size()):
            slot = &self.slots[s]
            slot.out_idx = -1
            slot.fed_now = 0
            if slot.prompt < 0 or not slot.has_pending:
                continue
            idx = ll.llama_batch_ext_add_token(self.batch, <ll.llama_seq_id>s, slot.pending)
            if idx < 0:
                self.rc = -1
                return -2
            pos = slot.n_past
            ll.llama_batch_ext_set_pos(self.batch, idx, &pos)
            ll.llama_batch_ext_set_output_logits(self.batch, idx, True)
            slot.out_idx = idx
            used += 1
        for s in range(self.slots.size()):
            slot = &self.slots[s]
            if slot.prompt < 0 or slot.has_pending or slot.wait_for >= 0:
                continue
            p = &self.prompts[slot.prompt]
            m = <int32_t>p.size() - slot.n_fed
            if m > self.n_batch - used:
                m = self.n_batch - used
            if m <= 0:
                continue
            for j in range(m):
                idx = ll.llama_batch_ext_add_token(self.batch, <ll.llama_seq_id>s, p[0][slot.n_fed + j])
                if idx < 0:
                    self.rc = -1
                    return -2
                pos = slot.n_fed + j
                ll.llama_batch_ext_set_pos(self.batch, idx, &pos)
            if slot.n_fed + m == <int32_t>p.size():
                ll.llama_batch_ext_set_output_logits(self.batch, idx, True)
                slot.out_idx = idx
            slot.fed_now = m
            used += m
        return used

    cdef int _sample(self, size_t s) except -1 nogil:
        """After a decode: sample slot ``s``'s next token and decide whether its prompt ends."""
        cdef _BatchSlot * slot = &self.slots[s]
        cdef int32_t i = slot.prompt
        cdef ll.llama_token tok
        cdef size_t before, cut
        if slot.gsmpl != NULL:            # -1: the grammar allows nothing more
            tok = _sample_checked(slot.smpl, slot.gsmpl, self.ctx, slot.out_idx, self.n_vocab,
                                  &self.cand)
        else:
            tok = ll.llama_sampler_sample(slot.smpl, self.ctx, slot.out_idx)
        if self.t_first[i] == 0:
            self.t_first[i] = ll.llama_time_us()
        if tok < 0 or ll.llama_vocab_is_eog(self.vocab, tok):
            return self._end(s, FINISH_STOP)
        self.n_generated[i] += 1
        self.touched.push_back(i)
        self.out_tokens[i].push_back(tok)
        before = self.texts[i].size()
        _append_piece(self.vocab, tok, &self.texts[i], False)
        if self.stops.size():
            cut = _find_stop_in(&self.texts[i], &self.stops, self.max_stop, before)
            if cut != <size_t>-1:
                self.texts[i].resize(cut)
                return self._end(s, FINISH_STOP)
        if self.n_generated[i] >= self.max_tokens or slot.n_past >= self.n_ctx_seq:
            return self._end(s, FINISH_LENGTH)
        slot.pending = tok
        slot.has_pending = True
        return 0

    cdef int step(self) except -1 nogil:
        """Admit, decode one batch, sample. 1 while work remains, 0 when every prompt ended,
        2 when cancelled (ctx.cancel(), interpreter exit), -2 on a failed decode (rc)."""
        cdef size_t s
        cdef int32_t used
        cdef _BatchSlot * slot
        self.touched.clear()
        if self.abort[0] or native_stopping():
            return 2
        self._admit()
        used = self._fill()
        if used == -2:
            return -2
        if used == 0:
            return 0
        self.rc = ll.llama_process(self.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, self.batch)
        if self.rc != 0:
            return 2 if self.rc == 2 else -2
        self.n_decodes += 1
        for s in range(self.slots.size()):
            slot = &self.slots[s]
            if slot.prompt < 0:
                continue
            if slot.has_pending and slot.out_idx >= 0:
                slot.n_past += 1
                slot.has_pending = False
            slot.n_fed += slot.fed_now
            slot.n_past += slot.fed_now
            if slot.out_idx >= 0:
                self._sample(s)
        return 1 if self.n_done < <Py_ssize_t>self.prompts.size() else 0

    cdef int end_all(self, int why) except -1 nogil:
        """Mark every prompt that has not ended (running or never admitted) with ``why``."""
        cdef size_t s
        cdef Py_ssize_t i
        for s in range(self.slots.size()):
            if self.slots[s].prompt >= 0:
                self.finish[self.slots[s].prompt] = why
                self.touched.push_back(self.slots[s].prompt)
                self.slots[s].prompt = -1
        for i in range(self.next_prompt, <Py_ssize_t>self.prompts.size()):
            self.finish[i] = why
        self.next_prompt = <Py_ssize_t>self.prompts.size()
        return 0


cdef object _prompt_stats(_BatchJob job, Py_ssize_t i):
    """GenerationStats of prompt ``i`` of a finished batch."""
    ids = np.empty(job.out_tokens[i].size(), dtype=np.int32)
    cdef int32_t[::1] view
    if job.out_tokens[i].size():
        view = ids
        memcpy(&view[0], job.out_tokens[i].data(), job.out_tokens[i].size() * sizeof(ll.llama_token))
    first = job.t_first[i] or job.t_end[i] or job.t_admit[i]
    return GenerationStats(
        prompt_tokens=<int>job.prompts[i].size(),
        completion_tokens=job.n_generated[i],
        prompt_ms=(first - job.t_admit[i]) / 1000.0 if job.t_admit[i] else 0.0,
        generation_ms=(job.t_end[i] - first) / 1000.0 if job.t_end[i] and job.t_admit[i] else 0.0,
        finish_reason=_FINISH_NAMES[job.finish[i]],
        tokens=ids,
        cached_tokens=job.reused[i],
    )


@cython.no_gc_clear          # its dealloc hands the context back: ctx must survive a cycle's clear
@cython.final
@cython.auto_pickle(False)
cdef class BatchGenerationStream:
    """The pieces of a batch as they are made: an iterator of ``(index, piece)`` tuples.

    Made by :meth:`Context.generate_batch_stream`. ``index`` is the prompt's position in the
    input; each piece is whole UTF-8 and holds no part of a stop string, and the pieces of one
    index add up to what :meth:`Context.generate_batch` returns for it. The context is busy
    until the stream is exhausted or closed (``close()``, ``with``, or dropping it); closing
    early ends every unfinished prompt as ``"cancelled"``. ``cancel()`` works from any thread.
    """

    cdef Context ctx
    cdef _BatchJob job
    cdef vector[size_t] emitted
    cdef object ready            # deque of (index, piece) not handed out yet
    cdef object progress
    cdef object bar
    cdef int status              # job.step()'s last return; 1 while running
    cdef bint released
    cdef bint busy
    cdef bint pieces             # compute pieces (the stream) or only run (generate_batch)
    cdef int hold
    cdef Py_ssize_t done
    cdef int64_t t0
    cdef int64_t mark
    cdef object _stats

    def __init__(self, *args, **kwargs):
        raise TypeError("BatchGenerationStream cannot be created directly; "
                        "use ctx.generate_batch_stream()")

    def __dealloc__(self):
        if not self.released and self.ctx is not None:
            self.released = True
            if self.job is not None:
                self.job.free_samplers()
            ll.llama_memory_clear(ll.llama_get_memory(self.ctx._ctx), True)
            self.ctx._leave()

    cdef int _step(self) except -1:
        """One decode (without the GIL), then the new pieces into ``ready``."""
        cdef size_t j, end
        cdef int32_t i
        cdef int status
        if self.hold == _HOLD_STREAM:
            _native_begin()
        self.busy = True
        try:
            with nogil:
                try:
                    status = self.job.step()
                finally:
                    if self.hold == _HOLD_STREAM:
                        native_end()
        finally:
            self.busy = False
        self.status = status
        if self.progress is not None and self.job.n_done > self.done:
            n, self.done = self.job.n_done - self.done, self.job.n_done
            self.progress(n)
        if status == 2:
            self.job.end_all(FINISH_CANCELLED)
        if self.pieces:
            for j in range(self.job.touched.size()):
                i = self.job.touched[j]
                end = _shown_end_of(&self.job.texts[i], self.emitted[i], &self.job.stops,
                                    self.job.max_stop, self.job.finish[i] != FINISH_RUNNING)
                if end > self.emitted[i]:
                    self.ready.append((i, PyUnicode_DecodeUTF8(
                        self.job.texts[i].data() + self.emitted[i], end - self.emitted[i], "replace")))
                    self.emitted[i] = end
        return 0

    cdef _finish(self):
        """Record the stats and hand the context back (idempotent; released first)."""
        if self.released:
            return
        self.released = True
        cdef Py_ssize_t i, n = self.job.prompts.size()
        try:
            if self.status == 1:
                self.job.end_all(FINISH_CANCELLED)
            self.job.free_samplers()
            with nogil:
                ll.llama_memory_clear(ll.llama_get_memory(self.ctx._ctx), True)
            gen = np.empty(n, dtype=np.int32)
            ptoks = np.empty(n, dtype=np.int32)
            cached = np.empty(n, dtype=np.int32)
            for i in range(n):
                gen[i] = self.job.n_generated[i]
                ptoks[i] = <int32_t>self.job.prompts[i].size()
                cached[i] = self.job.reused[i]
            self._stats = BatchStats(
                prompts=n, prompt_tokens=ptoks, completion_tokens=gen, cached_tokens=cached,
                finish_reasons=[_FINISH_NAMES[self.job.finish[i]] for i in range(n)],
                decodes=self.job.n_decodes, n_parallel=<int>self.job.slots.size(),
                ms=(ll.llama_time_us() - self.t0) / 1000.0)
            self.ctx.last_batch_stats = self._stats
        finally:
            self.ctx._abort = 0
            self.ctx._leave()
            if self.bar is not None:
                self.bar.close()
            _drain_log()

    cdef int _run(self) except -1:
        """Step until a piece is ready or the batch has ended (then finish)."""
        if self.busy:
            raise ContextBusyError("this batch stream is already being advanced by another thread")
        try:
            while self.status == 1 and not self.ready:
                self._step()
                PyErr_CheckSignals()       # Ctrl-C between two decodes
        except BaseException:
            self._finish()
            raise
        if self.status != 1:
            self._finish()
            if self.status == -2:
                raise _decode_error(self.job.rc, "generate_batch", self.job.n_ctx_seq, self.mark)
        return 0

    def __iter__(self):
        return self

    def __next__(self):
        if not self.ready and not self.released:
            self._run()
        if self.ready:
            return self.ready.popleft()
        raise StopIteration

    def cancel(self):
        """Stop within one decode (safe from any thread); unfinished prompts end as cancelled."""
        if not self.released:
            self.ctx._abort = 1

    def close(self):
        """End the batch now and hand the context back. Idempotent."""
        if self.released:
            return
        if self.busy:
            self.ctx._abort = 1
            return
        self._finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def closed(self):
        return self.released

    @property
    def stats(self):
        """The :class:`BatchStats` once the batch has ended; else ``None``."""
        return self._stats

    def texts(self):
        """Every prompt's text so far, in input order (all of it once the batch has ended)."""
        return [PyUnicode_DecodeUTF8(self.job.texts[i].data(), self.job.texts[i].size(), "replace")
                for i in range(<Py_ssize_t>self.job.prompts.size())]

    def _per_prompt_stats(self):
        return [_prompt_stats(self.job, i) for i in range(<Py_ssize_t>self.job.prompts.size())]

    def __repr__(self):
        state = "open" if not self.released else "ended"
        return f"<llama_cython.BatchGenerationStream {self.job.prompts.size()} prompts, {state}>"


cdef BatchGenerationStream _start_batch(Context self, object prompts, object max_tokens, object stop,
                                        object progress, dict sampling, object add_special_flags,
                                        bint pieces):
    """Check everything, take the context, tokenize every prompt; decode nothing."""
    cdef Py_ssize_t n = len(prompts)
    cdef _BatchJob job = _BatchJob.__new__(_BatchJob)
    cdef BatchGenerationStream bs = BatchGenerationStream.__new__(BatchGenerationStream)
    cdef _SamplingParams sp
    cdef int32_t[::1] iv
    cdef const int64_t[::1] cv
    cdef int64_t at = 0
    cdef size_t s
    _check_int(max_tokens, "max_tokens", 1, INT32_MAX)
    cdef list stops = _stop_list(stop)
    kw = _sampling_kwargs(sampling)
    grammar = _grammar_option(kw.pop("grammar"), kw.pop("json_schema"))
    if _check_logprobs(kw.pop("logprobs"), self.model._n_vocab) >= 0:
        raise OptionError("logprobs= is not supported by batched generation yet; use generate()")
    sp = _sampling_params(kw)
    if kw["seed"] is None:
        sp.seed = <uint32_t>(int.from_bytes(os.urandom(4), "little") % 0xFFFFFFFE)
    if progress is True:
        tqdm = require("tqdm.auto", "progress=True (or pass a callable)").tqdm
    elif progress is not None and progress is not False and not callable(progress):
        raise TypeError(f"progress must be callable or a bool, got {type(progress).__name__}")
    hold = _HOLD_CALL if not pieces else _HOLD_STREAM
    self._enter(hold)
    bs.released = True          # until the stream owns the context, its dealloc hands back nothing
    bs.ctx = self
    bs.job = job
    bs.hold = hold
    try:
        if ll.llama_get_memory(self._ctx) == NULL:
            raise ContextError("this model computes embeddings only (it has no KV cache and no "
                               "logits); it cannot generate")
        job.n_ctx_seq = ll.llama_n_ctx_seq(self._ctx)
        # parse_special as in generate: chat markers in a prompt are tokens
        items = tuple(_text_bytes(p, f"prompts[{k}]") for k, p in enumerate(prompts))
        flags = set(add_special_flags)
        job.prompts.resize(n)
        for add_special in flags:
            _check_specials(self.model, add_special)
            part = [k for k in range(n) if add_special_flags[k] == add_special]
            sub = _TextBuffers(items if len(flags) == 1 else tuple(items[k] for k in part), True,
                               "strict", INT32_MAX)
            counts, ids = _tokenize_buffers(self.model, sub, add_special, True,
                                            _batch_threads(None, sub.total, len(part)), True)
            cv = counts
            iv = ids if ids.shape[0] else np.zeros(1, dtype=np.int32)
            at = 0
            for j, k in enumerate(part):
                if cv[j] == 0:
                    raise TokenizeError(f"prompts[{k}] is empty (it tokenizes to no tokens)")
                if cv[j] > job.n_ctx_seq:
                    raise ContextSizeError(
                        f"prompts[{k}] is {cv[j]} tokens, longer than a sequence's share of the "
                        f"context ({job.n_ctx_seq} tokens: n_ctx / n_parallel)")
                job.prompts[k].assign(&iv[at], &iv[at] + cv[j])
                at += cv[j]
        for b in stops:
            job.stops.push_back(<string>b)
            if len(<bytes>b) > job.max_stop:
                job.max_stop = len(<bytes>b)
        if sp.repeat_last_n < 0 or sp.repeat_last_n > job.n_ctx_seq:
            sp.repeat_last_n = job.n_ctx_seq
        job.ctx = self._ctx
        job.vocab = self.model._vocab
        job.batch = self._batch
        job.mem = ll.llama_get_memory(self._ctx)
        job.abort = &self._abort
        job.sp = sp
        job.seed = sp.seed
        job.n_vocab = self.model._n_vocab
        if grammar is not None:
            job.grammar = _compiled_grammar(self.model, grammar)
            job.grammar_tpl = job.grammar.smpl
        job.n_batch = ll.llama_n_batch(self._ctx)
        job.max_tokens = max_tokens
        job.texts.resize(n)
        job.out_tokens.resize(n)
        job.t_admit.resize(n, 0)
        job.t_first.resize(n, 0)
        job.t_end.resize(n, 0)
        job.n_generated.resize(n, 0)
        job.finish.resize(n, FINISH_RUNNING)
        job.slots.resize(ll.llama_n_seq_max(self._ctx))
        for s in range(job.slots.size()):
            job.slots[s].prompt = -1
            job.slots[s].smpl = NULL
            job.slots[s].gsmpl = NULL
            job.slots[s].wait_for = -1
        job.reused.resize(n, 0)
        job.share_prefix = self.prefix_caching != "off" and job.slots.size() > 1
        job.share_exact = self.prefix_caching == "exact"
        job.n_ubatch = ll.llama_n_ubatch(self._ctx)
        job.n_swa = ll.llama_model_n_swa(self.model._model)
        with nogil:
            if sp.ignore_eos:
                _eog_ban(job.vocab, job.n_vocab, &job.ban)
            ll.llama_memory_clear(job.mem, True)
        self._kv.clear()
        self._kv_exact = 0
        self._logits_ok = False
        bs.emitted.resize(n, 0)
        bs.ready = collections.deque()
        bs.pieces = pieces
        bs.status = 1 if n else 0
        bs.mark = _log_mark()
        if progress is True:
            bs.bar = tqdm(total=n, unit="prompt")
            progress = bs.bar.update
        bs.progress = progress if progress is not False else None
        bs.t0 = ll.llama_time_us()
    except BaseException:
        job.free_samplers()
        self._leave()
        raise
    bs.released = False
    return bs


cdef object _generate_batch(Context self, object prompts, object max_tokens, object stop,
                            object progress, dict sampling, object add_special_flags):
    """Run a batch to the end; (texts, per-prompt GenerationStats)."""
    cdef BatchGenerationStream bs = _start_batch(self, prompts, max_tokens, stop, progress,
                                                 sampling, add_special_flags, False)
    try:
        bs._run()
    finally:
        bs._finish()
    return bs.texts(), bs._per_prompt_stats()
