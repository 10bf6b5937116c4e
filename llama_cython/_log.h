// llama.cpp's log, kept in C++ so that the callback (called by any thread, GIL or not) can
// never raise: every allocation failure inside is caught and the line dropped.
//
// Lines are appended under a mutex to three stores: `pending` (drained into Python logging
// after each call into C), `recent` (the last warning/error lines, numbered, so that an
// exception can quote what llama.cpp said while the failing call ran) and `capture` (every
// line, while a context is being created: its report of the effective KV type and flash
// attention).
#pragma once

#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ggml.h"

namespace llama_cython {

struct LogStore {
    static constexpr size_t pending_max = 20000;
    static constexpr size_t recent_max = 64;

    std::mutex lock;
    std::vector<std::pair<int, std::string>> pending;
    std::deque<std::pair<int64_t, std::string>> recent;
    std::deque<std::string> capture;
    bool capturing = false;
    std::string partial;
    int partial_level = 2;
    int64_t seq = 0;
    int min_level = 2;       // GGML_LOG_LEVEL_INFO; DEBUG (1) only while someone listens

    // caller holds `lock`
    void push_line(int level, const std::string & line) {
        if (line.empty()) return;
        if (capturing) capture.push_back(line);
        if (level >= 3) {
            ++seq;
            recent.emplace_back(seq, line);
            if (recent.size() > recent_max) recent.pop_front();
        }
        if (level >= min_level && pending.size() < pending_max) pending.emplace_back(level, line);
    }

    // GGML_LOG_LEVEL_CONT (5) continues the previous line at its level.
    void add(int level, const char * text) noexcept {
        if (text == nullptr) return;
        try {
            std::lock_guard<std::mutex> guard(lock);
            if (level == 5) {
                level = partial_level;
            } else if (level != partial_level && !partial.empty()) {
                push_line(partial_level, partial);
                partial.clear();
            }
            partial_level = level;
            partial.append(text);
            size_t pos;
            while ((pos = partial.find('\n')) != std::string::npos) {
                push_line(level, partial.substr(0, pos));
                partial.erase(0, pos + 1);
            }
        } catch (...) {
            // out of memory or a failed lock: this line is lost, the process goes on
        }
    }

    void take_pending(std::vector<std::pair<int, std::string>> & out) noexcept {
        std::lock_guard<std::mutex> guard(lock);
        out.swap(pending);
    }

    int64_t mark() noexcept {
        std::lock_guard<std::mutex> guard(lock);
        return seq;
    }

    // warning/error lines numbered after `after`, oldest first
    void since(int64_t after, std::vector<std::string> & out) {
        std::lock_guard<std::mutex> guard(lock);
        for (const auto & item : recent) {
            if (item.first > after) out.push_back(item.second);
        }
    }

    void capture_begin() noexcept {
        std::lock_guard<std::mutex> guard(lock);
        capture.clear();
        capturing = true;
    }

    void capture_end(std::vector<std::string> & out) {
        std::lock_guard<std::mutex> guard(lock);
        capturing = false;
        out.assign(capture.begin(), capture.end());
        capture.clear();
    }

    void set_min_level(int level) noexcept {
        std::lock_guard<std::mutex> guard(lock);
        min_level = level;
    }
};

inline LogStore & log_store() {
    // Never destroyed: llama.cpp threads may still log while the interpreter exits.
    static LogStore * store = new LogStore();
    return *store;
}

inline void log_callback(enum ggml_log_level level, const char * text, void *) noexcept {
    log_store().add((int) level, text);
}

}  // namespace llama_cython
