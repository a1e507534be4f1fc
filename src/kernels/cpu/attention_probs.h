// The softmax probabilities one query row gives the KV slots it attends, summed over the query
// heads that share one KV head — what H2O accumulates per token (kv/h2o.h). The attention
// kernel returns only (O, LSE); this is a second pass over the keys of the slots, computing
// its own exact normalizer so that the probabilities of a row and head sum to 1.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace kvs::cpu {

// q: (group, head_dim) rotated queries of the heads sharing KV head kv_head. The row attends
// slots [0, n_slots) of the sequence whose pages are `pages` (slot s is row s % page_size of
// pages[s / page_size]). acc: (n_slots), acc[s] += Σ_g softmax_g(scale · q_g · k_s).
// scratch: at least group · n_slots floats.
void attention_probs_add(const paged_kv_view& kv, int64_t kv_head, const int32_t* pages, int64_t n_slots, const float* q,
                         int64_t group, float scale, float* acc, float* scratch);

namespace ref {
// Float64 reference of the same sum (acc in double).
void attention_probs_add(const paged_kv_view& kv, int64_t kv_head, const int32_t* pages, int64_t n_slots, const float* q,
                         int64_t group, float scale, double* acc);
}  // namespace ref

}  // namespace kvs::cpu
