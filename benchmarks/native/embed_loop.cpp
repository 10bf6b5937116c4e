// A plain C++ batch-embedding loop on llama.h: the reference that benchmarks/bench_embeddings.py
// measures llama_cython's Context.get_embeddings_batch against.
//
// It packs the texts in input order the way llama.cpp's examples/embedding does:
//   tokenize every text (add_special, parse_special) -> walk the texts in order; when the
//   batch's tokens + the next text's would exceed n_batch, or the batch already holds
//   n_seq_max texts, flush it -> a text is one sequence (seq id = its slot in the batch,
//   positions 0..len-1, every token an output) -> flush = llama_memory_clear +
//   one llama_process(DECODE) + llama_get_embeddings_seq(slot) per text, L2-normalised into
//   its row of the output.
// BERT-like models are non-causal: a batch is computed in one ubatch (pooled values are taken
// per ubatch), so n_ubatch = n_batch and a text longer than n_batch is an error, as there.
// Pooling is the model's own (context pooling_type UNSPECIFIED; mean for all-MiniLM-L6-v2);
// a model whose pooling is NONE or RANK is refused.
//
//   embed_loop -m model.gguf [-f texts.txt | < texts.txt] [-b n_batch] [-t threads]
//              [--fa on|off|auto] [--n-seq-max N] [-r repeats] [--warmup N]
//              [-o out.f32] [--no-normalize] [--step]
//
// Texts: one per line (a trailing '\r' is dropped; empty lines are kept as empty texts).
// -o: after the last repeat, the embeddings as raw float32, n_texts x n_embd_out, row-major.
// --warmup N: embed the first N texts once before timing (default 32; 0 = none).
// --n-seq-max N: texts per batch at most (default and cap: 256, and never above n_batch).
// --step: before each repeat, wait for one line on stdin (stop at EOF), so that a driver can
// interleave this loop with its own runs, one at a time; needs -f.
//
// Prints JSON lines on stdout: first {"config": {...}} with what the context reports back,
// then one line per repeat:
//   {"repeat":i,"n_texts":..,"n_tokens":..,"n_decodes":..,"t_tokenize_ms":..,"t_total_ms":..,
//    "texts_per_s":..,"tokens_per_s":..}
// t_total_ms spans the whole job, from the first tokenization to the last normalised row
// (what a caller's wall time around a batch-embedding call covers); std::chrono::steady_clock.

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
    std::string out_file;
    int n_batch = 512;
    int n_threads = 2;
    int n_seq_max = 0;  // 0: llama_max_parallel_sequences()
    int repeats = 1;
    int warmup = 32;
    llama_flash_attn_type flash_attn = LLAMA_FLASH_ATTN_TYPE_AUTO;
    bool normalize = true;
    bool step = false;
};

[[noreturn]] void usage(const char * argv0) {
    std::fprintf(stderr,
                 "usage: %s -m model.gguf [-f texts.txt] [-b n_batch] [-t threads] [--fa on|off|auto]\n"
                 "       [--n-seq-max N] [-r repeats] [--warmup N] [-o out.f32] [--no-normalize] [--step]\n",
                 argv0);
    std::exit(2);
}

