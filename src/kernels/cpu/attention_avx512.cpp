// AVX-512 attention tile kernel. Query vectors lie along the 16 lanes (a GQA group's heads ×
// a few rows of one sequence share each K/V element loaded), so scores, the online softmax
// (running max, denominator) and the output accumulation are all lane-parallel with no
// horizontal reductions: S[t] = Σ_d K[t][d] · Qᵀ[d] and Oᵀ[d] += Σ_t V[t][d] · P[t], each
// a broadcast of one K/V element times a vector of query lanes (FMA with a memory broadcast).
// Per KV format: f32 reads the pages directly; f16 widens each tile to float32 in scratch
// (Zen 4 has no f16 dot product) and runs the same float32 tile; bf16 multiplies pairs with
// vdpbf16ps — a broadcast pair of consecutive dimensions of K against query pairs for Q·Kᵀ,
// and a broadcast pair of consecutive tokens of V (stored interleaved) against probability
// pairs for P·V — half the instructions of float32 FMAs and half the bytes. Quantized
// formats (q8_0, q4_0, q4_1) decode each tile's codes and f16 scales into float32 scratch
// (d · (u - 128), d · (u - 8), d · u + m, 16 lanes per instruction) and run the float32 tile:
// the pages are read once, in place, at 4.5-8.5 bits per value. KIVI pages (2- and 4-bit codes
// with per-channel key and per-token value parameters) are never decoded to values: the key
// scales fold into the query and the value scales into the probabilities, both as int16 for
// vpdpwssd against the codes (attend_kivi).
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

#include "kernels/cpu/intrinsics.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <cstring>
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
    // bf16 pairs: one 32-bit lane holds two bf16 values (element 2i low, 2i + 1 high).
    using breg = __m512i;
    static breg bcast32(const uint16_t* p) {
        int32_t x;
        std::memcpy(&x, p, 4);
        return _mm512_set1_epi32(x);
    }
    static breg bcast32_low(const uint16_t* p) { return _mm512_set1_epi32(int32_t(*p)); }
    static reg dot2(reg acc, breg a, breg b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
    // Rounds both to bf16 (nearest even) and interleaves: lane i = (even[i], odd[i]).
    static breg pack(reg even, reg odd) {
        const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                             21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
        return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(odd, even));
    }
    // The two halves of a pair lane as float32, summed.
    static reg pair_sum(breg x) {
        return _mm512_add_ps(_mm512_castsi512_ps(_mm512_slli_epi32(x, 16)),
                             _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int32_t(0xFFFF0000u)))));
    }
    static breg bload(const breg* p) { return _mm512_load_si512(p); }
    // VNNI: acc[l] += Σ_i u8(a[4l + i]) · s8(b[4l + i]).
    static ireg dpbusd(ireg acc, ireg a, ireg b) { return _mm512_dpbusd_epi32(acc, a, b); }
    // VNNI: acc[l] += Σ_i s16(a[2l + i]) · s16(b[2l + i]).
    static ireg dpwssd(ireg acc, ireg a, ireg b) { return _mm512_dpwssd_epi32(acc, a, b); }
    static ireg zero_i() { return _mm512_setzero_si512(); }
    static ireg bcast_u32(const uint8_t* p) {
        int32_t x;
        std::memcpy(&x, p, 4);
        return _mm512_set1_epi32(x);
    }
    static reg cvt_i32(ireg x) { return _mm512_cvtepi32_ps(x); }
    static reg abs(reg x) { return _mm512_abs_ps(x); }
    static reg div(reg a, reg b) { return _mm512_div_ps(a, b); }
    static ireg cvt_round(reg x) { return _mm512_cvtps_epi32(x); }  // nearest even
    static ireg and_i(ireg a, ireg b) { return _mm512_and_si512(a, b); }
    static ireg or_i(ireg a, ireg b) { return _mm512_or_si512(a, b); }
    static ireg sll_i(ireg a, int n) { return _mm512_sll_epi32(a, _mm_cvtsi32_si128(n)); }
    // Lane l = low 16 bits of lo[l] | low 16 bits of hi[l] << 16.
    static ireg pack_lo16(ireg lo, ireg hi) { return _mm512_mask_blend_epi16(__mmask32(0xAAAAAAAAu), lo, _mm512_slli_epi32(hi, 16)); }
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
    using breg = __m256i;
    static breg bcast32(const uint16_t* p) {
        int32_t x;
        std::memcpy(&x, p, 4);
        return _mm256_set1_epi32(x);
    }
    static breg bcast32_low(const uint16_t* p) { return _mm256_set1_epi32(int32_t(*p)); }
    static reg dot2(reg acc, breg a, breg b) { return _mm256_dpbf16_ps(acc, (__m256bh)a, (__m256bh)b); }
    static breg pack(reg even, reg odd) {
        const __m256i idx = _mm256_set_epi16(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
        return _mm256_permutexvar_epi16(idx, (__m256i)_mm256_cvtne2ps_pbh(odd, even));
    }
    static reg pair_sum(breg x) {
        return _mm256_add_ps(_mm256_castsi256_ps(_mm256_slli_epi32(x, 16)),
                             _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int32_t(0xFFFF0000u)))));
    }
    static breg bload(const breg* p) { return _mm256_load_si256(p); }
    static ireg dpbusd(ireg acc, ireg a, ireg b) { return _mm256_dpbusd_epi32(acc, a, b); }
    static ireg dpwssd(ireg acc, ireg a, ireg b) { return _mm256_dpwssd_epi32(acc, a, b); }
    static ireg zero_i() { return _mm256_setzero_si256(); }
    static ireg bcast_u32(const uint8_t* p) {
        int32_t x;
        std::memcpy(&x, p, 4);
        return _mm256_set1_epi32(x);
    }
    static reg cvt_i32(ireg x) { return _mm256_cvtepi32_ps(x); }
    static reg abs(reg x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
    static reg div(reg a, reg b) { return _mm256_div_ps(a, b); }
    static ireg cvt_round(reg x) { return _mm256_cvtps_epi32(x); }  // nearest even
    static ireg and_i(ireg a, ireg b) { return _mm256_and_si256(a, b); }
    static ireg or_i(ireg a, ireg b) { return _mm256_or_si256(a, b); }
    static ireg sll_i(ireg a, int n) { return _mm256_sll_epi32(a, _mm_cvtsi32_si128(n)); }
    static ireg pack_lo16(ireg lo, ireg hi) { return _mm256_blend_epi16(lo, _mm256_slli_epi32(hi, 16), 0xAA); }
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

// Byte offset of key slot t's tile start in its page (K and V blocks of this KV head).
inline const uint8_t* k_row_ptr(const attn_work& w, int64_t t, size_t elem) {
    return w.k + size_t(w.pages[t / w.page_size]) * w.k_page_bytes + w.k_head_off + size_t((t % w.page_size) * w.k_row_elems) * elem;
}
// f32: row t; 16-bit: the pair holding t (t even at every tile start).
inline const uint8_t* v_row_ptr(const attn_work& w, int64_t t, size_t elem) {
    const int64_t r = t % w.page_size;
    return w.v + size_t(w.pages[t / w.page_size]) * w.v_page_bytes + w.v_head_off + size_t(elem == 4 ? r * w.hd : (r / 2) * w.hd * 2) * elem;
}

// Prefetches the K and V bytes of the tile starting at t (n keys).
inline void prefetch_tile(const attn_work& w, int64_t t, int64_t n, size_t elem) {
    const char* kn = reinterpret_cast<const char*>(k_row_ptr(w, t, elem));
    const char* vn = reinterpret_cast<const char*>(v_row_ptr(w, t, elem));
    const int64_t kbytes = n * w.k_row_elems * int64_t(elem);
    const int64_t vbytes = (elem == 4 ? n : (n + 1) / 2 * 2) * w.hd * int64_t(elem);
    for (int64_t b = 0; b < kbytes; b += 64) _mm_prefetch(kn + b, _MM_HINT_T0);
    for (int64_t b = 0; b < vbytes; b += 64) _mm_prefetch(vn + b, _MM_HINT_T0);
}

// f16 tile → float32 rows (n_t, hd): K rows are row_elems apart; V is stored in token pairs
// ((n_t + 1) / 2, hd, 2) and is de-interleaved (the odd row past n_t is written, never read).
void widen_f16_tile(const uint16_t* k, int64_t row_elems, const uint16_t* v, int64_t n_t, int64_t hd, float* kf, float* vf) {
    for (int64_t t = 0; t < n_t; ++t)
        for (int64_t d = 0; d < hd; d += 16) {
            const __mmask16 m = hd - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (hd - d)) - 1);
            _mm512_mask_storeu_ps(kf + t * hd + d, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, k + t * row_elems + d)));
        }
    const __m512i deint = _mm512_set_epi16(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 30, 28, 26, 24, 22, 20,
                                           18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    for (int64_t tp = 0; tp < (n_t + 1) / 2; ++tp)
        for (int64_t d = 0; d < hd; d += 16) {
            const int64_t nd = std::min<int64_t>(16, hd - d);
            const __mmask32 m2 = nd == 16 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (2 * nd)) - 1);
            const __mmask16 m = nd == 16 ? __mmask16(0xFFFF) : __mmask16((1u << nd) - 1);
            const __m512i x = _mm512_permutexvar_epi16(deint, _mm512_maskz_loadu_epi16(m2, v + tp * hd * 2 + d * 2));
            _mm512_mask_storeu_ps(vf + (2 * tp) * hd + d, m, _mm512_cvtph_ps(_mm512_castsi512_si256(x)));
            _mm512_mask_storeu_ps(vf + (2 * tp + 1) * hd + d, m, _mm512_cvtph_ps(_mm512_extracti64x4_epi64(x, 1)));
        }
}

