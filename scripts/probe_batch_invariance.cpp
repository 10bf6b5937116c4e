// Probe for issue 11 (determinism across batching): is a sequence's greedy output the same
// decoded alone and decoded beside others (one unified KV cache, all prompts in one batch,
// then one token of each sequence per decode)?
//
//   python -c "import sys; sys.path.insert(0, 'scripts'); import build_native, pathlib; \
//              print(build_native.build_program('probe-batch', pathlib.Path('scripts/probe_batch_invariance.cpp')))"
//   <exe> MODEL.gguf FLASH_ATTN(0|1) N_SEQ(1..8)
//
// Seen on a 2-core AMD EPYC (Zen 5) VM, llama.cpp 0c1e57098b, 32 greedy tokens each:
//   SmolLM2 Q4_1, fa=1: 2, 4, 8 sequences all identical, first-step logits bit-equal;
//   SmolLM2 Q4_1, fa=0: first-step logits bit-equal, but 0/2, 0/4, 3/8 sequences identical
//     (other sequences' cells in the KV cache change the reduction grouping of the softmax);
//   Gemma 3 Q4_K_M, 4 sequences: fa=1 2/4 identical (first-step logits differ by 0.99),
//     fa=0 1/4 (1.22): the prompt's batch shape already changes its logits.
#include "llama.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cmath>
#include <string>
#include <vector>
static std::vector<llama_token> tok(const llama_vocab * v, const std::string & s) {
    std::vector<llama_token> out(s.size() + 16);
    int n = llama_tokenize(v, s.c_str(), s.size(), out.data(), out.size(), true, true);
    out.resize(n); return out;
}
static void add(llama_batch & b, llama_token t, llama_pos p, llama_seq_id s, bool logits) {
    b.token[b.n_tokens] = t; b.pos[b.n_tokens] = p; b.n_seq_id[b.n_tokens] = 1;
    b.seq_id[b.n_tokens][0] = s; b.logits[b.n_tokens] = logits; b.n_tokens++;
}
static llama_token argmax(const float * l, int n) { int best = 0; for (int i = 1; i < n; i++) if (l[i] > l[best]) best = i; return best; }
int main(int argc, char ** argv) {
    const char * path = argv[1]; int fa = atoi(argv[2]); int nseq = atoi(argv[3]); int ntok = 32;
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(path, mp);
    const llama_vocab * v = llama_model_get_vocab(model);
    int n_vocab = llama_vocab_n_tokens(v);
    auto cp = llama_context_default_params();
    cp.n_ctx = 4096; cp.n_batch = 512; cp.n_seq_max = 8; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.kv_unified = true;
    cp.flash_attn_type = fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(model, cp);
    const char * prompts[] = {"The history of the printing press begins in", "Write a short poem about the sea:",
        "def fibonacci(n):", "Three reasons to learn Python are", "Paris is the capital of", "Once upon a time, in a small village,",
        "The quick brown fox", "Explain photosynthesis in simple terms:"};
    std::vector<std::vector<llama_token>> P; for (int i = 0; i < 8; i++) P.push_back(tok(v, prompts[i]));
    llama_batch b = llama_batch_init(2048, 0, 1);
    // solo runs
    std::vector<std::vector<llama_token>> solo(nseq);
    std::vector<std::vector<float>> solo_logits(nseq);
    for (int s = 0; s < nseq; s++) {
        llama_memory_clear(llama_get_memory(ctx), true);
        b.n_tokens = 0; for (size_t j = 0; j < P[s].size(); j++) add(b, P[s][j], j, 0, j + 1 == P[s].size());
        llama_decode(ctx, b); llama_pos pos = P[s].size();
        for (int t = 0; t < ntok; t++) {
            const float * l = llama_get_logits_ith(ctx, -1);
            if (t == 0) solo_logits[s].assign(l, l + n_vocab);
            llama_token x = argmax(l, n_vocab); solo[s].push_back(x);
            b.n_tokens = 0; add(b, x, pos++, 0, true); llama_decode(ctx, b);
        }
    }
    // batched run: all prompts in one batch, then one token of each per step
    llama_memory_clear(llama_get_memory(ctx), true);
    b.n_tokens = 0; std::vector<int> idx(nseq); std::vector<llama_pos> pos(nseq);
    for (int s = 0; s < nseq; s++) { for (size_t j = 0; j < P[s].size(); j++) add(b, P[s][j], j, s, j + 1 == P[s].size()); idx[s] = b.n_tokens - 1; pos[s] = P[s].size(); }
    llama_decode(ctx, b);
    std::vector<std::vector<llama_token>> bat(nseq); double maxd = 0;
    for (int t = 0; t < ntok; t++) {
        std::vector<llama_token> next(nseq);
        for (int s = 0; s < nseq; s++) {
            const float * l = llama_get_logits_ith(ctx, idx[s]);
            if (t == 0) for (int k = 0; k < n_vocab; k++) maxd = fmax(maxd, fabs(l[k] - solo_logits[s][k]));
            next[s] = argmax(l, n_vocab); bat[s].push_back(next[s]);
        }
        b.n_tokens = 0; for (int s = 0; s < nseq; s++) { add(b, next[s], pos[s]++, s, true); idx[s] = b.n_tokens - 1; }
        llama_decode(ctx, b);
    }
    int same = 0; for (int s = 0; s < nseq; s++) same += bat[s] == solo[s];
    printf("fa=%d nseq=%d: %d/%d sequences identical over %d tokens; first-step max logit diff %.3g\n", fa, nseq, same, nseq, ntok, maxd);
    return 0;
}
