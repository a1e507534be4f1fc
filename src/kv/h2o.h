// H2O heavy hitters (Zhang et al., 2023), per layer and per KV head, for the H2O sequences of
// an attention plan (attention_plan.h).
//
// An H2O sequence (h2o:heavy=H,recent=R) holds a fixed region of slots. A chunk of m tokens
// is written after the k tokens kept so far, at slots [k, k + m), and its rows attend slots
// [0, own slot] — everything kept plus the chunk's earlier tokens — like a dense row. Every
// (layer, KV head) then accumulates, per slot, the softmax probability each of the chunk's
// queries gave it, summed over the group's query heads (h2o_accumulate, into the cache's token
// scores), and after the pass is cut back on its own (h2o_cut_back): the R most recent tokens
// (by position) stay, and of the others the H with the highest accumulated score (equal
// scores: the earlier position); tokens kept past slot H + R move into the slots of the
// evicted ones. Keys are stored rotated at their original positions, so slot order does not
// matter; each slot's position and score are token metadata (kv_config::token_scores), per
// head, and move with the token. Slots past H + R go back to the pool: the sequence holds
// ceil((H + R) / page_size) pages between passes and ceil((H + R + m) / page_size) during one.
// Chunk size 1 is the paper's token-by-token decode; a larger chunk lets its rows see all of
// the chunk's earlier tokens before any eviction (more kept tokens per row, scores that count
// the whole chunk's queries first).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/attention_plan.h"
#include "kv/kv_cache.h"

namespace kvs {

// Slots an H2O sequence holds after a pass over n_filled slots: min(n_filled, H + R).
inline int64_t h2o_kept_slots(const kv_policy& p, int64_t n_filled) { return std::min(n_filled, p.heavy + p.recent); }

// Adds to the token scores of layer `layer` the probabilities the plan's H2O rows gave each
// slot they attend (per KV head, summed over its query heads). q: (n, n_head, head_dim)
// rotated queries of the plan's rows. The rows' pages must be exclusive (the forward pass
// makes them so). The cache must keep token scores.
status h2o_accumulate(const attention_plan& ap, kv_cache& kv, int64_t layer, const float* q, int64_t n_head, float scale,
                      thread_pool& pool);

// After a pass that filled slots [0, n_filled) of H2O sequence `seq`: cuts every (layer, KV
// head) back to min(n_filled, H + R) slots as described above and frees the pages past them.
// Fails if a page it must write is shared and none is free to copy it to.
status h2o_cut_back(kv_cache& kv, int32_t seq, int64_t n_filled);

// The positions of the tokens one (layer, KV head) of an H2O sequence holds in slots
// [0, n_slots), ascending (tests and diagnostics).
std::vector<int32_t> h2o_held_positions(const kv_cache& kv, int32_t seq, int64_t layer, int64_t head, int64_t n_slots);

// Diagnostics (perplexity --stream): the share of the dense attention mass that the tokens an
// H2O row attends carry. It keeps every key a sequence ever wrote (float, rotated) — the cache
// H2O does without — and per H2O row and query head compares the softmax over all the row's
// past tokens with the part on the tokens it attends (found by their positions). Per layer:
// the sum of the shares and their count.
class h2o_mass_probe {
public:
    // Records the rotated keys k (n, n_kv_head · head_dim) of the plan's H2O rows at `layer`.
    void record(const attention_plan& ap, const int32_t* seq_ids, const int32_t* positions, int64_t layer, const float* k,
                int64_t kv_width);
    // Measures the plan's H2O rows at `layer` (after the layer's keys are written); scale: the
    // attention's logit scale.
    void measure(const attention_plan& ap, const kv_cache& kv, const int32_t* seq_ids, const int32_t* positions, int64_t layer,
                 const float* q, int64_t n_head, float scale);
    const std::vector<double>& sum() const { return sum_; }
    const std::vector<int64_t>& count() const { return count_; }

private:
    std::unordered_map<int32_t, std::vector<std::vector<float>>> keys_;  // seq -> layer -> (positions, kv_width)
    std::vector<double> sum_;
    std::vector<int64_t> count_;
};

}  // namespace kvs
