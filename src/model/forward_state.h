// Scratch of one forward pass: the activation arena a family's forward reads and writes, sized
// once at construction (no allocation on the decode path), and the per-pass bookkeeping of the
// KV techniques (cascade groups, Quest selections, H2O and Quest mass probes).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kv/attention_plan.h"
#include "kv/cascade.h"
#include "kv/h2o.h"
#include "kv/quest.h"
#include "model/activation_plan.h"
#include "model/cascade_attention.h"
#include "model/kivi_attention.h"
#include "model/language_model.h"
#include "model/mla_unabsorbed.h"
#include "model/moe.h"

namespace kvs {

class llama_model;
class deepseek2_model;

// Scratch for one forward pass, sized once for at most `max_tokens` tokens per batch and
// `max_logits` logit rows: no allocation on the decode path. The activation buffers the model
// declares (language_model::activation_buffers) lie in one arena where buffers never live at
// the same point of the pass share bytes (activation_plan.h).
class forward_state {
public:
    // How the activation buffers lie in the arena.
    enum class layout {
        planned,   // plan_activations: buffers dead at the same time share bytes
        disjoint,  // every buffer apart, the arena as large as their sum (comparison, debugging)
    };
    forward_state(const language_model& model, int64_t max_tokens, int64_t max_logits, layout arena = layout::planned);
    forward_state(const forward_state&) = delete;
    forward_state& operator=(const forward_state&) = delete;
    int64_t max_tokens() const { return max_tokens_; }
    int64_t max_logits() const { return max_logits_; }
    // (n_logits, n_vocab) of the last forward; the next forward overwrites them.
    const float* logits() const { return logits_; }
    const std::vector<activation_buffer>& buffers() const { return buffers_; }
    const activation_plan& arena_plan() const { return arena_plan_; }
    // Activation buffer i of buffers() (its bytes in the arena).
    float* buffer(size_t i) const { return buffer_ptr_[i]; }
    // Bytes of the arena, and of the buffers one by one (the arena of layout::disjoint).
    size_t planned_bytes() const { return arena_plan_.arena_bytes; }
    size_t unplanned_bytes() const { return arena_plan_.sum_bytes; }
    // Cascade attention for decode rows sharing leading pages (on by default).
    void set_cascade(bool on) { cascade_on_ = on; }
    // Shared-prefix groups of the last forward (for metrics and tests): of layers 0 and 1, and
    // of the layers where Quest rows read per-head lists (those rows never grouped there).
    const cascade_plan& last_cascade_plan() const { return cascade_; }
    const cascade_plan& last_cascade_plan_quest_layers() const { return cascade_quest_; }
    // Quest: KV pages (per layer and KV head) its rows read, and what dense attention would
    // have read, summed over every forward pass so far.
    int64_t quest_pages_read() const { return quest_pages_read_; }
    int64_t quest_pages_dense() const { return quest_pages_dense_; }
    // Tests: every Quest selection of the following passes, appended to *trace (null: off).
    struct quest_choice {
        int64_t layer;
        int32_t row, kv_head;
        std::vector<int32_t> pages;  // table indices, ascending (the newest last)
    };
    void set_quest_trace(std::vector<quest_choice>* trace) { quest_trace_ = trace; }
    // Diagnostics (perplexity --stream): with on, every Quest selection also measures the share
    // of the dense softmax mass (over all the row's slots, per query head) that the selected
    // pages carry — a full attention pass more per Quest layer, so off by default. Per layer:
    // the sum of the shares and their count (query heads × Quest rows).
    void set_quest_mass(bool on) { quest_mass_on_ = on; }
    // The same for H2O rows (h2o_mass_probe: it keeps every key the sequences write).
    void set_h2o_mass(bool on) { h2o_mass_on_ = on; }
    const h2o_mass_probe& h2o_mass() const { return h2o_mass_; }
    // MoE models: the routing and grouping of the last MoE layer of the last forward (moe.h).
    const moe_scratch& last_moe() const { return moe_; }
    const std::vector<double>& quest_mass_sum() const { return quest_mass_sum_; }
    const std::vector<int64_t>& quest_mass_count() const { return quest_mass_n_; }

private:
    friend class llama_model;
    friend class deepseek2_model;
    int64_t max_tokens_, max_logits_;
    struct arena_free {
        void operator()(uint8_t* p) const;
    };
    std::vector<activation_buffer> buffers_;  // x .. logits_ below, in this order
    activation_plan arena_plan_;
    std::unique_ptr<uint8_t, arena_free> arena_;  // (arena_plan_.arena_bytes) 64-byte aligned
    std::vector<float*> buffer_ptr_;              // buffers_[i]'s bytes in arena_
    // The Llama-family pass's activation buffers (bound by name when the model declares them),
    // pointers into arena_.
    float* x = nullptr;                  // (max_tokens, n_embd) residual stream
    float* xb = nullptr;                 // (max_tokens, n_embd) normed rows: attention and FFN input
    float* xb2 = nullptr;                // (max_tokens, n_embd) attention output
    float* q = nullptr;                  // (max_tokens, n_head*hd)
    float* attn = nullptr;               // (max_tokens, n_head*hd)
    float* k = nullptr;                  // (max_tokens, n_kv*hd)
    float* v = nullptr;                  // (max_tokens, n_kv*hd)
    float* lse = nullptr;                // (max_tokens, n_head)
    float* gate = nullptr;               // (min(max_tokens, llama_ffn_row_block), n_ff) FFN intermediate of one row block
    float* ffn_out = nullptr;            // (min(max_tokens, llama_ffn_row_block), n_embd) FFN output of one row block
    float* rope_cos = nullptr;           // (max_tokens, n_rot / 2) angles of each row's position
    float* rope_sin = nullptr;           // (max_tokens, n_rot / 2)
    float* out_rows = nullptr;           // (max_logits, n_embd)
    float* logits_ = nullptr;            // (max_logits, n_vocab)
    attention_plan plan_;                // page tables and slot ranges of the batch's rows
    // YOCO: the plan of the cross-decoder rows over the global group, those rows' sequences,
    // slots and batch rows (the rows whose logits are asked for), and the cascade over them.
    attention_plan plan_global_;
    std::vector<int32_t> cross_seq_, cross_slot_, cross_row_;
    cascade_plan cascade_global_;
    // StreamingLLM sink pass (plan_.sink_rows): queries re-rotated to their in-cache position.
    // Sized per pass to its sink rows (usually a few), outside the arena.
    std::vector<float> sink_q, sink_o;   // (n_sink, n_head*hd)
    std::vector<float> sink_lse;         // (n_sink, n_head)
    std::vector<float> sink_cos, sink_sin;  // (n_sink, n_rot / 2) angles of (sink_pos - position)
    bool cascade_on_ = true;
    cascade_plan cascade_;               // decided once per forward, used by every layer
    cascade_plan cascade_quest_;         // the same without Quest rows (their per-head layers)
    std::vector<uint8_t> quest_row_mask_;  // (n) 1 for Quest rows
    cascade_scratch cascade_scratch_;
    kivi_plan kivi_, kivi_sink_;         // KIVI: packed and full-precision pages of the rows, and of the sink pass
    std::vector<int32_t> kivi_sink_seq_, kivi_sink_slot_;
    kivi_scratch kivi_scratch_;
    quest_layer_plan quest_;             // Quest's selection of the current layer
    int64_t quest_pages_read_ = 0, quest_pages_dense_ = 0;
    std::vector<quest_choice>* quest_trace_ = nullptr;
    bool quest_mass_on_ = false;
    std::vector<double> quest_mass_sum_;
    std::vector<int64_t> quest_mass_n_;
    bool h2o_mass_on_ = false;
    h2o_mass_probe h2o_mass_;
    moe_scratch moe_;                    // MoE layers (sized on first use, then reused)
    // deepseek2: the rows run in MLA's un-absorbed form (per sequence entry), the absorbed pass's
    // lengths (0 for those rows), the other rows, and the un-absorbed pass's scratch.
    std::vector<std::vector<int32_t>> mla_groups_;
    std::vector<int32_t> mla_abs_len_, mla_abs_rows_, mla_len_;
    std::vector<uint8_t> mla_row_mask_;
    mla_unabsorbed_scratch mla_;
    // One single-thread pool per thread of the pass's pool, for work split by head where each
    // task runs its own small matmuls (made on first use).
    std::vector<std::unique_ptr<thread_pool>> solo_pools_;
};

}  // namespace kvs
