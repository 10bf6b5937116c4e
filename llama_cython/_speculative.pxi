# Speculative decoding. A cheap proposer drafts the next tokens, the target checks them all in
# one decode and keeps the longest run it agrees with, plus one token of its own. Two proposers:
#   - a draft model (a Context of a smaller model with the same vocabulary), greedy;
#   - prompt lookup: the tokens that followed the latest earlier occurrence of the longest
#     n-gram that ends the text so far (prompt and output), no second model at all.
# The verification (GenerationStream._spec_step) samples the target at every drafted position
# exactly as plain generation would, so the output is what the target alone gives: the same
# greedy text, and with sampling the same distribution (a deterministic proposal is accepted
# with the target's own probability of it, the standard rule for a point-mass draft). With a
# draft model and temperature > 0 the draft samples too, and the rejection rule of Leviathan et
# al. / Chen et al. (accept with min(1, p/q), else sample max(0, p - q)) keeps the target's
# distribution while accepting more.
#
# How much to draft is chosen at every step from what was measured so far in this generation
# (unless adaptive=False): the acceptance rate at each draft position and the time of a target
# decode of each batch size (and of a draft token). The length that maximises expected tokens
# per second is drafted; when no length beats plain decoding, none is, so speculation does not
# make generation slower than the target alone (short probes keep the estimates fresh).

cdef enum:
    _SPEC_MAX = 64           # the most tokens drafted per step (n_draft's upper bound)

cdef enum _SpecKind:
    SPEC_MODEL = 1
    SPEC_LOOKUP = 2

cdef int32_t _LOOKUP_NGRAM_MAX = 8     # longest n-gram looked for (prompt lookup)
cdef int32_t _LOOKUP_NGRAM_MIN = 2     # shortest
cdef double _SPEC_DECAY = 0.95         # weight of older observations per step (acceptance)
cdef double _COST_EMA = 0.25           # weight of a new timing in the per-size averages
cdef int32_t _SPEC_PROBE_EVERY = 16    # plain steps in a row before a short draft is tried again


