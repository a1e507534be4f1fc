// The mixture-of-experts feed-forward layer of DeepSeek-V2 (and its Lite variant): a softmax
// router picks k of n_expert SwiGLU experts per token, their outputs are summed with the
// router's probabilities as weights, and an always-on shared SwiGLU FFN is added.
//
// For a batch of token rows h (n, n_embd), already RMS-normed:
//   r_t   = W_router · h_t                                   (n_expert)
//   P_t   = softmax(r_t)                                     over all experts
//   E_t   = the k experts of largest P_t, in rank order      (equal P: the lower index first)
//   w_t,e = P_t,e [/ Σ_{e' ∈ E_t} P_t,e' when norm_topk] · scale
//   out_t = shared(h_t) + Σ_{e ∈ E_t, rank order} w_t,e · down_e(silu(gate_e · h_t) ⊙ up_e · h_t)
// shared is a SwiGLU FFN of its own (absent when the model has no shared experts).
//
// Experts are evaluated grouped by expert: the rows of the tokens that chose expert e are
// gathered into one block and multiplied by e's matrices in one matmul each, so every active
// expert's weights are streamed once per batch and experts no token chose are never read.
// The sum per token is in the fixed order above (shared, then rank 0, 1, ...), from one
// output row per (token, rank), so results do not depend on the thread count. They do depend
// on the batch only as far as the matmul kernels do for different row counts (for f16/bf16
// weights the bf16 dot-product path for m >= 2, ops.h); otherwise a batch equals its rows
// evaluated one at a time up to float rounding.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/ops.h"

namespace kvs {

// One MoE layer's weights. The expert tensors are GGUF's 3-D ones (ffn_gate_exps,
// ffn_up_exps, ffn_down_exps): n_expert matrices one after the other, each stored as a
// weight_view of its own dtype; the views here describe ONE expert (n_out, n_in of a single
// matrix) with data pointing at expert 0 (moe_expert gives the others).
//   router     (n_expert, n_embd)      any matmul dtype (f32 in DeepSeek-V2 files)
//   gate_exps  (n_ff_exp, n_embd) per expert
//   up_exps    (n_ff_exp, n_embd) per expert, same dtype and layout as gate_exps
//   down_exps  (n_embd, n_ff_exp) per expert
//   gate_sh, up_sh (n_ff_sh, n_embd), down_sh (n_embd, n_ff_sh): the shared experts as one
//              SwiGLU FFN (n_ff_sh = n_ff_exp · n_shared); data null when there are none.
struct moe_weights {
    cpu::weight_view router;
    cpu::weight_view gate_exps, up_exps, down_exps;  // n_out/n_in of ONE expert, data = expert 0
    int64_t n_expert = 0;
    cpu::weight_view gate_sh, up_sh, down_sh;  // data null when there are no shared experts
    int64_t n_used = 0;      // k: experts per token (expert_used_count), 1 <= k <= n_expert
    float scale = 1.0f;      // expert_weights_scale (routed_scaling_factor)
    bool norm_topk = false;  // divide the chosen probabilities by their sum before scaling

    int64_t n_embd() const { return gate_exps.n_in; }
    int64_t n_ff_exp() const { return gate_exps.n_out; }
    bool has_shared() const { return gate_sh.data != nullptr; }
};

// Expert e's matrix of a stacked 3-D expert tensor given as expert 0's view: the same view
// with data advanced by e · n_out · dtype_row_bytes(type, n_in) bytes. Row-major stacks are
// always supported. An interleaved16 stack (the whole (n_expert · n_out, n_in) stack repacked
// as one matrix) is supported too when n_out is a multiple of 16, the layout's own condition:
// its 16-row groups then never straddle two experts and start at the row-major offsets.
// Otherwise (interleaved16 with n_out not a multiple of 16) the result has data null.
cpu::weight_view moe_expert(const cpu::weight_view& stacked, int64_t e);

// Whether w is a consistent MoE layer that moe_ffn can run: shapes agree (router n_out ==
// n_expert, every n_in / n_out as listed above, the shared matrices all present or all
// absent), 1 <= n_used <= n_expert, every dtype has matmul kernels and every n_in is a
// multiple of its dtype's block size. Returns "" when it is, else what is wrong.
std::string moe_check(const moe_weights& w);

// Routing from router logits (n, n_expert): for each row, the k experts of largest softmax
// probability in rank order (equal probabilities: the lower expert index first) into ids
// (n, k), and their weights (n, k): the probabilities (softmax over all n_expert, computed in
// float64), divided by their sum when norm_topk, times scale. 1 <= k <= n_expert. NaN logits
// rank last.
void moe_route(const float* router_logits, int64_t n, int64_t n_expert, int64_t k, bool norm_topk, float scale,
               int32_t* ids, float* weights);

// Buffers of moe_ffn, sized once for a layer's shapes and the most token rows per call, so
// that the forward pass never allocates. One scratch serves every MoE layer of a model whose
// layers share shapes (reserve takes the maximum of what it is given).
struct moe_scratch {
    moe_scratch() = default;
    moe_scratch(const moe_weights& w, int64_t max_tokens) { reserve(w, max_tokens); }
    // Grows every buffer to hold max_tokens rows of w's shapes (no-op when already large enough).
    void reserve(const moe_weights& w, int64_t max_tokens);

    // Filled by moe_ffn, readable afterwards (tests, metrics): the last call's routing.
    std::vector<int32_t> ids;   // (max_tokens, n_used): experts of each token, rank order
    std::vector<float> weights; // (max_tokens, n_used): their weights (scale and norm applied)
    std::vector<float> logits;  // (max_tokens, n_expert): router logits
    // Grouping of the last call: the (token, rank) pairs of expert e occupy grouped positions
    // [expert_begin[e], expert_begin[e + 1]), tokens ascending.
    std::vector<int32_t> expert_begin;  // (n_expert + 1)
    std::vector<int32_t> pos_of;        // (max_tokens, n_used): grouped position of (token, rank)
    std::vector<int32_t> token_of;      // (max_tokens · n_used): token of each grouped position

    // Expert-matrix reads: distinct experts evaluated (each one's gate, up and down matrices
    // streamed once) in the last call, and summed over every call since construction (callers
    // may reset it). Against n_expert per call this is the fraction of the routed weights read.
    int64_t last_experts_read = 0;
    int64_t experts_read = 0;
    int64_t calls = 0;

    // Work buffers.
    std::vector<float> x;       // (max_tokens, n_embd): one expert's gathered token rows
    std::vector<float> act;     // (max_tokens, max(n_ff_exp, n_ff_sh)): silu(gate) ⊙ up of one expert / the shared FFN
    std::vector<float> y;       // (max_tokens · n_used, n_embd): expert outputs at grouped positions
    std::vector<int32_t> fill;  // (n_expert): grouping cursor

    int64_t max_tokens = 0;
};

// out (n, n_embd) = the MoE layer (see the top of this file) over h (n, n_embd); out is
// overwritten and must not alias h. w must pass moe_check (otherwise out is all NaN). s is
// grown if it was reserved for fewer than n rows or smaller shapes (a caller that reserved
// for its largest batch never allocates here). The matmuls run on pool; the result is
// bit-identical for every pool size. Leaves the routing and grouping in s.
void moe_ffn(const moe_weights& w, const float* h, int64_t n, float* out, moe_scratch& s, thread_pool& pool);

}  // namespace kvs
