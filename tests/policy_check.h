// Test support: the engine against a float64 reference for the H2O and Quest policies, for any
// model family (a llama_model against reference_h2o_logits / reference_quest_logits, a
// deepseek2 model against reference_deepseek2_h2o_logits / reference_deepseek2_quest_logits).
//
// H2O: the tokens are run through a session in chunks; after every chunk each (layer, KV head)
// must hold the same tokens as the reference (by position) with the same scores (1e-4), and
// every row's logits must match (NMSE 1e-4) up to the first chunk whose held sets differ; the
// sequence never holds more than H + R slots plus one chunk. Quest: a prompt prefilled at once,
// then one token at a time; the same pages chosen per (token, layer, KV head) — another choice
// only between pages whose reference scores tie to 1e-5, at most 1 in 20 — and the same logits
// wherever every choice of the token agreed. Each runs a few page sizes and budgets.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kv/kv_policy.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "reference_model.h"

namespace kvs::test {

// reference(tokens, heavy, recent, chunk_ends, kept) -> logits (n_tokens, n_vocab)
using h2o_reference_fn = std::function<std::vector<std::vector<double>>(const std::vector<int32_t>&, int64_t, int64_t,
                                                                        const std::vector<int64_t>&, std::vector<reference_h2o_kept>*)>;
// reference(tokens, budget, page_size, prompt_len, choices) -> logits (n_tokens, n_vocab)
using quest_reference_fn = std::function<std::vector<std::vector<double>>(const std::vector<int32_t>&, int64_t, int64_t, int64_t,
                                                                          std::vector<reference_quest_choice>*)>;

struct h2o_run {
    std::vector<std::vector<float>> logits;   // every row
    std::vector<reference_h2o_kept> held;     // (end, layer, head) held tokens and scores after every chunk
    int32_t max_pages = 0;
};

// Runs tokens through a session under `pol` in the chunks ending at chunk_ends (integrity
// checked after each).
h2o_run h2o_session(const language_model& m, const std::vector<int32_t>& tokens, const kv_policy& pol, int32_t page_size,
                    const std::vector<int64_t>& chunk_ends, dtype kv_type = dtype::f32);

// Chunks: the prompt in pieces of `chunk`, then one token at a time (what a session does).
std::vector<int64_t> chunk_ends(int64_t n, int64_t prompt, int64_t chunk);

void expect_h2o_matches_reference(const language_model& m, const h2o_reference_fn& reference, int64_t n_tokens, int64_t prompt,
                                  uint64_t seed);

// Prefills `prompt_len` tokens in one pass, then decodes the rest one by one under `pol`;
// returns the logits of every decoded row and (optional) the engine's Quest choices with the
// token each was made for.
std::vector<std::vector<float>> quest_session(const language_model& m, const std::vector<int32_t>& tokens, const kv_policy& pol,
                                              int32_t page_size, int64_t prompt_len, std::vector<forward_state::quest_choice>* trace,
                                              std::vector<int64_t>* trace_t);

void expect_quest_matches_reference(const language_model& m, const quest_reference_fn& reference, int64_t n_tokens,
                                    int64_t prompt_len, uint64_t seed);

}  // namespace kvs::test
