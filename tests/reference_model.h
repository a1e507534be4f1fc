// Test support: an independent float64 reference of the Llama-family forward pass (contiguous
// K/V, no pages, double everywhere, straight from the equations) and a writer of synthetic
// GGUF models (random weights in any small shape and weight format).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "kv/kv_policy.h"
#include "model/llama.h"

namespace kvs::test {

// Logits (n_tokens, n_vocab) of a whole sequence, every token attending to all before it.
std::vector<std::vector<double>> reference_logits(const llama_model& m, const std::vector<int32_t>& tokens);

// KV policies from their definitions, as masks over the whole sequence (independent of pages):
// row t attends the tokens reference_kept(policy, t) —
//   dense: 0..t;  window:size=W: t-W+1..t;  streaming:sinks=S,size=W: 0..S-1 and t-W+1..t —
// and recompute:size=W computes row t as a fresh dense pass over tokens t-W+1..t at positions
// 0..W-1. StreamingLLM assigns positions inside the cache: each kept token's rank among the
// kept ones (the query last); ref_positions::original keeps the tokens' own positions instead
// (what StreamingLLM is not, for tests that tell the two apart).
enum class ref_positions { in_cache, original };
std::vector<int64_t> reference_kept(const kv_policy& policy, int64_t t);
std::vector<std::vector<double>> reference_policy_logits(const llama_model& m, const std::vector<int32_t>& tokens,
                                                         const kv_policy& policy,
                                                         ref_positions positions = ref_positions::in_cache);

// Quest (Tang et al., 2024) from its definition, un-paged: tokens [0, prompt_len) are prefilled
// densely, every later token t is decoded alone. At layers >= 2 the tokens 0..t fall in pages
// of page_size; when there are more than k = max(1, budget / page_size) of them, each KV head
// scores every page but the newest (the one holding t) by max over its group's query heads of
// Σ_d max(q_d · min_d, q_d · max_d) — the channel-wise min and max of the page's rotated keys,
// kept in bf16 rounded outwards as kvserve stores them —
// and attends the k - 1 best pages (equal scores: the earlier page) and the newest. choices
// (optional) receives every selection with all the pages' scores.
struct reference_quest_choice {
    int64_t t, layer, kv_head;
    std::vector<int32_t> pages;  // ascending, the newest last
    std::vector<double> scores;  // of pages 0 .. newest - 1
};
std::vector<std::vector<double>> reference_quest_logits(const llama_model& m, const std::vector<int32_t>& tokens, int64_t budget,
                                                        int64_t page_size, int64_t prompt_len,
                                                        std::vector<reference_quest_choice>* choices = nullptr);

// H2O (Zhang et al., 2023) from its definition, un-paged, with explicit per-(layer, KV head)
// bookkeeping: the tokens are computed in chunks ending at chunk_ends (ascending, the last =
// tokens.size()). Each (layer, KV head) keeps a set of token indices with accumulated scores;
// a chunk's token t attends, per KV head, its kept set plus the chunk's tokens up to t (original
// positions). Each token's score grows by the softmax probability every query of the chunk gave
// it, summed over the KV head's query heads; after the chunk, if more than H + R tokens are
// held, the R latest stay and, of the others, the H with the highest scores (equal: the earlier
// token). kept (optional) receives the held sets after every chunk.
struct reference_h2o_kept {
    int64_t end, layer, kv_head;      // after the chunk ending at token `end` (exclusive)
    std::vector<int64_t> tokens;      // ascending
    std::vector<double> scores;       // of `tokens`, after the chunk's queries
};
std::vector<std::vector<double>> reference_h2o_logits(const llama_model& m, const std::vector<int32_t>& tokens, int64_t heavy,
                                                      int64_t recent, const std::vector<int64_t>& chunk_ends,
                                                      std::vector<reference_h2o_kept>* kept = nullptr);

// KIVI (Liu et al., 2024) from its definition, un-paged: every token attends all before it, and
// row t reads the keys and values of group g (tokens gG .. gG + G - 1) quantized once
// (g + 1) · G + R <= t — keys per channel over the group's G tokens, values per token over
// groups of min(G, head_dim) channels, asymmetric `bits`-bit with f16 scale and minimum — and
// every other token's in full precision.
std::vector<std::vector<double>> reference_kivi_logits(const llama_model& m, const std::vector<int32_t>& tokens, int bits,
                                                       int64_t group, int64_t residual);

// YOCO (Sun et al., 2024; docs/yoco.md) from its equations, over the whole sequence with explicit
// masks: self-decoder layers [0, Ls) are Llama layers whose token i attends tokens j with
// i - W < j <= i; then H = RMSNorm(X^Ls) · global_norm, K^ = H · global_kᵀ (RoPE at the token's
// position), V^ = H · global_vᵀ; cross-decoder layers [Ls, L) project queries only (RoPE) and
// attend causally (j <= i, no window) to K^, V^, then the Llama FFN block. Logits (n_tokens, n_vocab).
std::vector<std::vector<double>> reference_yoco_logits(const llama_model& m, const std::vector<int32_t>& tokens);

struct synth_spec {
    std::string arch = "llama";
    int64_t n_vocab = 96, n_embd = 64, n_layer = 2, n_head = 4, n_head_kv = 2, n_ff = 96, n_rot = 16;
    dtype wtype = dtype::f32;
    std::string mix;  // a weight format name such as "q4_k_m" (overrides wtype), as `kvserve quantize` writes it
    bool tied = false;
    float rope_base = 10000.0f;
    // YOCO: > 0 writes a yoco model (arch forced to "yoco") whose first n_layer_self layers are the
    // self-decoder with a sliding window of `window` tokens; the other layers have no attn_k/attn_v,
    // and global_norm, global_k and global_v are added.
    int64_t n_layer_self = 0, window = 0;
};

// Writes a synthetic model to temp_dir()/NAME.gguf and returns its path.
std::string write_synth(const synth_spec& s, const std::string& name);

// n pseudo-random token ids in [0, n_vocab).
std::vector<int32_t> some_tokens(int64_t n, int64_t n_vocab, uint64_t seed);

}  // namespace kvs::test
