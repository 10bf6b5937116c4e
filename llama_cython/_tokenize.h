// Tokenization that cannot overflow the stack.
//
// Most BPE pre-tokenizers of llama.cpp split text with std::regex, whose matcher recurses once
// or more per character of a match: a run of 26,000 letters took about 78,600 frames and
// overflowed an 8 MiB stack (SIGSEGV). DNA, base64, minified code and long URLs are ordinary
// input, so every tokenization of the package goes through `tokenize` below, which gives the
// same ids as llama_tokenize and runs it on a thread with a stack large enough for the text
// when the calling thread's stack might not be.
//
// How large: a pre-tokenizer match never crosses more than one run of non-whitespace (words
// joined by single spaces, for one pattern) and the whitespace on either side of it (every
// pattern llama.cpp knows splits at Unicode White_Space, letters, digits or punctuation
// classes), so the longest such span, in bytes, bounds the recursion; STACK_PER_BYTE is its
// measured cost with headroom. tests/test_pretokenizers.py runs long inputs through all ~90
// pre-tokenizers.
#pragma once

#include <pthread.h>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "llama.h"

namespace llama_cython {

// Stack bytes per byte of the longest span: measured 320 per character for every std::regex
// pattern of the pinned llama.cpp (scripts/measure_pretok_stack.py), 60% headroom.
static const size_t STACK_PER_BYTE = 512;
// Fixed part: llama.cpp's frames above the regex (measured under 40 KB), and the rest.
static const size_t STACK_BASE = (size_t) 256 << 10;
// Keep this much of the caller's stack untouched when deciding to tokenize in place.
static const size_t STACK_MARGIN = (size_t) 256 << 10;

// Unicode White_Space at byte i of valid UTF-8 text; `len` gets the character's length.
inline bool utf8_space_at(const unsigned char * s, int64_t n, int64_t i, int & len) {
    const unsigned char c = s[i];
    if (c < 0x80) {
        len = 1;
        return c == ' ' || (c >= 0x09 && c <= 0x0D);
    }
    len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (i + len > n) {
        len = 1;
        return false;
    }
    if (len == 2) {
        const unsigned cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
        return cp == 0x85 || cp == 0xA0;
    }
    if (len == 3) {
        const unsigned cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
        return cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
               cp == 0x202F || cp == 0x205F || cp == 0x3000;
    }
    return false;
}

// Longest span of (whitespace run, words, whitespace run) in bytes, where "words" are runs of
// non-whitespace joined by single ASCII spaces: one pre-tokenizer ('exaone-moe':
// `\p{L}\p{M}*(?: \p{L}\p{M}*)*`) matches across single spaces, so a paragraph of prose is
// one match there. Any other whitespace (two spaces, a newline, a tab) ends the words.
inline int64_t longest_match_bound(const char * text, int64_t n) {
    const unsigned char * s = (const unsigned char *) text;
    int64_t best = 0, prev_space = 0, space = 0, word = 0;
    bool single_space = false;   // `space` is exactly one ASCII space so far
    int64_t i = 0;
    while (i < n) {
        int len;
        const bool is_space = utf8_space_at(s, n, i, len);
        if (is_space) {
            single_space = space == 0 && s[i] == ' ';
            space += len;
        } else {
            if (space > 0 && word > 0 && single_space) {
                word += space;           // "a b": the words go on across one space
                space = 0;
            } else if (space > 0 || word == 0) {
                // new words start: close the previous (spaces, words, spaces) span
                if (prev_space + word + space > best) best = prev_space + word + space;
                prev_space = space;
                space = 0;
                word = 0;
            }
            single_space = false;
            word += len;
        }
        i += len;
    }
    if (prev_space + word + space > best) best = prev_space + word + space;
    return best;
}

inline size_t stack_needed(int64_t bound) {
    return STACK_BASE + (size_t) bound * STACK_PER_BYTE;
}

// The lowest address of this thread's stack, looked up once per thread (for the main thread
// glibc reads /proc/self/maps: far too slow to do per text).
inline uintptr_t stack_low() {
    static thread_local uintptr_t low = 0;
    static thread_local bool known = false;
    if (!known) {
        known = true;
        pthread_attr_t attr;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            void * addr = nullptr;
            size_t size = 0;
            if (pthread_attr_getstack(&attr, &addr, &size) == 0) low = (uintptr_t) addr;
            pthread_attr_destroy(&attr);
        }
    }
    return low;
}

// Bytes of stack left below the caller (0 when unknown).
inline size_t stack_room() {
    const uintptr_t low = stack_low();
    if (low == 0) return 0;
    volatile char probe = 0;
    const uintptr_t here = (uintptr_t) &probe;
    return here > low ? (size_t) (here - low) : 0;
}

