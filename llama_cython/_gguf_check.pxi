# The GGUF pre-check: a file is read with gguf (metadata only, no tensor data) before
# llama.cpp loads it, and refused with ModelLoadError where llama.cpp would abort the process
# (GGML_ASSERT) or crash on it: hyperparameters out of range, duplicate tokens, tensor types the
# CPU backend cannot run. Also the path checks that come before any file is opened.

cdef int _MAX_BLOCKS = 512   # llama-model.cpp asserts 0 < block_count <= 512 (an abort, not an error)
cdef int _MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
_ROPE_SCALING_TYPES = (b"none", b"linear", b"yarn", b"longrope")


cdef bytes _fs_path(object path, str what):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"{what} must be a str or os.PathLike, got {type(path).__name__}")
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError as exc:
        raise ModelLoadError(f"{what} {path!r} cannot be a file name here: {exc.reason}") from None
    except TypeError as exc:      # a PathLike whose __fspath__ returns something else
        raise TypeError(f"{what}: {exc}") from None
    if b"\0" in encoded:
        raise ModelLoadError(f"{what} {path!r} contains a NUL character; no file has such a name")
    return encoded


cdef bint _precheck_gguf(bytes bpath, str shown) except -1:
    """Refuse files that would make llama.cpp abort or fail obscurely, before loading them.

    Returns whether the file has a classification head (``cls`` / ``cls.output`` tensors),
    which ``pooling="rank"`` needs.
    """
    cdef ggml.gguf_init_params params
    cdef ggml.gguf_context * g
    cdef const char * cpath = bpath
    cdef int64_t key
    try:
        st = os.stat(bpath)
    except FileNotFoundError:
        raise ModelNotFoundError(f"model file not found: {shown}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {shown}: {exc.strerror}") from None
    import stat as _stat
    if _stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"model path is a directory, not a GGUF file: {shown}")
    if st.st_size == 0:
        raise ModelLoadError(f"model file is empty: {shown}")
    try:
        with open(bpath, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {shown}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"not a GGUF file (it starts with {magic!r}, not b'GGUF'): {shown}")
    params.no_alloc = True
    params.ctx = NULL
    mark = _log_mark()
    with nogil:
        g = ggml.gguf_init_from_file(cpath, params)
    _drain_log()
    if g == NULL:
        raise ModelLoadError(f"corrupt or truncated GGUF file: {shown}{_log_since(mark)}")
    try:
        problem = _gguf_problem(g)
        has_head = (ggml.gguf_find_tensor(g, b"cls.weight") >= 0
                    or ggml.gguf_find_tensor(g, b"cls.output.weight") >= 0)
    finally:
        ggml.gguf_free(g)
    if problem is not None:
        raise ModelLoadError(f"invalid GGUF: {problem} (llama.cpp would abort on it): {shown}")
    return has_head


cdef int64_t _first_duplicate_string(ggml.gguf_context * g, int64_t key) except -2 nogil:
    """Index of the first repeated string in a GGUF string array, or -1."""
    cdef unordered_set[string] seen
    cdef size_t n = ggml.gguf_get_arr_n(g, key)
    cdef size_t i
    cdef const char * s
    cdef string name
    seen.reserve(n)
    for i in range(n):
        s = ggml.gguf_get_arr_str(g, key, i)
        if s == NULL:
            continue
        # llama-vocab.cpp renames an empty token to "[EMPTY_<i>]" before its uniqueness assert
        if s[0] == 0:
            name = string(b"[EMPTY_")
            name.append(to_string(<long long>i))
            name.append(b"]")
        else:
            name = string(s)
        if not seen.insert(name).second:
            return <int64_t>i
    return -1


cdef object _gguf_int(ggml.gguf_context * g, bytes name):
    """A scalar integer key's value, or None when absent or not a 32-bit integer."""
    cdef int64_t key = ggml.gguf_find_key(g, name)
    if key < 0:
        return None
    t = ggml.gguf_get_kv_type(g, key)
    if t == ggml.GGUF_TYPE_UINT32:
        return ggml.gguf_get_val_u32(g, key)
    if t == ggml.GGUF_TYPE_INT32:
        return ggml.gguf_get_val_i32(g, key)
    return None


