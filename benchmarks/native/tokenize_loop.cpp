// A plain C++ tokenization loop on llama.h: the reference that benchmarks/bench_tokenize.py
// measures llama_cython's Model.tokenize_batch against.
//
// The model is loaded with vocab_only (no weights, no context). One repeat tokenizes every text
// into one flat token array with offsets, the same result llama_cython's TokenBatch holds:
//   for each text: make room for len(text) + 8 more tokens at the end of the flat array ->
//   llama_tokenize(vocab, text, ..., add_special, parse_special) straight into it (on a
//   negative answer, grow to the size it asks for and call again) -> shrink to what it wrote ->
//   offsets[k + 1] = size.
// With -t N > 1 the texts are cut into N contiguous runs of about equal bytes, one std::thread
// each (llama_tokenize is thread-safe on a shared vocab), every thread writing its own flat
// array; the arrays are then concatenated and the offsets shifted. Threads are started per
// repeat and their start and the concatenation are inside the timed span.
//
//   tokenize_loop -m model.gguf [-f texts.txt | < texts.txt] [--whole] [--no-add-special]
//                 [--parse-special] [-t threads] [-r repeats] [--warmup N] [-o out] [--step]
//
// Texts: one per line (a trailing '\r' is dropped; empty lines are kept as empty texts), or with
// --whole the entire input, byte for byte, as one text.
// --warmup N: tokenize the first N texts once before timing (default 32; 0 = none).
// -o out: after the last repeat, out.ids (int32 token ids, flat) and out.offsets (int64, n+1).
// --step: before each repeat, wait for one line on stdin (stop at EOF); needs -f.
//
// Prints JSON lines on stdout: first {"config": {...}}, then one line per repeat:
//   {"repeat":i,"n_texts":..,"n_bytes":..,"n_tokens":..,"t_total_ms":..,"texts_per_s":..,
//    "tokens_per_s":..}
// t_total_ms spans the whole job, from the first call to the finished offsets;
// std::chrono::steady_clock.

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <clocale>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
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
    std::string out;
    bool whole = false;
    bool add_special = true;
    bool parse_special = false;
    int n_threads = 1;
    int repeats = 1;
    int warmup = 32;
    bool step = false;
};

[[noreturn]] void usage(const char * argv0) {
    std::fprintf(stderr,
                 "usage: %s -m model.gguf [-f texts.txt] [--whole] [--no-add-special] [--parse-special]\n"
                 "       [-t threads] [-r repeats] [--warmup N] [-o out] [--step]\n",
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
        if (a == "--whole") {
            o.whole = true;
            continue;
        }
        if (a == "--no-add-special") {
            o.add_special = false;
            continue;
        }
        if (a == "--parse-special") {
            o.parse_special = true;
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
            o.out = v;
        } else if (a == "-t") {
            o.n_threads = std::atoi(v.c_str());
        } else if (a == "-r") {
            o.repeats = std::atoi(v.c_str());
        } else if (a == "--warmup") {
            o.warmup = std::atoi(v.c_str());
        } else {
            usage(argv[0]);
        }
    }
    if (o.model.empty() || o.n_threads < 1 || o.repeats < 1 || o.warmup < 0 ||
        (o.step && (o.texts_file.empty() || o.texts_file == "-"))) {
        usage(argv[0]);
    }
    return o;
}

std::vector<std::string> read_texts(std::istream & in, bool whole) {
    std::vector<std::string> texts;
    if (whole) {
        std::ostringstream ss;
        ss << in.rdbuf();
        texts.push_back(ss.str());
        return texts;
    }
    std::string line;
    while (std::getline(in, line)) {
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        texts.push_back(line);
    }
    return texts;
}

// Tokenize texts[first, last) onto the end of `ids`; counts[k] = tokens of text k.
bool tokenize_range(const llama_vocab * vocab, const std::vector<std::string> & texts, size_t first,
                    size_t last, bool add_special, bool parse_special, std::vector<llama_token> & ids,
                    int64_t * counts) {
    for (size_t k = first; k < last; ++k) {
        const std::string & text = texts[k];
        const size_t start = ids.size();
        ids.resize(start + text.size() + 8);
        int32_t n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data() + start,
                                   static_cast<int32_t>(ids.size() - start), add_special, parse_special);
        if (n < 0) {
            ids.resize(start + static_cast<size_t>(-n));
            n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), ids.data() + start,
                               static_cast<int32_t>(ids.size() - start), add_special, parse_special);
        }
        if (n < 0) {
            std::fprintf(stderr, "error: text %zu could not be tokenized (%d)\n", k, n);
            return false;
        }
        ids.resize(start + static_cast<size_t>(n));
        counts[k] = n;
    }
    return true;
}

struct Batch {
    std::vector<llama_token> ids;
    std::vector<int64_t> offsets;  // n + 1; offsets[0] = 0
};

// Cut [0, n) into `parts` contiguous runs of about equal bytes: bounds[0] = 0 ... bounds[parts] = n.
std::vector<size_t> split_by_bytes(const std::vector<std::string> & texts, size_t n, size_t parts) {
    size_t total = 0;
    for (size_t k = 0; k < n; ++k) {
        total += texts[k].size() + 1;
    }
    std::vector<size_t> bounds{0};
    size_t acc = 0;
    for (size_t k = 0; k < n && bounds.size() < parts; ++k) {
        acc += texts[k].size() + 1;
        if (acc * parts >= total * bounds.size()) {
            bounds.push_back(k + 1);
        }
    }
    while (bounds.size() < parts + 1) {
        bounds.push_back(n);
    }
    bounds[parts] = n;
    return bounds;
}