// Quantized formats: the K and V blocks holding slot t, and their rows.
inline const uint8_t* k_block_of(const attn_work& w, int64_t t) {
    return w.k + size_t(w.pages[t / w.page_size]) * w.k_page_bytes + w.k_head_off;
}
inline const uint8_t* v_block_of(const attn_work& w, int64_t t) {
    return w.v + size_t(w.pages[t / w.page_size]) * w.v_page_bytes + w.v_head_off;
}

// Where a quantized block's parts lie (K's and V's formats may differ).
struct qblock {
    int64_t row_bytes;
    size_t scale_off, min_off;
    bool has_min;
};
inline qblock k_qblock(const attn_work& w) { return {w.q_row_bytes, w.q_scale_off, w.q_min_off, w.fmt == kv_fmt::q4_1}; }
inline qblock v_qblock(const attn_work& w) { return {w.v_q_row_bytes, w.v_q_scale_off, w.v_q_min_off, w.v_fmt == kv_fmt::q4_1}; }

// Prefetches the codes and scales of rows [r0, r0 + n) of a quantized block.
inline void prefetch_quant_rows(const attn_work& w, const qblock& qb, const uint8_t* block, int64_t r0, int64_t n) {
    const char* c = reinterpret_cast<const char*>(block + r0 * qb.row_bytes);
    for (int64_t b = 0; b < n * qb.row_bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
    const int64_t sb = n * w.q_groups * 2 * (qb.has_min ? 2 : 1);
    const char* sc = reinterpret_cast<const char*>(block + qb.scale_off + r0 * w.q_groups * 2);
    for (int64_t b = 0; b < sb; b += 64) _mm_prefetch(sc + b, _MM_HINT_T0);
}

inline float f16_scalar(uint16_t h) { return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h))); }

// Rows [r0, r0 + n_t) of a quantized block (attention.h's layout) decoded to float32 rows
// (n_t, hd). Groups of 32 decode 16 lanes per instruction; smaller heads (one group of hd)
// element by element.
template <int FMT>
void widen_quant_rows(const attn_work& w, const qblock& qb, const uint8_t* block, int64_t r0, int64_t n_t, float* out) {
    const int64_t hd = w.hd, gs = w.q_group, ng = w.q_groups;
    const auto* ds = reinterpret_cast<const uint16_t*>(block + qb.scale_off) + r0 * ng;
    const auto* ms = reinterpret_cast<const uint16_t*>(block + qb.min_off) + r0 * ng;
    for (int64_t t = 0; t < n_t; ++t) {
        const uint8_t* codes = block + (r0 + t) * qb.row_bytes;
        float* o = out + t * hd;
        for (int64_t g = 0; g < ng; ++g) {
            const float d = f16_scalar(ds[t * ng + g]);
            const float off = FMT == int(kv_fmt::q8_0) ? -128.0f * d : FMT == int(kv_fmt::q4_0) ? -8.0f * d : f16_scalar(ms[t * ng + g]);
            if (gs == 32) {
                const __m512 dv = _mm512_set1_ps(d), offv = _mm512_set1_ps(off);
                __m128i lo, hi;
                if constexpr (FMT == int(kv_fmt::q8_0)) {
                    lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + g * 32));
                    hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + g * 32 + 16));
                } else {
                    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + g * 16));
                    const __m128i m4 = _mm_set1_epi8(0x0F);
                    lo = _mm_and_si128(c, m4);
                    hi = _mm_and_si128(_mm_srli_epi16(c, 4), m4);
                }
                _mm512_storeu_ps(o + g * 32, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), dv, offv));
                _mm512_storeu_ps(o + g * 32 + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), dv, offv));
                continue;
            }
            const int64_t half = (gs + 1) / 2;
            for (int64_t i = 0; i < gs; ++i) {
                int u;
                if constexpr (FMT == int(kv_fmt::q8_0)) u = codes[g * gs + i];
                else u = i < half ? codes[g * half + i] & 0x0F : codes[g * half + i - half] >> 4;
                o[g * gs + i] = float(u) * d + off;
            }
        }
    }
}

// Lane layout shared by the kernels: query vector qv = v * lanes + l; lanes past n_qv are
// zero and see no key (length 0). lenv: each lane's kv_len; beginv: each lane's first visible
// slot minus one (so that visibility is two greater-than compares).
// all_visible: the slots [from, to) that every lane with a query vector sees (to <= from: none),
// where tiles need no mask.
template <class VT, int NV>
int64_t lane_lengths(const attn_work& w, typename VT::ireg* lenv, typename VT::ireg* beginv, int64_t* all_from = nullptr,
                     int64_t* all_to = nullptr) {
    alignas(64) int32_t lane_len[NV][16], lane_begin[NV][16];
    const int64_t n_qv = w.n_rows * w.n_group;
    int64_t max_len = 0, from = 0, to = std::numeric_limits<int64_t>::max();
    for (int v = 0; v < NV; ++v) {
        for (int l = 0; l < VT::lanes; ++l) {
            const int64_t qv = v * VT::lanes + l;
            lane_len[v][l] = qv < n_qv ? w.kv_len[qv / w.n_group] : 0;
            lane_begin[v][l] = (qv < n_qv && w.kv_begin ? w.kv_begin[qv / w.n_group] : 0) - 1;
            max_len = std::max<int64_t>(max_len, lane_len[v][l]);
            if (qv < n_qv) {
                from = std::max<int64_t>(from, lane_begin[v][l] + 1);
                to = std::min<int64_t>(to, lane_len[v][l]);
            }
        }
        lenv[v] = VT::loadu_i(lane_len[v]);
        beginv[v] = VT::loadu_i(lane_begin[v]);
    }
    if (all_from) *all_from = from;
    if (all_to) *all_to = to;
    return max_len;
}

// Each lane's query vector (null past n_qv), computed once per call: the transposes below
// then index without divisions (which, per lane and dimension, cost as much as a short tile).
void lane_queries(const attn_work& w, const float** lane_q) {
    const int64_t n_qv = w.n_rows * w.n_group;
    for (int64_t qv = 0; qv < attn_max_qv; ++qv)
        lane_q[qv] = qv < n_qv ? w.q + (qv / w.n_group) * w.q_row_stride + (qv % w.n_group) * w.hd : nullptr;
}

// Scaled query dimension d of every lane of vector v (0 past hd and past n_qv).
template <class VT>
typename VT::reg query_lanes(const attn_work& w, const float* const* lane_q, int v, int64_t d) {
    alignas(64) float lane_f[16];
    for (int l = 0; l < VT::lanes; ++l) {
        const float* q = lane_q[v * VT::lanes + l];
        lane_f[l] = q && d < w.hd ? q[d] * w.scale : 0.0f;
    }
    return VT::load(lane_f);
}

// Masks slots a lane may not see (slot >= its kv_len or before its kv_begin) to -inf and
// returns the tile max. all_visible: every lane with a query vector sees the whole tile, so only
// the max is taken (lanes without one hold finite scores of a zero query, never written out).
template <class VT, int NV>
inline void mask_tile(typename VT::reg* s, int64_t t0, int64_t n_t, const typename VT::ireg* lenv,
                      const typename VT::ireg* beginv, typename VT::reg* mx, bool all_visible = false) {
    for (int v = 0; v < NV; ++v) mx[v] = VT::set1(neg_inf);
    if (all_visible) {
        for (int64_t j = 0; j < n_t; ++j)
            for (int v = 0; v < NV; ++v) mx[v] = VT::max(mx[v], s[j * NV + v]);
        return;
    }
    for (int64_t j = 0; j < n_t; ++j) {
        const typename VT::ireg slot = VT::set1_i(int32_t(t0 + j));
        for (int v = 0; v < NV; ++v) {
            const typename VT::mask vis = VT::cmpgt_i32(lenv[v], slot) & VT::cmpgt_i32(slot, beginv[v]);
            s[j * NV + v] = VT::mask_mov(VT::set1(neg_inf), vis, s[j * NV + v]);
            mx[v] = VT::max(mx[v], s[j * NV + v]);
        }
    }
}

