// AVX-512 Quest page scores (quest.h): page by page, each 16 channels of the bounds are loaded
// once and every query head of the group takes its two fused products from them; one
// horizontal sum per (page, head). The signs of the queries are split once per call.
#include "kernels/cpu/intrinsics.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/quest.h"

namespace kvs::cpu::detail {

namespace {

float hsum(__m512 v) {
    __m512 t = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4e));  // + the other 256 bits
    t = _mm512_add_ps(t, _mm512_shuffle_f32x4(t, t, 0xb1));          // + the neighbouring 128 bits
    __m128 x = _mm512_castps512_ps128(t);
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

// 16 bf16 values (lanes outside m: 0) widened to float.
__m512 bf16x16(__mmask16 m, const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

}  // namespace

void quest_page_scores_avx512(const float* q, int64_t n_group, int64_t hd, const uint16_t* bounds, size_t page_stride,
                              const int32_t* page_ids, int64_t n_pages, float* out) {
    constexpr int64_t max_elems = 8192;  // n_group · head_dim held split by sign (2 × 32 KB)
    if (n_group * hd > max_elems) {      // (no model has that many heads per group at this size)
        for (int64_t g0 = 0; g0 < n_group; g0 += max_elems / hd) {
            const int64_t ng = std::min(n_group - g0, max_elems / hd);
            std::vector<float> part(static_cast<size_t>(n_pages));
            quest_page_scores_avx512(q + g0 * hd, ng, hd, bounds, page_stride, page_ids, n_pages, part.data());
            for (int64_t i = 0; i < n_pages; ++i) out[i] = g0 == 0 ? part[size_t(i)] : std::max(out[i], part[size_t(i)]);
        }
        return;
    }
    alignas(64) float qpos[max_elems], qneg[max_elems];
    for (int64_t e = 0; e < n_group * hd; ++e) {
        qpos[e] = std::max(q[e], 0.0f);
        qneg[e] = std::min(q[e], 0.0f);
    }
    const int64_t n_chunks = (hd + 15) / 16;
    const __mmask16 tail = hd % 16 ? __mmask16((1u << (hd % 16)) - 1) : __mmask16(0xffff);
    for (int64_t i = 0; i < n_pages; ++i) {
        const uint16_t* mn = bounds + size_t(page_ids[i]) * page_stride;
        const uint16_t* mx = mn + hd;
        if (i + 2 < n_pages) {
            const char* next = reinterpret_cast<const char*>(bounds + size_t(page_ids[i + 2]) * page_stride);
            for (int64_t off = 0; off < 2 * hd * 2; off += 64) _mm_prefetch(next + off, _MM_HINT_T0);
        }
        float best = -std::numeric_limits<float>::infinity();
        for (int64_t g = 0; g < n_group; ++g) {
            __m512 acc = _mm512_setzero_ps();
            for (int64_t c = 0; c < n_chunks; ++c) {
                const __mmask16 m = c + 1 == n_chunks ? tail : __mmask16(0xffff);
                const int64_t d = c * 16;
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qpos + g * hd + d), bf16x16(m, mx + d), acc);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, qneg + g * hd + d), bf16x16(m, mn + d), acc);
            }
            best = std::max(best, hsum(acc));
        }
        out[i] = best;
    }
}

}  // namespace kvs::cpu::detail
