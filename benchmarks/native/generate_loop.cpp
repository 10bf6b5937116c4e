// A plain C++ generation loop on llama.h: the reference that benchmarks/bench_generate.py
// measures llama_cython's Context.generate and Context.generate_stream against.
//
// It does the same work as llama_cython's C loop (llama_cython/_generate.pxi), call for call:
//   tokenize the prompt (add_special, parse_special) -> build the sampler chain ->
//   llama_memory_clear -> decode the prompt in chunks of n_batch (logits for the last token)
//   -> loop { sample -> stop on EOG -> token_to_piece appended to a std::string ->
//             stop after n_predict tokens -> decode the token }
// and frees the sampler, once per repeat. The model and the context are created once.
//
//   generate_loop -m model.gguf -p prompt -n n_predict -t threads -c n_ctx
//                 [--temp T --top-k K --top-p P --min-p M --repeat-penalty R --repeat-last-n N
//                  --seed S] [-r repeats] [--step]
//
// --step: before each repeat, wait for one line on stdin (stop at EOF), so that a driver can
// interleave this loop with its own runs, strictly one at a time, in one long-lived process.
//
// Prints one JSON line per repeat on stdout:
//   {"n_prompt":..,"n_gen":..,"t_prompt_ms":..,"t_gen_ms":..,"t_total_ms":..,"text_bytes":..,
//    "text_hex":"..","finish":..,"tokens":[..]}
// (text_hex: the generated text's bytes, made after the timed span)
// t_prompt_ms: memory clear + prompt decode; t_gen_ms: everything after the prompt (the same
// span llama_cython's last_stats.generation_ms covers); t_total_ms: the whole request, from
// tokenization to the freed sampler (what a Python caller's wall time around generate covers,
// less Python). Timings come from std::chrono::steady_clock.

#include "llama.h"

#include <chrono>
#include <clocale>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

double ms_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

void quiet_log(ggml_log_level, const char *, void *) {}

struct Options {
    std::string model;
    std::string prompt = "Hello";
    int n_predict = 128;
    int n_threads = 2;
    int n_ctx = 2048;
    int repeats = 1;
    float temp = 0.0f;  // 0: greedy
    int top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    int repeat_last_n = 64;
    uint32_t seed = LLAMA_DEFAULT_SEED;
    bool step = false;
};

[[noreturn]] void usage(const char * argv0) {
    std::fprintf(stderr,
                 "usage: %s -m model.gguf [-p prompt] [-n n_predict] [-t threads] [-c n_ctx] [-r repeats]\n"
                 "       [--temp T] [--top-k K] [--top-p P] [--min-p M] [--repeat-penalty R]\n"
                 "       [--repeat-last-n N] [--seed S] [--step]\n",
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
        if (i + 1 >= argc) {
            usage(argv[0]);
        }
        const char * v = argv[++i];
        if (a == "-m") {
            o.model = v;
        } else if (a == "-p") {
            o.prompt = v;
        } else if (a == "-n") {
            o.n_predict = std::atoi(v);
        } else if (a == "-t") {
            o.n_threads = std::atoi(v);
        } else if (a == "-c") {
            o.n_ctx = std::atoi(v);
        } else if (a == "-r") {
            o.repeats = std::atoi(v);
        } else if (a == "--temp") {
            o.temp = std::strtof(v, nullptr);
        } else if (a == "--top-k") {
            o.top_k = std::atoi(v);
        } else if (a == "--top-p") {
            o.top_p = std::strtof(v, nullptr);
        } else if (a == "--min-p") {
            o.min_p = std::strtof(v, nullptr);
        } else if (a == "--repeat-penalty") {
            o.repeat_penalty = std::strtof(v, nullptr);
        } else if (a == "--repeat-last-n") {
            o.repeat_last_n = std::atoi(v);
        } else if (a == "--seed") {
            o.seed = static_cast<uint32_t>(std::strtoul(v, nullptr, 10));
        } else {
            usage(argv[0]);
        }
    }
    if (o.model.empty() || o.n_predict < 1 || o.n_threads < 1 || o.repeats < 1) {
        usage(argv[0]);
    }
    return o;
}

// The same chain as llama_cython's _build_sampler.
llama_sampler * make_sampler(const Options & o, int32_t n_vocab) {
    llama_sampler_chain_params cp = llama_sampler_chain_default_params();
    cp.no_perf = true;
    llama_sampler * chain = llama_sampler_chain_init(cp);
    if (o.repeat_penalty != 1.0f && o.repeat_last_n != 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_penalties(n_vocab, o.repeat_last_n, o.repeat_penalty, 0.0f, 0.0f));
    }
    if (o.temp <= 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        return chain;
    }
    if (o.top_k > 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(o.top_k));
    }
    if (o.top_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(o.top_p, 1));
    }
    if (o.min_p > 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_min_p(o.min_p, 1));
    }
    llama_sampler_chain_add(chain, llama_sampler_init_temp(o.temp));
    llama_sampler_chain_add(chain, llama_sampler_init_dist(o.seed));
    return chain;
}

// Decode n tokens at positions n_past.. in chunks of n_batch, logits for the last one only.
int decode_tokens(llama_context * ctx, llama_batch_ext * batch, const llama_token * toks, int32_t n,
                  int32_t n_batch, int32_t & n_past) {
    for (int32_t i = 0; i < n;) {
        const int32_t m = (n - i < n_batch) ? n - i : n_batch;
        llama_batch_ext_clear(batch);
        int32_t idx = -1;
        for (int32_t j = 0; j < m; ++j) {
            idx = llama_batch_ext_add_token(batch, 0, toks[i + j]);
            if (idx < 0) {
                return -1;
            }
            const llama_pos pos = n_past + j;
            llama_batch_ext_set_pos(batch, idx, &pos);
        }
        if (i + m == n) {
            llama_batch_ext_set_output_logits(batch, idx, true);
        }
        const int32_t rc = llama_process(ctx, LLAMA_PROCESS_TYPE_DECODE, batch);
        if (rc != 0) {
            return rc;
        }
        n_past += m;
        i += m;
    }
    return 0;
}

