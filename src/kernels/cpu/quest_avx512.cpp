// AVX-512 Quest page scores (quest.h): two pages at a time against blocks of up to 8 query
// heads. Each 16 channels of the pages' bounds are widened once per block and every head's 16
// channels of the query are loaded once for both pages; the 16 accumulators (2 pages × 8 heads)
// are reduced together by one transpose-and-add tree, then maxed over the heads. The signs of
// the queries are split once per call.
#include "kernels/cpu/intrinsics.h"

#include <algorithm>
#include <limits>
#include <vector>

#include "kernels/cpu/quest.h"

namespace kvs::cpu::detail {

namespace {

// 16 bf16 values (lanes outside m: 0) widened to float.
__m512 bf16x16(__mmask16 m, const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// Lane i of the result: the sum of the 16 lanes of v[i].
__m512 transpose_sums16(const __m512* v) {
    __m512 p[8], q[4], r[2];
    for (int k = 0; k < 8; ++k) p[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]), _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
    for (int k = 0; k < 4; ++k)
        q[k] = _mm512_add_ps(_mm512_shuffle_ps(p[2 * k], p[2 * k + 1], 0x44), _mm512_shuffle_ps(p[2 * k], p[2 * k + 1], 0xEE));
    for (int k = 0; k < 2; ++k)
        r[k] = _mm512_add_ps(_mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], 0x88), _mm512_shuffle_f32x4(q[2 * k], q[2 * k + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], 0x88), _mm512_shuffle_f32x4(r[0], r[1], 0xDD));
}

float max8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_permute2f128_ps(x, x, 1));
    x = _mm256_max_ps(x, _mm256_permute_ps(x, 0x4e));
    x = _mm256_max_ps(x, _mm256_permute_ps(x, 0xb1));
    return _mm256_cvtss_f32(x);
}

// Two pages (mn0/mx0, mn1/mx1) against NG <= 8 query heads (qpos/qneg rows hd apart): per
// page the largest of the heads' bounds. Accumulators: 2 × NG independent chains.
template <int NG>
void two_pages(const float* qpos, const float* qneg, int64_t hd, int64_t n_chunks, __mmask16 tail, const uint16_t* mn0,
               const uint16_t* mn1, float* best0, float* best1) {
    __m512 acc[16];
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    for (int64_t c = 0; c < n_chunks; ++c) {
        const __mmask16 m = c + 1 == n_chunks ? tail : __mmask16(0xffff);
        const int64_t d = c * 16;
        const __m512 lo0 = bf16x16(m, mn0 + d), hi0 = bf16x16(m, mn0 + hd + d);
        const __m512 lo1 = bf16x16(m, mn1 + d), hi1 = bf16x16(m, mn1 + hd + d);
#pragma GCC unroll 8
        for (int j = 0; j < NG; ++j) {
            const __m512 qp = _mm512_maskz_loadu_ps(m, qpos + j * hd + d), qn = _mm512_maskz_loadu_ps(m, qneg + j * hd + d);
            acc[j] = _mm512_fmadd_ps(qn, lo0, _mm512_fmadd_ps(qp, hi0, acc[j]));
            acc[8 + j] = _mm512_fmadd_ps(qn, lo1, _mm512_fmadd_ps(qp, hi1, acc[8 + j]));
        }
    }
    __m512 sums = transpose_sums16(acc);  // lanes 0..7: page 0's heads, 8..15: page 1's
    constexpr __mmask16 used = __mmask16(((1u << NG) - 1) | (((1u << NG) - 1) << 8));
    sums = _mm512_mask_mov_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), used, sums);
    *best0 = std::max(*best0, max8(_mm512_castps512_ps256(sums)));
    *best1 = std::max(*best1, max8(_mm512_extractf32x8_ps(sums, 1)));
}

using two_pages_fn = void (*)(const float*, const float*, int64_t, int64_t, __mmask16, const uint16_t*, const uint16_t*, float*, float*);
constexpr two_pages_fn two_pages_of[9] = {nullptr,        two_pages<1>, two_pages<2>, two_pages<3>, two_pages<4>,
                                          two_pages<5>, two_pages<6>, two_pages<7>, two_pages<8>};

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
    constexpr int64_t ahead = 8;  // pages prefetched ahead: the bounds of a page are 4 lines at hd 64
    auto prefetch = [&](int64_t i) {
        if (i >= n_pages) return;
        const char* p = reinterpret_cast<const char*>(bounds + size_t(page_ids[i]) * page_stride);
        for (int64_t off = 0; off < 2 * hd * 2; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
    };
    // Pages in pairs (an odd last page is paired with itself), heads in blocks of 8.
    for (int64_t i = 0; i < n_pages; i += 2) {
        prefetch(i + ahead);
        prefetch(i + ahead + 1);
        const uint16_t* mn0 = bounds + size_t(page_ids[i]) * page_stride;
        const uint16_t* mn1 = i + 1 < n_pages ? bounds + size_t(page_ids[i + 1]) * page_stride : mn0;
        float best0 = -std::numeric_limits<float>::infinity(), best1 = best0;
        for (int64_t g0 = 0; g0 < n_group; g0 += 8)
            two_pages_of[std::min<int64_t>(8, n_group - g0)](qpos + g0 * hd, qneg + g0 * hd, hd, n_chunks, tail, mn0, mn1, &best0, &best1);
        out[i] = best0;
        if (i + 1 < n_pages) out[i + 1] = best1;
    }
}

}  // namespace kvs::cpu::detail
