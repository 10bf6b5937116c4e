# Many texts in: borrowed UTF-8 buffers, one pointer and one size per text, for C loops that
# run without the GIL (batch tokenization, batch embeddings).

cdef extern from "Python.h":
    const char * PyUnicode_AsUTF8AndSize(object text, Py_ssize_t * size) except NULL

cdef extern from "_token_batch.h" namespace "llama_cython" nogil:
    int64_t utf8_invalid_at(const unsigned char * s, int64_t n)


_NULL_POLICIES = ("raise", "empty", "skip")


cdef inline bint _is_null(object t):
    """A missing value as pipelines spell it: None, NaN (pandas object columns), pd.NA, pd.NaT."""
    if t is None:
        return True
    if isinstance(t, float):
        return t != t
    return type(t).__name__ in ("NAType", "NaTType")


cdef int _check_nulls(object nulls) except -1:
    if not isinstance(nulls, str) or nulls not in _NULL_POLICIES:
        raise OptionError(f"nulls must be 'raise', 'empty' or 'skip', got {nulls!r}")
    return 0


cdef tuple _text_tuple(object texts, str hint, str nulls="raise"):
    """``texts`` as a tuple (no copy when it is one and holds no null).

    A single str or bytes, a mapping, a table or anything two-dimensional is a TypeError (a
    DataFrame would otherwise be read as its column names). Missing values follow ``nulls``:
    ``"raise"`` leaves them for _TextBuffers to refuse by index, ``"empty"`` reads them as
    ``""``, ``"skip"`` leaves them out.
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"texts must be a sequence of str, not a single text; {hint}")
    ndim = getattr(texts, "ndim", 1)
    if isinstance(texts, dict) or hasattr(texts, "column_names") or (
            isinstance(ndim, int) and ndim != 1 and not isinstance(texts, tuple)):
        shape = getattr(texts, "shape", None)
        raise TypeError(f"texts must be one-dimensional (a list, a Series, one column), got "
                        f"{type(texts).__name__}" + (f" of shape {shape}" if shape is not None else "")
                        + "; pass a single column, e.g. df['text']")
    cdef tuple items
    arrow = _arrow_of(texts)
    if arrow is not None and hasattr(arrow, "to_pylist"):
        texts = arrow.to_pylist()       # Arrow nulls read as None, then follow ``nulls``
    if isinstance(texts, tuple):
        items = <tuple>texts
    else:
        try:
            items = tuple(texts)
        except TypeError:
            raise TypeError(f"texts must be a sequence of str, got {type(texts).__name__}") from None
    if nulls == "raise":
        return items
    cdef Py_ssize_t i, n = len(items)
    for i in range(n):
        if _is_null(items[i]):
            break
    else:
        return items
    if nulls == "empty":
        return tuple("" if _is_null(t) else t for t in items)
    return tuple(t for t in items if not _is_null(t))


cdef class _TextBuffers:
    """Borrowed UTF-8 buffers of a tuple of texts, kept valid by holding the tuple.

    A ``str`` lends the UTF-8 copy CPython keeps inside the object (made once, no new object).
    With ``allow_bytes``, a ``bytes`` item lends its own buffer; it must be valid UTF-8
    (``errors="strict"``: TokenizeError naming the text and the byte) or has its invalid bytes
    replaced by U+FFFD as Python's decoder does (``errors="replace"``).
    """

    cdef tuple texts
    cdef list replaced
    cdef vector[const char *] ptrs
    cdef vector[int64_t] sizes
    cdef int64_t total

    def __cinit__(self, tuple texts, bint allow_bytes=False, str errors="strict",
                  int64_t max_size=INT32_MAX):
        cdef Py_ssize_t i, n = len(texts), size
        cdef int64_t bad
        cdef const char * p
        self.texts = texts
        self.replaced = []
        self.ptrs.resize(n)
        self.sizes.resize(n)
        self.total = 0
        for i in range(n):
            t = texts[i]
            if isinstance(t, str):
                try:
                    p = PyUnicode_AsUTF8AndSize(t, &size)
                except UnicodeEncodeError as exc:
                    raise TokenizeError(f"texts[{i}] is not valid text: {exc}") from None
            elif allow_bytes and isinstance(t, bytes):
                p = t
                size = len(<bytes>t)
                with nogil:
                    bad = utf8_invalid_at(<const unsigned char *>p, size)
                if bad != size:
                    if errors != "replace":
                        raise TokenizeError(f"texts[{i}] is not valid UTF-8 (byte {bad}: "
                                            f"{(<bytes>t)[bad:bad + 4]!r}); pass errors='replace' "
                                            "to replace invalid bytes with U+FFFD")
                    t = (<bytes>t).decode("utf-8", "replace").encode("utf-8")
                    self.replaced.append(t)
                    p = t
                    size = len(<bytes>t)
            elif _is_null(t):
                raise TypeError(f"texts[{i}] is missing ({t!r}); pass nulls='empty' to read "
                                "missing values as '' or nulls='skip' to leave them out")
            else:
                kinds = "a str or bytes" if allow_bytes else "a str"
                raise TypeError(f"texts[{i}] must be {kinds}, got {type(t).__name__}")
            if size > max_size:
                raise TokenizeError(f"texts[{i}] is too long ({size} bytes; at most {max_size})")
            self.ptrs[i] = p
            self.sizes[i] = size
            self.total += size


cdef const char * _EMPTY = ""


cdef bint _is_string_view(object pa, object t):
    is_view = getattr(pa.types, "is_string_view", None)     # pyarrow >= 16
    return is_view is not None and is_view(t)


cdef bint _is_arrow_text(object pa, object t):
    return pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(pa, t)


cdef object _arrow_of(object texts):
    """The pyarrow Array or ChunkedArray holding ``texts``, or None: ``texts`` itself, or the
    Arrow data under a pandas Series/Index/array backed by Arrow (``string[pyarrow]``,
    ``pd.ArrowDtype(pa.string())``), without a copy."""
    module = type(texts).__module__ or ""
    if module.startswith("pyarrow"):
        return texts
    if module.startswith("pandas"):
        arr = getattr(texts, "array", texts)
        if "pyarrow" in str(getattr(arr, "dtype", "")) and hasattr(arr, "__arrow_array__"):
            try:
                return arr.__arrow_array__()
            except Exception:   # an older pandas without the protocol for this dtype
                return None
    return None


cdef object _offsets_layout(object pa, object chunk):
    """A chunk of texts in the offsets-and-data layout the buffers are read from."""
    if pa.types.is_dictionary(chunk.type) and _is_arrow_text(pa, chunk.type.value_type):
        chunk = chunk.dictionary_decode()       # a categorical column (copies the texts)
    if _is_string_view(pa, chunk.type):
        chunk = chunk.cast(pa.large_string())   # views point into many buffers: one copy
    return chunk


cdef _TextBuffers _text_input(object texts, str hint, str nulls, bint allow_bytes=False,
                              str errors="strict", int64_t max_size=INT32_MAX):
    """The borrowed UTF-8 buffers of ``texts``: read from Arrow's buffers where ``texts`` is
    (or sits on) Arrow data, else from each str of :func:`_text_tuple`."""
    cdef _TextBuffers buf = _arrow_text_buffers(texts, nulls)
    if buf is None:
        buf = _TextBuffers(_text_tuple(texts, hint, nulls), allow_bytes, errors, max_size)
    return buf


cdef _TextBuffers _arrow_text_buffers(object texts, str nulls="raise"):
    """_TextBuffers over the buffers of a pyarrow string Array or ChunkedArray (no copy, no
    Python object per text), or None when ``texts`` is not one. Arrow's strings are UTF-8 by
    its specification; a text that is not is a TokenizeError. Nulls follow ``nulls``: a
    TypeError naming the index, an empty text, or left out."""
    texts = _arrow_of(texts)
    if texts is None:
        return None
    import pyarrow as pa
    if isinstance(texts, pa.ChunkedArray):
        chunks = list(texts.chunks)
    elif isinstance(texts, pa.Array):
        chunks = [texts]
    else:
        return None
    chunks = [_offsets_layout(pa, c) for c in chunks]
    if nulls == "skip":
        chunks = [c.drop_null() if c.null_count else c for c in chunks]
    cdef _TextBuffers buf = _TextBuffers.__new__(_TextBuffers, ())
    buf.replaced = chunks          # keeps the Arrow buffers alive while the pointers are used
    cdef Py_ssize_t start = 0, i, k, at
    cdef int64_t size, bad = -1
    cdef const int64_t[::1] offs, ends
    cdef const char * base
    for chunk in chunks:
        if pa.types.is_string(chunk.type):
            width = np.int32
        elif pa.types.is_large_string(chunk.type):
            width = np.int64
        else:
            raise TypeError(f"texts must be strings; got a pyarrow array of {chunk.type}")
        k = len(chunk)
        if k == 0:
            continue
        if chunk.null_count and nulls == "raise":
            first = int(np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))[0])
            raise TypeError(f"texts[{start + first}] is null; pass nulls='empty' to read nulls "
                            "as '' or nulls='skip' to leave them out")
        _, offsets_buf, data_buf = chunk.buffers()
        offs_arr = np.frombuffer(offsets_buf, dtype=width, count=chunk.offset + k + 1)[chunk.offset:].astype(np.int64)
        # An array built by hand (pa.Array.from_buffers) may hold offsets outside its data:
        # never read past the buffer.
        data_size = data_buf.size if data_buf is not None else 0
        if offs_arr[0] < 0 or offs_arr[k] > data_size or (k > 0 and np.any(offs_arr[1:] < offs_arr[:-1])):
            raise ValueError(f"texts: invalid Arrow string array (offsets outside its data "
                             f"buffer or decreasing) in the chunk starting at text {start}")
        ends_arr = offs_arr[1:].copy()
        if chunk.null_count:
            # nulls="empty": a null reads as '', whatever bytes its slot happens to span
            nullpos = np.flatnonzero(chunk.is_null().to_numpy(zero_copy_only=False))
            ends_arr[nullpos] = offs_arr[nullpos]
        offs = offs_arr
        ends = ends_arr
        base = <const char *><uintptr_t>data_buf.address if data_buf is not None else _EMPTY
        at = buf.ptrs.size()
        buf.ptrs.resize(at + k)
        buf.sizes.resize(at + k)
        with nogil:
            for i in range(k):
                size = ends[i] - offs[i]
                buf.ptrs[at + i] = base + offs[i] if size else _EMPTY
                buf.sizes[at + i] = size
                buf.total += size
                if bad < 0 and (size > INT32_MAX or
                                utf8_invalid_at(<const unsigned char *>(base + offs[i]), size) != size):
                    bad = at + i
        if bad >= 0:
            if buf.sizes[bad] > INT32_MAX:
                raise TokenizeError(f"texts[{bad}] is too long ({buf.sizes[bad]} bytes; at most {INT32_MAX})")
            raise TokenizeError(f"texts[{bad}] is not valid UTF-8")
        start += k
    return buf
