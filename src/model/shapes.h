// Named model geometries for `kvserve synth`: the hyper-parameters of real, well-known models,
// so that speed and memory work can use realistic tensor shapes with random weights. Also the
// file-level conventions used when writing such a model (llama.cpp's general.file_type codes).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace kvs {

struct model_shape {
    const char* name;           // "llama-3-8b"
    const char* arch;           // general.architecture: "llama" or "qwen2"
    int64_t n_vocab;            // tokens
    int64_t n_embd;             // model width (elements)
    int64_t n_layer;
    int64_t n_head;             // query heads
    int64_t n_head_kv;          // key/value heads
    int64_t n_ff;               // FFN hidden width (elements)
    int64_t n_ctx_train;        // tokens
    float rope_freq_base;
    bool rope_neox;             // rotate halves (NeoX/Qwen2) rather than adjacent pairs (Llama)
    bool qkv_bias;              // biases on the Q, K and V projections (Qwen2)
    bool tied_output;           // no output.weight: the LM head reuses token_embd
    float rms_eps;
    const char* default_vocab;  // vocabulary GGUF, relative to the shared fixture folder
    // YOCO (arch "yoco", docs/yoco.md): layers [0, n_layer_self) are the self-decoder with
    // sliding-window attention over `sliding_window` tokens, the rest the cross-decoder (no K/V
    // projections; one global K/V). 0 for every other architecture.
    int64_t n_layer_self = 0;
    int64_t sliding_window = 0;
    // DeepSeek-V2 (arch "deepseek2", llama.cpp's tensor and key names): multi-head latent
    // attention and a mixture of experts. 0 for every other architecture.
    //   attention: queries through a rank-q_lora bottleneck (0: one full attn_q matrix); keys
    //   and values through a shared latent of kv_lora elements; per head qk_nope + qk_rope key
    //   elements (the qk_rope rotated ones shared by all heads) and v_head value elements.
    //   FFN: layers [0, n_layer_dense_lead) dense with n_ff; the rest route each token to the
    //   n_expert_used best of n_expert experts (hidden n_ff_exp), weighted by their softmax
    //   probabilities times expert_weights_scale, plus n_expert_shared always-on experts
    //   (stored as one FFN of n_ff_exp · n_expert_shared).
    //   YaRN: yarn_factor > 0 writes rope.scaling.* (factor, original context yarn_orig_ctx,
    //   log multiplier yarn_log_mul).
    //   mla_split: the key and value up-projections as attn_k_b (per head W_UKᵀ) and attn_v_b
    //   (per head W_UV) with the latent described by the generic keys and the heads by
    //   key_length_mla / value_length_mla (llama.cpp's current converter), instead of attn_kv_b.
    int64_t q_lora = 0;
    int64_t kv_lora = 0;
    int64_t qk_nope = 0;
    int64_t qk_rope = 0;
    int64_t v_head = 0;
    int64_t n_expert = 0;
    int64_t n_expert_used = 0;
    int64_t n_expert_shared = 0;
    int64_t n_ff_exp = 0;
    int64_t n_layer_dense_lead = 0;
    float expert_weights_scale = 0.0f;
    float yarn_factor = 0.0f;
    int64_t yarn_orig_ctx = 0;
    float yarn_log_mul = 0.0f;
    bool mla_split = false;

    bool yoco() const { return n_layer_self > 0; }
    bool deepseek2() const { return kv_lora > 0; }
    int64_t head_dim() const { return n_embd / n_head; }
    int64_t n_embd_kv() const { return head_dim() * n_head_kv; }
    // Weight count (embeddings, layers, norms, biases, untied output; for YOCO the cross-decoder
    // layers without K/V projections, plus global_norm, global_k and global_v; for DeepSeek-V2
    // the MLA projections and norms, the dense FFNs of the leading layers, and every routed
    // expert, shared expert and router of the others).
    int64_t n_params() const;
};

// Every named shape, in a stable order.
const std::vector<model_shape>& model_shapes();
// nullptr if unknown.
const model_shape* find_model_shape(std::string_view name);
// "tinyllama-1.1b, llama-2-7b, ..." for help texts and errors.
std::string model_shape_names();

// llama.cpp's LLAMA_FTYPE for a file whose matrices are mostly `t` (ALL_F32 = 0, MOSTLY_F16 = 1,
// MOSTLY_Q4_0 = 2, MOSTLY_Q4_1 = 3, MOSTLY_Q8_0 = 7, MOSTLY_Q4_K_S = 14 for q4_k, MOSTLY_Q5_K_S =
// 16 for q5_k, MOSTLY_Q6_K = 18, MOSTLY_BF16 = 32); -1 if it has none.
int32_t llama_ftype_of(dtype t);

// The dtype a tensor gets when a model is written "in" `target`: 2-D `.weight` matrices and the
// 3-D stacks of expert matrices (`*_exps.weight`, rows of ne[0] as for a matrix) take `target`
// when their row length is a multiple of its block size; everything else (norms, biases, other
// 1-D and 3-D+ tensors, and the MoE router `*ffn_gate_inp.weight`, as llama.cpp keeps it) stays
// F32. Matrices whose rows do not fit the block size fall back to Q8_0 for the k-quants (rows a
// multiple of 32; as ggml falls back to a 32-block type), else F16.
dtype weight_dtype_for(std::string_view name, int n_dims, int64_t row_length, dtype target);

// A whole model's weight format: one dtype for the matrices, or one of llama.cpp's k-quant
// mixtures ("q4_k_m", "q5_k_m"), which keep the base k-quant for most matrices and give Q6_K
// to the LM head and to attn_v / ffn_down of the layers where more bits pay off most.
struct weight_format {
    dtype base = dtype::f32;
    bool k_mix = false;  // llama.cpp's *_M mixture over `base` (q4_k or q5_k)
};
// Parses a dtype name kvserve can write ("q4_0", "q6_k", ...) or "q4_k_m" / "q5_k_m" (any case).
bool weight_format_from_name(std::string_view name, weight_format* out);
// "q4_k_m" or the dtype's name.
std::string weight_format_name(const weight_format& f);
// LLAMA_FTYPE of the format (MOSTLY_Q4_K_M = 15, MOSTLY_Q5_K_M = 17, else llama_ftype_of(base)).
int32_t llama_ftype_of(const weight_format& f);
// llama.cpp's use_more_bits: the first and last eighth of the layers and every third between.
bool kquant_use_more_bits(int64_t i_layer, int64_t n_layer);
// The dtype of tensor `name` in a model written in `f`. For the *_M mixtures: output.weight
// (or token_embd.weight when the model has no output.weight, as llama.cpp does) → Q6_K;
// blk.N.attn_v.weight and blk.N.ffn_down.weight (and a MoE layer's ffn_down_exps.weight and
// ffn_down_shexp.weight, as llama.cpp treats every "ffn_down" tensor of layer N) → Q6_K where
// kquant_use_more_bits(N, n_layer);
// all else the base type; then the rules of weight_dtype_for (fallbacks, F32 for non-matrices).
dtype weight_dtype_for(std::string_view name, int n_dims, int64_t row_length, const weight_format& f, int64_t n_layer,
                       bool has_output);

}  // namespace kvs