// Normalizes and writes back (lanes → (row, head)); ot is (hd, NV) unnormalized.
template <class VT, int NV>
void write_out(const attn_work& w, const typename VT::reg* ot, const typename VT::reg* m, const typename VT::reg* lsum) {
    alignas(64) float mv[16], lv[16];
    const int64_t hd = w.hd, n_qv = w.n_rows * w.n_group;
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

// 16-bit K rows [0, n_t) (row_elems apart) to float32 rows (n_t, hd): bf16 by a shift, f16 by
// vcvtph2ps. Used where K is 16-bit but V is stored in another format.
template <bool BF16>
void widen_k16_rows(const uint16_t* k, int64_t row_elems, int64_t n_t, int64_t hd, float* kf) {
    for (int64_t t = 0; t < n_t; ++t)
        for (int64_t d = 0; d < hd; d += 16) {
            const __mmask16 m = hd - d >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (hd - d)) - 1);
            const __m256i x = _mm256_maskz_loadu_epi16(m, k + t * row_elems + d);
            const __m512 f = BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16)) : _mm512_cvtph_ps(x);
            _mm512_mask_storeu_ps(kf + t * hd + d, m, f);
        }
}

// V rows [r0, r0 + n_t) of the block holding slot t0 in V's own format (K's differs) to float32
// rows (n_t, hd). Returns the rows to read: f32 V in place, the others decoded into vf.
const float* v_rows_mixed(const attn_work& w, int64_t t0, int64_t r0, int64_t n_t, float* vf) {
    const uint8_t* block = v_block_of(w, t0);
    const int64_t hd = w.hd;
    switch (w.v_fmt) {
        case kv_fmt::f32: return reinterpret_cast<const float*>(block) + r0 * hd;
        case kv_fmt::q8_0: widen_quant_rows<int(kv_fmt::q8_0)>(w, v_qblock(w), block, r0, n_t, vf); return vf;
        case kv_fmt::q4_0: widen_quant_rows<int(kv_fmt::q4_0)>(w, v_qblock(w), block, r0, n_t, vf); return vf;
        case kv_fmt::q4_1: widen_quant_rows<int(kv_fmt::q4_1)>(w, v_qblock(w), block, r0, n_t, vf); return vf;
        default: break;
    }
    // 16-bit V: tokens in pairs, (page_size2 / 2, hd, 2).
    const auto* v16 = reinterpret_cast<const uint16_t*>(block);
    const bool bf = w.v_fmt == kv_fmt::bf16;
    for (int64_t t = 0; t < n_t; ++t) {
        const int64_t r = r0 + t;
        const uint16_t* row = v16 + (r / 2) * hd * 2 + (r & 1);
        for (int64_t d = 0; d < hd; ++d) {
            const uint16_t h = row[2 * d];
            vf[t * hd + d] = bf ? _mm_cvtss_f32(_mm_castsi128_ps(_mm_cvtsi32_si128(int32_t(uint32_t(h) << 16)))) : f16_scalar(h);
        }
    }
    return vf;
}

// Prefetches V rows [r0, r0 + n) of the block holding slot t in V's own format.
inline void prefetch_v_mixed(const attn_work& w, int64_t t, int64_t r0, int64_t n) {
    const uint8_t* block = v_block_of(w, t);
    if (w.v_fmt == kv_fmt::q8_0 || w.v_fmt == kv_fmt::q4_0 || w.v_fmt == kv_fmt::q4_1)
        return prefetch_quant_rows(w, v_qblock(w), block, r0, n);
    const int64_t elem = w.v_fmt == kv_fmt::f32 ? 4 : 2;
    const char* p = reinterpret_cast<const char*>(block + (elem == 4 ? r0 : r0 / 2 * 2) * w.hd * elem);
    for (int64_t b = 0; b < (n + 1) * w.hd * elem; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

// ---- quantized K: int8 Q·Kᵀ on VNNI ----------------------------------------------------------
//
// With K = a · u + b per (token, group) — u the stored code, a = d, b = -128·d (q8_0), -8·d
// (q4_0) or m (q4_1) — and the scaled query quantized per (lane, group) to c = round(q / sq),
// |c| <= 127:  q · k over a group = sq · (a · Σ u·c + b · Σ c).  Σ u·c is one vpdpbusd per 4
// dimensions (u unsigned, c signed), 16 (or 8) query lanes at a time, with the key's 4 codes
// broadcast; Σ c is per lane and computed once per call. The query's rounding (8 bits per
// group, as llama.cpp's activations for its q8_0 dot products) is the kernel's only error
// beyond float32 arithmetic.

// Query lanes quantized per group: q8t[(g · gp + p) · NV + v] holds, per lane, the codes of
// dimensions 4p .. 4p + 3 of group g (gp = group / 4 dwords per group); csum[g · NV + v] their
// sum and qsc[g · NV + v] the scale sq, both as float lanes.
template <class VT, int NV>
void quantize_query_lanes(const attn_work& w, const float* const* lane_q, typename VT::ireg* q8t, typename VT::reg* csum,
                          typename VT::reg* qsc) {
    const int64_t gs = w.q_group, ng = w.q_groups, gp = gs / 4;
    auto* q8 = reinterpret_cast<int8_t*>(q8t);
    auto* cs = reinterpret_cast<float*>(csum);
    auto* sc = reinterpret_cast<float*>(qsc);
    for (int v = 0; v < NV; ++v)
        for (int l = 0; l < VT::lanes; ++l) {
            const float* q = lane_q[v * VT::lanes + l];
            for (int64_t g = 0; g < ng; ++g) {
                float amax = 0;
                if (q)
                    for (int64_t i = 0; i < gs; ++i) amax = std::max(amax, std::fabs(q[g * gs + i] * w.scale));
                const float sq = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
                int32_t sum = 0;
                for (int64_t i = 0; i < gs; ++i) {
                    const int c = q ? int(std::nearbyint(q[g * gs + i] * w.scale * inv)) : 0;
                    sum += c;
                    const int64_t p = i / 4;
                    q8[(((g * gp + p) * NV + v) * VT::lanes + l) * 4 + i % 4] = int8_t(std::clamp(c, -127, 127));
                }
                cs[(g * NV + v) * VT::lanes + l] = float(sum);
                sc[(g * NV + v) * VT::lanes + l] = sq;
            }
        }
}

// Codes of rows [r0, r0 + n_t) of a quantized K block as bytes (n_t, hd) and their affine
// coefficients (n_t, ng): a = d and b as above. q8_0 codes are read in place (*codes points into
// the page); 4-bit codes are unpacked into kc.
template <int FMT>
void key_codes(const attn_work& w, const uint8_t* block, int64_t r0, int64_t n_t, uint8_t* kc, const uint8_t** codes,
               int64_t* code_stride, float* ka, float* kb) {
    const int64_t hd = w.hd, gs = w.q_group, ng = w.q_groups;
    const auto* ds = reinterpret_cast<const uint16_t*>(block + w.q_scale_off) + r0 * ng;
    const auto* ms = reinterpret_cast<const uint16_t*>(block + w.q_min_off) + r0 * ng;
    for (int64_t i = 0; i < n_t * ng; ++i) {
        const float d = f16_scalar(ds[i]);
        ka[i] = d;
        kb[i] = FMT == int(kv_fmt::q8_0) ? -128.0f * d : FMT == int(kv_fmt::q4_0) ? -8.0f * d : f16_scalar(ms[i]);
    }
    if constexpr (FMT == int(kv_fmt::q8_0)) {
        *codes = block + r0 * w.q_row_bytes;
        *code_stride = w.q_row_bytes;
        return;
    }
    const int64_t half = (gs + 1) / 2;
    for (int64_t t = 0; t < n_t; ++t) {
        const uint8_t* src = block + (r0 + t) * w.q_row_bytes;
        uint8_t* dst = kc + t * hd;
        if (gs == 32) {
            const __m128i m4 = _mm_set1_epi8(0x0F);
            for (int64_t g = 0; g < ng; ++g) {
                const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + g * 16));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + g * 32), _mm_and_si128(c, m4));
                _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + g * 32 + 16), _mm_and_si128(_mm_srli_epi16(c, 4), m4));
            }
            continue;
        }
        for (int64_t g = 0; g < ng; ++g)
            for (int64_t i = 0; i < gs; ++i)
                dst[g * gs + i] = i < half ? src[g * half + i] & 0x0F : src[g * half + i - half] >> 4;
    }
    *codes = kc;
    *code_stride = hd;
}