Options parse_args(int argc, char ** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--step") {
            o.step = true;
            continue;
        }
        if (a == "--no-normalize") {
            o.normalize = false;
            continue;
        }
        if (a == "-h" || a == "--help" || i + 1 >= argc) {
            usage(argv[0]);
        }
        const std::string v = argv[++i];
        if (a == "-m") {
            o.model = v;
        } else if (a == "-f") {
            o.texts_file = v;
        } else if (a == "-o") {
            o.out_file = v;
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
        o.warmup < 0 || (o.step && (o.texts_file.empty() || o.texts_file == "-"))) {
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

// Write the sequence embedding of `slot` into `row`, L2-normalised unless told otherwise.
void store_row(const float * embd, float * row, int n_embd, bool normalize) {
    double sum = 0.0;
    if (normalize) {
        for (int i = 0; i < n_embd; ++i) {
            sum += static_cast<double>(embd[i]) * embd[i];
        }
        sum = std::sqrt(sum);
    }
    const float scale = !normalize ? 1.0f : (sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f);
    for (int i = 0; i < n_embd; ++i) {
        row[i] = embd[i] * scale;
    }
}

struct Stats {
    int64_t n_tokens = 0;
    int n_decodes = 0;
    double t_tokenize_ms = 0.0;
    double t_total_ms = 0.0;
};

class Embedder {
public:
    Embedder(llama_context * ctx, const llama_vocab * vocab, int n_embd, int n_batch, int n_seq_max, bool normalize)
        : ctx_(ctx), vocab_(vocab), n_embd_(n_embd), n_batch_(n_batch), n_seq_max_(n_seq_max),
          normalize_(normalize), batch_(llama_batch_ext_init(ctx)) {}
    ~Embedder() { llama_batch_ext_free(batch_); }
    Embedder(const Embedder &) = delete;
    Embedder & operator=(const Embedder &) = delete;

    // Embed texts[0..n) into out (n x n_embd). Returns 0, or prints why and returns non-zero.
    int run(const std::vector<std::string> & texts, size_t n, float * out, Stats & st) {
        const auto t0 = clock_type::now();
        tokens_.resize(n);
        for (size_t k = 0; k < n; ++k) {
            if (!tokenize(vocab_, texts[k], tokens_[k])) {
                std::fprintf(stderr, "error: text %zu could not be tokenized\n", k);
                return 1;
            }
            if (tokens_[k].size() > static_cast<size_t>(n_batch_)) {
                std::fprintf(stderr, "error: text %zu has %zu tokens, more than n_batch (%d)\n", k,
                             tokens_[k].size(), n_batch_);
                return 1;
            }
            st.n_tokens += static_cast<int64_t>(tokens_[k].size());
        }
        const auto t1 = clock_type::now();
        st.t_tokenize_ms += ms_between(t0, t1);

        llama_batch_ext_clear(batch_);
        int n_in_batch = 0;  // tokens in the batch
        size_t first = 0;    // index of the batch's first text
        for (size_t k = 0; k < n; ++k) {
            const int n_toks = static_cast<int>(tokens_[k].size());
            const int n_seqs = static_cast<int>(k - first);
            if (n_seqs > 0 && (n_in_batch + n_toks > n_batch_ || n_seqs >= n_seq_max_)) {
                if (flush(first, k, out, st) != 0) {
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
                llama_batch_ext_set_output_embd(batch_, idx, true);
            }
            n_in_batch += n_toks;
        }
        if (n > first && flush(first, n, out, st) != 0) {
            return 1;
        }
        st.t_total_ms += ms_between(t0, clock_type::now());
        return 0;
    }

private:
    // Decode the batch holding texts [first, end) (seq ids 0..end-first-1), store their rows.
    int flush(size_t first, size_t end, float * out, Stats & st) {
        llama_memory_clear(llama_get_memory(ctx_), true);
        const int32_t rc = llama_process(ctx_, LLAMA_PROCESS_TYPE_DECODE, batch_);
        if (rc != 0) {
            std::fprintf(stderr, "error: llama_process returned %d\n", rc);
            return 1;
        }
        st.n_decodes += 1;
        for (size_t k = first; k < end; ++k) {
            const float * embd = llama_get_embeddings_seq(ctx_, static_cast<llama_seq_id>(k - first));
            if (embd == nullptr) {
                std::fprintf(stderr, "error: no embedding for text %zu\n", k);
                return 1;
            }
            store_row(embd, out + k * static_cast<size_t>(n_embd_), n_embd_, normalize_);
        }
        llama_batch_ext_clear(batch_);
        return 0;
    }

    llama_context * ctx_;
    const llama_vocab * vocab_;
    int n_embd_;
    int n_batch_;
    int n_seq_max_;
    bool normalize_;
    llama_batch_ext * batch_;
    std::vector<std::vector<llama_token>> tokens_;
};

const char * pooling_name(enum llama_pooling_type p) {
    switch (p) {
        case LLAMA_POOLING_TYPE_NONE: return "none";
        case LLAMA_POOLING_TYPE_MEAN: return "mean";
        case LLAMA_POOLING_TYPE_CLS: return "cls";
        case LLAMA_POOLING_TYPE_LAST: return "last";
        case LLAMA_POOLING_TYPE_RANK: return "rank";
        default: return "unspecified";
    }
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
    if (llama_model_has_encoder(model) && llama_model_has_decoder(model)) {
        std::fprintf(stderr, "error: encoder-decoder models are not supported\n");
        llama_model_free(model);
        return 1;
    }

    // n_seq_max: at most llama_max_parallel_sequences() (256), and at most n_batch: the context
    // sizes its output buffer for max(n_outputs, n_seq_max) rows and asserts (aborts) when that
    // exceeds n_outputs_max, which is n_batch by default (llama-context.cpp, output_reserve).
    int n_seq_max = o.n_seq_max > 0 ? o.n_seq_max : static_cast<int>(llama_max_parallel_sequences());
    if (n_seq_max > o.n_batch) {
        n_seq_max = o.n_batch;
    }
    llama_context_params cp = llama_context_default_params();
    cp.embeddings = true;
    cp.pooling_type = LLAMA_POOLING_TYPE_UNSPECIFIED;  // the model's own
    cp.n_ctx = static_cast<uint32_t>(o.n_batch);
    cp.n_batch = static_cast<uint32_t>(o.n_batch);
    cp.n_ubatch = static_cast<uint32_t>(o.n_batch);  // non-causal: a batch must fit one ubatch
    cp.n_seq_max = static_cast<uint32_t>(n_seq_max);
    cp.kv_unified = true;  // as examples/embedding: n_ctx is not split per sequence
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

    const enum llama_pooling_type pooling = llama_pooling_type(ctx);
    if (pooling == LLAMA_POOLING_TYPE_NONE || pooling == LLAMA_POOLING_TYPE_RANK) {
        std::fprintf(stderr, "error: pooling '%s' gives no sentence embedding\n", pooling_name(pooling));
        llama_free(ctx);
        llama_model_free(model);
        return 1;
    }
    const int n_batch = static_cast<int>(llama_n_batch(ctx));
    const int n_ubatch = static_cast<int>(llama_n_ubatch(ctx));
    const int n_seq = static_cast<int>(llama_n_seq_max(ctx));
    const int n_embd = llama_model_n_embd_out(model);
    const int pack_budget = n_batch < n_ubatch ? n_batch : n_ubatch;
    std::printf("{\"config\":{\"n_texts\":%zu,\"n_ctx\":%u,\"n_batch\":%d,\"n_ubatch\":%d,\"n_seq_max\":%d,"
                "\"n_threads\":%d,\"flash_attn\":\"%s\",\"pooling\":\"%s\",\"n_embd\":%d,\"normalize\":%s}}\n",
                texts.size(), llama_n_ctx(ctx), n_batch, n_ubatch, n_seq, llama_n_threads_batch(ctx),
                llama_flash_attn_type_name(o.flash_attn), pooling_name(pooling), n_embd,
                o.normalize ? "true" : "false");
    std::fflush(stdout);

    int rc = 0;
    {
        Embedder embedder(ctx, llama_model_get_vocab(model), n_embd, pack_budget, n_seq, o.normalize);
        std::vector<float> out(texts.size() * static_cast<size_t>(n_embd));
        if (o.warmup > 0) {
            Stats st;
            const size_t n = static_cast<size_t>(o.warmup) < texts.size() ? static_cast<size_t>(o.warmup) : texts.size();
            rc = embedder.run(texts, n, out.data(), st);
        }
        for (int r = 0; r < o.repeats && rc == 0; ++r) {
            if (o.step) {
                std::string line;
                if (!std::getline(std::cin, line)) {
                    break;
                }
            }
            Stats st;
            rc = embedder.run(texts, texts.size(), out.data(), st);
            if (rc != 0) {
                break;
            }
            const double s = st.t_total_ms / 1000.0;
            std::printf("{\"repeat\":%d,\"n_texts\":%zu,\"n_tokens\":%lld,\"n_decodes\":%d,\"t_tokenize_ms\":%.3f,"
                        "\"t_total_ms\":%.3f,\"texts_per_s\":%.2f,\"tokens_per_s\":%.1f}\n",
                        r, texts.size(), static_cast<long long>(st.n_tokens), st.n_decodes, st.t_tokenize_ms,
                        st.t_total_ms, texts.size() / s, st.n_tokens / s);
            std::fflush(stdout);
        }
        if (rc == 0 && !o.out_file.empty()) {
            FILE * f = std::fopen(o.out_file.c_str(), "wb");
            if (f == nullptr || std::fwrite(out.data(), sizeof(float), out.size(), f) != out.size()) {
                std::fprintf(stderr, "error: cannot write %s\n", o.out_file.c_str());
                rc = 1;
            }
            if (f != nullptr) {
                std::fclose(f);
            }
        }
    }

    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return rc;
}
