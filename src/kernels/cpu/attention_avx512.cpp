// AVX-512 attention tile kernel. Query vectors lie along the 16 lanes (a GQA group's heads ×
// a few rows of one sequence share each K/V element loaded), so scores, the online softmax
// (running max, denominator) and the output accumulation are all lane-parallel with no
// horizontal reductions: S[t] = Σ_d K[t][d] · Qᵀ[d] and Oᵀ[d] += Σ_t V[t][d] · P[t], each
// a broadcast of one K/V element times a vector of query lanes (FMA with a memory broadcast).
// Compiled with KVSERVE_AVX512_FLAGS (file name); see the ODR rule in isa.h.
#include "kernels/cpu/attention_isa.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(__AVX512F__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
#endif
#define KVS_ISA_PATH 1
#elif defined(__x86_64__) && defined(__AVX512F__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>
#include <vector>

namespace kvs::cpu::detail {

namespace {

constexpr float neg_inf = -std::numeric_limits<float>::infinity();
constexpr int64_t tile_keys = 32;  // keys per online-softmax step

// e^x for 16 lanes (see matmul_avx512.cpp): degree-6 polynomial on x - n·ln2, scaled by 2^n.
// exp(-inf) = 0 (the clamp keeps vscalefps in range).
__m512 exp512(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f), ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(100.0f)), _mm512_set1_ps(-110.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

constexpr int64_t pad_keys = 16;   // a score group may run past the tile (padded keys are masked)

// Per-thread scratch of 64-byte vectors, grown on first use: qt (hd, NV) scaled queries,
// transposed; ot (hd, NV) unnormalized output, transposed; s (tile_keys + pad_keys, NV) scores,
// then probabilities.
__m512* scratch_vectors(int64_t n) {
    static thread_local std::vector<float> buf;
    const size_t need = size_t(n) * 16 + 16;
    if (buf.size() < need) buf.resize(need);
    auto p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<__m512*>((p + 63) & ~uintptr_t(63));
}

// S[j][v] for KG keys starting at key pointers kp: Σ_d kp[j][d] · Qt[d][v].
template <int NV, int KG>
inline void scores(const float* const* kp, const __m512* qt, int64_t hd, __m512* s_out) {
    __m512 acc[KG][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_setzero_ps();
    for (int64_t d = 0; d < hd; ++d) {
        __m512 qd[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) qd[v] = qt[d * NV + v];
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j) {
            const __m512 kb = _mm512_set1_ps(kp[j][d]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = _mm512_fmadd_ps(kb, qd[v], acc[j][v]);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s_out[j * NV + v] = acc[j][v];
}

// Oᵀ[d0 + i][v] += Σ_t vp[t][d0 + i] · P[t][v] for i < DG.
template <int NV, int DG>
inline void accumulate(const float* const* vp, int64_t n_t, const __m512* p, __m512* ot, int64_t d0) {
    __m512 acc[DG][NV];
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = ot[(d0 + i) * NV + v];
    for (int64_t t = 0; t < n_t; ++t) {
        __m512 pt[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) pt[v] = p[t * NV + v];
        const float* vr = vp[t] + d0;
#pragma GCC unroll 16
        for (int i = 0; i < DG; ++i) {
            const __m512 vb = _mm512_set1_ps(vr[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(vb, pt[v], acc[i][v]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) ot[(d0 + i) * NV + v] = acc[i][v];
}

template <int NV>
void attend(const attn_work& w) {
    constexpr int KG = 16 / NV;  // keys per score group: KG × NV accumulators
    constexpr int DG = 16 / NV;  // output dims per accumulation group
    const int64_t hd = w.hd, n_qv = w.n_rows * w.n_group;
    __m512* qt = scratch_vectors(2 * hd * NV + (tile_keys + pad_keys) * NV);
    __m512* ot = qt + hd * NV;
    __m512* s = ot + hd * NV;

    // Transposed, scaled queries; lanes past n_qv are zero and see no key (len 0).
    alignas(64) float lane_f[16];
    alignas(64) int32_t lane_len[NV][16];
    int64_t max_len = 0;
    for (int v = 0; v < NV; ++v)
        for (int l = 0; l < 16; ++l) {
            const int64_t qv = v * 16 + l;
            lane_len[v][l] = qv < n_qv ? w.kv_len[qv / w.n_group] : 0;
            max_len = std::max<int64_t>(max_len, lane_len[v][l]);
        }
    for (int64_t d = 0; d < hd; ++d)
        for (int v = 0; v < NV; ++v) {
            for (int l = 0; l < 16; ++l) {
                const int64_t qv = v * 16 + l;
                lane_f[l] = qv < n_qv ? w.q[(qv / w.n_group) * w.q_row_stride + (qv % w.n_group) * hd + d] * w.scale : 0.0f;
            }
            qt[d * NV + v] = _mm512_load_ps(lane_f);
            ot[d * NV + v] = _mm512_setzero_ps();
        }
    __m512i lenv[NV];
    __m512 m[NV], lsum[NV];
    for (int v = 0; v < NV; ++v) {
        lenv[v] = _mm512_loadu_si512(lane_len[v]);
        m[v] = _mm512_set1_ps(neg_inf);
        lsum[v] = _mm512_setzero_ps();
    }

    const int64_t t_end = std::min(w.t1, max_len);
    const float* kp[tile_keys + pad_keys];
    const float* vp[tile_keys + pad_keys];
    for (int64_t t0 = w.t0; t0 < t_end; t0 += tile_keys) {
        const int64_t n_t = std::min(tile_keys, t_end - t0);
        for (int64_t j = 0; j < tile_keys + pad_keys; ++j) {
            const int64_t slot = t0 + std::min(j, n_t - 1);  // pad with the last key (masked)
            const size_t off = size_t(w.pages[slot / w.page_size]) * w.page_elems + w.head_off +
                               size_t((slot % w.page_size) * hd);
            kp[j] = w.k + off;
            vp[j] = w.v + off;
        }
        const int64_t n_groups = (n_t + KG - 1) / KG;
        for (int64_t g = 0; g < n_groups; ++g) scores<NV, KG>(kp + g * KG, qt, hd, s + g * KG * NV);
        // Mask keys a lane may not see (slot >= its kv_len, or tile padding), tile max.
        __m512 mx[NV];
        for (int v = 0; v < NV; ++v) mx[v] = _mm512_set1_ps(neg_inf);
        for (int64_t j = 0; j < n_t; ++j) {
            const __m512i slot = _mm512_set1_epi32(int32_t(t0 + j));
            for (int v = 0; v < NV; ++v) {
                const __mmask16 vis = _mm512_cmpgt_epi32_mask(lenv[v], slot);
                s[j * NV + v] = _mm512_mask_mov_ps(_mm512_set1_ps(neg_inf), vis, s[j * NV + v]);
                mx[v] = _mm512_max_ps(mx[v], s[j * NV + v]);
            }
        }
        // Online softmax: rescale the running state to the new max (lanes that have seen no
        // key keep max -inf; they use 0 as the reference so exp gives 0, never NaN).
        bool rescale = false;
        __m512 corr[NV];
        for (int v = 0; v < NV; ++v) {
            const __m512 m_new = _mm512_max_ps(m[v], mx[v]);
            const __mmask16 live = _mm512_cmp_ps_mask(m_new, _mm512_set1_ps(neg_inf), _CMP_NEQ_OQ);
            const __m512 m_ref = _mm512_maskz_mov_ps(live, m_new);
            corr[v] = exp512(_mm512_sub_ps(m[v], m_ref));
            rescale = rescale || _mm512_cmp_ps_mask(m_new, m[v], _CMP_NEQ_OQ) != 0;
            __m512 ps = _mm512_setzero_ps();
            for (int64_t j = 0; j < n_t; ++j) {
                const __m512 p = exp512(_mm512_sub_ps(s[j * NV + v], m_ref));
                s[j * NV + v] = p;
                ps = _mm512_add_ps(ps, p);
            }
            lsum[v] = _mm512_fmadd_ps(lsum[v], corr[v], ps);
            m[v] = m_new;
        }
        if (rescale) {
            for (int64_t d = 0; d < hd; ++d)
                for (int v = 0; v < NV; ++v) ot[d * NV + v] = _mm512_mul_ps(ot[d * NV + v], corr[v]);
        }
        int64_t d = 0;
        for (; d + DG <= hd; d += DG) accumulate<NV, DG>(vp, n_t, s, ot, d);
        for (; d < hd; ++d) accumulate<NV, 1>(vp, n_t, s, ot, d);
    }

    // Normalize and write back (lanes → (row, head)).
    alignas(64) float mv[16], lv[16];
    for (int v = 0; v < NV; ++v) {
        _mm512_store_ps(mv, m[v]);
        _mm512_store_ps(lv, lsum[v]);
        for (int l = 0; l < 16; ++l) {
            const int64_t qv = v * 16 + l;
            if (qv >= n_qv) break;
            const int64_t r = qv / w.n_group, g = qv % w.n_group;
            float* out = w.o + r * w.o_row_stride + g * hd;
            if (lv[l] == 0.0f) {
                std::fill(out, out + hd, 0.0f);
                w.lse[r * w.lse_row_stride + g] = neg_inf;
                continue;
            }
            const float inv = 1.0f / lv[l];
            const float* otf = reinterpret_cast<const float*>(ot) + v * 16 + l;
            for (int64_t dd = 0; dd < hd; ++dd) out[dd] = otf[dd * NV * 16] * inv;
            w.lse[r * w.lse_row_stride + g] = mv[l] + std::log(lv[l]);
        }
    }
}

void attend_any(const attn_work& w) {
    const int64_t n_qv = w.n_rows * w.n_group;
    if (n_qv <= 16) return attend<1>(w);
    if (n_qv <= 32) return attend<2>(w);
    if (n_qv <= 48) return attend<3>(w);
    return attend<4>(w);
}

}  // namespace

attn_fn attention_kernel_avx512() { return attend_any; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
attn_fn attention_kernel_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
