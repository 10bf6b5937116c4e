# The decode -> sample -> accept loop. Everything between the prompt and the returned text runs
# here without the GIL and without Python objects; the state lives in one C struct so that the
# streaming forms (next) can run the same step function a piece at a time.

cdef enum _Finish:
    FINISH_RUNNING = 0
    FINISH_STOP = 1        # an end-of-generation token
    FINISH_LENGTH = 2      # max_tokens reached, or the context is full
    FINISH_CANCELLED = 3   # the abort flag was raised
    FINISH_ERROR = 4       # llama_process failed; see rc

cdef tuple _FINISH_NAMES = ("running", "stop", "length", "cancelled", "error")


cdef struct _GenLoop:
    ll.llama_context * ctx
    const ll.llama_vocab * vocab
    ll.llama_batch_ext * batch
    ll.llama_sampler * smpl
    volatile int * abort
    int32_t n_ctx            # per-sequence capacity
    int32_t n_batch
    int32_t n_past           # tokens of sequence 0 in the KV cache
    int32_t max_tokens
    int32_t n_generated
    int finish
    int32_t rc
    int64_t t_start_us
    int64_t t_prompt_us
    int64_t t_end_us


cdef int _decode_tokens(_GenLoop * g, const ll.llama_token * toks, int32_t n) except -1 nogil:
    """Decode ``n`` tokens at positions n_past.., in chunks of n_batch; logits for the last.

    Returns 0, or 1 with ``g.rc`` set to llama_process's code.
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
                return 1
            pos = g.n_past + j
            ll.llama_batch_ext_set_pos(g.batch, idx, &pos)
        if i + m == n:
            ll.llama_batch_ext_set_output_logits(g.batch, idx, True)
        g.rc = ll.llama_process(g.ctx, ll.LLAMA_PROCESS_TYPE_DECODE, g.batch)
        if g.rc != 0:
            return 1
        g.n_past += m
        i += m
    return 0


cdef int _append_piece(const ll.llama_vocab * vocab, ll.llama_token tok, string * out) except -1 nogil:
    cdef char small[256]
    cdef int32_t n = ll.llama_token_to_piece(vocab, tok, small, sizeof(small), 0, False)
    cdef string big
    if n >= 0:
        out.append(small, n)
        return 0
    big.resize(-n)
    n = ll.llama_token_to_piece(vocab, tok, &big[0], <int32_t>big.size(), 0, False)
    if n > 0:
        out.append(big.data(), n)
    return 0


cdef int _gen_step(_GenLoop * g, vector[ll.llama_token] * tokens, string * text) except -1 nogil:
    """Sample one token, record it, and decode it unless generation ends here.

    Returns 1 while generation goes on, 0 once ``g.finish`` is set.
    """
    cdef ll.llama_token tok
    if g.abort[0]:
        g.finish = FINISH_CANCELLED
        return 0
    # Valid: the previous decode marked its last token as an output (llama.cpp asserts that).
    tok = ll.llama_sampler_sample(g.smpl, g.ctx, -1)
    if ll.llama_vocab_is_eog(g.vocab, tok):
        g.finish = FINISH_STOP
        return 0
    tokens.push_back(tok)
    g.n_generated += 1
    _append_piece(g.vocab, tok, text)
    if g.n_generated >= g.max_tokens or g.n_past >= g.n_ctx:
        g.finish = FINISH_LENGTH
        return 0
    if _decode_tokens(g, &tok, 1):
        g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
        return 0
    return 1


cdef str _run_generate(Context self, object prompt, object max_tokens, _SamplingParams sp):
    cdef bytes data = _text_bytes(prompt, "prompt") if isinstance(prompt, str) else None
    if data is None:
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    _check_int(max_tokens, "max_tokens", 1, INT32_MAX)
    cdef _GenLoop g
    cdef vector[ll.llama_token] out_tokens
    cdef string out_text
    cdef int32_t[::1] toks
    cdef int32_t n_prompt
    cdef int rc = 0
    self._enter()
    mark = _log_mark()
    try:
        # parse_special: chat markers such as <|im_start|> in a prompt are tokens, as in llama.cpp's examples
        prompt_ids = _tokenize(self.model, data, True, True)
        n_prompt = prompt_ids.shape[0]
        if n_prompt == 0:
            raise TokenizeError("the prompt is empty (it tokenizes to no tokens)")
        g.n_ctx = ll.llama_n_ctx_seq(self._ctx)
        if n_prompt > g.n_ctx:
            raise ContextSizeError(
                f"prompt is {n_prompt} tokens, longer than the context ({g.n_ctx} tokens)")
        toks = prompt_ids
        g.ctx = self._ctx
        g.vocab = self.model._vocab
        g.batch = self._batch
        g.abort = &self._abort
        g.n_batch = ll.llama_n_batch(self._ctx)
        g.n_past = 0
        g.max_tokens = max_tokens
        g.n_generated = 0
        g.finish = FINISH_RUNNING
        g.rc = 0
        g.smpl = _build_sampler(&sp, self.model._n_vocab)
        try:
            with nogil:
                g.t_start_us = ll.llama_time_us()
                ll.llama_memory_clear(ll.llama_get_memory(g.ctx), True)
                if _decode_tokens(&g, &toks[0], n_prompt):
                    g.finish = FINISH_CANCELLED if g.rc == 2 else FINISH_ERROR
                g.t_prompt_us = ll.llama_time_us()
                while g.finish == FINISH_RUNNING and _gen_step(&g, &out_tokens, &out_text):
                    pass
                g.t_end_us = ll.llama_time_us()
        finally:
            ll.llama_sampler_free(g.smpl)
        if g.finish == FINISH_ERROR:
            raise _decode_error(g.rc, "generate", g.n_ctx, mark)
        ids = np.empty(out_tokens.size(), dtype=np.int32)
        if out_tokens.size():
            toks = ids
            memcpy(&toks[0], out_tokens.data(), out_tokens.size() * sizeof(ll.llama_token))
        self.last_stats = GenerationStats(
            prompt_tokens=n_prompt,
            completion_tokens=g.n_generated,
            prompt_ms=(g.t_prompt_us - g.t_start_us) / 1000.0,
            generation_ms=(g.t_end_us - g.t_prompt_us) / 1000.0,
            finish_reason=_FINISH_NAMES[g.finish],
            tokens=ids,
        )
        return PyUnicode_DecodeUTF8(out_text.data(), out_text.size(), "replace")
    finally:
        self._leave()
        _drain_log()
