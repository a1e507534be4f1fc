// The interface through which the scheduler, engine, server and tools drive a model, whatever
// its family: a forward pass over a ragged batch and the model's KV groups, the groups it
// declares, its hyper-parameters, and what the tools report (weights, formats). Each family
// implements it in its own files (llama.h: Llama, Qwen2, Mistral and YOCO; deepseek2.h: DeepSeek-V2).
//
// Contract
//  - `load` opens a GGUF file and binds it to the family its general.architecture names,
//    validating every tensor that family needs before use; an unknown architecture is an error
//    that names it.
//  - `forward` reads a ragged batch whose sequences exist in the model's KV groups
//    (kv_group_layout) with slots reserved, writes the K/V of every token, lets each token
//    attend to its sequence's earlier tokens as its KV policy reads them, and writes the logits
//    of the rows flagged in want_logits, in row order, to the forward_state (n_logits, n_vocab).
//    It fails, changing nothing, on an invalid batch.
//  - A model is immutable after load and may be shared by several forward_states (one forward
//    at a time per forward_state).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "kernels/cpu/autotune.h"
#include "kernels/cpu/ops.h"
#include "kv/kv_cache.h"
#include "kv/kv_groups.h"
#include "model/activation_plan.h"
#include "model/batch.h"
#include "model/hparams.h"

namespace kvs {

// Called with every named intermediate tensor of a forward pass (rows = batch tokens),
// so runs can be diffed layer by layer: attn_norm, Qcur, Kcur, Vcur, kqv_out, attn_out,
// ffn_inp, ffn_norm, ffn_out, l_out (layer >= 0); result_norm, result_output (layer -1).
using tensor_hook = std::function<void(const char* name, int64_t layer, const float* data, int64_t rows, int64_t cols)>;

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

// Whether q4_0 / q8_0 / f16 / bf16 / q4_K / q6_K projection weights are repacked at load into the interleaved16 layout
// (kernels/cpu/interleave.h) that the VNNI kernels read fastest, like llama.cpp's run-time
// repacking. The copy replaces the mapped tensor for matmul (the same number of bytes);
// token embeddings are still read from the file.
enum class weight_repack {
    automatic,  // when the CPU has kernels for the layout
    never,
    always,     // even where only the portable kernels read it (tests)
};

// Which form of multi-head latent attention runs prefill rows (deepseek2; model/mla_unabsorbed.h).
enum class mla_prefill {
    automatic,   // per sequence, the cheaper one by the cost model
    absorbed,    // every row over the latent (decode's form)
    unabsorbed,  // every row of a dense sequence un-absorbed (tests, measurements)
};

struct load_options {
    weight_repack repack = weight_repack::automatic;
    mla_prefill prefill_form = mla_prefill::automatic;
    // Matmul autotuning at load (kernels/cpu/autotune.h): off, or fast / full, which time the
    // model's matmul shapes on this CPU (or read the cached result) and set the process's
    // matmul tuning; full also picks the weight layout per dtype (with repack automatic).
    cpu::tune_level tune = cpu::tune_level::off;
    int tune_threads = 0;  // threads the model will run with (0: the hardware's)
};

// The KV format for models with quantized weights (see language_model::auto_kv_type), chosen
// from the CPU: bf16 where AVX-512 BF16 runs without AVX512-FP16 (Zen 4), f16 otherwise.
dtype quantized_weights_kv_type();
// The KV format `auto` picks for a model whose attention weights are of `weight_type`: that
// format when it is a float one (f32, f16, bf16), else quantized_weights_kv_type().
dtype auto_kv_type_for(dtype weight_type);

class forward_state;

class language_model {
public:
    virtual ~language_model() = default;
    // Opens, validates and binds a GGUF file (mmap; weights are not copied unless repacked,
    // see load_options) to the family of its general.architecture.
    static result<std::unique_ptr<language_model>> load(const std::string& path, const load_options& opts = {});

    virtual const model_hparams& hparams() const = 0;
    virtual const gguf_file& file() const = 0;
    // KV geometry of a single-group kv_cache serving this model (families with one KV group).
    virtual kv_config kv_geometry(int32_t page_size, int32_t n_pages, dtype type) const = 0;
    // The model's KV groups (kv_groups.h), each with n_pages pages (the caller sizes them).
    virtual std::vector<kv_group_desc> kv_group_layout(int32_t page_size, dtype type) const = 0;
    // The KV format `auto` picks for this model (docs/design.md, "KV storage formats").
    virtual dtype auto_kv_type() const = 0;
    virtual size_t weight_bytes() const = 0;
    // Bytes of weights one decode token streams (the weight-stream limit of decode): every
    // weight, except for mixture-of-experts models only the experts a token uses.
    virtual size_t decode_weight_bytes() const { return weight_bytes(); }
    // Bytes of weights repacked into memory owned by the model (0 when none were).
    virtual size_t repacked_bytes() const = 0;
    // Every matrix the forward pass multiplies by (as the matmul kernels see it, repacked or
    // not), for reports of the formats and the tuning they run with.
    virtual std::vector<cpu::weight_view> matmul_weights() const = 0;
    // The activation buffers of a forward pass of at most max_tokens rows and max_logits logit
    // rows, with their live ranges (activation_plan.h); forward_state plans its arena from
    // them. One of them is named "logits": (max_logits, n_vocab).
    virtual std::vector<activation_buffer> activation_buffers(int64_t max_tokens, int64_t max_logits) const = 0;
    // y (n_embd) = the final normalization of a residual-stream row x (n_embd): what the LM
    // head reads (embeddings pool it).
    virtual void final_norm(const float* x, float* y) const = 0;

    // See the contract above. `span` computes a slice of the layers (layer_span); families
    // that cannot run partial spans refuse them.
    virtual status forward(const batch& b, kv_groups& kv, forward_state& st, thread_pool& pool,
                           const tensor_hook& hook = nullptr, const layer_span& span = {}) const = 0;
    // The same over one kv_cache, for families with one KV group (others refuse).
    virtual status forward(const batch& b, kv_cache& kv, forward_state& st, thread_pool& pool,
                           const tensor_hook& hook = nullptr, const layer_span& span = {}) const = 0;
};

}  // namespace kvs
