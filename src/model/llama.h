// The Llama-family model (llama, mistral, qwen2, and yoco's decoder-decoder, docs/yoco.md):
// RMSNorm, Q/K/V projections (optional bias), RoPE (normal or NeoX layout), attention over paged
// KV returning (O, LSE), output projection, SwiGLU FFN; MHA, GQA and MQA; tied or untied LM
// head. It implements language_model (language_model.h has the contract every family keeps);
// `load` validates every tensor the architecture needs (presence, dims, dtype) before use.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "kernels/cpu/ops.h"
#include "kv/attention_plan.h"
#include "kv/h2o.h"
#include "kv/quest.h"
#include "kv/cascade.h"
#include "kv/kv_cache.h"
#include "kv/kv_groups.h"
#include "model/activation_plan.h"
#include "model/batch.h"
#include "model/cascade_attention.h"
#include "model/kivi_attention.h"
#include "model/hparams.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "model/weight_repack.h"

namespace kvs {

struct llama_layer {
    const float* attn_norm = nullptr;  // (n_embd)
    cpu::weight_view wq, wk, wv, wo;   // (n_head*hd, n_embd), (n_kv*hd, n_embd) x2, (n_embd, n_head*hd)
                                       // (YOCO cross-decoder layers have no wk, wv: data null)
    const float* bq = nullptr;         // (n_head*hd) qwen2 only
    const float* bk = nullptr;         // (n_kv*hd)
    const float* bv = nullptr;         // (n_kv*hd)
    const float* ffn_norm = nullptr;   // (n_embd)
    cpu::weight_view w_gate, w_up, w_down;  // (n_ff, n_embd) x2, (n_embd, n_ff)
};

struct llama_weights {
    const gguf_tensor_info* token_embd = nullptr;  // (n_vocab, n_embd) rows of any supported dtype
    std::vector<llama_layer> layers;
    const float* output_norm = nullptr;  // (n_embd)
    cpu::weight_view output;             // (n_vocab, n_embd); token_embd when tied
    // YOCO: the global K/V made once per token from the self-decoder's output,
    // k = rmsnorm(x, global_norm) · global_k (RoPE at the token's position), v likewise.
    const float* global_norm = nullptr;  // (n_embd)
    cpu::weight_view global_k, global_v; // (n_kv*hd, n_embd) each
};

// The Llama-family activation buffers of a forward pass over a model of shape `hp`, with their
// live ranges over the pass's program points (listed in llama.cpp), in arena order.
std::vector<activation_buffer> llama_activation_buffers(const model_hparams& hp, int64_t max_tokens, int64_t max_logits);

// The SwiGLU feed-forward block and the residual add after it, over n rows taken
// llama_ffn_row_block at a time (so that its intermediates hold one block):
//   x += (silu(xb · Wgateᵀ) ⊙ (xb · Wupᵀ)) · Wdownᵀ, then xb = rmsnorm(x) · next_norm
// (the next layer's attention input; x alone when next_norm is null). A block's rows of xb are
// read before they are overwritten. x, xb (n, n_embd); scratch gate (min(n, block), n_ff) and
// ffn_out (min(n, block), n_embd). `hook` gets "ffn_out" of `layer` block by block, rows in order.
constexpr int64_t llama_ffn_row_block = 128;
void llama_ffn_residual(const llama_layer& L, const float* next_norm, float rms_eps, int64_t n, float* x, float* xb, float* gate,
                        float* ffn_out, thread_pool& pool, const tensor_hook& hook, int64_t layer);

class llama_model final : public language_model {
public:
    // Opens, validates and binds the weights of a GGUF file of a Llama-family architecture
    // (llama_family_arch).
    static result<std::unique_ptr<llama_model>> load(const std::string& path, const load_options& opts = {});
    // Binds an already-open file (the model keeps it alive).
    static result<std::unique_ptr<llama_model>> from_gguf(std::unique_ptr<gguf_file> file,
                                                          const load_options& opts = {});

    const model_hparams& hparams() const override { return hp_; }
    const llama_weights& weights() const { return w_; }
    const gguf_file& file() const override { return *file_; }
    // Llama family: its one group (YOCO: the entries of every layer, for sizing).
    kv_config kv_geometry(int32_t page_size, int32_t n_pages, dtype type = kv_default_type) const override;
    // Llama family one group "all"; YOCO the growing "global" group (one layer, read by every
    // cross-decoder layer) and the ring "self" group (the self-decoder's layers, window W).
    std::vector<kv_group_desc> kv_group_layout(int32_t page_size, dtype type) const override;
    // The format of its float projection weights (f32, f16, bf16), so that a float model's cache
    // loses nothing its weights keep; for quantized weights quantized_weights_kv_type().
    dtype auto_kv_type() const override;
    size_t weight_bytes() const override;
    size_t repacked_bytes() const override { return repacked_.bytes(); }
    std::vector<cpu::weight_view> matmul_weights() const override;
    std::vector<activation_buffer> activation_buffers(int64_t max_tokens, int64_t max_logits) const override {
        return llama_activation_buffers(hp_, max_tokens, max_logits);
    }
    void final_norm(const float* x, float* y) const override;

    // Makes the written pages exclusive (copy-on-write), writes K/V of every token, then lets
    // each token attend to slots [0, slot] of its sequence (as its policy reads them,
    // attention_plan.h). H2O sequences are cut back to their budget after the pass (kv/h2o.h):
    // the caller's next chunk starts at slot h2o_kept_slots(policy, highest slot + 1). Fails
    // (changing nothing) if the batch is invalid: token id out of range, unknown sequence, slot
    // not reserved, too many tokens for `st`, or no page for copy-on-write. A partial `span`
    // refuses H2O sequences and KIVI caches (both finish their bookkeeping after the last layer).
    status forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool,
                   const tensor_hook& hook = nullptr, const layer_span& span = {}) const override;
    // The same over the model's KV groups (kv_group_layout): what the scheduler and sessions
    // call. YOCO (yoco_forward.cpp): the self-decoder over the ring group, the global K/V of
    // every row into the global group, then the cross-decoder only for the rows whose logits
    // are asked for (their K/V is not needed by any later token). YOCO runs dense sequences
    // only (the self-decoder's window is the model's own) and no partial spans.
    status forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool,
                   const tensor_hook& hook = nullptr, const layer_span& span = {}) const override;

private:
    llama_model() = default;
    status bind_weights();
    status forward_yoco(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook) const;
    void repack_weights(weight_repack mode);
    std::unique_ptr<gguf_file> file_;
    repacked_weights repacked_;  // interleaved16 copies of the matrices (none with --no-repack)
    model_hparams hp_;
    llama_weights w_;
};

}  // namespace kvs
