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

// 8- and 16-lane float vectors with the operations the kernel needs (AVX-512VL masks for
// both widths).
struct vec16 {
    using reg = __m512;
    using ireg = __m512i;
    using mask = __mmask16;
    static constexpr int lanes = 16;
    static reg zero() { return _mm512_setzero_ps(); }
    static reg set1(float x) { return _mm512_set1_ps(x); }
    static ireg set1_i(int32_t x) { return _mm512_set1_epi32(x); }
    static reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
    static reg load(const float* p) { return _mm512_load_ps(p); }
    static void store(float* p, reg v) { _mm512_store_ps(p, v); }
    static ireg loadu_i(const int32_t* p) { return _mm512_loadu_si512(p); }
    static reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
    static reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
    static mask cmpgt_i32(ireg a, ireg b) { return _mm512_cmpgt_epi32_mask(a, b); }
    static mask cmp_neq(reg a, reg b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_OQ); }
    static reg mask_mov(reg src, mask m, reg v) { return _mm512_mask_mov_ps(src, m, v); }
    static reg maskz_mov(mask m, reg v) { return _mm512_maskz_mov_ps(m, v); }
    static reg exp(reg x) { return exp512(x); }
};

// e^x for 8 lanes, as exp512.
__m256 exp256(__m256 x) {
    const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
    const __m256 ln2_hi = _mm256_set1_ps(0.693359375f), ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(100.0f)), _mm256_set1_ps(-110.0f));
    __m256 n = _mm256_roundscale_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, ln2_hi, x);
    r = _mm256_fnmadd_ps(n, ln2_lo, r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    return _mm256_scalef_ps(p, n);
}