template <class F>
void * call_on_thread(void * f) {
    (*(F *) f)();
    return nullptr;
}

// Runs f() on a new thread with `bytes` of stack, and waits. 0, or the pthread error (f not run).
template <class F>
int run_with_stack(size_t bytes, F & f) {
    pthread_attr_t attr;
    int rc = pthread_attr_init(&attr);
    if (rc != 0) return rc;
    rc = pthread_attr_setstacksize(&attr, bytes);
    if (rc == 0) {
        pthread_t th;
        rc = pthread_create(&th, &attr, &call_on_thread<F>, &f);
        if (rc == 0) pthread_join(th, nullptr);
    }
    pthread_attr_destroy(&attr);
    return rc;
}

// Vocabularies whose pre-tokenizer is 'whitespace' (jina-embeddings-v2-base-zh): llama.cpp
// splits with `\S+` and no byte encoding, so a run of whitespace of two or more characters
// with an ASCII space in it reaches find_bpe_rank, which asserts that no piece holds a space
// (GGML_ASSERT: the process aborts). Such texts are refused for these vocabularies.
struct SpaceGuard {
    std::mutex lock;
    std::vector<const llama_vocab *> vocabs;
    std::atomic<int> count{0};
};

inline SpaceGuard & space_guard() {
    static SpaceGuard * guard = new SpaceGuard();   // never destroyed (threads may use it at exit)
    return *guard;
}

inline void guard_spaces(const llama_vocab * vocab, bool on) {
    SpaceGuard & g = space_guard();
    std::lock_guard<std::mutex> hold(g.lock);
    auto it = std::find(g.vocabs.begin(), g.vocabs.end(), vocab);
    if (on && it == g.vocabs.end()) g.vocabs.push_back(vocab);
    if (!on && it != g.vocabs.end()) g.vocabs.erase(it);
    g.count.store((int) g.vocabs.size());
}

inline void unguard_spaces(const llama_vocab * vocab) noexcept {
    try {
        guard_spaces(vocab, false);
    } catch (...) {
    }
}

inline bool spaces_guarded(const llama_vocab * vocab) {
    SpaceGuard & g = space_guard();
    if (g.count.load(std::memory_order_relaxed) == 0) return false;
    std::lock_guard<std::mutex> hold(g.lock);
    return std::find(g.vocabs.begin(), g.vocabs.end(), vocab) != g.vocabs.end();
}

// Byte offset of the first run of 2+ whitespace characters that holds an ASCII space, or -1.
inline int64_t space_run_at(const char * text, int64_t n) {
    const unsigned char * s = (const unsigned char *) text;
    int64_t i = 0, start = -1, chars = 0;
    bool has_space = false;
    while (i <= n) {
        int len = 1;
        const bool ws = i < n && utf8_space_at(s, n, i, len);
        if (ws) {
            if (start < 0) { start = i; chars = 0; has_space = false; }
            ++chars;
            has_space = has_space || s[i] == ' ';
        } else {
            if (start >= 0 && chars >= 2 && has_space) return start;
            start = -1;
        }
        i += len;
    }
    return -1;
}

// llama_tokenize, on a thread with enough stack when this one may not have it. C++ exceptions
// of llama.cpp reach the caller as they would from llama_tokenize; a stack that cannot be had
// (a single run of hundreds of megabytes) is a std::length_error, not a crash.
inline int32_t tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                        llama_token * tokens, int32_t n_tokens_max, bool add_special,
                        bool parse_special) {
    if (spaces_guarded(vocab)) {
        const int64_t at = space_run_at(text, text_len);
        if (at >= 0) {
            throw std::invalid_argument(
                "this vocabulary's 'whitespace' pre-tokenizer cannot take a run of whitespace that "
                "holds a space (at byte " + std::to_string(at) + "): llama.cpp would abort the process");
        }
    }
    const int64_t bound = longest_match_bound(text, text_len);
    const size_t need = stack_needed(bound);
    if (need + STACK_MARGIN <= stack_room()) {
        return llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special);
    }
    int32_t result = 0;
    std::exception_ptr error;
    auto call = [&]() {
        try {
            result = llama_tokenize(vocab, text, text_len, tokens, n_tokens_max, add_special, parse_special);
        } catch (...) {
            error = std::current_exception();
        }
    };
    const int rc = run_with_stack(need, call);
    if (rc != 0) {
        throw std::length_error("a run of " + std::to_string(bound) + " bytes without a break needs " +
                                std::to_string(need >> 20) + " MiB of stack to tokenize, which could not be had");
    }
    if (error) std::rethrow_exception(error);
    return result;
}

}  // namespace llama_cython