@cython.no_gc_clear          # its dealloc hands the draft context back: draft must survive a clear
@cython.final
@cython.auto_pickle(False)
cdef class _Speculator:
    """The proposer and its statistics for one generation (owned by a GenerationStream)."""

    cdef int kind
    cdef Context draft            # SPEC_MODEL: held busy (_HOLD_STREAM) while the stream runs
    cdef bint holds_draft
    cdef _GenLoop d               # SPEC_MODEL: the draft's loop state (context, batch, KV record)
    cdef int32_t n_vocab_draft
    cdef int32_t n_vocab_target
    cdef int32_t n_max            # n_draft
    cdef bint adaptive
    cdef int32_t ngram_min, ngram_max
    # counters, for the stats
    cdef int64_t drafted          # tokens proposed to the target
    cdef int64_t accepted         # of which the target kept
    # what the adaptive choice learns
    cdef double prop[_SPEC_MAX]   # per draft position: proposals (decayed)
    cdef double acc[_SPEC_MAX]    # and acceptances
    cdef double cost[_SPEC_MAX + 2]   # average target decode time (us) by batch size
    cdef bint cost_seen[_SPEC_MAX + 2]
    cdef double draft_cost        # average time (us) of one draft decode of one token
    cdef double catch_cost        # and of the draft's catch-up decode (the target's new tokens)
    cdef int32_t plain_run        # plain steps in a row
    cdef vector[ll.llama_token] out    # the proposal of the current step
    cdef vector[ll.llama_token] scratch
    # sampling with a draft model (temperature > 0): the rejection rule
    cdef bint lev
    cdef ll.llama_sampler * tgt_head  # the target's chain without its selecting sampler
    cdef ll.llama_sampler * dft_head  # the draft's (no penalties)
    cdef uint64_t rng
    cdef vector[ll.llama_token_data] cand   # one position's candidates
    cdef vector[ll.llama_token_data] qbuf   # each drafted position's draft distribution...
    cdef vector[size_t] qoff                # ...and where it starts in qbuf
    cdef vector[float] qdense               # one position's draft distribution by token id

    def __init__(self, *args, **kwargs):
        raise TypeError("_Speculator is internal")

    def __dealloc__(self):
        if self.tgt_head != NULL:
            ll.llama_sampler_free(self.tgt_head)
        if self.dft_head != NULL:
            ll.llama_sampler_free(self.dft_head)
        self.release()

    cdef int setup_sampling(self, const _SamplingParams * sp, const ll.llama_vocab * vocab) except -1:
        """With a draft model at temperature > 0: the chains that give the two distributions."""
        cdef vector[ll.llama_logit_bias] ban
        if self.kind != SPEC_MODEL or sp.temperature <= 0.0:
            return 0
        with nogil:
            if sp.ignore_eos:
                _eog_ban(vocab, self.n_vocab_target, &ban)
            self.tgt_head = _chain_from(sp, &ban, self.n_vocab_target, 0, False, True)
            self.dft_head = _chain_from(sp, &ban, self.n_vocab_draft, 0, False, False)
        self.qdense.assign(self.n_vocab_target, 0.0)
        self.rng = <uint64_t>sp.seed
        if sp.seed == <uint32_t>ll.LLAMA_DEFAULT_SEED:
            self.rng = <uint64_t>ll.llama_time_us() ^ <uint64_t><size_t><void *>self
        self.lev = True
        return 0

    cdef void release(self) noexcept:
        """Hand the draft context back (idempotent); with the GIL."""
        if self.holds_draft:
            self.holds_draft = False
            if self.draft is not None:
                self.draft._leave()

    # -- choosing how much to draft -------------------------------------------------------------

    cdef double _cost_of(self, int32_t b) noexcept nogil:
        """Estimated time (us) of a target decode of ``b`` tokens.

        A line through the average times measured at each batch size (a decode's cost grows
        about linearly with its tokens), its slope pulled towards 5% of the one-token time per
        extra token as if by a few measurements: neighbouring sizes alone are too noisy to
        extrapolate from, and an optimistic slope gets longer drafts tried and measured.
        """
        cdef int32_t i, n = 0
        cdef double sb = 0, sc = 0, mb, mc, sbb = 0, sbc = 0, slope, base
        for i in range(1, _SPEC_MAX + 2):
            if self.cost_seen[i]:
                n += 1
                sb += i
                sc += self.cost[i]
        if n == 0:
            return 1.0 + 0.05 * (b - 1)
        mb = sb / n
        mc = sc / n
        for i in range(1, _SPEC_MAX + 2):
            if self.cost_seen[i]:
                sbb += (i - mb) * (i - mb)
                sbc += (i - mb) * (self.cost[i] - mc)
        base = mc / (1.0 + 0.05 * (mb - 1))          # the one-token time the prior implies
        slope = (sbc + 4.0 * 0.05 * base) / (sbb + 4.0)
        if slope < 0:
            slope = 0
        return mc + slope * (b - mb)

    cdef int32_t choose(self, int32_t k_cap) noexcept nogil:
        """How many tokens to draft this step (at most ``k_cap``).

        The expected number of tokens a draft of k gives is 1 + a0 + a0*a1 + ... (a_i: the
        rate at which position i was accepted, once position i-1 was); its cost is a target
        decode of k + 1 tokens plus, with a draft model, the draft's catch-up decode and k - 1
        more. The k with the most tokens per microsecond wins; 0 means plain decoding. An
        unmeasured position borrows the rate of the one before (the first starts at 0.7), so
        longer drafts are tried once shorter ones succeed.
        """
        cdef int32_t k, best_k = 0
        cdef double run = 1.0, expect = 1.0, a, prev = 0.7, c, best
        if k_cap <= 0:
            return 0
        if k_cap > self.n_max:
            k_cap = self.n_max
        if not self.adaptive:
            return k_cap
        best = 1.0 / self._cost_of(1)
        for k in range(1, k_cap + 1):
            a = (self.acc[k - 1] + 2.0 * prev) / (self.prop[k - 1] + 2.0)
            prev = a
            run *= a
            expect += run
            c = self._cost_of(k + 1)
            if self.kind == SPEC_MODEL:
                c += (self.catch_cost if self.catch_cost > 0 else self.draft_cost) \
                    + (k - 1) * self.draft_cost
            if expect / c > best:
                best = expect / c
                best_k = k
        if best_k == 0:
            self.plain_run += 1
            if self.plain_run >= _SPEC_PROBE_EVERY:
                self.plain_run = 0
                best_k = 2 if k_cap >= 2 else k_cap
        else:
            self.plain_run = 0
        return best_k

    cdef void record_decode(self, int32_t b, int64_t us) noexcept nogil:
        """A target decode of ``b`` tokens took ``us`` microseconds."""
        if b > _SPEC_MAX + 1 or us <= 0:
            return
        _ema(&self.cost[b], <double>us)
        self.cost_seen[b] = True

    cdef void record_verdict(self, int32_t k, int32_t j) noexcept nogil:
        """``k`` tokens were proposed, the first ``j`` accepted."""
        cdef int32_t i
        self.drafted += k
        self.accepted += j
        for i in range(_SPEC_MAX):
            self.prop[i] *= _SPEC_DECAY
            self.acc[i] *= _SPEC_DECAY
        for i in range(k):
            self.prop[i] += 1.0
            if i < j:
                self.acc[i] += 1.0

    # -- sampling by the rejection rule ----------------------------------------------------------

    cdef double _uniform(self) noexcept nogil:
        """A uniform number in [0, 1) (splitmix64)."""
        cdef uint64_t z
        self.rng += 0x9E3779B97F4A7C15ULL
        z = self.rng
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
        z = z ^ (z >> 31)
        return (z >> 11) * (1.0 / 9007199254740992.0)

    cdef int _distribution(self, ll.llama_sampler * head, const float * logits,
                           int32_t n_vocab) except -1 nogil:
        """``cand`` = the candidates ``head`` leaves of ``logits``, with their probabilities."""
        cdef ll.llama_token_data_array arr
        cdef int32_t t
        cdef size_t i
        cdef float mx
        cdef double total = 0.0
        self.cand.resize(n_vocab)
        for t in range(n_vocab):
            self.cand[t].id = t
            self.cand[t].logit = logits[t]
            self.cand[t].p = 0.0
        arr.data = self.cand.data()
        arr.size = self.cand.size()
        arr.selected = -1
        arr.sorted = False
        ll.llama_sampler_apply(head, &arr)
        if arr.data != self.cand.data():
            self.cand.assign(arr.data, arr.data + arr.size)
        else:
            self.cand.resize(arr.size)
        if self.cand.size() == 0:
            return 0
        mx = self.cand[0].logit
        for i in range(1, self.cand.size()):
            if self.cand[i].logit > mx:
                mx = self.cand[i].logit
        for i in range(self.cand.size()):
            self.cand[i].p = <float>exp(self.cand[i].logit - mx)
            total += self.cand[i].p
        for i in range(self.cand.size()):
            self.cand[i].p = <float>(self.cand[i].p / total)
        return 0

    cdef ll.llama_token _draw(self) noexcept nogil:
        """A token drawn from ``cand`` (its ``p``), or -1 when it is empty."""
        cdef double u = self._uniform(), acc = 0.0
        cdef size_t i
        if self.cand.size() == 0:
            return -1
        for i in range(self.cand.size()):
            acc += self.cand[i].p
            if u < acc:
                return self.cand[i].id
        return self.cand[self.cand.size() - 1].id

    cdef ll.llama_token sample_target(self, ll.llama_context * ctx, int32_t idx) except -2 nogil:
        """Sample the target at output ``idx`` from its full distribution (a plain step)."""
        cdef ll.llama_token tok
        self._distribution(self.tgt_head, ll.llama_get_logits_ith(ctx, idx), self.n_vocab_target)
        tok = self._draw()
        if tok >= 0:
            ll.llama_sampler_accept(self.tgt_head, tok)
        return tok

    cdef ll.llama_token verify(self, ll.llama_context * ctx, int32_t i, bint * kept) except -2 nogil:
        """The target's token at drafted position ``i`` by the rejection rule: the draft's
        token x is kept with probability min(1, p(x) / q(x)); otherwise a token is drawn from
        max(0, p - q), normalised. Past the draft (i == k) a token is drawn from p. Either way
        the token has the target's distribution p."""
        cdef ll.llama_token x, tok
        cdef double px = 0.0, qx = 0.0, total = 0.0, u, acc
        cdef size_t j, a, b
        kept[0] = False
        if i >= <int32_t>self.out.size():
            return self.sample_target(ctx, i)
        self._distribution(self.tgt_head, ll.llama_get_logits_ith(ctx, i), self.n_vocab_target)
        x = self.out[i]
        a = self.qoff[i]
        b = self.qoff[i + 1]
        for j in range(a, b):
            self.qdense[self.qbuf[j].id] = self.qbuf[j].p
        qx = self.qdense[x]
        for j in range(self.cand.size()):
            if self.cand[j].id == x:
                px = self.cand[j].p
                break
        if qx > 0.0 and self._uniform() * qx < px:
            kept[0] = True
            tok = x
        else:
            for j in range(self.cand.size()):
                self.cand[j].p = <float>fmax(0.0, self.cand[j].p - self.qdense[self.cand[j].id])
                total += self.cand[j].p
            if total > 0.0:
                for j in range(self.cand.size()):
                    self.cand[j].p = <float>(self.cand[j].p / total)
                tok = self._draw()
            else:     # p == q: any draw from p is right; x was the draw
                tok = x
        for j in range(a, b):
            self.qdense[self.qbuf[j].id] = 0.0
        if tok >= 0:
            ll.llama_sampler_accept(self.tgt_head, tok)
        return tok

    # -- proposing -------------------------------------------------------------------------------

    cdef int32_t propose(self, const vector[ll.llama_token] * kv, ll.llama_token last,
                         int32_t k) except -1 nogil:
        """Fill ``out`` with at most ``k`` tokens to follow ``kv`` + ``last``; their number."""
        self.out.clear()
        if k <= 0:
            return 0
        if self.kind == SPEC_LOOKUP:
            return self._lookup(kv, last, k)
        return self._draft_model(kv, last, k)

    cdef int32_t _lookup(self, const vector[ll.llama_token] * kv, ll.llama_token last,
                         int32_t k) except -1 nogil:
        """Prompt lookup: continue the latest earlier occurrence of the longest n-gram
        (``ngram_min``..``ngram_max`` tokens) that ends the text, ``last`` included."""
        cdef int64_t n = <int64_t>kv.size() + 1, p, best_p = -1, m
        cdef int32_t best_len = self.ngram_min - 1, length
        cdef const ll.llama_token * h = kv.data()
        if n < self.ngram_min + 1:
            return 0
        # p: the last position of a candidate occurrence; it must end before the text does
        p = n - 2
        while p >= self.ngram_min - 1:
            if h[p] == last:
                length = 1
                while length < self.ngram_max and p - length >= 0 and h[p - length] == h[n - 1 - length]:
                    length += 1
                if length > best_len:
                    best_len = length
                    best_p = p
                    if length == self.ngram_max:
                        break
            p -= 1
        if best_p < 0:
            return 0
        m = best_p + 1
        while m < n and <int32_t>self.out.size() < k:
            self.out.push_back(h[m] if m < n - 1 else last)
            m += 1
        return <int32_t>self.out.size()

    cdef int32_t _draft_model(self, const vector[ll.llama_token] * kv, ll.llama_token last,
                              int32_t k) except -1 nogil:
        """Greedy tokens of the draft model after ``kv`` + ``last``. A draft that fails (its
        context is full, a decode error) proposes nothing: the target goes on alone."""
        cdef _GenLoop * d = &self.d
        cdef size_t n_hist = kv.size() + 1, n_common = 0, lim
        cdef const float * logits
        cdef ll.llama_token tok
        cdef int32_t i, t, best_t
        cdef float best_v
        cdef int64_t t0 = ll.llama_time_us()
        if <int64_t>n_hist + k - 1 > d.n_ctx:
            k = d.n_ctx - <int32_t>n_hist + 1
            if k <= 0:
                return 0
        lim = d.kv.size()
        if lim > n_hist - 1:
            lim = n_hist - 1
        while n_common < lim and d.kv[0][n_common] == (kv[0][n_common] if n_common < n_hist - 1 else last):
            n_common += 1
        if not _keep_prefix(d, <int32_t>n_common):
            ll.llama_memory_clear(ll.llama_get_memory(d.ctx), True)
            d.kv.clear()
            n_common = 0
        self.scratch.assign(kv.begin() + n_common, kv.end())
        self.scratch.push_back(last)
        if _decode_tokens(d, self.scratch.data(), <int32_t>self.scratch.size()):
            return 0
        if self.scratch.size() <= 3:    # the usual catch-up; a long one (the prompt) is no guide
            _ema(&self.catch_cost, <double>(ll.llama_time_us() - t0))
        self.qbuf.clear()
        self.qoff.clear()
        self.qoff.push_back(0)
        for i in range(k):
            logits = ll.llama_get_logits_ith(d.ctx, -1)
            if logits == NULL:
                break
            if self.lev:
                # draw from the draft's distribution q, and keep q for the verification
                self._distribution(self.dft_head, logits, self.n_vocab_draft)
                tok = self._draw()
                if tok < 0 or tok >= self.n_vocab_target:
                    break
                for t in range(<int32_t>self.cand.size()):
                    if self.cand[t].id < self.n_vocab_target:
                        self.qbuf.push_back(self.cand[t])
                self.qoff.push_back(self.qbuf.size())
                self.out.push_back(tok)
                if ll.llama_vocab_is_eog(d.vocab, tok) or i + 1 == k:
                    break
                t0 = ll.llama_time_us()
                if _decode_tokens(d, &tok, 1):
                    break
                _ema(&self.draft_cost, <double>(ll.llama_time_us() - t0))
                continue
            best_t = 0
            best_v = logits[0]
            for t in range(1, self.n_vocab_draft):
                if logits[t] > best_v:
                    best_v = logits[t]
                    best_t = t
            tok = best_t
            if tok >= self.n_vocab_target:
                break
            self.out.push_back(tok)
            if ll.llama_vocab_is_eog(d.vocab, tok) or i + 1 == k:
                break
            t0 = ll.llama_time_us()
            if _decode_tokens(d, &tok, 1):
                break
            _ema(&self.draft_cost, <double>(ll.llama_time_us() - t0))
        return <int32_t>self.out.size()


