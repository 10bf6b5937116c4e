// Probe for issue 11, item 2 (shared prefixes): decode a prefix in sequence 0, copy it to
// sequence 1 with llama_memory_seq_cp, decode the rest there, and compare the last logits with
// the whole prompt decoded at once in sequence 2. argv: MODEL.gguf KV_UNIFIED(0|1).
// Build: python -c "import sys; sys.path.insert(0, 'scripts'); import build_native, pathlib; \
//        print(build_native.build_program('probe-seq-cp', pathlib.Path('scripts/probe_seq_cp.cpp')))"
// Seen (2-core AMD EPYC VM, llama.cpp 0c1e57098b): seq_cp works with kv_unified 0 and 1 (the
// decode after it succeeds, positions continue); SmolLM2 Q4_1: logits bit-equal to the fresh
// decode; Gemma 3 Q4_K_M: max difference 0.855 (the suffix's batch shape, not the copy).
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <string>
#include <vector>
static std::vector<llama_token> tok(const llama_vocab * v, const std::string & s, bool add) {
    std::vector<llama_token> out(s.size() + 16);
    int n = llama_tokenize(v, s.c_str(), s.size(), out.data(), out.size(), add, true);
    out.resize(n); return out;
}
static void add(llama_batch & b, llama_token t, llama_pos p, llama_seq_id s, bool logits) {
    b.token[b.n_tokens] = t; b.pos[b.n_tokens] = p; b.n_seq_id[b.n_tokens] = 1;
    b.seq_id[b.n_tokens][0] = s; b.logits[b.n_tokens] = logits; b.n_tokens++;
}
int main(int argc, char ** argv) {
    int unified = atoi(argv[2]);
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    const llama_vocab * v = llama_model_get_vocab(model);
    int nv = llama_vocab_n_tokens(v);
    auto cp = llama_context_default_params();
    cp.n_ctx = 2048; cp.n_batch = 512; cp.n_seq_max = 4; cp.kv_unified = unified; cp.n_threads = 2; cp.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cp);
    llama_memory_t mem = llama_get_memory(ctx);
    std::string sys = "You are a helpful assistant who answers questions about geography in one short sentence. ";
    auto P = tok(v, sys, true);
    auto Q = tok(v, "What is the capital of Italy?", false);
    llama_batch b = llama_batch_init(1024, 0, 1);
    // fresh: P+Q in seq 2
    b.n_tokens = 0; for (size_t j = 0; j < P.size(); j++) add(b, P[j], j, 2, false);
    for (size_t j = 0; j < Q.size(); j++) add(b, Q[j], P.size() + j, 2, j + 1 == Q.size());
    int rc = llama_decode(ctx, b); std::vector<float> fresh(llama_get_logits_ith(ctx, -1), llama_get_logits_ith(ctx, -1) + nv);
    // shared: P in seq 0, copy to seq 1, Q in seq 1
    b.n_tokens = 0; for (size_t j = 0; j < P.size(); j++) add(b, P[j], j, 0, false);
    rc |= llama_decode(ctx, b);
    llama_memory_seq_cp(mem, 0, 1, -1, -1);
    b.n_tokens = 0; for (size_t j = 0; j < Q.size(); j++) add(b, Q[j], P.size() + j, 1, j + 1 == Q.size());
    int rc2 = llama_decode(ctx, b);
    const float * l = llama_get_logits_ith(ctx, -1); double md = 0; int a1 = 0, a2 = 0;
    for (int k = 0; k < nv; k++) { md = fmax(md, fabs(l[k] - fresh[k])); if (l[k] > l[a1]) a1 = k; if (fresh[k] > fresh[a2]) a2 = k; }
    printf("unified=%d rc=%d rc2=%d pos_max(seq1)=%d maxdiff=%.3g argmax %d vs %d\n", unified, rc, rc2, (int) llama_memory_seq_pos_max(mem, 1), md, a1, a2);
    return 0;
}