void append_piece(const llama_vocab * vocab, llama_token tok, std::string & out) {
    char small[256];
    int32_t n = llama_token_to_piece(vocab, tok, small, sizeof(small), 0, false);
    if (n >= 0) {
        out.append(small, n);
        return;
    }
    std::string big(static_cast<size_t>(-n), '\0');
    n = llama_token_to_piece(vocab, tok, &big[0], static_cast<int32_t>(big.size()), 0, false);
    if (n > 0) {
        out.append(big.data(), n);
    }
}

}  // namespace

int main(int argc, char ** argv) {
    std::setlocale(LC_NUMERIC, "C");
    const Options o = parse_args(argc, argv);

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();

    llama_model_params mp = llama_model_default_params();
    mp.progress_callback = nullptr;
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (model == nullptr) {
        std::fprintf(stderr, "error: unable to load model %s\n", o.model.c_str());
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(o.n_ctx);
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = 1;
    cp.n_threads = o.n_threads;
    cp.n_threads_batch = o.n_threads;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_AUTO;
    cp.no_perf = true;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (ctx == nullptr) {
        std::fprintf(stderr, "error: failed to create the context\n");
        return 1;
    }
    llama_batch_ext * batch = llama_batch_ext_init(ctx);
    const int32_t n_batch = static_cast<int32_t>(llama_n_batch(ctx));
    const int32_t n_ctx_seq = static_cast<int32_t>(llama_n_ctx_seq(ctx));

    for (int rep = 0; rep < o.repeats; ++rep) {
        if (o.step) {
            char line[64];
            if (std::fgets(line, sizeof(line), stdin) == nullptr) {
                break;
            }
        }
        const auto t0 = clock_type::now();

        // tokenize into bytes + 16 slots, retrying with the exact size, as llama_cython does
        std::vector<llama_token> prompt(o.prompt.size() + 16);
        int32_t n_prompt = llama_tokenize(vocab, o.prompt.data(), static_cast<int32_t>(o.prompt.size()),
                                          prompt.data(), static_cast<int32_t>(prompt.size()), true, true);
        if (n_prompt < 0) {
            prompt.resize(static_cast<size_t>(-n_prompt));
            n_prompt = llama_tokenize(vocab, o.prompt.data(), static_cast<int32_t>(o.prompt.size()),
                                      prompt.data(), static_cast<int32_t>(prompt.size()), true, true);
        }
        if (n_prompt <= 0 || n_prompt > n_ctx_seq) {
            std::fprintf(stderr, "error: bad prompt (%d tokens, context %d)\n", n_prompt, n_ctx_seq);
            return 1;
        }
        prompt.resize(static_cast<size_t>(n_prompt));

        llama_sampler * smpl = make_sampler(o, n_vocab);
        std::vector<llama_token> out_tokens;
        std::string out_text;
        const char * finish = "length";

        const auto t_start = clock_type::now();
        llama_memory_clear(llama_get_memory(ctx), true);
        int32_t n_past = 0;
        if (decode_tokens(ctx, batch, prompt.data(), n_prompt, n_batch, n_past) != 0) {
            std::fprintf(stderr, "error: prompt decode failed\n");
            return 1;
        }
        const auto t_prompt = clock_type::now();
        int32_t n_gen = 0;
        for (;;) {
            llama_token tok = llama_sampler_sample(smpl, ctx, -1);
            if (llama_vocab_is_eog(vocab, tok)) {
                finish = "stop";
                break;
            }
            out_tokens.push_back(tok);
            ++n_gen;
            append_piece(vocab, tok, out_text);
            if (n_gen >= o.n_predict || n_past >= n_ctx_seq) {
                break;
            }
            if (decode_tokens(ctx, batch, &tok, 1, n_batch, n_past) != 0) {
                std::fprintf(stderr, "error: decode failed\n");
                return 1;
            }
        }
        const auto t_end = clock_type::now();
        llama_sampler_free(smpl);
        const auto t_done = clock_type::now();

        std::string toks_json;
        for (size_t i = 0; i < out_tokens.size(); ++i) {
            if (i) {
                toks_json += ',';
            }
            toks_json += std::to_string(out_tokens[i]);
        }
        // the text's bytes in hex: exact, whatever they are (a character cut at n_predict...)
        static const char hexdigits[] = "0123456789abcdef";
        std::string text_hex;
        text_hex.reserve(out_text.size() * 2);
        for (unsigned char ch : out_text) {
            text_hex += hexdigits[ch >> 4];
            text_hex += hexdigits[ch & 15];
        }
        std::printf("{\"n_prompt\":%d,\"n_gen\":%d,\"t_prompt_ms\":%.4f,\"t_gen_ms\":%.4f,\"t_total_ms\":%.4f,"
                    "\"text_bytes\":%zu,\"text_hex\":\"%s\",\"finish\":\"%s\",\"tokens\":[%s]}\n",
                    n_prompt, n_gen, ms_between(t_start, t_prompt), ms_between(t_prompt, t_end),
                    ms_between(t0, t_done), out_text.size(), text_hex.c_str(), finish, toks_json.c_str());
        std::fflush(stdout);
    }

    llama_batch_ext_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
