# Log-probabilities from a row of logits, in C without the GIL: log-softmax over the whole
# vocabulary (the model's own distribution: before temperature, penalties or a grammar) and the
# k most likely tokens. Used by generation (logprobs=k) and by scoring.
#
# As llama.cpp's perplexity tool computes it: the maximum in float, each exp(l - max) in float
# (expf), their sum in double, log p(t) = l[t] - max - log(sum) in double.

cdef int32_t _MAX_TOP_LOGPROBS = 100


# log_norm_row(l, n) = max + log(sum(exp(l - max))): subtract it from a logit to get its
# log-probability. One C++ definition serves generation (a row per step, here) and scoring
# (the rows of a decode on several threads, _score.pxi).
cdef extern from "_logsoftmax.h" namespace "llama_cython" nogil:
    double log_norm_row(const float * x, int32_t n) noexcept
    void log_norm_rows(float ** rows, int64_t n_rows, int32_t n_vocab, double * out,
                       int threads) except +


cdef int _top_k(const float * logits, int32_t n, int32_t k, int32_t * ids, float * vals) noexcept nogil:
    """The ``k`` largest logits, largest first (ties: the lower id first), into ids/vals."""
    cdef int32_t i, j, filled = 0
    cdef float v
    if k <= 0:
        return 0
    for i in range(n):
        v = logits[i]
        if filled == k and not (v > vals[k - 1]):
            continue
        j = filled if filled < k else k - 1
        while j > 0 and v > vals[j - 1]:
            vals[j] = vals[j - 1]
            ids[j] = ids[j - 1]
            j -= 1
        vals[j] = v
        ids[j] = i
        if filled < k:
            filled += 1
    return 0


cdef int32_t _check_logprobs(object logprobs, int32_t n_vocab) except -2:
    """``logprobs=``: None/False -> -1 (off), True -> 0, an int k -> k top alternatives."""
    if logprobs is None or logprobs is False:
        return -1
    if logprobs is True:
        return 0
    _check_int(logprobs, "logprobs", 0, min(_MAX_TOP_LOGPROBS, n_vocab))
    return <int32_t>logprobs


@cython.final
@cython.auto_pickle(False)
cdef class _LogprobRecord:
    """Per generated token: its log-probability and the top-k alternatives (C vectors)."""

    cdef int32_t k
    cdef vector[float] chosen
    cdef vector[int32_t] top_ids
    cdef vector[float] top_vals
    cdef double norm               # of the row being sampled from
    cdef const float * row
    cdef vector[int32_t] tmp_ids
    cdef vector[float] tmp_vals

    cdef int prepare(self, const float * logits, int32_t n_vocab) except -1 nogil:
        """Before sampling from ``logits``: normalise, find the top k."""
        self.row = logits
        self.norm = log_norm_row(logits, n_vocab)
        if self.k > 0:
            self.tmp_ids.resize(self.k)
            self.tmp_vals.resize(self.k)
            _top_k(logits, n_vocab, self.k, self.tmp_ids.data(), self.tmp_vals.data())
        return 0

    cdef int record(self, ll.llama_token tok) except -1 nogil:
        """The sampled token ``tok`` was kept."""
        cdef int32_t j
        self.chosen.push_back(<float>(self.row[tok] - self.norm))
        for j in range(self.k):
            self.top_ids.push_back(self.tmp_ids[j])
            self.top_vals.push_back(<float>(self.tmp_vals[j] - self.norm))
        return 0

    cdef object result(self, const vector[ll.llama_token] * tokens):
        """A TokenLogprobs for the recorded tokens (``tokens``: the generated ids)."""
        cdef Py_ssize_t t = <Py_ssize_t>self.chosen.size()
        ids = np.empty(t, dtype=np.int32)
        lp = np.empty(t, dtype=np.float32)
        top_ids = np.empty((t, self.k), dtype=np.int32)
        top_lp = np.empty((t, self.k), dtype=np.float32)
        cdef int32_t[::1] vi = ids
        cdef float[::1] vl = lp
        cdef int32_t[:, ::1] vti = top_ids
        cdef float[:, ::1] vtl = top_lp
        if t:
            memcpy(&vi[0], tokens.data(), t * sizeof(int32_t))
            memcpy(&vl[0], self.chosen.data(), t * sizeof(float))
            if self.k:
                memcpy(&vti[0, 0], self.top_ids.data(), t * self.k * sizeof(int32_t))
                memcpy(&vtl[0, 0], self.top_vals.data(), t * self.k * sizeof(float))
        return TokenLogprobs(tokens=ids, logprobs=lp, top_tokens=top_ids, top_logprobs=top_lp)
