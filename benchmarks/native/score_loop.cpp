// A plain C++ scoring loop on llama.h: the reference for llama_cython's ctx.score(texts) (the
// log-probability of every token of every text given the tokens before it), both for speed and,
// with --dump, for the values themselves.
//
// What it does, per repeat:
//   tokenize every text (add_special: BOS when the model asks for it; parse_special) -> walk
//   the texts in order, packing whole texts into one batch until the next one would take it
//   past n_batch tokens or the batch holds n_seq_max texts -> a text is one sequence (seq id =
//   its slot in the batch, positions 0..len-1, every position an output) -> flush =
//   llama_memory_clear + one llama_process(DECODE) + for each text and each i >= 1 the
//   log-softmax of the logits at position i-1 (full vocabulary) taken at token i.
// The context has n_ctx = n_batch = n_ubatch and a unified KV cache, so a decode is one ubatch
// and the texts of a batch share the cache without a per-sequence split. A text longer than
// n_batch is an error; a text of fewer than 2 tokens adds nothing to score (an empty one is not
// decoded at all).
//
// Log-softmax, as llama.cpp's tools/perplexity computes it: the maximum logit in float, each
// exp(logit - max) with expf in float, their sum accumulated in double, then
// (logit[tok] - max) - log(sum) in double, stored as float. Single-threaded (llama-perplexity
// spreads rows over worker threads; the values do not depend on that).
//
//   score_loop -m model.gguf [-f texts.txt | < texts.txt] [-b n_batch] [-t threads]
//              [--fa on|off|auto] [--n-seq-max N] [-r repeats] [--warmup N] [--dump PREFIX]
//
// Texts: one per line (a trailing '\r' is dropped; empty lines are kept as empty texts).
// --warmup N: score the first N texts once before timing (default 8; 0 = none).
// --n-seq-max N: texts per batch at most (default and cap: 256, and never above n_batch).
// --dump PREFIX: after the last repeat, three little-endian files, one value per token:
//   PREFIX.tokens.i32    int32, every text's token ids (BOS included), text after text;
//   PREFIX.logprobs.f32  float32, at the same places, log p(token i | tokens < i); the first
//                        token of each text has nothing before it and holds NaN;
//   PREFIX.offsets.i64   int64, n_texts + 1 offsets into both (text k: [off[k], off[k+1])).
//
// Prints JSON lines on stdout: first {"config": {...}}, then one line per repeat:
//   {"repeat":i,"n_texts":..,"n_tokens":..,"n_scored":..,"n_decodes":..,"t_tokenize_ms":..,
//    "t_decode_ms":..,"t_logsoftmax_ms":..,"t_total_ms":..,"texts_per_s":..,"tokens_per_s":..,
//    "sum_logprob":..}
// t_total_ms spans the whole job, from the first tokenization to the last log-probability;
// tokens_per_s counts every token decoded (n_tokens); std::chrono::steady_clock.

#include "llama.h"

#include <chrono>
#include <clocale>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double ms_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

void quiet_log(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        std::fputs(text, stderr);
    }
}

struct Options {
    std::string model;
    std::string texts_file;  // empty or "-": stdin
    std::string dump_prefix;
    int n_batch = 512;
    int n_threads = 2;
    int n_seq_max = 0;  // 0: llama_max_parallel_sequences()
    int repeats = 1;
    int warmup = 8;
    llama_flash_attn_type flash_attn = LLAMA_FLASH_ATTN_TYPE_AUTO;
};

[[noreturn]] void usage(const char * argv0) {
    std::fprintf(stderr,
                 "usage: %s -m model.gguf [-f texts.txt] [-b n_batch] [-t threads] [--fa on|off|auto]\n"
                 "       [--n-seq-max N] [-r repeats] [--warmup N] [--dump PREFIX]\n",
                 argv0);
    std::exit(2);
}

