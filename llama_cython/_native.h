// Native work in flight, and a stop flag for interpreter exit.
//
// A daemon thread may be inside a long call (a batch of texts tokenized by C++ threads, a batch
// of embeddings, a generation) when the main thread returns and the interpreter exits: exit()
// then destroys llama.cpp's static tables (unicode data) under the C++ threads still using
// them, and the process died with SIGSEGV. So every long stretch without the GIL is counted
// here; at exit (an atexit handler, before finalization) the flag asks the loops to stop at
// their next text, batch or token, and the handler waits for the count to reach zero. Calls
// that start after that are refused.
#pragma once

#include <unistd.h>

#include <atomic>

namespace llama_cython {

inline std::atomic<int> & native_in_flight() {
    static std::atomic<int> count{0};
    return count;
}

inline std::atomic<bool> & native_stopping_flag() {
    static std::atomic<bool> flag{false};
    return flag;
}

inline bool native_stopping() {
    return native_stopping_flag().load(std::memory_order_relaxed);
}

inline void native_stop() {
    native_stopping_flag().store(true);
}

// false (and nothing counted) once the interpreter is exiting
inline bool native_begin() {
    native_in_flight().fetch_add(1);
    if (native_stopping()) {
        native_in_flight().fetch_sub(1);
        return false;
    }
    return true;
}

inline void native_end() {
    native_in_flight().fetch_sub(1);
}

inline int native_count() {
    return native_in_flight().load();
}

}  // namespace llama_cython