cdef inline void _ema(double * avg, double value) noexcept nogil:
    """Fold a new timing into a running average (the first one sets it)."""
    if avg[0] > 0:
        avg[0] += _COST_EMA * (value - avg[0])
    else:
        avg[0] = value


cdef int _keep_prefix(_GenLoop * g, int32_t n) except -1 nogil:
    """Drop the KV cache's entries from position ``n`` on (recorded or not). False when what
    remains cannot be used as is (memory that cannot drop a tail; a sliding window that has
    already let go of positions the next tokens attend to): the caller rebuilds."""
    cdef ll.llama_memory_t mem = ll.llama_get_memory(g.ctx)
    cdef int32_t n_swa, keep_from
    cdef ll.llama_pos pos_min
    if not ll.llama_memory_seq_rm(mem, 0, n, -1):
        return 0
    if <int32_t>g.kv.size() > n:
        g.kv.resize(n)
    if g.kv_exact[0] > n:
        g.kv_exact[0] = n - n % g.n_ubatch
    if n > 0:
        n_swa = ll.llama_model_n_swa(ll.llama_get_model(g.ctx))
        if n_swa > 0:
            pos_min = ll.llama_memory_seq_pos_min(mem, 0)
            keep_from = n - n_swa if n > n_swa else 0
            if pos_min < 0 or pos_min > keep_from:
                return 0
    return 1