// S[j][v] for KG consecutive keys: Σ_g qsc[g][v] · (ka[j][g] · Σ_p dot4(codes[j], q8t) + kb[j][g] · csum[g][v]).
template <class VT, int NV, int KG>
inline void scores_q8(const uint8_t* codes, int64_t stride, const float* ka, const float* kb, int64_t ng, int64_t gp,
                      const typename VT::ireg* q8t, const typename VT::reg* csum, const typename VT::reg* qsc,
                      typename VT::reg* s_out) {
    typename VT::reg sacc[KG][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) sacc[j][v] = VT::zero();
    for (int64_t g = 0; g < ng; ++g) {
        typename VT::ireg acc[KG][NV];
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = VT::zero_i();
        for (int64_t p = 0; p < gp; ++p) {
            typename VT::ireg qd[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) qd[v] = q8t[(g * gp + p) * NV + v];
#pragma GCC unroll 16
            for (int j = 0; j < KG; ++j) {
                const typename VT::ireg kd = VT::bcast_u32(codes + j * stride + (g * gp + p) * 4);
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[j][v] = VT::dpbusd(acc[j][v], kd, qd[v]);
            }
        }
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j) {
            const typename VT::reg a = VT::set1(ka[j * ng + g]), b = VT::set1(kb[j * ng + g]);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v)
                sacc[j][v] = VT::fmadd(qsc[g * NV + v], VT::fmadd(a, VT::cvt_i32(acc[j][v]), VT::mul(b, csum[g * NV + v])), sacc[j][v]);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s_out[j * NV + v] = sacc[j][v];
}

// float32 tile kernel: f32 pages are read in place; f16 and the quantized formats are decoded
// tile by tile into float32 scratch.
template <class VT, int NV, int HD, int FMT>
void attend(const attn_work& w) {
    constexpr bool F16 = FMT == int(kv_fmt::f16);
    constexpr bool BF16K = FMT == int(kv_fmt::bf16);  // only with V in another format (else attend_bf16)
    constexpr bool QUANT = FMT == int(kv_fmt::q8_0) || FMT == int(kv_fmt::q4_0) || FMT == int(kv_fmt::q4_1);
    const bool v_mixed = w.v_fmt != w.fmt;  // V stored in another format than K: decoded per tile
    constexpr int KG = 16 / NV;  // keys per score group: KG × NV accumulators
    constexpr int DG = 16 / NV;  // output dims per accumulation group
    const int64_t hd = w.hd;
    // Quantized K with groups of a multiple of 4 dimensions: int8 Q·Kᵀ (scores_q8).
    const bool int8_qk = QUANT && w.q_group % 4 == 0;
    const int64_t ng = QUANT ? w.q_groups : 0;
    // Scratch (VT::reg units): qt (hd, NV); ot (hd, NV); s (tile_keys + 1, NV); kf, vf
    // (tile_keys, hd) floats; quantized: q8t (hd / 4, NV), csum and qsc (ng, NV), ka and kb
    // (tile_keys, ng) floats, kc (tile_keys, hd) bytes.
    const int64_t tile_floats = 2 * tile_keys * hd;
    const int64_t quant_floats = QUANT ? (hd / 4 + 2 * ng) * NV * VT::lanes + 2 * tile_keys * ng + (tile_keys * hd + 3) / 4 : 0;
    const int64_t n_vec = 2 * hd * NV + (tile_keys + 1) * NV + (tile_floats + quant_floats + 2 * VT::lanes) / VT::lanes + 4;
    auto* qt = reinterpret_cast<typename VT::reg*>(scratch_vectors(n_vec * VT::lanes / 16 + 1));
    typename VT::reg* ot = qt + hd * NV;
    typename VT::reg* s = ot + hd * NV;
    float* kf = reinterpret_cast<float*>(s + (tile_keys + 1) * NV);  // WIDEN: (tile_keys, hd)
    float* vf = kf + tile_keys * hd;
    auto* q8t = reinterpret_cast<typename VT::ireg*>(vf + tile_keys * hd);  // (hd / 4, NV)
    auto* csum = reinterpret_cast<typename VT::reg*>(q8t + hd / 4 * NV);     // (ng, NV)
    typename VT::reg* qsc = csum + ng * NV;                                  // (ng, NV)
    float* ka = reinterpret_cast<float*>(qsc + ng * NV);                     // (tile_keys, ng)
    float* kbf = ka + tile_keys * ng;                                        // (tile_keys, ng)
    auto* kc = reinterpret_cast<uint8_t*>(kbf + tile_keys * ng);             // (tile_keys, hd)

    typename VT::ireg lenv[NV], beginv[NV];
    int64_t vis_from, vis_to;
    const int64_t max_len = lane_lengths<VT, NV>(w, lenv, beginv, &vis_from, &vis_to);
    const float* lane_q[attn_max_qv];
    lane_queries(w, lane_q);
    for (int64_t d = 0; d < hd; ++d)
        for (int v = 0; v < NV; ++v) {
            qt[d * NV + v] = int8_qk ? VT::zero() : query_lanes<VT>(w, lane_q, v, d);
            ot[d * NV + v] = VT::zero();
        }
    if constexpr (QUANT) {
        if (int8_qk) quantize_query_lanes<VT, NV>(w, lane_q, q8t, csum, qsc);
    }
    typename VT::reg m[NV], lsum[NV];
    for (int v = 0; v < NV; ++v) {
        m[v] = VT::set1(neg_inf);
        lsum[v] = VT::zero();
    }
    constexpr size_t elem = F16 || BF16K ? 2 : 4;
    const int64_t t_end = std::min(w.t1, max_len);
    // Tiles are runs of consecutive keys inside one page (contiguous rows of K and V).
    for (int64_t t0 = w.t0, n_t = 0; t0 < t_end; t0 += n_t) {
        const int64_t in_page = t0 % w.page_size;
        n_t = std::min({tile_keys, t_end - t0, w.page_size - in_page});
        const float* kb;
        const float* vb;
        const uint8_t* codes = nullptr;
        int64_t code_stride = 0;
        if constexpr (QUANT) {
            if (int8_qk) key_codes<FMT>(w, k_block_of(w, t0), in_page, n_t, kc, &codes, &code_stride, ka, kbf);
            else widen_quant_rows<FMT>(w, k_qblock(w), k_block_of(w, t0), in_page, n_t, kf);
            if (!v_mixed && !(w.v_is_k && !int8_qk)) widen_quant_rows<FMT>(w, v_qblock(w), v_block_of(w, t0), in_page, n_t, vf);
            kb = kf;
            vb = vf;
        } else if constexpr (F16 || BF16K) {
            if (F16 && !v_mixed && !w.v_is_k) {
                widen_f16_tile(reinterpret_cast<const uint16_t*>(k_row_ptr(w, t0, elem)), w.k_row_elems,
                               reinterpret_cast<const uint16_t*>(v_row_ptr(w, t0, elem)), n_t, hd, kf, vf);
            } else {
                widen_k16_rows<BF16K>(reinterpret_cast<const uint16_t*>(k_row_ptr(w, t0, elem)), w.k_row_elems, n_t, hd, kf);
            }
            kb = kf;
            vb = vf;
        } else {
            kb = reinterpret_cast<const float*>(k_row_ptr(w, t0, elem));
            vb = v_mixed ? vf : reinterpret_cast<const float*>(v_row_ptr(w, t0, elem));
        }
        if (v_mixed) vb = v_rows_mixed(w, t0, in_page, n_t, vf);
        if (w.v_is_k && !int8_qk) vb = kb;  // a keys-only group: V is the same rows
        // Prefetch the next tile's K and V rows: a tile is only a few KB of a page, too short
        // a stream for the hardware prefetcher, so without this every tile waits on DRAM.
        const int64_t t_next = t0 + n_t;
        if (t_next < t_end) {
            const int64_t n_next = std::min({tile_keys, t_end - t_next, w.page_size - t_next % w.page_size});
            if (v_mixed) {
                if constexpr (QUANT) {
                    prefetch_quant_rows(w, k_qblock(w), k_block_of(w, t_next), t_next % w.page_size, n_next);
                } else {
                    const char* kn = reinterpret_cast<const char*>(k_row_ptr(w, t_next, elem));
                    for (int64_t b = 0; b < n_next * w.k_row_elems * int64_t(elem); b += 64) _mm_prefetch(kn + b, _MM_HINT_T0);
                }
                prefetch_v_mixed(w, t_next, t_next % w.page_size, n_next);
            } else if constexpr (QUANT) {
                prefetch_quant_rows(w, k_qblock(w), k_block_of(w, t_next), t_next % w.page_size, n_next);
                if (!w.v_is_k) prefetch_quant_rows(w, v_qblock(w), v_block_of(w, t_next), t_next % w.page_size, n_next);
            } else if (w.v_is_k) {
                const char* kn = reinterpret_cast<const char*>(k_row_ptr(w, t_next, elem));
                for (int64_t b = 0; b < n_next * w.k_row_elems * int64_t(elem); b += 64) _mm_prefetch(kn + b, _MM_HINT_T0);
            } else {
                prefetch_tile(w, t_next, n_next, elem);
            }
        }
        int64_t jk = 0;
        if (int8_qk) {
            const int64_t gp = w.q_group / 4;
            for (; jk + KG <= n_t; jk += KG)
                scores_q8<VT, NV, KG>(codes + jk * code_stride, code_stride, ka + jk * ng, kbf + jk * ng, ng, gp, q8t, csum, qsc, s + jk * NV);
            for (; jk < n_t; ++jk)
                scores_q8<VT, NV, 1>(codes + jk * code_stride, code_stride, ka + jk * ng, kbf + jk * ng, ng, gp, q8t, csum, qsc, s + jk * NV);
        } else {
            for (; jk + KG <= n_t; jk += KG) scores<VT, NV, KG, HD>(kb + jk * hd, qt, hd, s + jk * NV);
            for (; jk < n_t; ++jk) scores<VT, NV, 1, HD>(kb + jk * hd, qt, hd, s + jk * NV);
        }
        typename VT::reg mx[NV];
        mask_tile<VT, NV>(s, t0, n_t, lenv, beginv, mx, t0 >= vis_from && t0 + n_t <= vis_to);
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
    write_out<VT, NV>(w, ot, m, lsum);
}

// ---- bf16: vdpbf16ps -----------------------------------------------------------------------

// S[j][v] for KG consecutive keys (rows 2·hp elements apart): Σ_p pair(kb[j], p) · Q2[p][v].
template <class VT, int NV, int KG, int HD>
inline void scores_bf16(const uint16_t* kb, const typename VT::breg* q2, int64_t hd_rt, typename VT::reg* s_out) {
    const int64_t hp = HD ? (HD + 1) / 2 : (hd_rt + 1) / 2;
    typename VT::reg acc[KG][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][v] = VT::zero();
    for (int64_t p = 0; p < hp; ++p) {
        typename VT::breg qd[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) qd[v] = VT::bload(q2 + p * NV + v);
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j) {
            const typename VT::breg kp = VT::bcast32(kb + j * 2 * hp + 2 * p);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = VT::dot2(acc[j][v], qd[v], kp);
        }
    }
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s_out[j * NV + v] = acc[j][v];
}

