// Test support: an independent float64 reference of DeepSeek-V2's forward pass (arch
// "deepseek2", llama.cpp's GGUF keys and tensor names), written from the paper's equations with
// llama.cpp's conventions, for the engine's MLA + MoE code to be tested against.
//
// Straight from the definitions, over the whole sequence with an explicit causal mask, in
// double, un-absorbed: every head's key [k_nope_i ; k_pe] and value v_i are materialized from
// the latent c = RMSNorm(kv_a[0:kv_lora]) · attn_kv_a_norm through attn_kv_b (or, in files
// with attn_k_b / attn_v_b, the per-head W_UK,i and W_UV,i they hold); the one rotated key k_pe = RoPE(kv_a[kv_lora:]) is shared by all heads. Token t sits at position t.
//   RoPE: adjacent pairs (2j, 2j+1) of the qk_rope dims, theta_j = t · base^(-2j / qk_rope);
//   with YaRN (rope.scaling.type "yarn") ggml's rope_yarn (beta_fast 32, beta_slow 1, ext_factor
//   1, freq_scale 1 / factor) without magnitude scaling, and scores scaled by mscale² / sqrt(qk)
//   with mscale = 1 + yarn_log_multiplier · ln(factor) (1 without YaRN).
//   FFN: leading_dense_block_count dense SwiGLU layers, then MoE: softmax router, the
//   expert_used_count most probable experts (equal probabilities: the lower id first), weighted
//   by their probabilities (divided by their sum if expert_weights_norm) times
//   expert_weights_scale, plus the shared experts' SwiGLU.
// Hyper-parameters come from the GGUF metadata, weights dequantized to double. Malformed files
// (a key or tensor missing, wrong dims, an unsupported gating function) are a test failure
// (ADD_FAILURE naming the problem) and an empty result.
#pragma once

#include <cstdint>
#include <vector>

#include "gguf/gguf.h"
#include "kv/kv_policy.h"
#include "reference_model.h"

namespace kvs::test {

// How one token was routed in one MoE layer.
struct reference_deepseek2_route {
    int64_t layer = 0;                // a MoE layer (>= leading_dense_block_count)
    int64_t token = 0;                // index into the sequence
    std::vector<double> ffn_input;    // (n_embd) h2 = RMSNorm(x) · ffn_norm, the router's input
    std::vector<double> probs;        // (n_expert) softmax of the router logits ffn_gate_inp · h2
    std::vector<int32_t> experts;     // (expert_used_count) chosen ids, most probable first
    std::vector<double> weights;      // (expert_used_count) of `experts`, as they scale the expert outputs
};

// Logits (n_tokens, n_vocab) of `tokens` (ids < n_vocab), every token attending to itself and
// all before it. routes (optional) receives every MoE layer's routing of every token, ordered by
// layer, then token.
std::vector<std::vector<double>> reference_deepseek2_logits(const gguf_file& f, const std::vector<int32_t>& tokens,
                                                            std::vector<reference_deepseek2_route>* routes = nullptr);

// The same with a KV policy (dense, window, streaming), as masks over the whole sequence: row t
// attends reference_kept(policy, t) (reference_model.h), each kept key's shared k_pe rotated at
// its rank among them and the query at the last rank (StreamingLLM's positions inside the
// cache; for dense and window the same relative positions as the tokens' own).
std::vector<std::vector<double>> reference_deepseek2_policy_logits(const gguf_file& f, const std::vector<int32_t>& tokens,
                                                                   const kv_policy& policy,
                                                                   std::vector<reference_deepseek2_route>* routes = nullptr);

// H2O over the latent cache, from its definition (reference_h2o_logits in reference_model.h)
// with one latent "KV head" per layer: a token's score grows by the probability each of the H
// heads gave it (the absorbed and un-absorbed forms give the same probabilities), and each layer
// keeps one held set. Original positions. kept: kv_head 0.
std::vector<std::vector<double>> reference_deepseek2_h2o_logits(const gguf_file& f, const std::vector<int32_t>& tokens, int64_t heavy,
                                                                int64_t recent, const std::vector<int64_t>& chunk_ends,
                                                                std::vector<reference_h2o_kept>* kept = nullptr);

// Quest over the latent cache (reference_quest_logits in reference_model.h, one latent "KV
// head"): a page's bounds are the channel-wise min and max of its latent entries [c ; k_pe
// rotated at the token's position] (kv_lora + qk_rope channels, bf16 rounded outwards), and its
// score the best over the H heads of Σ_d max(ql_d · min_d, ql_d · max_d) with the absorbed
// query ql_i = [W_UK,iᵀ q_nope_i ; RoPE(q_pe_i)] built from the un-absorbed weights.
std::vector<std::vector<double>> reference_deepseek2_quest_logits(const gguf_file& f, const std::vector<int32_t>& tokens, int64_t budget,
                                                                  int64_t page_size, int64_t prompt_len,
                                                                  std::vector<reference_quest_choice>* choices = nullptr);

}  // namespace kvs::test