// Tokenize texts[0, n) into `out` on o.n_threads threads. Returns false on error.
bool run(const llama_vocab * vocab, const std::vector<std::string> & texts, size_t n, const Options & o,
         Batch & out) {
    out.ids.clear();
    out.offsets.assign(n + 1, 0);
    int64_t * counts = out.offsets.data() + 1;  // counts first, prefix-summed in place below
    const size_t n_threads = std::min(static_cast<size_t>(o.n_threads), std::max<size_t>(n, 1));
    if (n_threads <= 1) {
        if (!tokenize_range(vocab, texts, 0, n, o.add_special, o.parse_special, out.ids, counts)) {
            return false;
        }
    } else {
        const std::vector<size_t> bounds = split_by_bytes(texts, n, n_threads);
        std::vector<std::vector<llama_token>> parts(n_threads);
        std::vector<char> ok(n_threads, 1);
        std::vector<std::thread> workers;
        workers.reserve(n_threads - 1);
        for (size_t t = 1; t < n_threads; ++t) {
            workers.emplace_back([&, t] {
                ok[t] = tokenize_range(vocab, texts, bounds[t], bounds[t + 1], o.add_special, o.parse_special,
                                       parts[t], counts);
            });
        }
        ok[0] = tokenize_range(vocab, texts, bounds[0], bounds[1], o.add_special, o.parse_special, out.ids, counts);
        for (auto & w : workers) {
            w.join();
        }
        if (std::find(ok.begin(), ok.end(), 0) != ok.end()) {
            return false;
        }
        size_t size = out.ids.size();
        for (size_t t = 1; t < n_threads; ++t) {
            size += parts[t].size();
        }
        out.ids.reserve(size);
        for (size_t t = 1; t < n_threads; ++t) {
            out.ids.insert(out.ids.end(), parts[t].begin(), parts[t].end());
        }
    }
    for (size_t k = 0; k < n; ++k) {
        out.offsets[k + 1] += out.offsets[k];
    }
    return true;
}

bool write_file(const std::string & path, const void * data, size_t size) {
    FILE * f = std::fopen(path.c_str(), "wb");
    const bool ok = f != nullptr && (size == 0 || std::fwrite(data, 1, size, f) == size);
    if (f != nullptr && std::fclose(f) != 0) {
        return false;
    }
    if (!ok) {
        std::fprintf(stderr, "error: cannot write %s\n", path.c_str());
    }
    return ok;
}

const char * vocab_type_name(enum llama_vocab_type t) {
    switch (t) {
        case LLAMA_VOCAB_TYPE_NONE: return "none";
        case LLAMA_VOCAB_TYPE_SPM: return "spm";
        case LLAMA_VOCAB_TYPE_BPE: return "bpe";
        case LLAMA_VOCAB_TYPE_WPM: return "wpm";
        case LLAMA_VOCAB_TYPE_UGM: return "ugm";
        case LLAMA_VOCAB_TYPE_RWKV: return "rwkv";
        default: return "other";
    }
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    const Options o = parse_args(argc, argv);

    std::vector<std::string> texts;
    if (o.texts_file.empty() || o.texts_file == "-") {
        texts = read_texts(std::cin, o.whole);
    } else {
        std::ifstream f(o.texts_file, std::ios::binary);
        if (!f) {
            std::fprintf(stderr, "error: cannot open %s\n", o.texts_file.c_str());
            return 1;
        }
        texts = read_texts(f, o.whole);
    }
    if (texts.empty()) {
        std::fprintf(stderr, "error: no texts\n");
        return 1;
    }
    size_t n_bytes = 0;
    for (const auto & t : texts) {
        n_bytes += t.size();
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = true;
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (model == nullptr) {
        std::fprintf(stderr, "error: cannot load %s\n", o.model.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::printf("{\"config\":{\"n_texts\":%zu,\"n_bytes\":%zu,\"vocab_type\":\"%s\",\"n_vocab\":%d,"
                "\"n_threads\":%d,\"add_special\":%s,\"parse_special\":%s}}\n",
                texts.size(), n_bytes, vocab_type_name(llama_vocab_type(vocab)), llama_vocab_n_tokens(vocab),
                o.n_threads, o.add_special ? "true" : "false", o.parse_special ? "true" : "false");
    std::fflush(stdout);

    int rc = 0;
    Batch batch;
    if (o.warmup > 0) {
        const size_t n = std::min(static_cast<size_t>(o.warmup), texts.size());
        rc = run(vocab, texts, n, o, batch) ? 0 : 1;
    }
    for (int r = 0; r < o.repeats && rc == 0; ++r) {
        if (o.step) {
            std::string line;
            if (!std::getline(std::cin, line)) {
                break;
            }
        }
        const auto t0 = clock_type::now();
        if (!run(vocab, texts, texts.size(), o, batch)) {
            rc = 1;
            break;
        }
        const double ms = ms_between(t0, clock_type::now());
        const double s = ms / 1000.0;
        std::printf("{\"repeat\":%d,\"n_texts\":%zu,\"n_bytes\":%zu,\"n_tokens\":%zu,\"t_total_ms\":%.3f,"
                    "\"texts_per_s\":%.2f,\"tokens_per_s\":%.1f}\n",
                    r, texts.size(), n_bytes, batch.ids.size(), ms, texts.size() / s, batch.ids.size() / s);
        std::fflush(stdout);
    }
    if (rc == 0 && !o.out.empty() && batch.offsets.size() == texts.size() + 1) {
        if (!write_file(o.out + ".ids", batch.ids.data(), batch.ids.size() * sizeof(llama_token)) ||
            !write_file(o.out + ".offsets", batch.offsets.data(), batch.offsets.size() * sizeof(int64_t))) {
            rc = 1;
        }
    }

    llama_model_free(model);
    llama_backend_free();
    return rc;
}