// Oᵀ[d0 + i][v] += Σ_pairs pair(V, d0 + i) · P2[pair][v] over n_pairs token pairs of the
// interleaved V block vb ((pairs, hd, 2)); with `odd`, one more pair whose second token
// does not exist (its V half is ignored, its P half is 0).
template <class VT, int NV, int DG, int HD>
inline void accumulate_bf16(const uint16_t* vb, int64_t hd_rt, int64_t n_pairs, bool odd, const typename VT::breg* p2,
                            typename VT::reg* ot, int64_t d0) {
    const int64_t hd = HD ? HD : hd_rt;
    typename VT::reg acc[DG][NV];
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = ot[(d0 + i) * NV + v];
    const uint16_t* vr = vb + 2 * d0;
    for (int64_t tp = 0; tp < n_pairs; ++tp, vr += 2 * hd) {
        typename VT::breg pt[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) pt[v] = VT::bload(p2 + tp * NV + v);
#pragma GCC unroll 16
        for (int i = 0; i < DG; ++i) {
            const typename VT::breg vp = VT::bcast32(vr + 2 * i);
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = VT::dot2(acc[i][v], pt[v], vp);
        }
    }
    if (odd) {
        typename VT::breg pt[NV];
        for (int v = 0; v < NV; ++v) pt[v] = VT::bload(p2 + n_pairs * NV + v);
        for (int i = 0; i < DG; ++i) {
            const typename VT::breg vp = VT::bcast32_low(vr + 2 * i);
            for (int v = 0; v < NV; ++v) acc[i][v] = VT::dot2(acc[i][v], pt[v], vp);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) ot[(d0 + i) * NV + v] = acc[i][v];
}

template <class VT, int NV, int HD>
void attend_bf16(const attn_work& w) {
    constexpr int KG = 16 / NV;
    constexpr int DG = 16 / NV;
    using breg = typename VT::breg;
    const int64_t hd = w.hd, hp = (hd + 1) / 2;
    // Scratch: q2 (hp, NV) query pairs; ot (hd, NV); s (tile_keys + 1, NV); p2 (tile_keys / 2 + 1, NV).
    const int64_t n_vec = hp * NV + hd * NV + (tile_keys + 1) * NV + (tile_keys / 2 + 1) * NV;
    auto* q2 = reinterpret_cast<breg*>(scratch_vectors(n_vec));
    auto* ot = reinterpret_cast<typename VT::reg*>(q2 + hp * NV);
    typename VT::reg* s = ot + hd * NV;
    auto* p2 = reinterpret_cast<breg*>(s + (tile_keys + 1) * NV);

    typename VT::ireg lenv[NV], beginv[NV];
    int64_t vis_from, vis_to;
    const int64_t max_len = lane_lengths<VT, NV>(w, lenv, beginv, &vis_from, &vis_to);
    const float* lane_q[attn_max_qv];
    lane_queries(w, lane_q);
    for (int64_t p = 0; p < hp; ++p)
        for (int v = 0; v < NV; ++v)
            q2[p * NV + v] = VT::pack(query_lanes<VT>(w, lane_q, v, 2 * p), query_lanes<VT>(w, lane_q, v, 2 * p + 1));
    for (int64_t d = 0; d < hd * NV; ++d) ot[d] = VT::zero();
    typename VT::reg m[NV], lsum[NV];
    for (int v = 0; v < NV; ++v) {
        m[v] = VT::set1(neg_inf);
        lsum[v] = VT::zero();
    }
    const int64_t t_end = std::min(w.t1, max_len);
    for (int64_t t0 = w.t0, n_t = 0; t0 < t_end; t0 += n_t) {
        const int64_t in_page = t0 % w.page_size;
        n_t = std::min({tile_keys, t_end - t0, w.page_size - in_page});
        const auto* kb = reinterpret_cast<const uint16_t*>(k_row_ptr(w, t0, 2));
        const auto* vb = reinterpret_cast<const uint16_t*>(v_row_ptr(w, t0, 2));
        const int64_t t_next = t0 + n_t;
        if (t_next < t_end) prefetch_tile(w, t_next, std::min({tile_keys, t_end - t_next, w.page_size - t_next % w.page_size}), 2);
        int64_t jk = 0;
        for (; jk + KG <= n_t; jk += KG) scores_bf16<VT, NV, KG, HD>(kb + jk * 2 * hp, q2, hd, s + jk * NV);
        for (; jk < n_t; ++jk) scores_bf16<VT, NV, 1, HD>(kb + jk * 2 * hp, q2, hd, s + jk * NV);
        typename VT::reg mx[NV];
        mask_tile<VT, NV>(s, t0, n_t, lenv, beginv, mx, t0 >= vis_from && t0 + n_t <= vis_to);
        bool rescale = false;
        typename VT::reg corr[NV];
        const int64_t n_pairs = n_t / 2;
        const bool odd = n_t & 1;
        for (int v = 0; v < NV; ++v) {
            const typename VT::reg m_new = VT::max(m[v], mx[v]);
            const typename VT::mask live = VT::cmp_neq(m_new, VT::set1(neg_inf));
            const typename VT::reg m_ref = VT::maskz_mov(live, m_new);
            corr[v] = VT::exp(VT::sub(m[v], m_ref));
            rescale = rescale || VT::cmp_neq(m_new, m[v]) != 0;
            for (int64_t j = 0; j < n_t; ++j) s[j * NV + v] = VT::exp(VT::sub(s[j * NV + v], m_ref));
            s[n_t * NV + v] = VT::zero();  // partner of an odd last key
            // P rounded to bf16 in token pairs; the denominator sums the rounded values.
            typename VT::reg ps = VT::zero();
            for (int64_t jp = 0; jp < n_pairs + odd; ++jp) {
                const breg x = VT::pack(s[2 * jp * NV + v], s[(2 * jp + 1) * NV + v]);
                p2[jp * NV + v] = x;
                ps = VT::add(ps, VT::pair_sum(x));
            }
            lsum[v] = VT::fmadd(lsum[v], corr[v], ps);
            m[v] = m_new;
        }
        if (rescale) {
            for (int64_t d = 0; d < hd; ++d)
                for (int v = 0; v < NV; ++v) ot[d * NV + v] = VT::mul(ot[d * NV + v], corr[v]);
        }
        int64_t d = 0;
        for (; d + DG <= hd; d += DG) accumulate_bf16<VT, NV, DG, HD>(vb, hd, n_pairs, odd, p2, ot, d);
        for (; d < hd; ++d) accumulate_bf16<VT, NV, 1, HD>(vb, hd, n_pairs, odd, p2, ot, d);
    }
    write_out<VT, NV>(w, ot, m, lsum);
}

// ---- KIVI: integer Q·Kᵀ with the per-channel key scale folded into the query ----------------
//
// A KIVI page is one group of G tokens (attention.h): keys K[t][d] = a_d · u + m_d with a scale
// and minimum per channel over the page, values V[t][d] = b_{t,g} · u + n_{t,g} per token and
// group g of channels. Neither is decoded to float32 key by key:
//   q · k_t = Σ_d (q_d · a_d) · u_td + Σ_d q_d · m_d
// — the channel scales fold into the query once per page (q' = q ∘ a, quantized per lane and
// group of 32 dimensions to int16, its scale sq), the minimums into one constant per lane, and
// the rest is vpdpwssd over the codes (0 .. 2^b - 1) widened to 16 bits, 2 dimensions per
// instruction;
//   Σ_t p_t · v_td = Σ_t (p_t · b_{t,g}) · u_td + Σ_t p_t · n_{t,g}
// — the token scales fold into the probabilities (one product per token and group), the
// minimums into one running sum per lane and group, and P·V runs over the codes as float32.
// The query's int16 rounding (2^-16 of a group's largest |q_d · a_d|) is the error beyond
// float32 arithmetic. (An int8 query, as for q8_0 keys, halves the Q·Kᵀ instructions, but
// the channel scales give q' KIVI's outlier channels: the rounding of the other channels then
// moved the logits of the test models by a fifth of what the codes themselves do.)

// Codes of rows [r0, r0 + n_t) of a KIVI block widened to uint16 (n_t, hd2), dimensions in
// order (hd2 = head_dim rounded up to 2; the padding dimension is 0). Byte i of a row holds
// dimensions i + j·Q at bits [j·b, (j+1)·b): with Q a multiple of 16, 16 bytes give 16
// consecutive dimensions per shift.
void kivi_unpack_codes(const uint8_t* block, int64_t row_bytes, int bits, int64_t hd, int64_t hd2, int64_t r0, int64_t n_t,
                       uint16_t* out) {
    const int64_t per_byte = 8 / bits, q = (hd + per_byte - 1) / per_byte;
    const int mask = (1 << bits) - 1;
    for (int64_t t = 0; t < n_t; ++t) {
        const uint8_t* src = block + (r0 + t) * row_bytes;
        uint16_t* dst = out + t * hd2;
        if (q % 16 == 0 && q * per_byte == hd) {
            const __m256i m = _mm256_set1_epi16(short(mask));
            for (int64_t c = 0; c < q; c += 16) {
                const __m256i x = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)));
                for (int64_t j = 0; j < per_byte; ++j)
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * q + c),
                                        _mm256_and_si256(_mm256_srl_epi16(x, _mm_cvtsi32_si128(int(j) * bits)), m));
            }
            continue;
        }
        for (int64_t d = 0; d < hd2; ++d) dst[d] = d < hd ? uint16_t((src[d % q] >> (bits * (d / q))) & mask) : 0;
    }
}

