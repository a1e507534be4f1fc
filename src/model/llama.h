// The Llama-family forward pass (llama, mistral, qwen2): RMSNorm, Q/K/V projections (optional
// bias), RoPE (normal or NeoX layout), attention over paged KV returning (O, LSE), output
// projection, SwiGLU FFN; MHA, GQA and MQA; tied or untied LM head.
//
// Contract
//  - `load` validates every tensor the architecture needs (presence, dims, dtype) before use.
//  - `forward` reads a ragged batch whose sequences exist in `kv` with slots reserved; it
//    makes the written pages exclusive (copy-on-write), writes K/V of every token, then lets
//    each token attend to slots [0, slot] of its sequence (as its policy reads them,
//    attention_plan.h). H2O sequences are cut back to their budget after the pass (kv/h2o.h):
//    the caller's next chunk starts at slot h2o_kept_slots(policy, highest slot + 1). Logits of the rows flagged in
//    want_logits are written in row order to `logits` (n_logits, n_vocab).
//  - One forward at a time per forward_state; the model itself is immutable after load and
//    may be shared by several forward_states.
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

// Called with every named intermediate tensor of a forward pass (rows = batch tokens),
// so runs can be diffed layer by layer: attn_norm, Qcur, Kcur, Vcur, kqv_out, attn_out,
// ffn_inp, ffn_norm, ffn_out, l_out (layer >= 0); result_norm, result_output (layer -1).
using tensor_hook = std::function<void(const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols)>;

class llama_model;

// A slice of the layer stack for one forward pass: self-speculative decoding (LayerSkip) drafts
// with layers [0, E) and the LM head, then verifies with layers [E, L) from the saved exit
// hidden states, so the layer-[0, E) KV the drafts wrote is the verifier's too.
struct layer_span {
    int64_t begin = 0;                 // first layer computed; > 0: rows enter from hidden_in
    int64_t end = -1;                  // one past the last layer (-1: every layer). Logit rows get the
                                       // final norm and LM head after layer end - 1 (early exit)
    const float* hidden_in = nullptr;  // (n, n_embd) residual stream entering layer `begin` (begin > 0)
    float* hidden_out = nullptr;       // (n, n_embd) residual stream after layer end - 1, when not null
};

// Scratch for one forward pass, sized once for at most `max_tokens` tokens per batch and
// `max_logits` logit rows: no allocation on the decode path. The activation buffers lie in one
// arena where buffers never live at the same point of the pass share bytes (activation_plan.h;
// their live ranges are listed beside llama_model::forward).
class forward_state {
public:
    // How the activation buffers lie in the arena.
    enum class layout {
        planned,   // plan_activations: buffers dead at the same time share bytes
        disjoint,  // every buffer apart, the arena as large as their sum (comparison, debugging)
    };
    forward_state(const llama_model& model, int64_t max_tokens, int64_t max_logits, layout arena = layout::planned);
    forward_state(const forward_state&) = delete;
    forward_state& operator=(const forward_state&) = delete;
    int64_t max_tokens() const { return max_tokens_; }
    int64_t max_logits() const { return max_logits_; }
    // (n_logits, n_vocab) of the last forward; the next forward overwrites them.
    const float* logits() const { return logits_; }
    // The activation buffers of a forward pass over a model of shape `hp`, with their live
    // ranges over the pass's program points, in arena order (what the constructor plans).
    static std::vector<activation_buffer> activation_buffers(const llama_hparams& hp, int64_t max_tokens, int64_t max_logits);
    const std::vector<activation_buffer>& buffers() const { return buffers_; }
    const activation_plan& arena_plan() const { return arena_plan_; }
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
    const std::vector<double>& quest_mass_sum() const { return quest_mass_sum_; }
    const std::vector<int64_t>& quest_mass_count() const { return quest_mass_n_; }

private:
    friend class llama_model;
    int64_t max_tokens_, max_logits_;
    struct arena_free {
        void operator()(uint8_t* p) const;
    };
    std::vector<activation_buffer> buffers_;  // x .. logits_ below, in this order
    activation_plan arena_plan_;
    std::unique_ptr<uint8_t, arena_free> arena_;  // (arena_plan_.arena_bytes) 64-byte aligned
    // The activation buffers, pointers into arena_.
    float* x = nullptr;                  // (max_tokens, n_embd) residual stream
    float* xb = nullptr;                 // (max_tokens, n_embd) normed rows: attention and FFN input
    float* xb2 = nullptr;                // (max_tokens, n_embd) attention and FFN output
    float* q = nullptr;                  // (max_tokens, n_head*hd)
    float* attn = nullptr;               // (max_tokens, n_head*hd)
    float* k = nullptr;                  // (max_tokens, n_kv*hd)
    float* v = nullptr;                  // (max_tokens, n_kv*hd)
    float* lse = nullptr;                // (max_tokens, n_head)
    float* gate = nullptr;               // (max_tokens, n_ff)
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
};

