// A plain C++ continuous-batching loop on llama.h: the reference that
// benchmarks/bench_generate_batch.py measures llama_cython's Context.generate_batch against.
//
// It does the same work as llama_cython's loop (llama_cython/_generate_batch.pxi), call for
// call, in the spirit of llama.cpp's examples/parallel:
//   tokenize every prompt (add_special, parse_special) -> for each step {
//     admit prompts into free slots (llama_memory_seq_rm, a greedy sampler chain each)
//     -> one batch: the pending token of every generating sequence, then prompt tokens of
//        admitted ones up to n_batch (logits for a prompt's last token)
//     -> llama_process -> for each sequence with logits: sample, stop on EOG, token_to_piece
//        appended to its std::string, stop after n_predict tokens or a full share of the
//        context (then llama_memory_seq_rm, sampler freed) }
// The model and the context are created once; the cache is cleared before each repeat.
//
//   batch_loop -m model.gguf -f prompts.txt -n n_predict -t threads -c n_ctx -np n_parallel
//              [-b n_batch] [-r repeats] [--step]
//
// prompts.txt: one prompt per line, with "\n" and "\\" escaped as in C.
// --step: before each repeat, wait for one line on stdin (stop at EOF), so that a driver can
// interleave this loop with its own runs, strictly one at a time.
// Prints one JSON line per repeat: {"t_ms":..,"n_gen":..,"decodes":..,"texts_hex":[..]}
// (t_ms: from the first admission to the last freed sampler, tokenization excluded, as
// llama_cython's last_batch_stats.ms).

#include "llama.h"

#include <chrono>
#include <clocale>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

void quiet_log(ggml_log_level, const char *, void *) {}

struct Options {
    std::string model, prompts;
    int n_predict = 64, n_threads = 2, n_ctx = 4096, n_parallel = 4, n_batch = 512, repeats = 1;
    bool step = false;
};

[[noreturn]] void usage(const char * argv0) {
    std::fprintf(stderr, "usage: %s -m model.gguf -f prompts.txt [-n n_predict] [-t threads] [-c n_ctx]"
                         " [-np n_parallel] [-b n_batch] [-r repeats] [--step]\n", argv0);
    std::exit(2);
}

std::string unescape(const std::string & s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size()) {
            ++i;
            out += s[i] == 'n' ? '\n' : s[i] == 't' ? '\t' : s[i];
        } else {
            out += s[i];
        }
    }
    return out;
}

std::string hex(const std::string & s) {
    static const char * digits = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) {
        out += digits[c >> 4];
        out += digits[c & 15];
    }
    return out;
}