struct vec8 {
    using reg = __m256;
    using ireg = __m256i;
    using mask = __mmask8;
    static constexpr int lanes = 8;
    static reg zero() { return _mm256_setzero_ps(); }
    static reg set1(float x) { return _mm256_set1_ps(x); }
    static ireg set1_i(int32_t x) { return _mm256_set1_epi32(x); }
    static reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
    static reg load(const float* p) { return _mm256_load_ps(p); }
    static void store(float* p, reg v) { _mm256_store_ps(p, v); }
    static ireg loadu_i(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
    static reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
    static reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
    static reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
    static reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
    static mask cmpgt_i32(ireg a, ireg b) { return _mm256_cmpgt_epi32_mask(a, b); }
    static mask cmp_neq(reg a, reg b) { return _mm256_cmp_ps_mask(a, b, _CMP_NEQ_OQ); }
    static reg mask_mov(reg src, mask m, reg v) { return _mm256_mask_mov_ps(src, m, v); }
    static reg maskz_mov(mask m, reg v) { return _mm256_maskz_mov_ps(m, v); }
    static reg exp(reg x) { return exp256(x); }
};

// Per-thread scratch of 64-byte vectors, grown on first use: qt (hd, NV) scaled queries,
// transposed; ot (hd, NV) unnormalized output, transposed; s (tile_keys, NV) scores,
// then probabilities.
__m512* scratch_vectors(int64_t n) {
    static thread_local std::vector<float> buf;
    const size_t need = size_t(n) * 16 + 16;
    if (buf.size() < need) buf.resize(need);
    auto p = reinterpret_cast<uintptr_t>(buf.data());
    return reinterpret_cast<__m512*>((p + 63) & ~uintptr_t(63));
}

// S[j][v] for KG consecutive keys of one page starting at kb (rows hd floats apart):
// Σ_d kb[j·hd + d] · Qt[d][v]. With HD known at compile time every K element is a constant
// displacement from one base register (HD = 0: run-time head_dim).
template <class VT, int NV, int KG, int HD>
inline void scores(const float* kb, const typename VT::reg* qt, int64_t hd_rt, typename VT::reg* s_out) {
    const int64_t hd = HD ? HD : hd_rt;
    typename VT::reg acc[KG][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][v] = VT::zero();
    for (int64_t d = 0; d < hd; ++d) {
        typename VT::reg qd[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) qd[v] = qt[d * NV + v];
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j) {
            const typename VT::reg kb_d = VT::set1(kb[j * hd + d]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = VT::fmadd(kb_d, qd[v], acc[j][v]);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s_out[j * NV + v] = acc[j][v];
}

// Oᵀ[d0 + i][v] += Σ_t vb[t·hd + d0 + i] · P[t][v] for i < DG, over n_t consecutive keys.
template <class VT, int NV, int DG, int HD>
inline void accumulate(const float* vb, int64_t hd_rt, int64_t n_t, const typename VT::reg* p, typename VT::reg* ot, int64_t d0) {
    const int64_t hd = HD ? HD : hd_rt;
    typename VT::reg acc[DG][NV];
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = ot[(d0 + i) * NV + v];
    const float* vr = vb + d0;
    for (int64_t t = 0; t < n_t; ++t, vr += hd) {
        typename VT::reg pt[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) pt[v] = p[t * NV + v];
#pragma GCC unroll 16
        for (int i = 0; i < DG; ++i) {
            const typename VT::reg vbc = VT::set1(vr[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = VT::fmadd(vbc, pt[v], acc[i][v]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) ot[(d0 + i) * NV + v] = acc[i][v];
}

template <class VT, int NV, int HD>
void attend(const attn_work& w) {
    constexpr int KG = 16 / NV;  // keys per score group: KG × NV accumulators
    constexpr int DG = 16 / NV;  // output dims per accumulation group
    const int64_t hd = w.hd, n_qv = w.n_rows * w.n_group;
    auto* qt = reinterpret_cast<typename VT::reg*>(scratch_vectors(2 * hd * NV + tile_keys * NV));
    typename VT::reg* ot = qt + hd * NV;
    typename VT::reg* s = ot + hd * NV;

    // Transposed, scaled queries; lanes past n_qv are zero and see no key (len 0).
    alignas(64) float lane_f[16];
    alignas(64) int32_t lane_len[NV][16];
    int64_t max_len = 0;
    for (int v = 0; v < NV; ++v)
        for (int l = 0; l < VT::lanes; ++l) {
            const int64_t qv = v * VT::lanes + l;
            lane_len[v][l] = qv < n_qv ? w.kv_len[qv / w.n_group] : 0;
            max_len = std::max<int64_t>(max_len, lane_len[v][l]);
        }
    for (int64_t d = 0; d < hd; ++d)
        for (int v = 0; v < NV; ++v) {
            for (int l = 0; l < VT::lanes; ++l) {
                const int64_t qv = v * VT::lanes + l;
                lane_f[l] = qv < n_qv ? w.q[(qv / w.n_group) * w.q_row_stride + (qv % w.n_group) * hd + d] * w.scale : 0.0f;
            }
            qt[d * NV + v] = VT::load(lane_f);
            ot[d * NV + v] = VT::zero();
        }
    typename VT::ireg lenv[NV];
    typename VT::reg m[NV], lsum[NV];
    for (int v = 0; v < NV; ++v) {
        lenv[v] = VT::loadu_i(lane_len[v]);
        m[v] = VT::set1(neg_inf);
        lsum[v] = VT::zero();
    }

    const int64_t t_end = std::min(w.t1, max_len);
    // Tiles are runs of consecutive keys inside one page (contiguous rows of K and V).
    for (int64_t t0 = w.t0, n_t = 0; t0 < t_end; t0 += n_t) {
        const int64_t in_page = t0 % w.page_size;
        n_t = std::min({tile_keys, t_end - t0, w.page_size - in_page});
        const size_t off = size_t(w.pages[t0 / w.page_size]) * w.page_elems + w.head_off + size_t(in_page * hd);
        const float* kb = w.k + off;
        const float* vb = w.v + off;
        // Prefetch the next tile's K and V rows: a tile is only a few KB of a page, too short
        // a stream for the hardware prefetcher, so without this every tile waits on DRAM.
        const int64_t t_next = t0 + n_t;
        if (t_next < t_end) {
            const int64_t nip = t_next % w.page_size;
            const int64_t n_next = std::min({tile_keys, t_end - t_next, w.page_size - nip});
            const size_t off_next = size_t(w.pages[t_next / w.page_size]) * w.page_elems + w.head_off + size_t(nip * hd);
            const char* kn = reinterpret_cast<const char*>(w.k + off_next);
            const char* vn = reinterpret_cast<const char*>(w.v + off_next);
            const int64_t bytes = n_next * hd * int64_t(sizeof(float));
            for (int64_t b = 0; b < bytes; b += 64) {
                _mm_prefetch(kn + b, _MM_HINT_T0);
                _mm_prefetch(vn + b, _MM_HINT_T0);
            }
        }
        int64_t jk = 0;
        for (; jk + KG <= n_t; jk += KG) scores<VT, NV, KG, HD>(kb + jk * hd, qt, hd, s + jk * NV);
        for (; jk < n_t; ++jk) scores<VT, NV, 1, HD>(kb + jk * hd, qt, hd, s + jk * NV);
        // Mask keys a lane may not see (slot >= its kv_len), tile max.
        typename VT::reg mx[NV];
        for (int v = 0; v < NV; ++v) mx[v] = VT::set1(neg_inf);
        for (int64_t j = 0; j < n_t; ++j) {
            const typename VT::ireg slot = VT::set1_i(int32_t(t0 + j));
            for (int v = 0; v < NV; ++v) {
                const typename VT::mask vis = VT::cmpgt_i32(lenv[v], slot);
                s[j * NV + v] = VT::mask_mov(VT::set1(neg_inf), vis, s[j * NV + v]);
                mx[v] = VT::max(mx[v], s[j * NV + v]);
            }
        }
        // Online softmax: rescale the running state to the new max (lanes that have seen no
        // key keep max -inf; they use 0 as the reference so exp gives 0, never NaN).
        bool rescale = false;
        typename VT::reg corr[NV];
        for (int v = 0; v < NV; ++v) {
            const typename VT::reg m_new = VT::max(m[v], mx[v]);
            const typename VT::mask live = VT::cmp_neq(m_new, VT::set1(neg_inf));
            const typename VT::reg m_ref = VT::maskz_mov(live, m_new);
            corr[v] = VT::exp(VT::sub(m[v], m_ref));
            rescale = rescale || VT::cmp_neq(m_new, m[v]) != 0;
            typename VT::reg ps = VT::zero();
            for (int64_t j = 0; j < n_t; ++j) {
                const typename VT::reg p = VT::exp(VT::sub(s[j * NV + v], m_ref));
                s[j * NV + v] = p;
                ps = VT::add(ps, p);
            }
            lsum[v] = VT::fmadd(lsum[v], corr[v], ps);
            m[v] = m_new;
        }
        if (rescale) {
            for (int64_t d = 0; d < hd; ++d)
                for (int v = 0; v < NV; ++v) ot[d * NV + v] = VT::mul(ot[d * NV + v], corr[v]);
        }
        int64_t d = 0;
        for (; d + DG <= hd; d += DG) accumulate<VT, NV, DG, HD>(vb, hd, n_t, s, ot, d);
        for (; d < hd; ++d) accumulate<VT, NV, 1, HD>(vb, hd, n_t, s, ot, d);
    }

    // Normalize and write back (lanes → (row, head)).
    alignas(64) float mv[16], lv[16];
    for (int v = 0; v < NV; ++v) {
        VT::store(mv, m[v]);
        VT::store(lv, lsum[v]);
        for (int l = 0; l < VT::lanes; ++l) {
            const int64_t qv = v * VT::lanes + l;
            if (qv >= n_qv) break;
            const int64_t r = qv / w.n_group, g = qv % w.n_group;
            float* out = w.o + r * w.o_row_stride + g * hd;
            if (lv[l] == 0.0f) {
                std::fill(out, out + hd, 0.0f);
                w.lse[r * w.lse_row_stride + g] = neg_inf;
                continue;
            }
            const float inv = 1.0f / lv[l];
            const float* otf = reinterpret_cast<const float*>(ot) + v * VT::lanes + l;
            for (int64_t dd = 0; dd < hd; ++dd) out[dd] = otf[dd * NV * VT::lanes] * inv;
            w.lse[r * w.lse_row_stride + g] = mv[l] + std::log(lv[l]);
        }
    }
}

// Up to 8 query vectors (decode with a GQA group of <= 8): 8-lane ymm, which Zen 4 issues at
// twice the zmm rate, so no FMA is spent on empty lanes.
template <int HD>
void attend_hd(const attn_work& w) {
    const int64_t n_qv = w.n_rows * w.n_group;
    if (n_qv <= 8) return attend<vec8, 1, HD>(w);
    if (n_qv <= 16) return attend<vec16, 1, HD>(w);
    if (n_qv <= 32) return attend<vec16, 2, HD>(w);
    if (n_qv <= 48) return attend<vec16, 3, HD>(w);
    return attend<vec16, 4, HD>(w);
}

void attend_any(const attn_work& w) {
    switch (w.hd) {
        case 64: return attend_hd<64>(w);
        case 128: return attend_hd<128>(w);
        default: return attend_hd<0>(w);
    }
}

}  // namespace

attn_fn attention_kernel_avx512() { return attend_any; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
attn_fn attention_kernel_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
