# llama.cpp's log.
#
# llama.cpp and ggml log from whatever thread calls into them, often with the GIL released, and
# `llama_log_set` is process-global. The callback therefore never touches Python: it appends
# whole lines to C++ buffers under a mutex. Python drains them into the `llama_cython.llama_cpp`
# logger after each call into C (`_drain_log`). The package installs a NullHandler on its
# logger, so nothing is printed unless the user configures logging (or passes verbose=True).
#
# The last warning/error lines are also kept apart, numbered, so that an exception can quote
# what llama.cpp said while the failing call ran (`_log_mark` / `_log_since`).

cdef extern from *:
    """
    #include <string>
    static const std::string::size_type LLC_NPOS = std::string::npos;
    """
    const size_t LLC_NPOS

DEF _LOG_PENDING_MAX = 20000
DEF _LOG_RECENT_MAX = 64

cdef mutex _log_mutex
cdef vector[pair[int, string]] _log_pending     # lines not yet given to Python logging
cdef deque[pair[int64_t, string]] _log_recent   # (sequence number, text) of WARN/ERROR lines
cdef deque[string] _log_capture                 # every line, while _log_capturing
cdef bint _log_capturing = False
cdef string _log_partial
cdef int _log_partial_level = 2
cdef int64_t _log_seq = 0
cdef int _log_min_level = 2      # GGML_LOG_LEVEL_INFO; DEBUG lines are dropped unless asked for

logger = logging.getLogger("llama_cython.llama_cpp")
_global_lock = threading.Lock()

cdef dict _PY_LEVELS = {
    1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR,
}


cdef void _log_push_line(int level, const string& line) noexcept nogil:
    # caller holds _log_mutex
    global _log_seq
    if line.size() == 0:
        return
    if _log_capturing:
        _log_capture.push_back(line)
    if level >= 3:
        _log_seq += 1
        _log_recent.push_back(pair[int64_t, string](_log_seq, line))
        if _log_recent.size() > _LOG_RECENT_MAX:
            _log_recent.pop_front()
    if level >= _log_min_level and _log_pending.size() < _LOG_PENDING_MAX:
        _log_pending.push_back(pair[int, string](level, line))


cdef void _log_callback(ggml.ggml_log_level level, const char * text, void * user_data) noexcept nogil:
    global _log_partial_level
    cdef int lvl = <int>level
    cdef size_t pos
    if text == NULL:
        return
    _log_mutex.lock()
    if lvl == <int>ggml.GGML_LOG_LEVEL_CONT:
        lvl = _log_partial_level
    elif lvl != _log_partial_level and _log_partial.size() > 0:
        _log_push_line(_log_partial_level, _log_partial)
        _log_partial.clear()
    _log_partial_level = lvl
    _log_partial.append(text)
    pos = _log_partial.find(b'\n')
    while pos != LLC_NPOS:
        _log_push_line(lvl, _log_partial.substr(0, pos))
        _log_partial.erase(0, pos + 1)
        pos = _log_partial.find(b'\n')
    _log_mutex.unlock()


cdef _log_sync_level():
    """Collect DEBUG lines only while someone listens to them (checked at each call into C)."""
    global _log_min_level
    _log_min_level = 1 if logger.isEnabledFor(logging.DEBUG) else 2


cdef _drain_log(bint echo=False):
    """Give the collected llama.cpp lines to Python logging (and to stderr when echo)."""
    cdef vector[pair[int, string]] lines
    _log_mutex.lock()
    lines.swap(_log_pending)
    _log_mutex.unlock()
    _log_sync_level()
    if lines.size() == 0:
        return
    import sys
    for item in lines:
        text = (<bytes>item.second).decode("utf-8", "replace")
        logger.log(_PY_LEVELS.get(item.first, logging.INFO), "%s", text)
        if echo:
            sys.stderr.write(text + "\n")


cdef int64_t _log_mark() noexcept:
    """The sequence number of the newest warning/error line (pass it to _log_since)."""
    cdef int64_t seq
    _log_mutex.lock()
    seq = _log_seq
    _log_mutex.unlock()
    return seq


cdef str _log_since(int64_t mark, int limit=6):
    """Warning/error lines logged after ``mark``, newest last, as one string ("" if none)."""
    cdef list out = []
    _log_mutex.lock()
    for item in _log_recent:
        if item.first > mark:
            out.append((<bytes>item.second).decode("utf-8", "replace").strip())
    _log_mutex.unlock()
    out = out[-limit:]
    return ("; llama.cpp said: " + " | ".join(out)) if out else ""


cdef _log_capture_begin():
    global _log_capturing
    _log_mutex.lock()
    _log_capture.clear()
    _log_capturing = True
    _log_mutex.unlock()


cdef list _log_capture_end():
    global _log_capturing
    cdef list out = []
    _log_mutex.lock()
    _log_capturing = False
    for line in _log_capture:
        out.append((<bytes>line).decode("utf-8", "replace"))
    _log_capture.clear()
    _log_mutex.unlock()
    return out
