// Log-softmax normalisers of many rows of logits, spread over threads: the rows of one scoring
// decode (up to n_batch of them, each a whole vocabulary) are reduced while llama.cpp's own
// threads are idle, so that scoring does not run this part on one core.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <vector>

namespace llama_cython {

// As llama.cpp's perplexity tool: the maximum in float, each exp(l - max) with expf, their sum
// in double; log p(t) = l[t] - (max + log(sum)).
inline double log_norm_row(const float * x, int32_t n) {
    float mx = x[0];
    for (int32_t i = 1; i < n; ++i) {
        mx = std::max(mx, x[i]);
    }
    double sum = 0.0;
    for (int32_t i = 0; i < n; ++i) {
        sum += expf(x[i] - mx);
    }
    return (double) mx + std::log(sum);
}

// out[i] = log_norm_row(rows[i]) (NaN for a NULL row), on up to `threads` threads (this one
// included) when the work is worth it. std::thread may throw std::system_error: the caller
// declares it `except +`.
inline void log_norm_rows(const float * const * rows, int64_t n_rows, int32_t n_vocab, double * out,
                          int threads) {
    auto run = [=](int64_t a, int64_t b) {
        for (int64_t i = a; i < b; ++i) {
            out[i] = rows[i] != nullptr ? log_norm_row(rows[i], n_vocab) : NAN;
        }
    };
    if (threads <= 1 || n_rows < 2 || n_rows * (int64_t) n_vocab < (int64_t) 1 << 20) {
        run(0, n_rows);
        return;
    }
    const int64_t per = (n_rows + threads - 1) / threads;
    std::vector<std::thread> pool;
    for (int t = 1; t < threads && t * per < n_rows; ++t) {
        pool.emplace_back(run, t * per, std::min(n_rows, (t + 1) * per));
    }
    run(0, std::min(per, n_rows));
    for (auto & th : pool) {
        th.join();
    }
}

}  // namespace llama_cython
