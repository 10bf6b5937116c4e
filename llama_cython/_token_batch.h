// Tokenizing many texts at once, in C++ threads, with no Python object in reach.
//
// The texts are cut into small blocks of consecutive texts; worker threads take blocks from an
// atomic counter (so a block of long texts does not leave the other threads idle), tokenize
// each text with llama_tokenize into the block's own growing buffer, and record the count per
// text. The caller then lays the blocks end to end into one flat int32 array: blocks hold
// consecutive texts, so their concatenation is already in input order.
//
// llama_tokenize is thread-safe (llama.h: "The API is thread-safe"): each call builds its own
// tokenizer session over the shared, read-only vocabulary.
#pragma once

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "llama.h"
#include "_tokenize.h"
#include "_native.h"

namespace llama_cython {

// A growable int32 buffer that does not zero what it allocates (std::vector would).
struct IdBuffer {
    int32_t * data = nullptr;
    int64_t size = 0;
    int64_t cap = 0;

    IdBuffer() = default;
    IdBuffer(const IdBuffer &) = delete;
    IdBuffer & operator=(const IdBuffer &) = delete;
    IdBuffer(IdBuffer && o) noexcept : data(o.data), size(o.size), cap(o.cap) { o.data = nullptr; o.size = o.cap = 0; }
    ~IdBuffer() { std::free(data); }

    bool reserve(int64_t want) {
        if (want <= cap) return true;
        int64_t new_cap = cap ? cap : 1024;
        while (new_cap < want) new_cap *= 2;
        void * p = std::realloc(data, (size_t) new_cap * sizeof(int32_t));
        if (!p) return false;
        data = (int32_t *) p;
        cap = new_cap;
        return true;
    }
};

struct TokenizeBatchJob {
    // inputs
    const llama_vocab * vocab = nullptr;
    const char * const * texts = nullptr;
    const int64_t * sizes = nullptr;        // bytes of each text
    int64_t n_texts = 0;
    bool add_special = true;
    bool parse_special = false;
    bool keep_ids = true;                   // false: count only (one scratch buffer per thread)
    int64_t block = 64;                     // texts per block

    // outputs
    int64_t * counts = nullptr;             // n_texts entries, written by the workers
    std::vector<IdBuffer> blocks;           // one per block when keep_ids

    // the first failure, by text index
    std::mutex error_lock;
    int64_t error_index = -1;
    int error_kind = 0;                     // 1: overflow (> 2**31 tokens), 2: out of memory, 3: C++ exception, 4: llama_tokenize < 0, 5: interpreter exit (_errors.pxi maps them)
    std::string error_message;
    std::atomic<bool> failed{false};
    std::atomic<int64_t> next_block{0};

    int64_t n_blocks() const { return (n_texts + block - 1) / block; }

    void fail(int64_t index, int kind, const std::string & msg) {
        std::lock_guard<std::mutex> guard(error_lock);
        if (error_index < 0 || index < error_index) {
            error_index = index;
            error_kind = kind;
            error_message = msg;
        }
        failed.store(true, std::memory_order_relaxed);
    }

    // Tokenize texts [begin, end) into `out` (appending). False on failure (recorded).
    bool tokenize_range(int64_t begin, int64_t end, IdBuffer & out) {
        for (int64_t i = begin; i < end; ++i) {
            if (failed.load(std::memory_order_relaxed)) return false;
            const int64_t nbytes = sizes[i];
            // A token covers at least one byte of most texts; the slack covers BOS/EOS/SEP and
            // SPM's added space. When normalisation expands the text, llama_tokenize says how
            // many tokens it needs and the call is repeated with that room.
            int64_t room = nbytes + 16;
            if (room > INT32_MAX) room = INT32_MAX;
            if (!out.reserve(out.size + room)) { fail(i, 2, "out of memory"); return false; }
            int32_t n;
            try {
                n = llama_cython::tokenize(vocab, texts[i], (int32_t) nbytes, out.data + out.size, (int32_t) room,
                                   add_special, parse_special);
                if (n < 0 && n != INT32_MIN) {
                    room = -(int64_t) n;
                    if (!out.reserve(out.size + room)) { fail(i, 2, "out of memory"); return false; }
                    n = llama_cython::tokenize(vocab, texts[i], (int32_t) nbytes, out.data + out.size, (int32_t) room,
                                       add_special, parse_special);
                }
            } catch (const std::exception & e) {
                fail(i, 3, e.what());
                return false;
            } catch (...) {
                fail(i, 3, "unknown C++ exception");
                return false;
            }
            if (n == INT32_MIN) { fail(i, 1, ""); return false; }
            if (n < 0) { fail(i, 4, std::to_string(n)); return false; }
            counts[i] = n;
            if (keep_ids) out.size += n;
        }
        return true;
    }

    void worker() {
        IdBuffer scratch;
        const int64_t nb = n_blocks();
        for (;;) {
            const int64_t b = next_block.fetch_add(1, std::memory_order_relaxed);
            if (b >= nb || failed.load(std::memory_order_relaxed)) return;
            if (native_stopping()) {
                fail(b * block, 5, "the interpreter is shutting down");
                return;
            }
            const int64_t begin = b * block;
            const int64_t end = begin + block < n_texts ? begin + block : n_texts;
            if (keep_ids) {
                if (!tokenize_range(begin, end, blocks[b])) return;
            } else {
                scratch.size = 0;
                if (!tokenize_range(begin, end, scratch)) return;
            }
        }
    }

    // Runs the job on `n_threads` threads, the caller's thread being one of them. A thread that
    // cannot be started leaves its share to the others (blocks are taken, not assigned).
    void run(int n_threads) {
        if (keep_ids) blocks.resize((size_t) n_blocks());
        if (n_threads <= 1 || n_blocks() <= 1) {
            worker();
            return;
        }
        std::vector<std::thread> pool;
        pool.reserve((size_t) n_threads - 1);
        for (int t = 1; t < n_threads; ++t) {
            try {
                pool.emplace_back(&TokenizeBatchJob::worker, this);
            } catch (...) {
                break;   // fewer threads; the blocks are still all taken by someone
            }
        }
        worker();
        for (auto & th : pool) th.join();
    }

    // Copies the blocks, in order, into `dst` (sum of counts entries).
    void gather(int32_t * dst) const {
        for (const auto & b : blocks) {
            if (b.size) std::memcpy(dst, b.data, (size_t) b.size * sizeof(int32_t));
            dst += b.size;
        }
    }
};

// Index of the first byte where `s` stops being valid UTF-8 (n if it is valid): the rules of
// Python's "strict" decoder (no surrogates, no overlong forms, nothing above U+10FFFF).
inline int64_t utf8_invalid_at(const unsigned char * s, int64_t n) {
    int64_t i = 0;
    while (i < n) {
        const unsigned char c = s[i];
        if (c < 0x80) { ++i; continue; }
        int len;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c == 0xE0) { len = 3; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) len = 3;
        else if (c == 0xED) { len = 3; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) len = 3;
        else if (c == 0xF0) { len = 4; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) len = 4;
        else if (c == 0xF4) { len = 4; hi = 0x8F; }
        else return i;
        if (i + len > n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (int k = 2; k < len; ++k) {
            if (s[i + k] < 0x80 || s[i + k] > 0xBF) return i;
        }
        i += len;
    }
    return n;
}

}  // namespace llama_cython
