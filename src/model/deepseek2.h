// DeepSeek-V2 (GGUF architecture "deepseek2", llama.cpp's tensor and metadata names): multi-head
// latent attention (MLA) over a latent KV cache, and a mixture-of-experts FFN (moe.h) after
// leading dense layers.
//
// Attention of layer l for a token at position p (n_head heads, qk_nope + qk_rope = head_dim
// per query/key head, v_head per value head, kv_lora latent rank, all from model_hparams):
//   h = RMSNorm(x)·attn_norm
//   q = attn_q·h  or  attn_q_b·(RMSNorm(attn_q_a·h)·attn_q_a_norm)      (n_head, [q_nope; q_pe])
//   [c; k_pe] = attn_kv_a_mqa·h;  c = RMSNorm(c)·attn_kv_a_norm;  k_pe = RoPE(k_pe, p)
//   per head i: [k_nope_i; v_i] = W_kv_b,i · c  (W_UK,i: qk_nope × kv_lora, W_UV,i: v_head × kv_lora)
//   score_ij = (q_nope_i·k_nope_ij + RoPE(q_pe_i)·k_pe_j) · kq_scale,  o_i = Σ_j p_ij v_ij
// The cache holds the latent entry [c; k_pe] (kv_lora + qk_rope values per token and layer, one
// "KV head") and nothing per head. The key and value up-projections are absorbed (the MLA
// paper's inference form): q_nope_i·k_nope_ij = (W_UK,iᵀ q_nope_i)·c_j, so each head's query
// becomes [W_UK,iᵀ q_nope_i; RoPE(q_pe_i)] (kv_lora + qk_rope) and attention is multi-query
// attention over the latent entries, one kernel for all heads, returning (O, LSE) like every
// other attention here (cascade and split-KV merge unchanged). The entry is read as the value
// too (a keys-only KV group, kv_cache.h): o_i's first kv_lora dims are Σ_j p_ij c_j, lifted to
// the head's value by W_UV,i, then attn_output maps the concatenated values back to n_embd.
// kq_scale = mscale² / sqrt(head_dim), mscale = 1 + yarn_log_mul·ln(factor) with YaRN (rope_yarn.h).
//
// The FFN of layers [0, n_layer_dense_lead) is a SwiGLU of n_ff; the others are MoE layers
// (softmax router, top-k experts, shared experts; moe.h), evaluated grouped by expert.
//
// KV policies: all of them run over the latent group, one latent "KV head" per layer. Window
// and recompute as everywhere; StreamingLLM's sink pass re-rotates only the queries' RoPE parts
// (the one 64-dim key is the only rotated thing in the cache); H2O scores each latent entry by
// the probabilities all H heads gave it and keeps one set per layer; Quest bounds the latent
// entries per page ([c; k_pe], bf16 outward) and scores a page by its best head's
// Σ_d max(q_d·min_d, q_d·max_d) over the absorbed query. KIVI pages are not supported. Layer
// spans (self-speculative decoding) run as in the Llama family, H2O sequences excepted.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "model/forward_state.h"
#include "model/language_model.h"
#include "model/moe.h"
#include "model/rope_yarn.h"
#include "model/weight_repack.h"

