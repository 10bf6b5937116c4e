# The vocabulary as arrays: every token's stored text, decoded piece, score and attributes in
# one pass over the vocabulary without the GIL. llama_cython.vocab.Vocab is the public face.

_VOCAB_TYPE_NAMES = {
    ll.LLAMA_VOCAB_TYPE_NONE: "none", ll.LLAMA_VOCAB_TYPE_SPM: "spm", ll.LLAMA_VOCAB_TYPE_BPE: "bpe",
    ll.LLAMA_VOCAB_TYPE_WPM: "wpm", ll.LLAMA_VOCAB_TYPE_UGM: "ugm", ll.LLAMA_VOCAB_TYPE_RWKV: "rwkv",
    ll.LLAMA_VOCAB_TYPE_PLAMO2: "plamo2",
}


cdef object _special_id(Model m, ll.llama_token tok):
    return int(tok) if 0 <= tok < m._n_vocab else None


# llama.cpp's unknown-token id when the GGUF names none (llama-vocab.cpp, load); the C API has no
# accessor for it.
_DEFAULT_UNK = {"spm": 0, "wpm": 100, "ugm": 2}


cdef dict _vocab_info(Model m):
    """Type, size, special ids (None when the vocabulary has none) and the add_* flags."""
    cdef const ll.llama_vocab * v = m._vocab
    kind = _VOCAB_TYPE_NAMES.get(ll.llama_vocab_type_of(v), "unknown")
    if kind == "none":
        return {"type": "none", "size": 0}
    unk = m.metadata.get("tokenizer.ggml.unknown_token_id", _DEFAULT_UNK.get(kind))
    try:
        unk = int(unk) if unk is not None and 0 <= int(unk) < m._n_vocab else None
    except ValueError:
        unk = None
    return {
        "unk": unk,
        "type": kind,
        "size": int(ll.llama_vocab_n_tokens(v)),
        "bos": _special_id(m, ll.llama_vocab_bos(v)),
        "eos": _special_id(m, ll.llama_vocab_eos(v)),
        "eot": _special_id(m, ll.llama_vocab_eot(v)),
        "sep": _special_id(m, ll.llama_vocab_sep(v)),
        "nl": _special_id(m, ll.llama_vocab_nl(v)),
        "pad": _special_id(m, ll.llama_vocab_pad(v)),
        "mask": _special_id(m, ll.llama_vocab_mask(v)),
        "fim_pre": _special_id(m, ll.llama_vocab_fim_pre(v)),
        "fim_suf": _special_id(m, ll.llama_vocab_fim_suf(v)),
        "fim_mid": _special_id(m, ll.llama_vocab_fim_mid(v)),
        "fim_pad": _special_id(m, ll.llama_vocab_fim_pad(v)),
        "fim_rep": _special_id(m, ll.llama_vocab_fim_rep(v)),
        "fim_sep": _special_id(m, ll.llama_vocab_fim_sep(v)),
        "add_bos": bool(ll.llama_vocab_get_add_bos(v)),
        "add_eos": bool(ll.llama_vocab_get_add_eos(v)),
        "add_sep": bool(ll.llama_vocab_get_add_sep(v)),
    }


cdef tuple _vocab_table(Model m):
    """(texts, text_offsets, scores, attrs) for ids 0..n_vocab-1: the stored token strings laid
    end to end with int64 offsets, float32 scores and uint32 attribute bits."""
    _check_vocab(m)
    cdef int32_t n = m._n_vocab, i
    text_offsets = np.empty(n + 1, dtype=np.int64)
    scores = np.empty(n, dtype=np.float32)
    attrs = np.empty(n, dtype=np.uint32)
    cdef int64_t[::1] ov = text_offsets
    cdef float[::1] sv = scores
    cdef uint32_t[::1] av = attrs
    cdef string flat
    cdef const char * s
    ov[0] = 0
    with nogil:
        flat.reserve(<size_t>n * 8)
        for i in range(n):
            s = ll.llama_vocab_get_text(m._vocab, i)
            flat.append(s)
            ov[i + 1] = flat.size()
            sv[i] = ll.llama_vocab_get_score(m._vocab, i)
            av[i] = ll.llama_vocab_get_attr(m._vocab, i)
    return PyBytes_FromStringAndSize(flat.data(), flat.size()), text_offsets, scores, attrs


# -- the core's interface for llama_cython.vocab and llama_cython.chat ----------------------------
# Module functions rather than private Model methods: the Python layer above the core calls
# these (and Model's public API) only. Each holds the model for its whole run, like every
# entry point of Model.

def vocab_info(Model model):
    """Type, size, special ids and add_* flags of ``model``'s vocabulary, as a dict."""
    model._acquire()
    try:
        return _vocab_info(model)
    finally:
        model._release()


def vocab_table(Model model):
    """(texts bytes, text offsets, scores, attrs) of the whole vocabulary, built once per model."""
    model._acquire()
    try:
        if model._vocab_arrays is None:
            model._vocab_arrays = _vocab_table(model)
        return model._vocab_arrays
    finally:
        model._release()


def vocab_pieces(Model model):
    """(pieces bytes, offsets): every token's piece (special=True), in id order."""
    model._acquire()
    try:
        return _all_pieces(model)
    finally:
        model._release()


def chat_specials(Model model):
    """(bos text or None, eos text or None, add_bos): what a chat template is given."""
    cdef ll.llama_token bos, eos
    model._acquire()
    try:
        _check_vocab(model)
        bos = ll.llama_vocab_bos(model._vocab)
        eos = ll.llama_vocab_eos(model._vocab)
        bos_text = (_token_to_piece(model, bos, True).decode("utf-8", "replace")
                    if 0 <= bos < model._n_vocab else None)
        eos_text = (_token_to_piece(model, eos, True).decode("utf-8", "replace")
                    if 0 <= eos < model._n_vocab else None)
        return bos_text, eos_text, bool(ll.llama_vocab_get_add_bos(model._vocab))
    finally:
        model._release()