cdef int _check_draft_vocab(Model target, Model draft) except -1:
    """Refuse a draft whose tokens do not mean what the target's mean (what llama.cpp's
    speculative example checks): vocabulary type, BOS/EOS and whether they are added, sizes
    within 128, and the text of every token both have."""
    cdef const ll.llama_vocab * vt = target._vocab
    cdef const ll.llama_vocab * vd = draft._vocab
    cdef int32_t nt = target._n_vocab, nd = draft._n_vocab, n, t, bad = -1
    if ll.llama_vocab_type_of(vt) != ll.llama_vocab_type_of(vd):
        raise OptionError("the draft model's vocabulary is of another type than the target's; "
                          "speculative decoding needs the same vocabulary")
    if (ll.llama_vocab_get_add_bos(vt) != ll.llama_vocab_get_add_bos(vd)
            or ll.llama_vocab_get_add_eos(vt) != ll.llama_vocab_get_add_eos(vd)
            or ll.llama_vocab_bos(vt) != ll.llama_vocab_bos(vd)
            or ll.llama_vocab_eos(vt) != ll.llama_vocab_eos(vd)):
        raise OptionError("the draft model's special tokens (BOS/EOS) differ from the target's; "
                          "speculative decoding needs the same vocabulary")
    if abs(nt - nd) > 128:
        raise OptionError(f"the draft model has {nd} tokens and the target {nt}; speculative "
                          "decoding needs the same vocabulary")
    n = nt if nt < nd else nd
    with nogil:
        for t in range(n):
            if strcmp(ll.llama_vocab_get_text(vt, t), ll.llama_vocab_get_text(vd, t)) != 0:
                bad = t
                break
    if bad >= 0:
        raise OptionError(
            f"token {bad} is {ll.llama_vocab_get_text(vt, bad)!r} for the target and "
            f"{ll.llama_vocab_get_text(vd, bad)!r} for the draft model; speculative decoding "
            "needs the same vocabulary")
    return 0


