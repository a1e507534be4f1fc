// Quest's page scores (Tang et al., 2024): an upper bound of the attention logits a query can
// give the keys of a page, from the page's channel-wise key bounds (kv_cache::key_bounds):
//
//   bound(q, page) = Σ_d max(q_d · min_d, q_d · max_d)   ≥ q · k for every key k of the page
//
// computed as Σ_d q⁺_d · max_d + q⁻_d · min_d (q⁺ = max(q, 0), q⁻ = min(q, 0); the same value,
// one fused product per channel). With GQA the n_group query heads that share a KV head read
// the same pages, so a page's score is the largest of their bounds: an upper bound of the
// largest logit any head of the group gives a key of the page (the unscaled q·k; the softmax
// scale is positive and does not change the order).
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvs::cpu {

// q: (n_group, head_dim) query heads of one KV head, rotated. Page page_ids[i]'s bounds are
// (min, max) × head_dim floats at bounds + page_ids[i] · page_stride. out: (n_pages).
// head_dim <= 1024.
void quest_page_scores(const float* q, int64_t n_group, int64_t head_dim, const float* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, float* out);

namespace ref {
// The definition, max(q·min, q·max) per channel, in double.
void quest_page_scores(const float* q, int64_t n_group, int64_t head_dim, const float* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, double* out);
}  // namespace ref

}  // namespace kvs::cpu
