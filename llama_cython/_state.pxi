# Saved context state: the KV cache (llama_state_get_data / llama_state_set_data) in a container
# of our own, so that a state is only ever given to llama.cpp whole, unchanged and for a
# context it fits:
#
#   magic "LLCYSTAT" | u32 version | u32 header length | header (JSON, UTF-8)
#   | int32 tokens of the KV record | llama.cpp's state bytes
#
# The header names the model (file size and sampled sha256, as pickling checks it, plus its
# vocabulary size and architecture), the context options the KV layout depends on, the token
# record that prefix caching needs (how many tokens, how many of them exact), and the size and
# sha256 of the llama.cpp bytes. Loading checks all of it before any C call: a truncated or
# corrupt file, another model's state or a context of another shape is a StateError.

import hashlib as _hashlib
import json as _json
import struct as _struct

cdef bytes _STATE_MAGIC = b"LLCYSTAT"
cdef int _STATE_VERSION = 1
cdef int64_t _STATE_MAX_HEADER = 1 << 20


cdef dict _state_layout(Context ctx):
    """What a KV state depends on besides the model: must be equal to load one."""
    return {
        "n_ctx": int(ll.llama_n_ctx(ctx._ctx)),
        "n_ctx_seq": int(ll.llama_n_ctx_seq(ctx._ctx)),
        "n_parallel": int(ll.llama_n_seq_max(ctx._ctx)),
        "kv_cache_type": ctx.kv_cache_type,
        "flash_attn": ctx.flash_attn,
    }


cdef dict _state_model(Model m):
    ident = m._identity
    return {
        "architecture": m.architecture,
        "n_vocab": int(m._n_vocab),
        "file_size": int(ident[0]) if ident else None,
        "file_sha256_sample": ident[1] if ident else None,
    }


cdef bytes _state_save(Context self):
    """The context's state as bytes (see the format above)."""
    cdef size_t size, got
    cdef vector[uint8_t] data
    self._enter()
    try:
        if self._embeddings or ll.llama_get_memory(self._ctx) == NULL:
            raise ContextError("this context has no KV cache state to save (an embeddings "
                               "context keeps none between calls)")
        mark = _log_mark()
        with nogil:
            size = ll.llama_state_get_size(self._ctx)
            data.resize(size)
            got = ll.llama_state_get_data(self._ctx, data.data(), size)
        if got == 0 or got > size:
            raise ContextError(f"llama.cpp could not write the state{_log_since(mark)}")
        blob = PyBytes_FromStringAndSize(<const char *>data.data(), got)
        toks = np.empty(self._kv.size(), dtype=np.int32)
        if self._kv.size():
            toks[:] = <int32_t[:self._kv.size()]>self._kv.data()
        header = {
            "format": "llama_cython context state",
            "model": _state_model(self.model),
            "context": _state_layout(self),
            "kv_tokens": int(self._kv.size()),
            "kv_exact": int(self._kv_exact),
            "state_size": len(blob),
            "state_sha256": _hashlib.sha256(blob).hexdigest(),
            "tokens_sha256": _hashlib.sha256(toks.tobytes()).hexdigest(),
        }
    finally:
        self._leave()
        _drain_log()
    hb = _json.dumps(header, sort_keys=True).encode("utf-8")
    return b"".join((_STATE_MAGIC, _struct.pack("<II", _STATE_VERSION, len(hb)), hb,
                     toks.tobytes(), blob))


cdef tuple _state_parse(object data):
    """(header, tokens int32, llama.cpp bytes as a memoryview) of a saved state, all checked
    against each other; StateError for anything else."""
    cdef const unsigned char[::1] view
    mv = memoryview(data).cast("B")
    n = len(mv)
    fixed = len(_STATE_MAGIC) + 8
    if n < fixed or bytes(mv[:len(_STATE_MAGIC)]) != _STATE_MAGIC:
        raise StateError("not a llama_cython context state (no LLCYSTAT header)")
    version, hlen = _struct.unpack("<II", bytes(mv[len(_STATE_MAGIC):fixed]))
    if version != _STATE_VERSION:
        raise StateError(f"context state format version {version} is not supported (this "
                         f"llama_cython reads version {_STATE_VERSION})")
    if hlen > _STATE_MAX_HEADER or fixed + hlen > n:
        raise StateError("the context state is truncated (its header is incomplete)")
    try:
        header = _json.loads(bytes(mv[fixed:fixed + hlen]).decode("utf-8"))
        n_tok = int(header["kv_tokens"])
        state_size = int(header["state_size"])
        if not isinstance(header["model"], dict) or not isinstance(header["context"], dict):
            raise TypeError("model/context are not objects")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise StateError(f"the context state's header is corrupt ({exc})") from None
    at = fixed + hlen
    if n_tok < 0 or state_size <= 0 or at + 4 * n_tok + state_size != n:
        raise StateError(f"the context state is truncated or corrupt: {n} bytes, its header "
                         f"describes {at + 4 * max(n_tok, 0) + max(state_size, 0)}")
    toks = np.frombuffer(mv[at:at + 4 * n_tok], dtype="<i4").astype(np.int32)
    blob = mv[at + 4 * n_tok:]
    if _hashlib.sha256(toks.tobytes()).hexdigest() != header.get("tokens_sha256") or \
            _hashlib.sha256(blob).hexdigest() != header.get("state_sha256"):
        raise StateError("the context state is corrupt (checksum mismatch)")
    return header, toks, blob


cdef int _state_load(Context self, object data) except -1:
    header, toks, blob = _state_parse(data)
    cdef const unsigned char[::1] bv
    cdef const int32_t[::1] tv
    cdef size_t got, size
    cdef int32_t n_vocab = self.model._n_vocab
    self._enter()
    try:
        if self._embeddings or ll.llama_get_memory(self._ctx) == NULL:
            raise ContextError("this context has no KV cache to load a state into")
        mine = _state_model(self.model)
        theirs = header["model"]
        for key in ("architecture", "n_vocab", "file_size", "file_sha256_sample"):
            if theirs.get(key) != mine[key] and not (key.startswith("file") and
                                                      (theirs.get(key) is None or mine[key] is None)):
                raise StateError(f"the state was saved from another model ({key}: "
                                 f"{theirs.get(key)!r}, this model: {mine[key]!r})")
        layout = _state_layout(self)
        for key, value in layout.items():
            if header["context"].get(key) != value:
                raise StateError(f"the state was saved from a context with {key}="
                                 f"{header['context'].get(key)!r}; this context has {key}={value!r}")
        if toks.shape[0] > layout["n_ctx_seq"] or (toks.shape[0] and
                                                   (toks.min() < 0 or toks.max() >= n_vocab)):
            raise StateError("the context state's token record does not fit this model")
        kv_exact = int(header.get("kv_exact", 0))
        bv = blob
        size = bv.shape[0]
        mark = _log_mark()
        with nogil:
            got = ll.llama_state_set_data(self._ctx, &bv[0], size)
        if got == 0:
            with nogil:
                ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
            self._kv.clear()
            self._kv_exact = 0
            self._logits_ok = False
            raise StateError(f"llama.cpp refused the state{_log_since(mark)}; the "
                             "context's cache was cleared")
        self._kv.clear()
        if toks.shape[0]:
            tv = toks
            self._kv.assign(&tv[0], &tv[0] + tv.shape[0])
        self._kv_exact = <int32_t>max(0, min(kv_exact, <int>toks.shape[0]))
        self._logits_ok = False        # the state holds the cache, not the last logits
    finally:
        self._leave()
        _drain_log()
    return 0