// n f16 values to float32.
// Full chunks are stored unmasked (a masked store does not forward to the scalar loads that read
// the values next); only a tail is masked.
inline void f16_to_float(const uint16_t* src, int64_t n, float* dst) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    if (i < n) {
        const __mmask16 m = __mmask16((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dst + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + i)));
    }
}

// The query for one KIVI page: q' = qt ∘ a (a: the page's channel scales, (hd2), 0 past hd)
// quantized per lane and group of qg dimensions into q16t ((hd2 / 2, NV) dwords of 2 int16
// codes), the group scales into qsc ((hd2 / qg, NV)), and Σ_d qt_d · m_d (m: the channel
// minimums) into cq (NV). qa holds |qt| (computed once per call): a group's largest |q'_d| is
// then one product and one max per dimension.
template <class VT, int NV>
void kivi_page_query(const typename VT::reg* qt, const typename VT::reg* qa, const float* a, const float* m, int64_t hd,
                     int64_t hd2, int64_t qg, typename VT::ireg* q16t, typename VT::reg* qsc, typename VT::reg* cq) {
    using reg = typename VT::reg;
    for (int v = 0; v < NV; ++v) {
        reg c[4] = {VT::zero(), VT::zero(), VT::zero(), VT::zero()};  // four chains: FMA latency
        int64_t d = 0;
        for (; d + 4 <= hd; d += 4)
            for (int i = 0; i < 4; ++i) c[i] = VT::fmadd(qt[(d + i) * NV + v], VT::set1(m[d + i]), c[i]);
        for (; d < hd; ++d) c[0] = VT::fmadd(qt[d * NV + v], VT::set1(m[d]), c[0]);
        cq[v] = VT::add(VT::add(c[0], c[1]), VT::add(c[2], c[3]));
    }
    for (int64_t g = 0; g < hd2 / qg; ++g)
        for (int v = 0; v < NV; ++v) {
            reg amax[2] = {VT::zero(), VT::zero()};
            for (int64_t d = g * qg; d < (g + 1) * qg; d += 2) {
                amax[0] = VT::max(amax[0], VT::mul(qa[d * NV + v], VT::set1(a[d])));
                amax[1] = VT::max(amax[1], VT::mul(qa[(d + 1) * NV + v], VT::set1(a[d + 1])));
            }
            const reg mx = VT::max(amax[0], amax[1]);
            const typename VT::mask live = VT::cmp_neq(mx, VT::zero());
            qsc[g * NV + v] = VT::mul(mx, VT::set1(1.0f / 32767.0f));
            const reg inv = VT::maskz_mov(live, VT::div(VT::set1(32767.0f), mx));
            for (int64_t p = g * qg / 2; p < (g + 1) * qg / 2; ++p) {
                const typename VT::ireg lo = VT::cvt_round(VT::mul(VT::mul(qt[(2 * p) * NV + v], VT::set1(a[2 * p])), inv));
                const typename VT::ireg hi = VT::cvt_round(VT::mul(VT::mul(qt[(2 * p + 1) * NV + v], VT::set1(a[2 * p + 1])), inv));
                q16t[p * NV + v] = VT::pack_lo16(lo, hi);
            }
        }
}

// S[j][v] for KG consecutive keys: cq[v] + Σ_g qsc[g][v] · Σ_p dot2(codes[j], q16t[g, p][v]).
template <class VT, int NV, int KG>
inline void scores_kivi(const uint16_t* codes, int64_t stride, int64_t n_qg, int64_t gp, const typename VT::ireg* q16t,
                        const typename VT::reg* qsc, const typename VT::reg* cq, typename VT::reg* s_out) {
    typename VT::reg sacc[KG][NV];
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) sacc[j][v] = cq[v];
    for (int64_t g = 0; g < n_qg; ++g) {
        typename VT::ireg acc[KG][NV];
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[j][v] = VT::zero_i();
        for (int64_t p = 0; p < gp; ++p) {
            typename VT::ireg qd[NV];
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) qd[v] = q16t[(g * gp + p) * NV + v];
#pragma GCC unroll 16
            for (int j = 0; j < KG; ++j) {
                const typename VT::ireg kd = VT::bcast_u32(reinterpret_cast<const uint8_t*>(codes + j * stride + (g * gp + p) * 2));
#pragma GCC unroll 4
                for (int v = 0; v < NV; ++v) acc[j][v] = VT::dpwssd(acc[j][v], kd, qd[v]);
            }
        }
#pragma GCC unroll 16
        for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) sacc[j][v] = VT::fmadd(qsc[g * NV + v], VT::cvt_i32(acc[j][v]), sacc[j][v]);
    }
#pragma GCC unroll 16
    for (int j = 0; j < KG; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) s_out[j * NV + v] = sacc[j][v];
}

