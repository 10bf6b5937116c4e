# Declarations from llama.h, names verbatim; only what llama_cython uses.
#
# Functions that can throw C++ exceptions through the C API are declared
# `except +raise_cpp_error` (_errors.h: std::bad_alloc -> AllocationError, others -> LlamaError; see
# shared/notes/llama-cpp-api-map.md section 4): the tokenizer/vocab accessors use .at(), the
# sampler can throw from a grammar, llama_process/llama_batch_ext_add_* can throw bad_alloc.
# The extension is compiled as C++ so that these become Python exceptions instead of
# std::terminate.
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libcpp cimport bool as cppbool
from llama_cython.includes.ggml cimport ggml_type, ggml_log_callback, ggml_abort_callback

cdef extern from "_errors.h" namespace "llama_cython":
    void raise_cpp_error()


cdef extern from "llama.h" nogil:
    ctypedef int32_t llama_pos
    ctypedef int32_t llama_token
    ctypedef int32_t llama_seq_id

    cdef int LLAMA_DEFAULT_SEED
    cdef int LLAMA_TOKEN_NULL

    struct llama_vocab:
        pass
    struct llama_model:
        pass
    struct llama_context:
        pass
    struct llama_sampler:
        pass
    struct llama_memory_i:
        pass
    ctypedef llama_memory_i * llama_memory_t
    struct llama_batch_ext:
        pass

    ctypedef struct llama_logit_bias:
        llama_token token
        float bias

    ctypedef struct llama_token_data:
        llama_token id
        float logit
        float p

    ctypedef struct llama_token_data_array:
        llama_token_data * data
        size_t size
        int64_t selected
        bint sorted

    enum llama_vocab_type:
        LLAMA_VOCAB_TYPE_NONE
        LLAMA_VOCAB_TYPE_SPM
        LLAMA_VOCAB_TYPE_BPE
        LLAMA_VOCAB_TYPE_WPM
        LLAMA_VOCAB_TYPE_UGM
        LLAMA_VOCAB_TYPE_RWKV
        LLAMA_VOCAB_TYPE_PLAMO2
        LLAMA_VOCAB_TYPE_TEST

    enum llama_pooling_type:
        LLAMA_POOLING_TYPE_UNSPECIFIED
        LLAMA_POOLING_TYPE_NONE
        LLAMA_POOLING_TYPE_MEAN
        LLAMA_POOLING_TYPE_CLS
        LLAMA_POOLING_TYPE_LAST
        LLAMA_POOLING_TYPE_RANK

    enum llama_attention_type:
        LLAMA_ATTENTION_TYPE_UNSPECIFIED
        LLAMA_ATTENTION_TYPE_CAUSAL
        LLAMA_ATTENTION_TYPE_NON_CAUSAL

    enum llama_flash_attn_type:
        LLAMA_FLASH_ATTN_TYPE_AUTO
        LLAMA_FLASH_ATTN_TYPE_DISABLED
        LLAMA_FLASH_ATTN_TYPE_ENABLED

    enum llama_split_mode:
        LLAMA_SPLIT_MODE_NONE
        LLAMA_SPLIT_MODE_LAYER
        LLAMA_SPLIT_MODE_ROW
        LLAMA_SPLIT_MODE_TENSOR

    enum llama_load_mode:
        LLAMA_LOAD_MODE_AUTO
        LLAMA_LOAD_MODE_NONE
        LLAMA_LOAD_MODE_MMAP
        LLAMA_LOAD_MODE_MLOCK
        LLAMA_LOAD_MODE_MMAP_MLOCK
        LLAMA_LOAD_MODE_DIRECT_IO

    enum llama_process_type:
        LLAMA_PROCESS_TYPE_ENCODE
        LLAMA_PROCESS_TYPE_DECODE

    ctypedef cppbool (*llama_progress_callback)(float progress, void * user_data) noexcept

    struct llama_model_params:
        int32_t n_gpu_layers
        llama_split_mode split_mode
        llama_load_mode load_mode
        int32_t main_gpu
        const float * tensor_split
        llama_progress_callback progress_callback
        void * progress_callback_user_data
        bint vocab_only
        bint check_tensors

    struct llama_context_params:
        uint32_t n_ctx
        uint32_t n_batch
        uint32_t n_ubatch
        uint32_t n_seq_max
        int32_t n_threads
        int32_t n_threads_batch
        llama_pooling_type pooling_type
        llama_attention_type attention_type
        llama_flash_attn_type flash_attn_type
        ggml_type type_k
        ggml_type type_v
        ggml_abort_callback abort_callback
        void * abort_callback_data
        bint embeddings
        bint offload_kqv
        bint no_perf
        bint kv_unified

    struct llama_sampler_chain_params:
        bint no_perf

    struct llama_perf_context_data:
        double t_start_ms
        double t_load_ms
        double t_p_eval_ms
        double t_eval_ms
        int32_t n_p_eval
        int32_t n_eval
        int32_t n_reused

    # process-global
    void llama_backend_init()
    void llama_log_set(ggml_log_callback log_callback, void * user_data)
    const char * llama_print_system_info()
    int64_t llama_time_us()
    size_t llama_max_devices()
    size_t llama_max_parallel_sequences()
    bint llama_supports_mmap()
    bint llama_supports_mlock()
    bint llama_supports_gpu_offload()

    # model
    llama_model_params llama_model_default_params()
    llama_model * llama_model_load_from_file(const char * path_model, llama_model_params params)
    void llama_model_free(llama_model * model)
    const llama_vocab * llama_model_get_vocab(const llama_model * model)
    int32_t llama_model_n_ctx_train(const llama_model * model)
    int32_t llama_model_n_embd(const llama_model * model)
    int32_t llama_model_n_embd_out(const llama_model * model)
    uint32_t llama_model_n_cls_out(const llama_model * model)
    int32_t llama_model_n_layer(const llama_model * model)
    int32_t llama_model_n_head(const llama_model * model)
    int32_t llama_model_n_swa(const llama_model * model)

    # quantization (the fields llama_cython sets; the rest keep their defaults)
    enum llama_ftype:
        LLAMA_FTYPE_ALL_F32
    cdef struct llama_model_tensor_override:
        const char * pattern
        ggml_type type
    ctypedef struct llama_model_quantize_params:
        int32_t nthread
        llama_ftype ftype
        ggml_type output_tensor_type
        ggml_type token_embedding_type
        bint allow_requantize
        bint quantize_output_tensor
        const llama_model_tensor_override * tt_overrides
    llama_model_quantize_params llama_model_quantize_default_params()
    uint32_t llama_model_quantize(const char * fname_inp, const char * fname_out,
                                  const llama_model_quantize_params * params) except +raise_cpp_error
    bint llama_model_is_recurrent(const llama_model * model)
    bint llama_model_is_hybrid(const llama_model * model)
    int32_t llama_model_meta_count(const llama_model * model)
    int32_t llama_model_meta_key_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t llama_model_meta_val_str_by_index(const llama_model * model, int32_t i, char * buf, size_t buf_size)
    int32_t llama_model_meta_val_str(const llama_model * model, const char * key, char * buf, size_t buf_size)
    int32_t llama_model_desc(const llama_model * model, char * buf, size_t buf_size)
    uint64_t llama_model_size(const llama_model * model)
    uint64_t llama_model_n_params(const llama_model * model)
    const char * llama_model_chat_template(const llama_model * model, const char * name)
    bint llama_model_has_encoder(const llama_model * model)
    bint llama_model_has_decoder(const llama_model * model)

    # context
    llama_context_params llama_context_default_params()
    llama_context * llama_init_from_model(llama_model * model, llama_context_params params)
    void llama_free(llama_context * ctx)
    uint32_t llama_n_ctx(const llama_context * ctx)
    uint32_t llama_n_ctx_seq(const llama_context * ctx)
    uint32_t llama_n_batch(const llama_context * ctx)
    uint32_t llama_n_ubatch(const llama_context * ctx)
    uint32_t llama_n_seq_max(const llama_context * ctx)
    int32_t llama_n_threads(llama_context * ctx)
    int32_t llama_n_threads_batch(llama_context * ctx)
    void llama_set_n_threads(llama_context * ctx, int32_t n_threads, int32_t n_threads_batch)
    # The C function shares its name with the enum type; Cython needs another name for it.
    llama_pooling_type llama_pooling_type_of "llama_pooling_type"(const llama_context * ctx)
    llama_memory_t llama_get_memory(const llama_context * ctx)
    const llama_model * llama_get_model(const llama_context * ctx)
    void llama_set_abort_callback(llama_context * ctx, ggml_abort_callback abort_callback, void * abort_callback_data)
    float * llama_get_logits_ith(llama_context * ctx, int32_t i)
    float * llama_get_embeddings(llama_context * ctx)
    float * llama_get_embeddings_seq(llama_context * ctx, llama_seq_id seq_id)
    float * llama_get_embeddings_ith(llama_context * ctx, int32_t i)
    llama_perf_context_data llama_perf_context(const llama_context * ctx)
    void llama_perf_context_reset(llama_context * ctx)

    # memory (KV cache)
    void llama_memory_clear(llama_memory_t mem, bint data)
    bint llama_memory_seq_rm(llama_memory_t mem, llama_seq_id seq_id, llama_pos p0, llama_pos p1)
    void llama_memory_seq_cp(llama_memory_t mem, llama_seq_id seq_id_src, llama_seq_id seq_id_dst,
                             llama_pos p0, llama_pos p1) except +raise_cpp_error
    llama_pos llama_memory_seq_pos_min(llama_memory_t mem, llama_seq_id seq_id)
    llama_pos llama_memory_seq_pos_max(llama_memory_t mem, llama_seq_id seq_id)

    # batches (the checked batch API: capacity, token ids and seq ids are validated on add)
    llama_batch_ext * llama_batch_ext_init(llama_context * ctx)
    void llama_batch_ext_free(llama_batch_ext * batch)
    void llama_batch_ext_clear(llama_batch_ext * batch)
    int32_t llama_batch_ext_add_token(llama_batch_ext * batch, llama_seq_id seq_id, llama_token id) except +raise_cpp_error
    bint llama_batch_ext_set_pos(llama_batch_ext * batch, int32_t idx, const llama_pos * pos)
    bint llama_batch_ext_set_output_logits(llama_batch_ext * batch, int32_t idx, bint value)
    int32_t llama_process(llama_context * ctx, llama_process_type type, llama_batch_ext * batch) except +raise_cpp_error

    # vocabulary
    # Same clash as llama_pooling_type: the C name is given in quotes.
    llama_vocab_type llama_vocab_type_of "llama_vocab_type"(const llama_vocab * vocab)
    int32_t llama_vocab_n_tokens(const llama_vocab * vocab)
    bint llama_vocab_is_eog(const llama_vocab * vocab, llama_token token)
    llama_token llama_vocab_bos(const llama_vocab * vocab)
    llama_token llama_vocab_eos(const llama_vocab * vocab)
    llama_token llama_vocab_sep(const llama_vocab * vocab)
    bint llama_vocab_get_add_bos(const llama_vocab * vocab)
    bint llama_vocab_get_add_eos(const llama_vocab * vocab)
    bint llama_vocab_get_add_sep(const llama_vocab * vocab)
    llama_token llama_vocab_eot(const llama_vocab * vocab)
    llama_token llama_vocab_nl(const llama_vocab * vocab)
    llama_token llama_vocab_pad(const llama_vocab * vocab)
    llama_token llama_vocab_mask(const llama_vocab * vocab)
    llama_token llama_vocab_fim_pre(const llama_vocab * vocab)
    llama_token llama_vocab_fim_suf(const llama_vocab * vocab)
    llama_token llama_vocab_fim_mid(const llama_vocab * vocab)
    llama_token llama_vocab_fim_pad(const llama_vocab * vocab)
    llama_token llama_vocab_fim_rep(const llama_vocab * vocab)
    llama_token llama_vocab_fim_sep(const llama_vocab * vocab)
    bint llama_vocab_is_control(const llama_vocab * vocab, llama_token token) except +raise_cpp_error
    # id_to_token.at(id): a bad id throws std::out_of_range
    const char * llama_vocab_get_text(const llama_vocab * vocab, llama_token token) except +raise_cpp_error
    float llama_vocab_get_score(const llama_vocab * vocab, llama_token token) except +raise_cpp_error
    uint32_t llama_vocab_get_attr "(uint32_t) llama_vocab_get_attr"(const llama_vocab * vocab, llama_token token) except +raise_cpp_error

    # tokenization ("The API is thread-safe")
    int32_t llama_tokenize(const llama_vocab * vocab, const char * text, int32_t text_len,
                           llama_token * tokens, int32_t n_tokens_max,
                           bint add_special, bint parse_special) except +raise_cpp_error
    int32_t llama_token_to_piece(const llama_vocab * vocab, llama_token token, char * buf,
                                 int32_t length, int32_t lstrip, bint special) except +raise_cpp_error
    int32_t llama_detokenize(const llama_vocab * vocab, const llama_token * tokens, int32_t n_tokens,
                             char * text, int32_t text_len_max,
                             bint remove_special, bint unparse_special) except +raise_cpp_error

    # sampling
    llama_sampler_chain_params llama_sampler_chain_default_params()
    llama_sampler * llama_sampler_chain_init(llama_sampler_chain_params params) except +raise_cpp_error
    void llama_sampler_chain_add(llama_sampler * chain, llama_sampler * smpl) except +raise_cpp_error
    int32_t llama_sampler_chain_n(const llama_sampler * chain)
    llama_sampler * llama_sampler_init_greedy() except +raise_cpp_error
    llama_sampler * llama_sampler_init_dist(uint32_t seed) except +raise_cpp_error
    llama_sampler * llama_sampler_init_top_k(int32_t k) except +raise_cpp_error
    llama_sampler * llama_sampler_init_top_p(float p, size_t min_keep) except +raise_cpp_error
    llama_sampler * llama_sampler_init_min_p(float p, size_t min_keep) except +raise_cpp_error
    llama_sampler * llama_sampler_init_typical(float p, size_t min_keep) except +raise_cpp_error
    llama_sampler * llama_sampler_init_logit_bias(int32_t n_vocab, int32_t n_logit_bias,
                                                  const llama_logit_bias * logit_bias) except +raise_cpp_error
    llama_sampler * llama_sampler_init_temp(float t) except +raise_cpp_error
    llama_sampler * llama_sampler_init_penalties(int32_t n_vocab, int32_t penalty_last_n, float penalty_repeat,
                                                 float penalty_freq, float penalty_present) except +raise_cpp_error
    llama_token llama_sampler_sample(llama_sampler * smpl, llama_context * ctx, int32_t idx) except +raise_cpp_error
    void llama_sampler_apply(llama_sampler * smpl, llama_token_data_array * cur_p) except +raise_cpp_error
    void llama_sampler_accept(llama_sampler * smpl, llama_token token) except +raise_cpp_error
    void llama_sampler_reset(llama_sampler * smpl)
    llama_sampler * llama_sampler_clone(const llama_sampler * smpl) except +raise_cpp_error
    llama_sampler * llama_sampler_init_grammar(const llama_vocab * vocab, const char * grammar_str,
                                               const char * grammar_root) except +raise_cpp_error
    size_t llama_state_get_size(llama_context * ctx) except +raise_cpp_error
    size_t llama_state_get_data(llama_context * ctx, uint8_t * dst, size_t size) except +raise_cpp_error
    size_t llama_state_set_data(llama_context * ctx, const uint8_t * src, size_t size) except +raise_cpp_error
    void llama_sampler_free(llama_sampler * smpl)


# Every tokenization of the package goes through this one (_tokenize.h): llama_tokenize, run on
# a thread with a stack large enough for the text's longest run of characters.
cdef extern from "_tokenize.h" namespace "llama_cython" nogil:
    int32_t safe_tokenize "llama_cython::tokenize"(const llama_vocab * vocab, const char * text,
                                                   int32_t text_len, llama_token * tokens,
                                                   int32_t n_tokens_max, bint add_special,
                                                   bint parse_special) except +raise_cpp_error
    int64_t longest_match_bound(const char * text, int64_t n)
    void guard_spaces(const llama_vocab * vocab, bint on) except +raise_cpp_error
    void unguard_spaces(const llama_vocab * vocab)
