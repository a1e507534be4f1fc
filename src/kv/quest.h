// Quest's query-aware page selection (Tang et al., 2024), per layer and per KV head, for the
// Quest rows of an attention plan (attention_plan.h).
//
// For Quest row r (logical slot L, its table slots [0, L] on pages 0..P-1) and KV head h at
// one layer: every page but the newest is scored by the upper bound of the logits the row's
// query heads of group h can give its keys (cpu::quest_page_scores over the pages' key
// bounds); the k - 1 best (k = the plan's quest_pages; equal scores go to the earlier page)
// and the newest page are read, in table order. Since every head of the row reads k pages,
// the row's slot range becomes [0, (k - 1) · page_size + L % page_size + 1) over a CSR entry
// of its own per KV head (attention_batch::seq_head_entry); the other rows read as planned.
// Nothing is evicted: only the reads shrink.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kv/attention_plan.h"
#include "kv/kv_cache.h"

namespace kvs {

struct quest_layer_plan {
    std::vector<int32_t> page_indptr;     // the plan's CSR, then one entry per (Quest row, KV head)
    std::vector<int32_t> page_ids;
    std::vector<int32_t> seq_head_entry;  // (n_seq, n_kv_head): entry each (sequence entry, head) reads
    std::vector<int32_t> q_kv_len;        // (n) the plan's, Quest rows shortened to their selection
    std::vector<float> scores;            // scratch: (n_quest · n_kv_head, pages)
    std::vector<int32_t> order;           // scratch
    std::vector<int32_t> table_index;     // (n_quest, n_kv_head, k): the selected pages' table indices, ascending
    int64_t pages_read = 0, pages_dense = 0;  // over the Quest rows and heads: selected vs all
};

// Builds layer `layer`'s selection. q: (n, n_head, head_dim) rotated queries of the plan's rows.
// The cache must have key bounds (kv_config::key_bounds).
status quest_select(const attention_plan& ap, const kv_cache& kv, int64_t layer, const float* q, int64_t n_head,
                    quest_layer_plan& out, thread_pool& pool);

// Diagnostics: the share of each Quest row's dense attention mass (softmax over all its slots,
// per query head) that the pages `qp` selected carry, added to sum[layer] and count[layer]
// (grown as needed); scale: the attention's logit scale. A full attention pass more, so only perplexity --stream asks for it.
void quest_attention_mass(const attention_plan& ap, const quest_layer_plan& qp, const kv_cache& kv, int64_t layer, const float* q,
                          int64_t n_head, float scale, std::vector<double>& sum, std::vector<int64_t>& count);

}  // namespace kvs