// Codes of rows [r0, r0 + n_t) of a KIVI block as int16 token pairs: out[tp · hd + d] holds the
// codes of dimension d of rows 2tp (low half) and 2tp + 1 (high half; 0 past n_t), the layout
// vpdpwssd multiplies against pairs of probabilities. Interleaving the two rows' code bytes
// first gives every shift 8 such pairs per 16 bytes.
void kivi_unpack_pairs(const uint8_t* block, int64_t row_bytes, int bits, int64_t hd, int64_t r0, int64_t n_t, uint32_t* out) {
    const int64_t per_byte = 8 / bits, q = (hd + per_byte - 1) / per_byte;
    const int mask = (1 << bits) - 1;
    const bool fast = q % 16 == 0 && q * per_byte == hd;
    for (int64_t tp = 0; tp < (n_t + 1) / 2; ++tp) {
        const uint8_t* a = block + (r0 + 2 * tp) * row_bytes;
        const uint8_t* b = 2 * tp + 1 < n_t ? a + row_bytes : nullptr;
        uint32_t* dst = out + tp * hd;
        if (fast) {
            const __m256i m = _mm256_set1_epi16(short(mask));
            for (int64_t c = 0; c < q; c += 16) {
                const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + c));
                const __m128i y = b ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + c)) : _mm_setzero_si128();
                const __m256i lo = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, y)), hi = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x, y));
                for (int64_t j = 0; j < per_byte; ++j) {
                    const __m128i sh = _mm_cvtsi32_si128(int(j) * bits);
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * q + c), _mm256_and_si256(_mm256_srl_epi16(lo, sh), m));
                    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j * q + c + 8), _mm256_and_si256(_mm256_srl_epi16(hi, sh), m));
                }
            }
            continue;
        }
        for (int64_t d = 0; d < hd; ++d) {
            const uint32_t ua = (a[d % q] >> (bits * (d / q))) & mask, ub = b ? (b[d % q] >> (bits * (d / q))) & mask : 0;
            dst[d] = ua | ub << 16;
        }
    }
}

// Probabilities of one tile times the V scales of group g, quantized per lane to int16 in token
// pairs: p16[tp · NV + v] holds (p'_{2tp}, p'_{2tp+1}) (0 past n_t), psc[v] the scale. p' >= 0.
template <class VT, int NV>
void kivi_tile_probs(const typename VT::reg* s, const float* vsc, int64_t ng, int64_t g, int64_t n_t, typename VT::reg* pp,
                     typename VT::ireg* p16, typename VT::reg* psc) {
    for (int v = 0; v < NV; ++v) {
        typename VT::reg pmax = VT::zero();
        for (int64_t j = 0; j < n_t; ++j) {
            pp[j * NV + v] = VT::mul(s[j * NV + v], VT::set1(vsc[j * ng + g]));
            pmax = VT::max(pmax, pp[j * NV + v]);
        }
        pp[n_t * NV + v] = VT::zero();  // partner of an odd last key
        const typename VT::mask live = VT::cmp_neq(pmax, VT::zero());
        psc[v] = VT::mul(pmax, VT::set1(1.0f / 32767.0f));
        const typename VT::reg inv = VT::maskz_mov(live, VT::div(VT::set1(32767.0f), pmax));
        for (int64_t tp = 0; tp < (n_t + 1) / 2; ++tp) {
            const typename VT::ireg lo = VT::cvt_round(VT::mul(pp[(2 * tp) * NV + v], inv));
            const typename VT::ireg hi = VT::sll_i(VT::cvt_round(VT::mul(pp[(2 * tp + 1) * NV + v], inv)), 16);
            p16[tp * NV + v] = VT::or_i(lo, hi);  // lo in [0, 32767]: no sign bits to mask
        }
    }
}

// Oᵀ[d0 + i][v] += psc[v] · Σ_tp dot2(vpair[tp][d0 + i], p16[tp][v]) for i < DG.
template <class VT, int NV, int DG>
inline void accumulate_kivi(const uint32_t* vpair, int64_t hd, int64_t n_pairs, const typename VT::ireg* p16,
                            const typename VT::reg* psc, typename VT::reg* ot, int64_t d0) {
    typename VT::ireg acc[DG][NV];
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] = VT::zero_i();
    const uint32_t* vr = vpair + d0;
    for (int64_t tp = 0; tp < n_pairs; ++tp, vr += hd) {
        typename VT::ireg pt[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) pt[v] = p16[tp * NV + v];
#pragma GCC unroll 16
        for (int i = 0; i < DG; ++i) {
            const typename VT::ireg vb = VT::bcast_u32(reinterpret_cast<const uint8_t*>(vr + i));
#pragma GCC unroll 4
            for (int v = 0; v < NV; ++v) acc[i][v] = VT::dpwssd(acc[i][v], vb, pt[v]);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < DG; ++i)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) ot[(d0 + i) * NV + v] = VT::fmadd(psc[v], VT::cvt_i32(acc[i][v]), ot[(d0 + i) * NV + v]);
}