Options parse_args(int argc, char ** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "-h" || a == "--help" || i + 1 >= argc) {
            usage(argv[0]);
        }
        const std::string v = argv[++i];
        if (a == "-m") {
            o.model = v;
        } else if (a == "-f") {
            o.texts_file = v;
        } else if (a == "--dump") {
            o.dump_prefix = v;
        } else if (a == "-b" || a == "--n-batch") {
            o.n_batch = std::atoi(v.c_str());
        } else if (a == "-t") {
            o.n_threads = std::atoi(v.c_str());
        } else if (a == "--n-seq-max") {
            o.n_seq_max = std::atoi(v.c_str());
        } else if (a == "-r") {
            o.repeats = std::atoi(v.c_str());
        } else if (a == "--warmup") {
            o.warmup = std::atoi(v.c_str());
        } else if (a == "--fa") {
            if (v == "on" || v == "1") {
                o.flash_attn = LLAMA_FLASH_ATTN_TYPE_ENABLED;
            } else if (v == "off" || v == "0") {
                o.flash_attn = LLAMA_FLASH_ATTN_TYPE_DISABLED;
            } else if (v == "auto") {
                o.flash_attn = LLAMA_FLASH_ATTN_TYPE_AUTO;
            } else {
                usage(argv[0]);
            }
        } else {
            usage(argv[0]);
        }
    }
    if (o.model.empty() || o.n_batch < 1 || o.n_threads < 1 || o.repeats < 1 || o.n_seq_max < 0 ||
        o.warmup < 0) {
        usage(argv[0]);
    }
    return o;
}

std::vector<std::string> read_lines(std::istream & in) {
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        lines.push_back(line);
    }
    return lines;
}

bool tokenize(const llama_vocab * vocab, const std::string & text, std::vector<llama_token> & out) {
    out.resize(text.size() + 8);
    int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                               static_cast<int32_t>(out.size()), true, true);
    if (n < 0) {
        out.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                           static_cast<int32_t>(out.size()), true, true);
    }
    if (n < 0) {
        return false;
    }
    out.resize(static_cast<size_t>(n));
    return true;
}

// log p(tok | row): max in float, sum of expf in double, the difference in double.
float log_softmax_at(const float * row, int n_vocab, llama_token tok) {
    float max_logit = row[0];
    for (int v = 1; v < n_vocab; ++v) {
        max_logit = row[v] > max_logit ? row[v] : max_logit;
    }
    double sum_exp = 0.0;
    for (int v = 0; v < n_vocab; ++v) {
        sum_exp += expf(row[v] - max_logit);
    }
    return static_cast<float>(static_cast<double>(row[tok] - max_logit) - std::log(sum_exp));
}

struct Stats {
    int64_t n_tokens = 0;
    int64_t n_scored = 0;
    int n_decodes = 0;
    double t_tokenize_ms = 0.0;
    double t_decode_ms = 0.0;
    double t_logsoftmax_ms = 0.0;
    double t_total_ms = 0.0;
    double sum_logprob = 0.0;
};

class Scorer {
public:
    Scorer(llama_context * ctx, const llama_vocab * vocab, int n_batch, int n_seq_max)
        : ctx_(ctx), vocab_(vocab), n_vocab_(llama_vocab_n_tokens(vocab)), n_batch_(n_batch),
          n_seq_max_(n_seq_max), batch_(llama_batch_ext_init(ctx)) {}
    ~Scorer() { llama_batch_ext_free(batch_); }
    Scorer(const Scorer &) = delete;
    Scorer & operator=(const Scorer &) = delete;

    const std::vector<std::vector<llama_token>> & tokens() const { return tokens_; }
    const std::vector<float> & logprobs() const { return logprobs_; }
    const std::vector<int64_t> & offsets() const { return offsets_; }

