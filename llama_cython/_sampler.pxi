# Sampler chains. Built only here, so that every chain ends in a selecting sampler (greedy or
# dist): llama_sampler_sample aborts the process on a chain that selects nothing.

cdef struct _SamplingParams:
    float temperature
    int32_t top_k
    float top_p
    float min_p
    float typical_p
    float repetition_penalty
    int32_t repeat_last_n
    float presence_penalty
    float frequency_penalty
    bint ignore_eos
    uint32_t seed


cdef _SamplingParams _sampling_params(dict kw) except *:
    """Check every sampling option in Python, before any C call (NaN, ranges, types).

    ``kw`` holds exactly the sampling keywords of ``Context.generate`` (see _SAMPLING_DEFAULTS).
    """
    cdef _SamplingParams sp
    sp.temperature = _check_float(kw["temperature"], "temperature", 0.0, 1e6)
    _check_int(kw["top_k"], "top_k", 0, INT32_MAX)
    sp.top_k = kw["top_k"]
    sp.top_p = _check_float(kw["top_p"], "top_p", 0.0, 1.0, True)
    sp.min_p = _check_float(kw["min_p"], "min_p", 0.0, 1.0)
    sp.typical_p = _check_float(kw["typical_p"], "typical_p", 0.0, 1.0, True)
    sp.repetition_penalty = _check_float(kw["repetition_penalty"], "repetition_penalty", 0.0, 1e6, True)
    _check_int(kw["repeat_last_n"], "repeat_last_n", -1, INT32_MAX)
    sp.repeat_last_n = kw["repeat_last_n"]
    sp.presence_penalty = _check_float(kw["presence_penalty"], "presence_penalty", -1e6, 1e6)
    sp.frequency_penalty = _check_float(kw["frequency_penalty"], "frequency_penalty", -1e6, 1e6)
    sp.ignore_eos = _check_bool(kw["ignore_eos"], "ignore_eos")
    seed = kw["seed"]
    if seed is None:
        sp.seed = <uint32_t>ll.LLAMA_DEFAULT_SEED    # llama.cpp draws a random seed
    else:
        _check_int(seed, "seed", 0, 0xFFFFFFFE)
        sp.seed = <uint32_t>seed
    return sp


cdef int _eog_ban(const ll.llama_vocab * vocab, int32_t n_vocab,
                  vector[ll.llama_logit_bias] * bias) except -1 nogil:
    """ignore_eos: a logit bias of -inf for every end-of-generation token, into ``bias``."""
    cdef ll.llama_logit_bias b
    cdef int32_t t
    for t in range(n_vocab):
        if ll.llama_vocab_is_eog(vocab, t):
            b.token = t
            b.bias = -INFINITY
            bias.push_back(b)
    return 0


cdef ll.llama_sampler * _chain_from(const _SamplingParams * sp, const vector[ll.llama_logit_bias] * ban,
                                    int32_t n_vocab, uint32_t seed, bint select=True,
                                    bint penalties=True) except NULL nogil:
    """[eog ban] -> penalties -> top_k -> typical -> top_p -> min_p -> temperature -> dist(seed).

    At temperature 0 the chain is [eog ban] -> penalties -> greedy. This is the order of
    llama.cpp's own common sampler, less the samplers we do not expose. ``ban`` is what
    _eog_ban gave (empty unless ignore_eos). Runs without the GIL: the batch loop builds one
    chain per sequence as it admits it.

    ``select=False`` leaves out the last sampler (greedy or dist): a chain that only shapes
    the distribution, for llama_sampler_apply (speculative decoding samples from it with
    its own random numbers); never give such a chain to llama_sampler_sample, which aborts on
    a chain that selects nothing. ``penalties=False`` leaves out the repetition penalties.
    """
    cdef ll.llama_sampler_chain_params cp = ll.llama_sampler_chain_default_params()
    cp.no_perf = True
    cdef ll.llama_sampler * chain = ll.llama_sampler_chain_init(cp)
    if chain == NULL:
        with gil:
            raise AllocationError("failed to allocate a sampler chain")
    if ban.size():
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_logit_bias(
            n_vocab, <int32_t>ban.size(), ban.data()))
    if penalties and sp.repeat_last_n != 0 and (sp.repetition_penalty != 1.0 or sp.presence_penalty != 0.0
                                  or sp.frequency_penalty != 0.0):
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(
            n_vocab, sp.repeat_last_n, sp.repetition_penalty, sp.frequency_penalty,
            sp.presence_penalty))
    if sp.temperature <= 0.0:
        if select:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain
    if sp.top_k > 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(sp.top_k))
    if sp.typical_p < 1.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_typical(sp.typical_p, 1))
    if sp.top_p < 1.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sp.top_p, 1))
    if sp.min_p > 0.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(sp.min_p, 1))
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sp.temperature))
    if select:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed))
    return chain


cdef ll.llama_sampler * _build_sampler(const _SamplingParams * sp, const ll.llama_vocab * vocab,
                                       int32_t n_vocab) except NULL:
    """The chain for one generation (see _chain_from)."""
    cdef vector[ll.llama_logit_bias] ban
    cdef ll.llama_sampler * chain
    with nogil:
        if sp.ignore_eos:
            _eog_ban(vocab, n_vocab, &ban)
        chain = _chain_from(sp, &ban, n_vocab, sp.seed)
    return chain
