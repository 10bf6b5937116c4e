# Constrained generation: GBNF grammars (llama.cpp's grammar sampler) and JSON schemas (llama.cpp's
# own converter, common/json-schema-to-grammar.cpp, compiled in by setup.py).
#
# The text of a grammar is checked in Python first (llama_cython.grammar_check: line and column
# of a syntax error, nesting depth, expansion size, left recursion, an empty language), because
# llama.cpp's parser reports errors only to its log and recurses on nesting. A checked grammar
# is compiled once per model and kept (a few per model); each generation clones the compiled
# sampler, which is cheap, and owns the clone.
#
# The grammar is not part of the sampler chain: ``_sample_checked`` samples the chain, then
# asks the grammar about that one token, and filters the whole vocabulary only when it is
# refused (llama.cpp's common sampler does the same; filtering 49k-262k token pieces against
# the grammar at every step would dominate the time). When the grammar leaves no token (its
# language is exhausted and end-of-generation is banned, or it can match nothing here), every
# logit is -inf; llama_sampler_sample would pick one anyway and the grammar's accept would
# throw. ``_sample_checked`` stops generation instead.

cdef extern from "_json_schema.h" nogil:
    int llc_schema_to_gbnf(const char * json_text, size_t n, string * out, string * err)


cdef int _GRAMMAR_CACHE = 16     # compiled grammars kept per model


@cython.final
@cython.auto_pickle(False)
cdef class _CompiledGrammar:
    """A grammar sampler in its initial state, bound to one model's vocabulary: cloned, never
    used directly."""

    cdef ll.llama_sampler * smpl

    def __dealloc__(self):
        if self.smpl != NULL:
            ll.llama_sampler_free(self.smpl)
            self.smpl = NULL


def json_schema_to_gbnf(str schema_json):
    """GBNF text for a JSON schema given as JSON text, by llama.cpp's converter.

    Raises :class:`~llama_cython.errors.SchemaError` with the converter's message (an invalid
    pattern, an unresolved ``$ref``, a pattern it would have replaced by "any string").
    """
    cdef bytes data = schema_json.encode("utf-8", "surrogatepass")
    cdef const char * p = data
    cdef size_t n = len(data)
    cdef string out, err
    cdef int rc
    with nogil:
        rc = llc_schema_to_gbnf(p, n, &out, &err)
    if rc != 0:
        msg = PyUnicode_DecodeUTF8(err.data(), err.size(), "replace").strip()
        prefix = "JSON schema conversion failed:"
        if msg.startswith(prefix):
            msg = msg[len(prefix):].strip()
        msg = msg.replace(", accepting any string", "")    # we refuse instead
        raise SchemaError(f"JSON schema not supported by the grammar converter: {msg}")
    return PyUnicode_DecodeUTF8(out.data(), out.size(), "strict")


cdef _CompiledGrammar _compiled_grammar(Model model, object grammar):
    """The model's compiled form of ``grammar`` (a Grammar, or GBNF text checked here)."""
    from llama_cython.grammar import Grammar
    if isinstance(grammar, str):
        grammar = Grammar(grammar)
    elif not isinstance(grammar, Grammar):
        raise TypeError(f"grammar must be a str (GBNF) or a llama_cython.Grammar, "
                        f"got {type(grammar).__name__}")
    key = (grammar.text, grammar.root)
    cache = model._grammars
    if cache is None:
        cache = model._grammars = {}
    cdef _CompiledGrammar cg = cache.pop(key, None)
    if cg is not None:
        cache[key] = cg          # most recently used last
        return cg
    cdef bytes text = (<str>grammar.text).encode("utf-8")
    cdef bytes root = (<str>grammar.root).encode("utf-8")
    cdef const char * ptext = text
    cdef const char * proot = root
    cdef ll.llama_sampler * smpl = NULL
    cg = _CompiledGrammar.__new__(_CompiledGrammar)
    mark = _log_mark()
    with nogil:
        smpl = ll.llama_sampler_init_grammar(model._vocab, ptext, proot)
    _drain_log()
    if smpl == NULL:
        raise GrammarError(f"llama.cpp could not compile the grammar{_log_since(mark, 3)}")
    cg.smpl = smpl
    cache[key] = cg
    while len(cache) > _GRAMMAR_CACHE:
        del cache[next(iter(cache))]
    return cg


cdef int _fill_candidates(const float * logits, int32_t n_vocab,
                          vector[ll.llama_token_data] * cand,
                          ll.llama_token_data_array * arr) except -1 nogil:
    cdef int32_t t
    cand.resize(n_vocab)
    for t in range(n_vocab):
        cand[0][t].id = t
        cand[0][t].logit = logits[t]
        cand[0][t].p = 0.0
    arr.data = cand.data()
    arr.size = n_vocab
    arr.selected = -1
    arr.sorted = False
    return 0


cdef inline bint _selected_ok(const ll.llama_token_data_array * arr) noexcept nogil:
    """A token was selected, and not one whose logit a grammar set to -inf."""
    if arr.selected < 0 or arr.selected >= <int64_t>arr.size:
        return False
    return isfinite(arr.data[arr.selected].logit) or arr.data[arr.selected].logit > 0


cdef ll.llama_token _sample_checked(ll.llama_sampler * chain, ll.llama_sampler * grammar,
                                    ll.llama_context * ctx, int32_t idx, int32_t n_vocab,
                                    vector[ll.llama_token_data] * cand) except -2 nogil:
    """Sample from ``chain`` under ``grammar``, as llama.cpp's common sampler does: sample
    without the grammar, keep the token if the grammar allows it (one token checked instead of
    the whole vocabulary: the usual case), else sample again from the distribution the grammar
    leaves. Greedy picks are what filtering first would pick. -1: the grammar allows nothing
    (complete with end-of-generation banned, or stuck); the token is not accepted then."""
    cdef const float * logits = ll.llama_get_logits_ith(ctx, idx)
    cdef ll.llama_token_data_array arr
    cdef ll.llama_token_data one
    cdef ll.llama_token_data_array single
    cdef ll.llama_token tok
    if logits == NULL:
        return -1
    _fill_candidates(logits, n_vocab, cand, &arr)
    ll.llama_sampler_apply(chain, &arr)
    if _selected_ok(&arr):
        one.id = arr.data[arr.selected].id
        one.logit = 0.0
        one.p = 0.0
        single.data = &one
        single.size = 1
        single.selected = -1
        single.sorted = False
        ll.llama_sampler_apply(grammar, &single)
        if isfinite(one.logit):
            ll.llama_sampler_accept(grammar, one.id)
            ll.llama_sampler_accept(chain, one.id)
            return one.id
    _fill_candidates(logits, n_vocab, cand, &arr)
    ll.llama_sampler_apply(grammar, &arr)
    ll.llama_sampler_apply(chain, &arr)
    if not _selected_ok(&arr):
        return -1
    tok = arr.data[arr.selected].id
    ll.llama_sampler_accept(grammar, tok)
    ll.llama_sampler_accept(chain, tok)
    return tok