struct Slot {
    int prompt = -1;
    llama_sampler * smpl = nullptr;
    int n_past = 0, n_fed = 0, fed_now = 0, out_idx = -1;
    llama_token pending = 0;
    bool has_pending = false;
};

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    Options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> const char * { if (i + 1 >= argc) usage(argv[0]); return argv[++i]; };
        if (a == "-m") o.model = next();
        else if (a == "-f") o.prompts = next();
        else if (a == "-n") o.n_predict = std::atoi(next());
        else if (a == "-t") o.n_threads = std::atoi(next());
        else if (a == "-c") o.n_ctx = std::atoi(next());
        else if (a == "-np") o.n_parallel = std::atoi(next());
        else if (a == "-b") o.n_batch = std::atoi(next());
        else if (a == "-r") o.repeats = std::atoi(next());
        else if (a == "--step") o.step = true;
        else usage(argv[0]);
    }
    if (o.model.empty() || o.prompts.empty()) usage(argv[0]);

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (!model) { std::fprintf(stderr, "cannot load %s\n", o.model.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = o.n_ctx;
    cp.n_batch = o.n_batch;
    cp.n_ubatch = o.n_batch < 512 ? o.n_batch : 512;
    cp.n_seq_max = o.n_parallel;
    cp.n_threads = o.n_threads;
    cp.n_threads_batch = o.n_threads;
    cp.kv_unified = false;    // as llama_cython: each sequence its own share of the cache
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { std::fprintf(stderr, "cannot create the context\n"); return 1; }
    const int n_ctx_seq = (int) llama_n_ctx_seq(ctx);
    llama_memory_t mem = llama_get_memory(ctx);
    llama_batch_ext * batch = llama_batch_ext_init(ctx);

    std::vector<std::string> prompts;
    {
        std::ifstream in(o.prompts);
        std::string line;
        while (std::getline(in, line)) prompts.push_back(unescape(line));
    }

    for (int rep = 0; rep < o.repeats; ++rep) {
        if (o.step) {
            std::string line;
            if (!std::getline(std::cin, line)) break;
        }
        const size_t n = prompts.size();
        std::vector<std::vector<llama_token>> toks(n);
        for (size_t i = 0; i < n; ++i) {
            const std::string & p = prompts[i];
            int k = -llama_tokenize(vocab, p.c_str(), (int32_t) p.size(), nullptr, 0, true, true);
            toks[i].resize(k);
            llama_tokenize(vocab, p.c_str(), (int32_t) p.size(), toks[i].data(), k, true, true);
        }
        std::vector<std::string> texts(n);
        std::vector<int> n_gen(n, 0);
        std::vector<Slot> slots(o.n_parallel);
        size_t next_prompt = 0, n_done = 0;
        long decodes = 0;
        llama_memory_clear(mem, true);
        const auto t0 = clock_type::now();

        auto end_slot = [&](size_t s) {
            llama_memory_seq_rm(mem, (llama_seq_id) s, -1, -1);
            llama_sampler_free(slots[s].smpl);
            slots[s] = Slot();
            ++n_done;
        };

        while (n_done < n) {
            for (size_t s = 0; s < slots.size(); ++s) {
                if (slots[s].prompt >= 0 || next_prompt >= n) continue;
                llama_memory_seq_rm(mem, (llama_seq_id) s, -1, -1);
                llama_sampler_chain_params scp = llama_sampler_chain_default_params();
                scp.no_perf = true;
                slots[s].smpl = llama_sampler_chain_init(scp);
                llama_sampler_chain_add(slots[s].smpl, llama_sampler_init_greedy());
                slots[s].prompt = (int) next_prompt++;
            }
            llama_batch_ext_clear(batch);
            int used = 0;
            for (size_t s = 0; s < slots.size(); ++s) {
                Slot & sl = slots[s];
                sl.out_idx = -1;
                sl.fed_now = 0;
                if (sl.prompt < 0 || !sl.has_pending) continue;
                const int idx = llama_batch_ext_add_token(batch, (llama_seq_id) s, sl.pending);
                llama_pos pos = sl.n_past;
                llama_batch_ext_set_pos(batch, idx, &pos);
                llama_batch_ext_set_output_logits(batch, idx, true);
                sl.out_idx = idx;
                ++used;
            }
            for (size_t s = 0; s < slots.size(); ++s) {
                Slot & sl = slots[s];
                if (sl.prompt < 0 || sl.has_pending) continue;
                const auto & p = toks[sl.prompt];
                int m = (int) p.size() - sl.n_fed;
                if (m > o.n_batch - used) m = o.n_batch - used;
                if (m <= 0) continue;
                int idx = -1;
                for (int j = 0; j < m; ++j) {
                    idx = llama_batch_ext_add_token(batch, (llama_seq_id) s, p[sl.n_fed + j]);
                    llama_pos pos = sl.n_fed + j;
                    llama_batch_ext_set_pos(batch, idx, &pos);
                }
                if (sl.n_fed + m == (int) p.size()) {
                    llama_batch_ext_set_output_logits(batch, idx, true);
                    sl.out_idx = idx;
                }
                sl.fed_now = m;
                used += m;
            }
            if (used == 0) break;
            if (llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch) != 0) {
                std::fprintf(stderr, "decode failed\n");
                return 1;
            }
            ++decodes;
            for (size_t s = 0; s < slots.size(); ++s) {
                Slot & sl = slots[s];
                if (sl.prompt < 0) continue;
                if (sl.has_pending && sl.out_idx >= 0) {
                    ++sl.n_past;
                    sl.has_pending = false;
                }
                sl.n_fed += sl.fed_now;
                sl.n_past += sl.fed_now;
                if (sl.out_idx < 0) continue;
                const llama_token tok = llama_sampler_sample(sl.smpl, ctx, sl.out_idx);
                if (llama_vocab_is_eog(vocab, tok)) { end_slot(s); continue; }
                const int i = sl.prompt;
                ++n_gen[i];
                char buf[256];
                const int k = llama_token_to_piece(vocab, tok, buf, sizeof(buf), 0, false);
                if (k > 0) texts[i].append(buf, k);
                if (n_gen[i] >= o.n_predict || sl.n_past >= n_ctx_seq) { end_slot(s); continue; }
                sl.pending = tok;
                sl.has_pending = true;
            }
        }
        const double t_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
        long total = 0;
        for (int g : n_gen) total += g;
        std::printf("{\"t_ms\":%.3f,\"n_gen\":%ld,\"decodes\":%ld,\"texts_hex\":[", t_ms, total, decodes);
        for (size_t i = 0; i < n; ++i) std::printf("%s\"%s\"", i ? "," : "", hex(texts[i]).c_str());
        std::printf("]}\n");
        std::fflush(stdout);
    }
    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
