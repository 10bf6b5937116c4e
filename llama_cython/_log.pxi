# llama.cpp's log.
#
# llama.cpp and ggml log from whatever thread calls into them, often with the GIL released, and
# `llama_log_set` is process-global. The callback (_log.h) therefore never touches Python and
# never throws: it appends whole lines to C++ buffers under a mutex. Python drains them into the `llama_cython.llama_cpp`
# logger after each call into C (`_drain_log`). The package installs a NullHandler on its
# logger, so nothing is printed unless the user configures logging (or passes verbose=True).
#
# The last warning/error lines are also kept apart, numbered, so that an exception can quote
# what llama.cpp said while the failing call ran (`_log_mark` / `_log_since`).

cdef extern from "_log.h" namespace "llama_cython" nogil:
    cdef cppclass LogStore:
        void take_pending(vector[pair[int, string]] & out)
        int64_t mark()
        void since(int64_t after, vector[string] & out) except +
        void capture_begin()
        void capture_end(vector[string] & out) except +
        void set_min_level(int level)
    LogStore & log_store()
    void _log_init "llama_cython::log_store"() except +
    void _log_callback "llama_cython::log_callback"(ggml.ggml_log_level level, const char * text, void * user_data)

_log_init()      # created now, at import (where a failure can raise), not by a llama.cpp thread

logger = logging.getLogger("llama_cython.llama_cpp")
_global_lock = threading.Lock()

cdef dict _PY_LEVELS = {
    1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR,
}


cdef _log_sync_level():
    """Collect DEBUG lines only while someone listens to them (checked at each call into C)."""
    log_store().set_min_level(1 if logger.isEnabledFor(logging.DEBUG) else 2)


cdef _drain_log(bint echo=False):
    """Give the collected llama.cpp lines to Python logging (and to stderr when echo)."""
    cdef vector[pair[int, string]] lines
    log_store().take_pending(lines)
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
    return log_store().mark()


cdef str _log_since(int64_t mark, int limit=6):
    """Warning/error lines logged after ``mark``, newest last, as one string ("" if none)."""
    cdef vector[string] lines
    log_store().since(mark, lines)
    cdef list out = [(<bytes>line).decode("utf-8", "replace").strip() for line in lines]
    out = out[-limit:]
    return ("; llama.cpp said: " + " | ".join(out)) if out else ""


cdef _log_capture_begin():
    log_store().capture_begin()


cdef list _log_capture_end():
    cdef vector[string] lines
    log_store().capture_end(lines)
    return [(<bytes>line).decode("utf-8", "replace") for line in lines]