namespace kvs {

struct deepseek2_layer {
    const float* attn_norm = nullptr;      // (n_embd)
    cpu::weight_view wq;                   // (n_head·head_dim, n_embd) when q_lora == 0
    cpu::weight_view wq_a, wq_b;           // (q_lora, n_embd), (n_head·head_dim, q_lora) when q_lora > 0
    const float* q_a_norm = nullptr;       // (q_lora)
    cpu::weight_view wkv_a;                // (kv_lora + qk_rope, n_embd)
    const float* kv_a_norm = nullptr;      // (kv_lora)
    // The key and value up-projections, per head i (row-major):
    //   W_UK,iᵀ: kv_lora rows of qk_nope — rows [i·kv_lora, (i+1)·kv_lora) of wk_b_t
    //   W_UV,i:  v_head rows of kv_lora  — rows i·uv_stride + uv_offset + [0, v_head) of wv_b
    // From a file with attn_k_b / attn_v_b they are those tensors (uv_stride v_head, offset 0).
    // From one with attn_kv_b (per head [W_UK,i; W_UV,i] rows), wv_b is attn_kv_b (uv_stride
    // qk_nope + v_head, offset qk_nope) and wk_b_t is made at load (owned_wk_b_t): f32 when
    // attn_kv_b is a float format, else q8_0, so decode streams a quarter of the f32 bytes.
    cpu::weight_view wk_b_t;               // one head's (kv_lora, qk_nope); data = head 0
    cpu::weight_view wv_b;                 // rows of kv_lora; data = row 0
    int64_t uv_stride = 0, uv_offset = 0;
    std::vector<uint8_t> owned_wk_b_t;
    // The un-absorbed form's (H·(qk_nope + v_head), kv_lora): per head the rows of W_UK,i then
    // W_UV,i — attn_kv_b itself (wv_b), or made at load from attn_k_b / attn_v_b (owned_kv_up;
    // f32 from float files, else q8_0).
    std::vector<uint8_t> owned_kv_up;
    cpu::weight_view owned_kv_up_view;
    cpu::weight_view kv_up(int64_t n_head) const {
        if (!owned_kv_up.empty()) return owned_kv_up_view;
        cpu::weight_view v = wv_b;
        v.n_out = n_head * uv_stride;
        return v;
    }
    cpu::weight_view wk_b_t_head(int64_t h) const {
        cpu::weight_view v = wk_b_t;
        v.data = static_cast<const uint8_t*>(wk_b_t.data) + size_t(h * wk_b_t.n_out) * dtype_row_bytes(wk_b_t.type, wk_b_t.n_in);
        return v;
    }
    cpu::weight_view wv_b_head(int64_t h, int64_t v_head) const {
        cpu::weight_view v = wv_b;
        v.data = static_cast<const uint8_t*>(wv_b.data) + size_t(h * uv_stride + uv_offset) * dtype_row_bytes(wv_b.type, wv_b.n_in);
        v.n_out = v_head;
        return v;
    }
    cpu::weight_view wo;                   // (n_embd, n_head·v_head)
    const float* ffn_norm = nullptr;       // (n_embd)
    cpu::weight_view w_gate, w_up, w_down; // dense layers: (n_ff, n_embd) x2, (n_embd, n_ff)
    moe_weights moe;                       // MoE layers (moe.router.data null in dense layers)
    bool dense() const { return moe.router.data == nullptr; }
};

struct deepseek2_weights {
    const gguf_tensor_info* token_embd = nullptr;  // (n_vocab, n_embd)
    std::vector<deepseek2_layer> layers;
    const float* output_norm = nullptr;            // (n_embd)
    cpu::weight_view output;                       // (n_vocab, n_embd)
};

class deepseek2_model final : public language_model {
public:
    // Binds an open deepseek2 file, checking every tensor against the hyper-parameters (errors
    // name the tensor or key), and prepares W_UK,iᵀ of every layer for the absorbed queries.
    static result<std::unique_ptr<deepseek2_model>> from_gguf(std::unique_ptr<gguf_file> file, const load_options& opts = {});

    const model_hparams& hparams() const override { return hp_; }
    const deepseek2_weights& weights() const { return w_; }
    const gguf_file& file() const override { return *file_; }
    // The latent group: n_layer layers of one keys-only "KV head" of kv_lora + qk_rope values.
    kv_config kv_geometry(int32_t page_size, int32_t n_pages, dtype type) const override;
    std::vector<kv_group_desc> kv_group_layout(int32_t page_size, dtype type) const override;
    // f32 (the latent entries keep what the weights compute); 16-bit formats cannot be a
    // keys-only group's yet, quantized ones are asked for with --kv-type.
    // As the Llama family's: the weights' float format, else (quantized weights) bf16 or f16 by
    // CPU. The latent is read as K and V from one row layout, so both 16-bit formats halve its
    // bytes at f32's decode speed (docs/deepseek2.md).
    dtype auto_kv_type() const override;
    size_t weight_bytes() const override;
    // The routed experts' stacks count n_expert_used / n_expert of their bytes.
    size_t decode_weight_bytes() const override;
    size_t repacked_bytes() const override { return repacked_.bytes(); }
    std::vector<cpu::weight_view> matmul_weights() const override;
    std::vector<activation_buffer> activation_buffers(int64_t max_tokens, int64_t max_logits) const override;
    void final_norm(const float* x, float* y) const override;
    // Values per token and layer a per-head K/V cache of this model would hold (what engines
    // without latent caching store: n_head·(head_dim + v_head)), for reports beside the latent's.
    int64_t per_head_kv_values() const { return hp_.n_head * (hp_.head_dim + hp_.v_head); }
    // kq_scale of the contract above.
    float attention_scale() const;

    status forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook = nullptr,
                   const layer_span& span = {}) const override;
    // The same over the latent group's kv_cache (kv_geometry).
    status forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook = nullptr,
                   const layer_span& span = {}) const override;

    // The matmul calls of one forward pass (load-time tuning, model/load_tuning.h): projections,
    // the per-head absorption matrices, the latent lift, the output projection, the dense FFN or
    // the router, shared experts and every routed expert (each timed at its share of a prompt
    // chunk's rows), then the LM head.
    cpu::tune_workload tune_workload() const;

private:
    deepseek2_model() = default;
    status bind_weights();
    void repack_weights(weight_repack mode);
    std::unique_ptr<gguf_file> file_;
    repacked_weights repacked_;  // interleaved16 copies of the matrices (none with --no-repack)
    model_hparams hp_;
    deepseek2_weights w_;
    yarn_rope yarn_;  // when hp_.rope_yarn
    mla_prefill prefill_form_ = mla_prefill::automatic;
};

}  // namespace kvs
