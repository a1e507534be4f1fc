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
// (min, max) × head_dim bf16 values at bounds + page_ids[i] · page_stride. out: (n_pages).
void quest_page_scores(const float* q, int64_t n_group, int64_t head_dim, const uint16_t* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, float* out);

// bf16 (the high half of a float's bits) with directed rounding, for bounds that must hold.
inline float bf16_to_f32(uint16_t b) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
}
inline uint16_t bf16_round_down(float x) {  // the largest bf16 <= x (x finite)
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    const uint16_t t = uint16_t(u >> 16);  // toward zero
    if ((u & 0xffff) == 0) return t;
    return x > 0 ? t : uint16_t(t + 1);  // a negative number grows in magnitude
}
inline uint16_t bf16_round_up(float x) {  // the smallest bf16 >= x (x finite)
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    const uint16_t t = uint16_t(u >> 16);
    if ((u & 0xffff) == 0) return t;
    return x > 0 ? uint16_t(t + 1) : t;
}

namespace ref {
// The definition, max(q·min, q·max) per channel, in double.
void quest_page_scores(const float* q, int64_t n_group, int64_t head_dim, const uint16_t* bounds, size_t page_stride,
                       const int32_t* page_ids, int64_t n_pages, double* out);
}  // namespace ref

}  // namespace kvs::cpu
