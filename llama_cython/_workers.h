// A few C++ threads that run one function each, for the data-parallel embedding loop
// (_embed.pxi): every worker thread owns a llama_context of its own and takes whole batches
// from a shared counter, while the calling thread, which owns the main context, does the same
// between its returns to Python (progress, Ctrl-C). The threads never touch Python.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "llama.h"

namespace llama_cython {

// llama_batch_ext_add_token for a worker thread, where an exception has nowhere to go: -1
// (as for a full batch) instead of a throw.
inline int32_t batch_add_token_nothrow(llama_batch_ext * batch, llama_seq_id seq_id, llama_token id) noexcept {
    try {
        return llama_batch_ext_add_token(batch, seq_id, id);
    } catch (...) {
        return -1;
    }
}

typedef void (*worker_fn)(void * arg, int index);

// llama_process for a worker thread: a C++ exception becomes a return code.
constexpr int32_t PROCESS_BAD_ALLOC = -1000;
constexpr int32_t PROCESS_THREW = -1001;

inline int32_t process_nothrow(llama_context * ctx, llama_process_type type, llama_batch_ext * batch) noexcept {
    try {
        return llama_process(ctx, type, batch);
    } catch (const std::bad_alloc &) {
        return PROCESS_BAD_ALLOC;
    } catch (...) {
        return PROCESS_THREW;
    }
}

// What the workers share: the next planned batch to take, the texts done, a stop flag.
class BatchCounter {
  public:
    int64_t take() { return next_.fetch_add(1); }
    void add_done(int64_t n) { done_.fetch_add(n); }
    int64_t done() const { return done_.load(); }
    void stop() { stop_.store(true); }
    bool stopped() const { return stop_.load(); }

  private:
    std::atomic<int64_t> next_{0};
    std::atomic<int64_t> done_{0};
    std::atomic<bool> stop_{false};
};

class WorkerThreads {
  public:
    // Start fn(arg, 1) .. fn(arg, n): std::system_error if a thread cannot be created (the
    // threads already started are joined first, so nothing is left running).
    void start(int n, worker_fn fn, void * arg) {
        running_ = 0;
        try {
            for (int i = 1; i <= n; ++i) {
                {
                    std::lock_guard<std::mutex> lock(mutex_);
                    ++running_;
                }
                try {
                    threads_.emplace_back([this, fn, arg, i] {
                        fn(arg, i);
                        std::lock_guard<std::mutex> lock(mutex_);
                        --running_;
                        done_.notify_all();
                    });
                } catch (...) {
                    std::lock_guard<std::mutex> lock(mutex_);
                    --running_;
                    throw;
                }
            }
        } catch (...) {
            join();
            throw;
        }
    }

    // Wait until every thread has returned or `ms` milliseconds have passed; true when all
    // have returned.
    bool wait_for(int ms) {
        std::unique_lock<std::mutex> lock(mutex_);
        return done_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return running_ == 0; });
    }

    void join() {
        for (auto & t : threads_) {
            if (t.joinable()) {
                t.join();
            }
        }
        threads_.clear();
    }

    ~WorkerThreads() { join(); }

  private:
    std::vector<std::thread> threads_;
    std::mutex mutex_;
    std::condition_variable done_;
    int running_ = 0;
};

}  // namespace llama_cython