    // Score texts[0..n). Returns 0, or prints why and returns non-zero.
    int run(const std::vector<std::string> & texts, size_t n, Stats & st) {
        const auto t0 = clock_type::now();
        tokens_.resize(n);
        offsets_.assign(n + 1, 0);
        for (size_t k = 0; k < n; ++k) {
            if (!tokenize(vocab_, texts[k], tokens_[k])) {
                std::fprintf(stderr, "error: text %zu could not be tokenized\n", k);
                return 1;
            }
            const size_t len = tokens_[k].size();
            if (len > static_cast<size_t>(n_batch_)) {
                std::fprintf(stderr, "error: text %zu has %zu tokens, more than n_batch (%d)\n", k, len, n_batch_);
                return 1;
            }
            st.n_tokens += static_cast<int64_t>(len);
            offsets_[k + 1] = offsets_[k] + static_cast<int64_t>(len);
            st.n_scored += static_cast<int64_t>(len > 0 ? len - 1 : 0);
        }
        logprobs_.assign(static_cast<size_t>(offsets_[n]), std::nanf(""));
        const auto t1 = clock_type::now();
        st.t_tokenize_ms += ms_between(t0, t1);

        llama_batch_ext_clear(batch_);
        int n_in_batch = 0;  // tokens in the batch
        size_t first = 0;    // index of the batch's first text
        for (size_t k = 0; k < n; ++k) {
            const int n_toks = static_cast<int>(tokens_[k].size());
            const int n_seqs = static_cast<int>(k - first);
            if (n_seqs > 0 && (n_in_batch + n_toks > n_batch_ || n_seqs >= n_seq_max_)) {
                if (flush(first, k, n_in_batch, st) != 0) {
                    return 1;
                }
                first = k;
                n_in_batch = 0;
            }
            const llama_seq_id seq = static_cast<llama_seq_id>(k - first);
            for (int j = 0; j < n_toks; ++j) {
                const int32_t idx = llama_batch_ext_add_token(batch_, seq, tokens_[k][j]);
                if (idx < 0) {
                    std::fprintf(stderr, "error: llama_batch_ext_add_token returned %d\n", idx);
                    return 1;
                }
                const llama_pos pos = j;
                llama_batch_ext_set_pos(batch_, idx, &pos);
                llama_batch_ext_set_output_logits(batch_, idx, true);
            }
            n_in_batch += n_toks;
        }
        if (n > first && flush(first, n, n_in_batch, st) != 0) {
            return 1;
        }
        st.t_total_ms += ms_between(t0, clock_type::now());
        return 0;
    }

private:
    // Decode the batch holding texts [first, end) (seq ids 0..end-first-1, n_in_batch tokens,
    // all outputs in batch order) and compute their log-probabilities.
    int flush(size_t first, size_t end, int n_in_batch, Stats & st) {
        if (n_in_batch == 0) {  // only empty texts: nothing to decode
            return 0;
        }
        const auto t0 = clock_type::now();
        llama_memory_clear(llama_get_memory(ctx_), true);
        const int32_t rc = llama_process(ctx_, LLAMA_PROCESS_TYPE_DECODE, batch_);
        if (rc != 0) {
            std::fprintf(stderr, "error: llama_process returned %d\n", rc);
            return 1;
        }
        st.n_decodes += 1;
        const float * logits = llama_get_logits(ctx_);  // n_in_batch rows, in batch order
        const auto t1 = clock_type::now();
        if (logits == nullptr) {
            std::fprintf(stderr, "error: no logits after the decode\n");
            return 1;
        }
        size_t row = 0;
        for (size_t k = first; k < end; ++k) {
            const std::vector<llama_token> & toks = tokens_[k];
            float * out = logprobs_.data() + offsets_[k];
            for (size_t i = 1; i < toks.size(); ++i) {
                const float lp = log_softmax_at(logits + (row + i - 1) * static_cast<size_t>(n_vocab_), n_vocab_, toks[i]);
                out[i] = lp;
                st.sum_logprob += lp;
            }
            row += toks.size();
        }
        st.t_decode_ms += ms_between(t0, t1);
        st.t_logsoftmax_ms += ms_between(t1, clock_type::now());
        llama_batch_ext_clear(batch_);
        return 0;
    }

    llama_context * ctx_;
    const llama_vocab * vocab_;
    int n_vocab_;
    int n_batch_;
    int n_seq_max_;
    llama_batch_ext * batch_;
    std::vector<std::vector<llama_token>> tokens_;
    std::vector<float> logprobs_;
    std::vector<int64_t> offsets_;
};

template <typename T>
bool write_file(const std::string & path, const T * data, size_t n) {
    FILE * f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) {
        return false;
    }
    const bool ok = std::fwrite(data, sizeof(T), n, f) == n;
    return std::fclose(f) == 0 && ok;
}