cdef _Speculator _make_speculator(Context target, object draft, object n_draft, object adaptive):
    """Check ``draft`` and build the proposer; the draft context is taken (busy) last."""
    _check_int(n_draft, "n_draft", 1, _SPEC_MAX)
    _check_bool(adaptive, "adaptive")
    cdef _Speculator s = _Speculator.__new__(_Speculator)
    cdef const ll.llama_model * tm = ll.llama_get_model(target._ctx)
    cdef Context dc
    s.n_max = n_draft
    s.adaptive = adaptive
    s.n_vocab_target = target.model._n_vocab
    s.ngram_min = _LOOKUP_NGRAM_MIN
    s.ngram_max = _LOOKUP_NGRAM_MAX
    if ll.llama_model_is_recurrent(tm) or ll.llama_model_is_hybrid(tm):
        raise OptionError("speculative decoding needs a KV cache that can drop rejected tokens; "
                          "this model's memory is recurrent")
    if isinstance(draft, str):
        if draft != "prompt":
            raise OptionError(f"draft must be a Context or \"prompt\" (prompt lookup), got {draft!r}")
        s.kind = SPEC_LOOKUP
        return s
    if not isinstance(draft, Context):
        raise TypeError(f"draft must be a Context or \"prompt\", got {type(draft).__name__}")
    dc = <Context>draft
    if dc is target:
        raise OptionError("the draft context is the target context itself; give the draft "
                          "model a context of its own")
    dc._check_open()
    if dc._embeddings or ll.llama_get_memory(dc._ctx) == NULL:
        raise ContextError("the draft context computes embeddings; it cannot draft tokens")
    tm = ll.llama_get_model(dc._ctx)
    if ll.llama_model_is_recurrent(tm) or ll.llama_model_is_hybrid(tm):
        raise OptionError("the draft model's memory is recurrent; it cannot drop rejected tokens")
    # Held before its vocabulary is read (without the GIL): nobody can close it meanwhile.
    dc._enter(_HOLD_STREAM)
    s.draft = dc
    s.holds_draft = True
    try:
        _check_draft_vocab(target.model, dc.model)
    except BaseException:
        s.release()
        raise
    s.kind = SPEC_MODEL
    s.n_vocab_draft = dc.model._n_vocab
    s.d.ctx = dc._ctx
    s.d.vocab = dc.model._vocab
    s.d.batch = dc._batch
    s.d.abort = &dc._abort
    s.d.kv = &dc._kv
    s.d.kv_exact = &dc._kv_exact
    s.d.n_ubatch = ll.llama_n_ubatch(dc._ctx)
    s.d.n_ctx = ll.llama_n_ctx_seq(dc._ctx)
    s.d.n_batch = ll.llama_n_batch(dc._ctx)
    s.d.n_batch -= s.d.n_batch % s.d.n_ubatch
    s.d.finish = FINISH_RUNNING
    dc._kv_exact = 0       # drafting decodes one token at a time: nothing stays exact
    dc._logits_ok = False
    return s
