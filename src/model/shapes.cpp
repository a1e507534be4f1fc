#include "model/shapes.h"

#include <algorithm>

namespace kvs {

const std::vector<model_shape>& model_shapes() {
    // name, arch, n_vocab, n_embd, n_layer, n_head, n_head_kv, n_ff, n_ctx_train, rope_freq_base,
    // rope_neox, qkv_bias, tied_output, rms_eps, default_vocab[, n_layer_self, sliding_window (yoco)]
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
        // YOCO decoder-decoders: TinyLlama-1.1B's sizes split 11/11 (a 32K-token context: the
        // self-decoder's cache is W tokens, the cross-decoder's one global K/V), and a test-size
        // model in stories260K's sizes and vocabulary split 3/3.
        {"yoco-1.1b", "yoco", 32000, 2048, 22, 32, 4, 5632, 32768, 10000.0f, false, false, false, 1e-5f,
         "vocab/ggml-vocab-llama-spm.gguf", 11, 1024},
        {"yoco-tiny", "yoco", 512, 64, 6, 8, 4, 172, 512, 10000.0f, false, false, false, 1e-5f, "models/stories260K.gguf",
         3, 32},
        // DeepSeek-V2-Lite (15.7B parameters, 2.4B active): MLA without a query bottleneck, 64
        // routed experts (6 per token) + 2 shared, the first layer dense; YaRN x40 over 4K.
        {.name = "deepseek-v2-lite", .arch = "deepseek2", .n_vocab = 102400, .n_embd = 2048, .n_layer = 27, .n_head = 16,
         .n_head_kv = 16, .n_ff = 10944, .n_ctx_train = 163840, .rope_freq_base = 10000.0f, .rope_neox = false,
         .qkv_bias = false, .tied_output = false, .rms_eps = 1e-6f, .default_vocab = "vocab/ggml-vocab-deepseek-coder.gguf",
         .q_lora = 0, .kv_lora = 512, .qk_nope = 128, .qk_rope = 64, .v_head = 128, .n_expert = 64, .n_expert_used = 6,
         .n_expert_shared = 2, .n_ff_exp = 1408, .n_layer_dense_lead = 1, .expert_weights_scale = 1.0f,
         .yarn_factor = 40.0f, .yarn_orig_ctx = 4096, .yarn_log_mul = 0.0707f},
        // A test-size DeepSeek-V2 in stories260K's vocabulary: the query bottleneck on (q_lora 32),
        // 3 layers of which 1 dense, 8 experts (2 per token) + 1 shared, no YaRN; the expert
        // weight scale is not 1, so that its multiplication is exercised.
        {.name = "deepseek-v2-tiny", .arch = "deepseek2", .n_vocab = 512, .n_embd = 64, .n_layer = 3, .n_head = 4,
         .n_head_kv = 4, .n_ff = 96, .n_ctx_train = 512, .rope_freq_base = 10000.0f, .rope_neox = false, .qkv_bias = false,
         .tied_output = false, .rms_eps = 1e-6f, .default_vocab = "models/stories260K.gguf", .q_lora = 32, .kv_lora = 32,
         .qk_nope = 16, .qk_rope = 8, .v_head = 16, .n_expert = 8, .n_expert_used = 2, .n_expert_shared = 1, .n_ff_exp = 32,
         .n_layer_dense_lead = 1, .expert_weights_scale = 2.0f},
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

namespace {

// DeepSeek-V2's weight count (model_shape::deepseek2()).
int64_t deepseek2_params(const model_shape& s) {
    const int64_t E = s.n_embd, H = s.n_head, qk = s.qk_nope + s.qk_rope;
    int64_t attn = 2 * E;                                              // attn_norm, ffn_norm
    attn += s.q_lora > 0 ? E * s.q_lora + s.q_lora + s.q_lora * H * qk  // attn_q_a, attn_q_a_norm, attn_q_b
                         : E * H * qk;                                  // attn_q
    attn += E * (s.kv_lora + s.qk_rope) + s.kv_lora                     // attn_kv_a_mqa, attn_kv_a_norm
            + s.kv_lora * H * (s.qk_nope + s.v_head)                    // attn_kv_b
            + H * s.v_head * E;                                         // attn_output
    const int64_t dense = 3 * E * s.n_ff;
    const int64_t moe = E * s.n_expert                                  // ffn_gate_inp
                        + 3 * E * s.n_ff_exp * s.n_expert               // ffn_{gate,up,down}_exps
                        + 3 * E * s.n_ff_exp * s.n_expert_shared;       // ffn_{gate,up,down}_shexp
    const int64_t n_dense = std::min(s.n_layer_dense_lead, s.n_layer);
    return s.n_vocab * s.n_embd * (s.tied_output ? 1 : 2) + s.n_embd + s.n_layer * attn + n_dense * dense +
           (s.n_layer - n_dense) * moe;
}

}  // namespace

int64_t model_shape::n_params() const {
    if (deepseek2()) return deepseek2_params(*this);
    int64_t per_layer = 2 * n_embd                      // attn_norm, ffn_norm
                        + 2 * n_embd * n_embd           // attn_q, attn_output
                        + 2 * n_embd * n_embd_kv()      // attn_k, attn_v
                        + 3 * n_embd * n_ff;            // ffn_gate, ffn_up, ffn_down
    if (qkv_bias) per_layer += n_embd + 2 * n_embd_kv();
    int64_t n = n_vocab * n_embd * (tied_output ? 1 : 2) + n_embd + n_layer * per_layer;
    if (yoco()) {
        const int64_t kv = 2 * n_embd * n_embd_kv() + (qkv_bias ? 2 * n_embd_kv() : 0);
        n -= (n_layer - n_layer_self) * kv;  // cross-decoder layers: no attn_k, attn_v
        n += n_embd + 2 * n_embd * n_embd_kv();  // global_norm, global_k, global_v
    }
    return n;
}

int32_t llama_ftype_of(dtype t) {
    switch (t) {
        case dtype::f32: return 0;
        case dtype::f16: return 1;
        case dtype::q4_0: return 2;
        case dtype::q4_1: return 3;
        case dtype::q8_0: return 7;
        case dtype::q4_k: return 14;
        case dtype::q5_k: return 16;
        case dtype::q6_k: return 18;
        case dtype::bf16: return 32;
        default: return -1;
    }
}

dtype weight_dtype_for(std::string_view name, int n_dims, int64_t row_length, dtype target) {
    auto ends_with = [name](std::string_view suffix) {
        return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
    };
    const bool matrix = n_dims == 2 && ends_with(".weight") && !ends_with("ffn_gate_inp.weight");
    const bool experts = n_dims == 3 && ends_with("_exps.weight");  // (n_expert) matrices of rows ne[0]
    if (!matrix && !experts) return dtype::f32;
    if (row_length % dtype_info(target).block_size == 0) return target;
    if (dtype_info(target).block_size == qk_k && row_length % qk8_0 == 0) return dtype::q8_0;
    return dtype::f16;
}

bool weight_format_from_name(std::string_view name, weight_format* out) {
    std::string lower(name);
    for (char& c : lower) c = (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c;
    weight_format f;
    if (lower == "q4_k_m" || lower == "q5_k_m") {
        f.base = lower == "q4_k_m" ? dtype::q4_k : dtype::q5_k;
        f.k_mix = true;
    } else if (!dtype_from_name(lower, &f.base) || llama_ftype_of(f.base) < 0 || !dtype_info(f.base).supported) {
        return false;
    }
    if (out) *out = f;
    return true;
}

std::string weight_format_name(const weight_format& f) {
    return std::string(dtype_name(f.base)) + (f.k_mix ? "_m" : "");
}

int32_t llama_ftype_of(const weight_format& f) {
    if (f.k_mix) return f.base == dtype::q4_k ? 15 : 17;
    return llama_ftype_of(f.base);
}

bool kquant_use_more_bits(int64_t i_layer, int64_t n_layer) {
    return i_layer < n_layer / 8 || i_layer >= 7 * n_layer / 8 || (i_layer - n_layer / 8) % 3 == 2;
}

namespace {

// N of "blk.N.<suffix>", or -1 if `name` is not of that form.
int64_t block_index(std::string_view name, std::string_view suffix) {
    constexpr std::string_view prefix = "blk.";
    if (name.size() <= prefix.size() + suffix.size() + 1 || name.substr(0, prefix.size()) != prefix) return -1;
    if (name.substr(name.size() - suffix.size()) != suffix) return -1;
    std::string_view num = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    if (num.empty() || num.back() != '.') return -1;
    num.remove_suffix(1);
    if (num.empty() || num.size() > 9) return -1;
    int64_t v = 0;
    for (char c : num) {
        if (c < '0' || c > '9') return -1;
        v = v * 10 + (c - '0');
    }
    return v;
}

}  // namespace

dtype weight_dtype_for(std::string_view name, int n_dims, int64_t row_length, const weight_format& f, int64_t n_layer,
                       bool has_output) {
    dtype t = f.base;
    if (f.k_mix) {
        const bool is_head = name == "output.weight" || (!has_output && name == "token_embd.weight");
        int64_t i = block_index(name, "attn_v.weight");
        for (std::string_view down : {"ffn_down.weight", "ffn_down_exps.weight", "ffn_down_shexp.weight"})
            if (i < 0) i = block_index(name, down);
        if (is_head || (i >= 0 && kquant_use_more_bits(i, n_layer))) t = dtype::q6_k;
    }
    return weight_dtype_for(name, n_dims, row_length, t);
}

}  // namespace kvs