// Prefetches the codes of rows [r0, r0 + n) of a KIVI block and the parameters they use.
inline void prefetch_kivi_rows(const uint8_t* block, int64_t row_bytes, size_t param_off, size_t param_bytes, int64_t r0, int64_t n) {
    const char* c = reinterpret_cast<const char*>(block + r0 * row_bytes);
    for (int64_t b = 0; b < n * row_bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
    const char* p = reinterpret_cast<const char*>(block + param_off);
    for (size_t b = 0; b < param_bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

// KIVI tile kernel: one page (or part of one) per tile; Q·Kᵀ and P·V as above, the online softmax
// as in attend.
template <class VT, int NV, int HD>
void attend_kivi(const attn_work& w) {
    constexpr int KG = NV > 8 ? 1 : 8 / NV;  // keys per score group: KG × NV int32 accumulators
    constexpr int DG = 16 / NV;             // output dimensions per accumulation group
    using reg = typename VT::reg;
    using ireg = typename VT::ireg;
    const int64_t hd = HD ? HD : w.hd, hd2 = (hd + 1) / 2 * 2;
    const int64_t qg = hd2 % 32 == 0 ? 32 : hd2, n_qg = hd2 / qg;  // int16 query groups
    const int64_t gs = w.q_group, ng = w.q_groups;                  // V: channel groups per token
    const int64_t ps = w.page_size, rb = w.q_row_bytes;
    const size_t poff = w.q_scale_off;
    const int bits = w.kivi_bits;
    // Scratch, in vectors: qt, qa (hd2, NV) query and |query|; ot (hd, NV); s (tile_keys + 1,
    // NV); pp (tile_keys + 1, NV) probabilities times one group's V scales; p16 (tile_keys / 2,
    // NV) those as int16 pairs, psc (NV) their scale; mo (ng, NV) Σ p · V minimum; q16t (hd2 / 2,
    // NV); qsc (n_qg, NV); cq (NV); then uint32 vf (tile_keys / 2, hd) V code pairs, floats ka,
    // km (hd2) K channel parameters, vsc, vmn (tile_keys, ng) V token parameters, and uint16 kc
    // (tile_keys, hd2) K codes.
    const int64_t n_reg = 2 * hd2 * NV + hd * NV + (tile_keys + 1) * NV + (tile_keys + 1) * NV + (tile_keys / 2 + 1) * NV + NV + ng * NV + hd2 / 2 * NV + n_qg * NV + NV;
    const int64_t n_float = tile_keys * hd + 2 * (hd2 + 16) + 2 * (tile_keys * ng + 16) + (tile_keys * hd2 + 1) / 2;
    auto* qt = reinterpret_cast<reg*>(scratch_vectors(n_reg * VT::lanes / 16 + n_float / 16 + 8));
    reg* qa = qt + hd2 * NV;
    reg* ot = qa + hd2 * NV;
    reg* s = ot + hd * NV;
    reg* pp = s + (tile_keys + 1) * NV;
    auto* p16 = reinterpret_cast<ireg*>(pp + (tile_keys + 1) * NV);
    auto* psc = reinterpret_cast<reg*>(p16 + (tile_keys / 2 + 1) * NV);
    reg* mo = psc + NV;
    auto* q16t = reinterpret_cast<ireg*>(mo + ng * NV);
    auto* qsc = reinterpret_cast<reg*>(q16t + hd2 / 2 * NV);
    reg* cq = qsc + n_qg * NV;
    auto* vf = reinterpret_cast<uint32_t*>(cq + NV);
    float* ka = reinterpret_cast<float*>(vf + tile_keys / 2 * hd);
    float* km = ka + hd2 + 16;
    float* vsc = km + hd2 + 16;
    float* vmn = vsc + tile_keys * ng + 16;
    auto* kc = reinterpret_cast<uint16_t*>(vmn + tile_keys * ng + 16);

    ireg lenv[NV], beginv[NV];
    int64_t vis_from, vis_to;
    const int64_t max_len = lane_lengths<VT, NV>(w, lenv, beginv, &vis_from, &vis_to);
    const float* lane_q[attn_max_qv];
    lane_queries(w, lane_q);
    for (int64_t d = 0; d < hd2; ++d)
        for (int v = 0; v < NV; ++v) {
            qt[d * NV + v] = query_lanes<VT>(w, lane_q, v, d);
            qa[d * NV + v] = VT::abs(qt[d * NV + v]);
        }
    for (int64_t d = hd; d < hd2; ++d) ka[d] = km[d] = 0.0f;  // padding: f16_to_float writes hd
    for (int64_t i = 0; i < hd * NV; ++i) ot[i] = VT::zero();
    for (int64_t i = 0; i < ng * NV; ++i) mo[i] = VT::zero();
    reg m[NV], lsum[NV];
    for (int v = 0; v < NV; ++v) {
        m[v] = VT::set1(neg_inf);
        lsum[v] = VT::zero();
    }
    const size_t k_param_bytes = size_t(4 * hd), v_param_bytes = size_t(4 * ps * ng);
    const int64_t t_end = std::min(w.t1, max_len);
    int64_t query_page = -1;  // the page q16t, qsc and cq were prepared for
    for (int64_t t0 = w.t0, n_t = 0; t0 < t_end; t0 += n_t) {
        const int64_t in_page = t0 % ps;
        n_t = std::min({tile_keys, t_end - t0, ps - in_page});
        const uint8_t* kblock = k_block_of(w, t0);
        const uint8_t* vblock = v_block_of(w, t0);
        if (t0 / ps != query_page) {
            query_page = t0 / ps;
            const auto* kp = reinterpret_cast<const uint16_t*>(kblock + poff);
            f16_to_float(kp, hd, ka);
            f16_to_float(kp + hd, hd, km);
            kivi_page_query<VT, NV>(qt, qa, ka, km, hd, hd2, qg, q16t, qsc, cq);
        }
        kivi_unpack_codes(kblock, rb, bits, hd, hd2, in_page, n_t, kc);
        kivi_unpack_pairs(vblock, rb, bits, hd, in_page, n_t, vf);
        const auto* vp = reinterpret_cast<const uint16_t*>(vblock + poff);
        f16_to_float(vp + in_page * ng, n_t * ng, vsc);
        f16_to_float(vp + ps * ng + in_page * ng, n_t * ng, vmn);
        const int64_t t_next = t0 + n_t;
        if (t_next < t_end) {
            const int64_t r_next = t_next % ps, n_next = std::min({tile_keys, t_end - t_next, ps - r_next});
            prefetch_kivi_rows(k_block_of(w, t_next), rb, poff, r_next == 0 ? k_param_bytes : 0, r_next, n_next);
            prefetch_kivi_rows(v_block_of(w, t_next), rb, poff, r_next == 0 ? v_param_bytes : 0, r_next, n_next);
        }
        const int64_t gp = qg / 2;
        int64_t jk = 0;
        for (; jk + KG <= n_t; jk += KG) scores_kivi<VT, NV, KG>(kc + jk * hd2, hd2, n_qg, gp, q16t, qsc, cq, s + jk * NV);
        for (; jk < n_t; ++jk) scores_kivi<VT, NV, 1>(kc + jk * hd2, hd2, n_qg, gp, q16t, qsc, cq, s + jk * NV);
        reg mx[NV];
        mask_tile<VT, NV>(s, t0, n_t, lenv, beginv, mx, t0 >= vis_from && t0 + n_t <= vis_to);
        bool rescale = false;
        reg corr[NV];
        for (int v = 0; v < NV; ++v) {
            const reg m_new = VT::max(m[v], mx[v]);
            const typename VT::mask live = VT::cmp_neq(m_new, VT::set1(neg_inf));
            const reg m_ref = VT::maskz_mov(live, m_new);
            corr[v] = VT::exp(VT::sub(m[v], m_ref));
            rescale = rescale || VT::cmp_neq(m_new, m[v]) != 0;
            reg psum = VT::zero();
            for (int64_t j = 0; j < n_t; ++j) {
                const reg p = VT::exp(VT::sub(s[j * NV + v], m_ref));
                s[j * NV + v] = p;
                psum = VT::add(psum, p);
            }
            lsum[v] = VT::fmadd(lsum[v], corr[v], psum);
            m[v] = m_new;
        }
        if (rescale) {
            for (int64_t d = 0; d < hd; ++d)
                for (int v = 0; v < NV; ++v) ot[d * NV + v] = VT::mul(ot[d * NV + v], corr[v]);
            for (int64_t g = 0; g < ng; ++g)
                for (int v = 0; v < NV; ++v) mo[g * NV + v] = VT::mul(mo[g * NV + v], corr[v]);
        }
        // Per group: Σ_t P · n_{t,g}, P' = P · b_{t,g} as int16 pairs, Oᵀ += Σ_t P' · u.
        const int64_t n_pairs = (n_t + 1) / 2;
        for (int64_t g = 0; g < ng; ++g) {
            reg mg[4][NV];  // four partial sums: one FMA chain would wait on its latency every token
            for (int v = 0; v < NV; ++v) {
                mg[0][v] = mo[g * NV + v];
                mg[1][v] = mg[2][v] = mg[3][v] = VT::zero();
            }
            int64_t j = 0;
            for (; j + 4 <= n_t; j += 4)
                for (int i = 0; i < 4; ++i) {
                    const reg n = VT::set1(vmn[(j + i) * ng + g]);
                    for (int v = 0; v < NV; ++v) mg[i][v] = VT::fmadd(s[(j + i) * NV + v], n, mg[i][v]);
                }
            for (; j < n_t; ++j) {
                const reg n = VT::set1(vmn[j * ng + g]);
                for (int v = 0; v < NV; ++v) mg[0][v] = VT::fmadd(s[j * NV + v], n, mg[0][v]);
            }
            for (int v = 0; v < NV; ++v) mo[g * NV + v] = VT::add(VT::add(mg[0][v], mg[1][v]), VT::add(mg[2][v], mg[3][v]));
            kivi_tile_probs<VT, NV>(s, vsc, ng, g, n_t, pp, p16, psc);
            int64_t d = g * gs;
            for (; d + DG <= (g + 1) * gs; d += DG) accumulate_kivi<VT, NV, DG>(vf, hd, n_pairs, p16, psc, ot, d);
            for (; d < (g + 1) * gs; ++d) accumulate_kivi<VT, NV, 1>(vf, hd, n_pairs, p16, psc, ot, d);
        }
    }
    for (int64_t d = 0; d < hd; ++d)
        for (int v = 0; v < NV; ++v) ot[d * NV + v] = VT::add(ot[d * NV + v], mo[(d / gs) * NV + v]);
    write_out<VT, NV>(w, ot, m, lsum);
}

// Up to 8 query vectors (decode with a GQA group of <= 8): 8-lane ymm, which Zen 4 issues at
// twice the zmm rate, so no FMA is spent on empty lanes.
template <int HD, int FMT>
void attend_hd(const attn_work& w) {
    const int64_t n_qv = w.n_rows * w.n_group;
    if constexpr (FMT == int(kv_fmt::kivi)) {
        if (n_qv <= 8) return attend_kivi<vec8, 1, HD>(w);
        if (n_qv <= 16) return attend_kivi<vec16, 1, HD>(w);
        if (n_qv <= 32) return attend_kivi<vec16, 2, HD>(w);
        if (n_qv <= 48) return attend_kivi<vec16, 3, HD>(w);
        return attend_kivi<vec16, 4, HD>(w);
    } else if (FMT == int(kv_fmt::bf16) && w.v_fmt == kv_fmt::bf16 && !w.v_is_k) {
        if (n_qv <= 8) return attend_bf16<vec8, 1, HD>(w);
        if (n_qv <= 16) return attend_bf16<vec16, 1, HD>(w);
        if (n_qv <= 32) return attend_bf16<vec16, 2, HD>(w);
        if (n_qv <= 48) return attend_bf16<vec16, 3, HD>(w);
        return attend_bf16<vec16, 4, HD>(w);
    } else {
        if (n_qv <= 8) return attend<vec8, 1, HD, FMT>(w);
        if (n_qv <= 16) return attend<vec16, 1, HD, FMT>(w);
        if (n_qv <= 32) return attend<vec16, 2, HD, FMT>(w);
        if (n_qv <= 48) return attend<vec16, 3, HD, FMT>(w);
        return attend<vec16, 4, HD, FMT>(w);
    }
}

template <int FMT>
void attend_any(const attn_work& w) {
    switch (w.hd) {
        case 64: return attend_hd<64, FMT>(w);
        case 128: return attend_hd<128, FMT>(w);
        default: return attend_hd<0, FMT>(w);
    }
}

}  // namespace

attn_fn attention_kernel_avx512(kv_fmt fmt) {
    switch (fmt) {
        case kv_fmt::f32: return attend_any<int(kv_fmt::f32)>;
        case kv_fmt::f16: return attend_any<int(kv_fmt::f16)>;
        case kv_fmt::bf16: return attend_any<int(kv_fmt::bf16)>;
        case kv_fmt::q8_0: return attend_any<int(kv_fmt::q8_0)>;
        case kv_fmt::q4_0: return attend_any<int(kv_fmt::q4_0)>;
        case kv_fmt::q4_1: return attend_any<int(kv_fmt::q4_1)>;
        case kv_fmt::kivi: return attend_any<int(kv_fmt::kivi)>;
    }
    return nullptr;
}

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
attn_fn attention_kernel_avx512(kv_fmt) { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