cdef object _hparam_problem(ggml.gguf_context * g, bytes arch):
    """Checks llama-model.cpp's load_hparams asserts on (scalar forms only)."""
    cdef int64_t key
    a = arch.decode(errors="replace")
    n_layer = _gguf_int(g, arch + b".block_count")
    if n_layer is not None and (n_layer <= 0 or n_layer > _MAX_BLOCKS):
        return f"{a}.block_count is {n_layer} (supported: 1 to {_MAX_BLOCKS})"
    nextn = _gguf_int(g, arch + b".nextn_predict_layers")
    if nextn is not None and n_layer is not None and not 0 <= nextn <= n_layer:
        return f"{a}.nextn_predict_layers is {nextn}, not within 0..block_count ({n_layer})"
    n_expert = _gguf_int(g, arch + b".expert_count") or 0
    used = _gguf_int(g, arch + b".expert_used_count") or 0
    groups = _gguf_int(g, arch + b".expert_group_count") or 0
    group_used = _gguf_int(g, arch + b".expert_group_used_count") or 0
    if not 0 <= n_expert <= _MAX_EXPERTS:
        return f"{a}.expert_count is {n_expert} (supported: 0 to {_MAX_EXPERTS})"
    if n_expert > 0:
        if not 0 < used <= n_expert:
            return f"{a}.expert_used_count is {used}, not within 1..expert_count ({n_expert})"
        if not 0 <= groups < n_expert:
            return f"{a}.expert_group_count is {groups}, not below expert_count ({n_expert})"
        if groups > 1 and (n_expert % groups or not 0 < group_used < groups):
            return f"{a}: {groups} expert groups do not fit {n_expert} experts / {group_used} used groups"
    elif used or groups:
        return f"{a}.expert_used_count/expert_group_count are set but the model has no experts"
    key = ggml.gguf_find_key(g, arch + b".rope.scaling.type")
    if key >= 0 and ggml.gguf_get_kv_type(g, key) == ggml.GGUF_TYPE_STRING:
        kind = <bytes>ggml.gguf_get_val_str(g, key)
        if kind not in _ROPE_SCALING_TYPES:
            return f"{a}.rope.scaling.type is {kind!r} (known: none, linear, yarn, longrope)"
    return None


cdef object _gguf_problem(ggml.gguf_context * g):
    """The first metadata value on which llama.cpp asserts (aborts) rather than fails, or None.

    llama.cpp validates the file's structure itself (gguf_init_from_file) but trusts these
    values: block_count outside (0, 512] (llama-model.cpp), a repeated vocabulary string
    (llama-vocab.cpp: id_to_token.size() == token_to_id.size()), a NaN or negative norm epsilon
    (ggml-cpu ops.cpp: eps >= 0, at the first decode), expert counts and groups, nextn layers,
    an unknown rope scaling type (llama-model.cpp load_hparams), an alignment below 32 bytes,
    tensors stored as F64 or integers (no kernel computes with them: SIGSEGV at the first
    decode). Not covered yet: tensor shapes that do not fit the hyperparameters; see
    scripts/fuzz_gguf.py and tests/test_stress.py.
    """
    cdef int64_t i, key, dup
    cdef float eps
    cdef int64_t n_kv = ggml.gguf_get_n_kv(g)
    for i in range(n_kv):
        if ggml.gguf_get_kv_type(g, i) != ggml.GGUF_TYPE_FLOAT32:
            continue
        name = <bytes>ggml.gguf_get_key(g, i)
        if b"epsilon" in name:
            eps = ggml.gguf_get_val_f32(g, i)
            if not isfinite(eps) or eps < 0:
                return f"{name.decode(errors='replace')} is {eps}"
    cdef ggml.ggml_type ttype
    for i in range(ggml.gguf_get_n_tensors(g)):
        ttype = ggml.gguf_get_tensor_type(g, i)
        if ttype in (ggml.GGML_TYPE_F64, ggml.GGML_TYPE_I8, ggml.GGML_TYPE_I16,
                     ggml.GGML_TYPE_I32, ggml.GGML_TYPE_I64):
            # ggml's CPU kernels have no matrix product for these: a SIGSEGV at the first decode
            name = (<bytes>ggml.gguf_get_tensor_name(g, i)).decode("utf-8", "replace")
            return (f"tensor {name} has type {(<bytes>ggml.ggml_type_name(ttype)).decode()}, "
                    "which llama.cpp cannot compute with")
    align = _gguf_int(g, b"general.alignment")
    if align is not None and (align <= 0 or align % 32):
        # ggml-backend asserts that tensor data is 32-byte aligned in the mapped file
        return f"general.alignment is {align} (llama.cpp needs a multiple of 32)"
    key = ggml.gguf_find_key(g, b"general.architecture")
    if key >= 0 and ggml.gguf_get_kv_type(g, key) == ggml.GGUF_TYPE_STRING:
        problem = _hparam_problem(g, <bytes>ggml.gguf_get_val_str(g, key))
        if problem is not None:
            return problem
    key = ggml.gguf_find_key(g, b"tokenizer.ggml.tokens")
    if (key >= 0 and ggml.gguf_get_kv_type(g, key) == ggml.GGUF_TYPE_ARRAY
            and ggml.gguf_get_arr_type(g, key) == ggml.GGUF_TYPE_STRING):
        with nogil:
            dup = _first_duplicate_string(g, key)
        if dup >= 0:
            text = (<bytes>ggml.gguf_get_arr_str(g, key, dup)).decode("utf-8", "replace")
            return f"tokenizer.ggml.tokens repeats the token {text!r} (at index {dup})"
    return None
