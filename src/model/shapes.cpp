#include "model/shapes.h"

namespace kvs {

const std::vector<model_shape>& model_shapes() {
    // name, arch, n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train, rope_freq_base,
    // rope_neox, qkv_bias, tied_output, rms_eps, default_vocab
    static const std::vector<model_shape> shapes = {
        {"stories260k", "llama", 512, 64, 5, 8, 4, 172, 512, 10000.0f, false, false, false, 1e-5f,
         "models/stories260K.gguf"},
        {"tinyllama-1.1b", "llama", 32000, 2048, 22, 32, 4, 5632, 2048, 10000.0f, false, false, false, 1e-5f,
         "vocab/ggml-vocab-llama-spm.gguf"},
        {"llama-2-7b", "llama", 32000, 4096, 32, 32, 32, 11008, 4096, 10000.0f, false, false, false, 1e-5f,
         "vocab/ggml-vocab-llama-spm.gguf"},
        {"llama-3-8b", "llama", 128256, 4096, 32, 32, 8, 14336, 8192, 500000.0f, false, false, false, 1e-5f,
         "vocab/ggml-vocab-gpt-2.gguf"},
        {"qwen2-0.5b", "qwen2", 151936, 896, 24, 14, 2, 4864, 32768, 1000000.0f, true, true, true, 1e-6f,
         "vocab/ggml-vocab-gpt-2.gguf"},
        {"smollm-135m", "llama", 49152, 576, 30, 9, 3, 1536, 2048, 10000.0f, false, false, true, 1e-5f,
         "vocab/ggml-vocab-starcoder.gguf"},
    };
    return shapes;
}

const model_shape* find_model_shape(std::string_view name) {
    for (const model_shape& s : model_shapes())
        if (name == s.name) return &s;
    return nullptr;
}

std::string model_shape_names() {
    std::string out;
    for (const model_shape& s : model_shapes()) out += (out.empty() ? "" : ", ") + std::string(s.name);
    return out;
}

int64_t model_shape::n_params() const {
    int64_t per_layer = 2 * n_embd                      // attn_norm, ffn_norm
                        + 2 * n_embd * n_embd           // attn_q, attn_output
                        + 2 * n_embd * n_embd_kv()      // attn_k, attn_v
                        + 3 * n_embd * n_ff;            // ffn_gate, ffn_up, ffn_down
    if (qkv_bias) per_layer += n_embd + 2 * n_embd_kv();
    return n_vocab * n_embd * (tied_output ? 1 : 2) + n_embd + n_layer * per_layer;
}

int32_t llama_ftype_of(dtype t) {
    switch (t) {
        case dtype::f32: return 0;
        case dtype::f16: return 1;
        case dtype::q4_0: return 2;
        case dtype::q4_1: return 3;
        case dtype::q8_0: return 7;
        case dtype::bf16: return 32;
        default: return -1;
    }
}

dtype weight_dtype_for(std::string_view name, int n_dims, int64_t row_length, dtype target) {
    constexpr std::string_view suffix = ".weight";
    bool is_weight = name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
    if (n_dims != 2 || !is_weight) return dtype::f32;
    return row_length % dtype_info(target).block_size == 0 ? target : dtype::f16;
}

}  // namespace kvs