int dump(const std::string & prefix, const Scorer & scorer) {
    std::vector<int32_t> toks;
    for (const auto & t : scorer.tokens()) {
        toks.insert(toks.end(), t.begin(), t.end());
    }
    const auto & lp = scorer.logprobs();
    const auto & off = scorer.offsets();
    if (!write_file(prefix + ".logprobs.f32", lp.data(), lp.size()) ||
        !write_file(prefix + ".offsets.i64", off.data(), off.size()) ||
        !write_file(prefix + ".tokens.i32", toks.data(), toks.size())) {
        std::fprintf(stderr, "error: cannot write %s.*\n", prefix.c_str());
        return 1;
    }
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    const Options o = parse_args(argc, argv);

    std::vector<std::string> texts;
    if (o.texts_file.empty() || o.texts_file == "-") {
        texts = read_lines(std::cin);
    } else {
        std::ifstream f(o.texts_file);
        if (!f) {
            std::fprintf(stderr, "error: cannot open %s\n", o.texts_file.c_str());
            return 1;
        }
        texts = read_lines(f);
    }
    if (texts.empty()) {
        std::fprintf(stderr, "error: no texts\n");
        return 1;
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (model == nullptr) {
        std::fprintf(stderr, "error: cannot load %s\n", o.model.c_str());
        return 1;
    }
    if (llama_model_has_encoder(model) || !llama_model_has_decoder(model)) {
        std::fprintf(stderr, "error: only decoder-only models can be scored\n");
        llama_model_free(model);
        return 1;
    }

    // n_seq_max at most n_batch: the output buffer is sized for max(n_outputs, n_seq_max) rows.
    int n_seq_max = o.n_seq_max > 0 ? o.n_seq_max : static_cast<int>(llama_max_parallel_sequences());
    if (n_seq_max > o.n_batch) {
        n_seq_max = o.n_batch;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(o.n_batch);
    cp.n_batch = static_cast<uint32_t>(o.n_batch);
    cp.n_ubatch = static_cast<uint32_t>(o.n_batch);
    cp.n_seq_max = static_cast<uint32_t>(n_seq_max);
    cp.kv_unified = true;  // the batch's texts share n_ctx cells, however long each one is
    cp.n_threads = o.n_threads;
    cp.n_threads_batch = o.n_threads;
    cp.flash_attn_type = o.flash_attn;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        std::fprintf(stderr, "error: cannot create the context\n");
        llama_model_free(model);
        return 1;
    }

    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_batch = static_cast<int>(llama_n_batch(ctx));
    const int n_ubatch = static_cast<int>(llama_n_ubatch(ctx));
    const int n_seq = static_cast<int>(llama_n_seq_max(ctx));
    const int pack_budget = n_batch < n_ubatch ? n_batch : n_ubatch;
    std::printf("{\"config\":{\"n_texts\":%zu,\"n_ctx\":%u,\"n_batch\":%d,\"n_ubatch\":%d,\"n_seq_max\":%d,"
                "\"n_threads\":%d,\"flash_attn\":\"%s\",\"n_vocab\":%d,\"add_bos\":%s,"
                "\"logsoftmax\":\"max float, sum of expf in double\"}}\n",
                texts.size(), llama_n_ctx(ctx), n_batch, n_ubatch, n_seq, llama_n_threads_batch(ctx),
                llama_flash_attn_type_name(o.flash_attn), llama_vocab_n_tokens(vocab),
                llama_vocab_get_add_bos(vocab) ? "true" : "false");
    std::fflush(stdout);

    int rc = 0;
    {
        Scorer scorer(ctx, vocab, pack_budget, n_seq);
        if (o.warmup > 0) {
            Stats st;
            const size_t n = static_cast<size_t>(o.warmup) < texts.size() ? static_cast<size_t>(o.warmup) : texts.size();
            rc = scorer.run(texts, n, st);
        }
        for (int r = 0; r < o.repeats && rc == 0; ++r) {
            Stats st;
            rc = scorer.run(texts, texts.size(), st);
            if (rc != 0) {
                break;
            }
            const double s = st.t_total_ms / 1000.0;
            std::printf("{\"repeat\":%d,\"n_texts\":%zu,\"n_tokens\":%lld,\"n_scored\":%lld,\"n_decodes\":%d,"
                        "\"t_tokenize_ms\":%.3f,\"t_decode_ms\":%.3f,\"t_logsoftmax_ms\":%.3f,\"t_total_ms\":%.3f,"
                        "\"texts_per_s\":%.2f,\"tokens_per_s\":%.1f,\"sum_logprob\":%.6f}\n",
                        r, texts.size(), static_cast<long long>(st.n_tokens), static_cast<long long>(st.n_scored),
                        st.n_decodes, st.t_tokenize_ms, st.t_decode_ms, st.t_logsoftmax_ms, st.t_total_ms,
                        texts.size() / s, st.n_tokens / s, st.sum_logprob);
            std::fflush(stdout);
        }
        if (rc == 0 && !o.dump_prefix.empty()) {
            rc = dump(o.dump_prefix, scorer);
        }
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
