# Sampler chains. Built only here, so that every chain ends in a selecting sampler (greedy or
# dist): llama_sampler_sample aborts the process on a chain that selects nothing.

cdef struct _SamplingParams:
    float temperature
    int32_t top_k
    float top_p
    float min_p
    float repetition_penalty
    int32_t repeat_last_n
    uint32_t seed


cdef _SamplingParams _sampling_params(object temperature, object top_k, object top_p,
                                      object min_p, object repetition_penalty,
                                      object repeat_last_n, object seed) except *:
    """Check every sampling option in Python, before any C call (NaN, ranges, types)."""
    cdef _SamplingParams sp
    sp.temperature = _check_float(temperature, "temperature", 0.0, 1e6)
    _check_int(top_k, "top_k", 0, INT32_MAX)
    sp.top_k = top_k
    sp.top_p = _check_float(top_p, "top_p", 0.0, 1.0, True)
    sp.min_p = _check_float(min_p, "min_p", 0.0, 1.0)
    sp.repetition_penalty = _check_float(repetition_penalty, "repetition_penalty", 0.0, 1e6, True)
    _check_int(repeat_last_n, "repeat_last_n", -1, INT32_MAX)
    sp.repeat_last_n = repeat_last_n
    if seed is None:
        sp.seed = <uint32_t>ll.LLAMA_DEFAULT_SEED    # llama.cpp draws a random seed
    else:
        _check_int(seed, "seed", 0, 0xFFFFFFFE)
        sp.seed = <uint32_t>seed
    return sp


cdef ll.llama_sampler * _build_sampler(const _SamplingParams * sp, int32_t n_vocab) except NULL:
    """penalties -> top_k -> top_p -> min_p -> temperature -> dist (or greedy at temperature 0)."""
    cdef ll.llama_sampler_chain_params cp = ll.llama_sampler_chain_default_params()
    cp.no_perf = True
    cdef ll.llama_sampler * chain = ll.llama_sampler_chain_init(cp)
    if chain == NULL:
        raise AllocationError("failed to allocate a sampler chain")
    if sp.repetition_penalty != 1.0 and sp.repeat_last_n != 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_penalties(
            n_vocab, sp.repeat_last_n, sp.repetition_penalty, 0.0, 0.0))
    if sp.temperature <= 0.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        return chain
    if sp.top_k > 0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(sp.top_k))
    if sp.top_p < 1.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(sp.top_p, 1))
    if sp.min_p > 0.0:
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(sp.min_p, 1))
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(sp.temperature))
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(sp.seed))
    return chain
