# Declarations from ggml.h and gguf.h, names verbatim; only what llama_cython uses.
from libc.stdint cimport int32_t, int64_t, uint32_t
from libcpp cimport bool as cppbool  # C callbacks return C++ bool; bint would be int

cdef extern from "ggml.h" nogil:
    enum ggml_log_level:
        GGML_LOG_LEVEL_NONE
        GGML_LOG_LEVEL_DEBUG
        GGML_LOG_LEVEL_INFO
        GGML_LOG_LEVEL_WARN
        GGML_LOG_LEVEL_ERROR
        GGML_LOG_LEVEL_CONT

    ctypedef void (*ggml_log_callback)(ggml_log_level level, const char * text, void * user_data) noexcept
    ctypedef cppbool (*ggml_abort_callback)(void * data) noexcept

    enum ggml_type:
        GGML_TYPE_F32
        GGML_TYPE_F16
        GGML_TYPE_Q4_0
        GGML_TYPE_Q4_1
        GGML_TYPE_Q5_0
        GGML_TYPE_Q5_1
        GGML_TYPE_Q8_0
        GGML_TYPE_IQ4_NL
        GGML_TYPE_BF16
        GGML_TYPE_I8
        GGML_TYPE_I16
        GGML_TYPE_I32
        GGML_TYPE_I64
        GGML_TYPE_F64

    const char * ggml_type_name(ggml_type type)
    bint ggml_is_quantized(ggml_type type)


cdef extern from "gguf.h" nogil:
    struct gguf_context:
        pass

    struct gguf_init_params:
        bint no_alloc
        void ** ctx   # struct ggml_context ** in C; always NULL here

    enum gguf_type:
        GGUF_TYPE_UINT8
        GGUF_TYPE_INT8
        GGUF_TYPE_UINT16
        GGUF_TYPE_INT16
        GGUF_TYPE_UINT32
        GGUF_TYPE_INT32
        GGUF_TYPE_FLOAT32
        GGUF_TYPE_BOOL
        GGUF_TYPE_STRING
        GGUF_TYPE_ARRAY
        GGUF_TYPE_UINT64
        GGUF_TYPE_INT64
        GGUF_TYPE_FLOAT64

    gguf_context * gguf_init_from_file(const char * fname, gguf_init_params params)
    void gguf_free(gguf_context * ctx)
    int64_t gguf_get_n_kv(const gguf_context * ctx)
    int64_t gguf_find_key(const gguf_context * ctx, const char * key)
    const char * gguf_get_key(const gguf_context * ctx, int64_t key_id)
    float gguf_get_val_f32(const gguf_context * ctx, int64_t key_id)
    gguf_type gguf_get_arr_type(const gguf_context * ctx, int64_t key_id)
    size_t gguf_get_arr_n(const gguf_context * ctx, int64_t key_id)
    const char * gguf_get_arr_str(const gguf_context * ctx, int64_t key_id, size_t i)
    gguf_type gguf_get_kv_type(const gguf_context * ctx, int64_t key_id)
    const char * gguf_get_val_str(const gguf_context * ctx, int64_t key_id)
    uint32_t gguf_get_val_u32(const gguf_context * ctx, int64_t key_id)
    int32_t gguf_get_val_i32(const gguf_context * ctx, int64_t key_id)
    int64_t gguf_find_tensor(const gguf_context * ctx, const char * name)
    int64_t gguf_get_n_tensors(const gguf_context * ctx)
    const char * gguf_get_tensor_name(const gguf_context * ctx, int64_t tensor_id)
    ggml_type gguf_get_tensor_type(const gguf_context * ctx, int64_t tensor_id)