// Whether q4_0 / q8_0 / f16 / bf16 / q4_K / q6_K projection weights are repacked at load into the interleaved16 layout
// (kernels/cpu/interleave.h) that the VNNI kernels read fastest, like llama.cpp's run-time
// repacking. The copy replaces the mapped tensor for matmul (the same number of bytes);
// token embeddings are still read from the file.
enum class weight_repack {
    automatic,  // when the CPU has kernels for the layout
    never,
    always,     // even where only the portable kernels read it (tests)
};

struct load_options {
    weight_repack repack = weight_repack::automatic;
    // Matmul autotuning at load (kernels/cpu/autotune.h): off, or fast / full, which time the
    // model's matmul shapes on this CPU (or read the cached result) and set the process's
    // matmul tuning; full also picks the weight layout per dtype (with repack automatic).
    cpu::tune_level tune = cpu::tune_level::off;
    int tune_threads = 0;  // threads the model will run with (0: the hardware's)
};

// The KV format for models with quantized weights (see llama_model::auto_kv_type), chosen
// from the CPU: bf16 where AVX-512 BF16 runs without AVX512-FP16 (Zen 4), f16 otherwise.
dtype quantized_weights_kv_type();

class llama_model {
public:
    // Opens, validates and binds the weights of a GGUF file (mmap; weights are not copied
    // unless repacked, see load_options).
    static result<std::unique_ptr<llama_model>> load(const std::string& path, const load_options& opts = {});
    // Binds an already-open file (the model keeps it alive).
    static result<std::unique_ptr<llama_model>> from_gguf(std::unique_ptr<gguf_file> file,
                                                          const load_options& opts = {});

    const llama_hparams& hparams() const { return hp_; }
    const llama_weights& weights() const { return w_; }
    const gguf_file& file() const { return *file_; }
    // KV geometry for a kv_cache serving this model (Llama family: its one group).
    kv_config kv_geometry(int32_t page_size, int32_t n_pages, dtype type = kv_default_type) const;
    // The model's KV groups (kv_groups.h), each with n_pages pages (the caller sizes them):
    // Llama family one group "all"; YOCO the growing "global" group (one layer, read by every
    // cross-decoder layer) and the ring "self" group (the self-decoder's layers, window W).
    std::vector<kv_group_desc> kv_group_layout(int32_t page_size, dtype type) const;
    // The KV format `auto` picks for this model (docs/design.md, "KV storage formats"): the
    // format of its float projection weights (f32, f16, bf16), so that a float model's cache
    // loses nothing its weights keep; for quantized weights quantized_weights_kv_type().
    dtype auto_kv_type() const;
    size_t weight_bytes() const;
    // Bytes of weights repacked into memory owned by the model (0 when none were).
    size_t repacked_bytes() const { return repacked_bytes_; }

    // See the contract above. Fails (changing nothing) if the batch is invalid: token id out
    // of range, unknown sequence, slot not reserved, too many tokens for `st`, or no page
    // for copy-on-write. `span` computes a slice of the layers (layer_span); a partial span
    // refuses H2O sequences and KIVI caches (both finish their bookkeeping after the last layer).
    status forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool,
                   const tensor_hook& hook = nullptr, const layer_span& span = {}) const;
    // The same over the model's KV groups (kv_group_layout): what the scheduler and sessions
    // call. YOCO (yoco_forward.cpp): the self-decoder over the ring group, the global K/V of
    // every row into the global group, then the cross-decoder only for the rows whose logits
    // are asked for (their K/V is not needed by any later token). YOCO runs dense sequences
    // only (the self-decoder's window is the model's own) and no partial spans.
    status forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool,
                   const tensor_hook& hook = nullptr, const layer_span& span = {}) const;

private:
    llama_model() = default;
    status bind_weights();
    status forward_yoco(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool, const tensor_hook& hook) const;
    void repack_weights(weight_repack mode);
    struct free_deleter {
        void operator()(void* p) const;
    };
    std::unique_ptr<gguf_file> file_;
    std::unique_ptr<uint8_t, free_deleter> repacked_;  // interleaved copies, 64-byte aligned
    size_t repacked_bytes_ = 0;
    llama_hparams hp_;
    llama_weights w_;
};

}  // namespace kvs
