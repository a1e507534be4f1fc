// Hyper-parameters of a model (every family language_model.h loads), read and validated from GGUF metadata.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.h"
#include "gguf/gguf.h"
#include "kernels/cpu/ops.h"

namespace kvs {

struct model_hparams {
    std::string arch;          // general.architecture: "llama", "qwen2", ...
    std::string name;          // general.name (may be empty)
    int64_t n_vocab = 0;
    int64_t n_embd = 0;        // model width
    int64_t n_layer = 0;
    int64_t n_head = 0;        // query heads
    int64_t n_head_kv = 0;     // KV heads: n_head (MHA), 1 (MQA), in between (GQA)
    int64_t head_dim = 0;      // per head; n_embd / n_head unless {arch}.attention.key_length
    int64_t n_ff = 0;          // FFN hidden width
    int64_t n_ctx_train = 0;   // context length the model was trained with
    int64_t n_rot = 0;         // rotated dims per head (<= head_dim)
    float rms_eps = 1e-5f;
    float rope_freq_base = 10000.0f;
    float rope_freq_scale = 1.0f;  // 1 / linear scaling factor
    cpu::rope_layout rope = cpu::rope_layout::normal;
    bool qkv_bias = false;     // Qwen2: biases on Q, K and V projections
    bool tied_output = false;  // no output.weight: the LM head reuses token_embd
    // YOCO (arch "yoco", docs/yoco.md): layers [0, n_layer_self) form the self-decoder
    // (sliding-window attention over the sliding_window newest tokens, each layer its own K/V),
    // layers [n_layer_self, n_layer) the cross-decoder (queries only, attending to the one
    // global K/V projected from the self-decoder's output). 0 for every other architecture.
    int64_t n_layer_self = 0;
    int64_t sliding_window = 0;  // W (tokens, the current one included)

    // DeepSeek-V2 (arch "deepseek2"): multi-head latent attention (MLA) and a mixture-of-experts
    // FFN. head_dim is the query/key size per head (qk_nope + qk_rope, qk_rope = n_rot), v_head
    // the value size; the cache holds per token and layer the latent c (kv_lora) and one RoPE key
    // shared by all heads (n_rot). 0 for every other architecture.
    int64_t kv_lora = 0;             // latent rank (512 in DeepSeek-V2)
    int64_t q_lora = 0;              // query low rank; 0: a full attn_q projection
    int64_t v_head = 0;              // value size per head
    int64_t n_layer_dense_lead = 0;  // layers [0, n) have a dense FFN of n_ff, the rest MoE
    int64_t n_expert = 0, n_expert_used = 0, n_expert_shared = 0;
    int64_t n_ff_exp = 0;            // one expert's FFN width (shared experts: n_expert_shared of them)
    // The file's attention layout: attn_k_b (W_UK,iᵀ per head) and attn_v_b (W_UV,i per head),
    // as llama.cpp's converter writes them now (its keys then describe the latent: head_count_kv
    // 1, key_length kv_lora + qk_rope, value_length kv_lora, and the per-head sizes in
    // key_length_mla / value_length_mla); false: one attn_kv_b (per head [W_UK,i; W_UV,i]).
    bool mla_split = false;
    float expert_weights_scale = 1.0f;
    bool expert_weights_norm = false;  // routed weights divided by their sum
    // YaRN RoPE scaling (rope.scaling.type "yarn"; rope_freq_scale = 1 / factor): frequencies
    // between the correction dims of n_ctx_orig are blended, attention logits scaled by
    // (1 + yarn_log_mul · ln(factor))² (DeepSeek-V2's mscale).
    bool rope_yarn = false;
    int64_t yarn_orig_ctx = 0;
    float yarn_log_mul = 0.0f;

    bool yoco() const { return n_layer_self > 0; }
    bool deepseek2() const { return kv_lora > 0; }
    int64_t qk_nope() const { return head_dim - n_rot; }

    int64_t n_gqa() const { return n_head / n_head_kv; }
    // Errors name the offending key and value.
    static result<model_hparams> from_gguf(const gguf_file& f);
};

// Architectures this file family runs: llama (and its relatives stored as "llama"), qwen2,
// mistral, and yoco (Llama layers split into a self- and a cross-decoder).
bool llama_family_arch(const std::string& arch);

}  // namespace kvs
