// The k-quant tile kernels shared by the AVX2 and AVX-512 paths, written with 256-bit integer
// intrinsics. Included only by matmul_kquants_avx2.cpp and matmul_kquants_avx512.cpp after
// <immintrin.h>, inside their ISA guard; everything here is in an anonymous namespace, so
// each ISA file gets its own copy (isa.h's ODR rule). The one instruction that differs is the
// scaled accumulation `Ops::dot`: vpdpwssd (AVX-512 VNNI) or vpmaddwd + vpaddd (AVX2).
//
// Arithmetic (see matmul_kquants_scalar.cpp for the formulas): per super-block, weight row and
// x row, the 32 codes of a sub-block (unsigned bytes) and the 32 int8 activations go through
// vpmaddubsw (pairs → int16; at most 63·127·2 < 2^15, so no saturation), then each int16 is
// multiplied by the sub-block's integer scale and pairs are summed into 8 int32 lanes. So one
// integer accumulator collects the whole super-block; the float work (convert, scale by
// d_w·d_x, the min / offset term) is once per 256 elements.
//
// Register tiling: for a group of RW weight rows and RX x rows, each weight chunk of 32 codes
// is decoded once and used for all RX rows (prefill); decode (m = 1) walks the weight rows in
// memory order, one linear stream (see kq_drive).
#pragma once

#include <cstring>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/cpu/isa.h"

namespace kvs::cpu::detail {

namespace {

// Helpers called once per weight row and super-block must be inlined into the micro-kernels:
// a call there costs a vzeroupper and a round trip of its results through memory. (Also used
// by matmul_kquants_avx512.cpp after this header.)
#define KQ_INLINE inline __attribute__((always_inline))

float kq_hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

constexpr size_t kq_gemv_prefetch_bytes = 4096;

KQ_INLINE __m256i kq_load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// Eight 6-bit (scale, min) pairs of a q4_K / q5_K block as dwords with the value in both
// 16-bit halves (the form vpmaddwd / vpdpwssd multiply int16 pairs by). Same unpacking as
// kquant_scale_min, four bytes at a time.
KQ_INLINE void kq_scale_min_dup(const uint8_t* s, __m256i* sc, __m256i* mn) {
    uint32_t u0, u1, u2;
    std::memcpy(&u0, s, 4);
    std::memcpy(&u1, s + 4, 4);
    std::memcpy(&u2, s + 8, 4);
    const uint32_t sc_lo = u0 & 0x3f3f3f3fu, mn_lo = u1 & 0x3f3f3f3fu;
    const uint32_t sc_hi = (u2 & 0x0f0f0f0fu) | (((u0 >> 6) & 0x03030303u) << 4);
    const uint32_t mn_hi = ((u2 >> 4) & 0x0f0f0f0fu) | (((u1 >> 6) & 0x03030303u) << 4);
    const __m256i s32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(uint64_t(sc_lo) | (uint64_t(sc_hi) << 32))));
    const __m256i m32 = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(uint64_t(mn_lo) | (uint64_t(mn_hi) << 32))));
    *sc = _mm256_or_si256(s32, _mm256_slli_epi32(s32, 16));
    *mn = _mm256_or_si256(m32, _mm256_slli_epi32(m32, 16));
}

// ---- formats ------------------------------------------------------------------------------------
// Each format decodes, per weight row and super-block, its scales (prepare) and then its 8 code
// chunks of 32 (codes<c>), each with the dup-dword scale vector of its int16 lanes (scale<c>):
// lanes 0-7 of vpmaddubsw's output are elements 0-15 of the chunk, lanes 8-15 elements 16-31.

template <bool five>
struct fmt_scale_min {  // q4_K (five = false) and q5_K
    using block = std::conditional_t<five, block_q5_k, block_q4_k>;
    static constexpr bool has_min = true;
    alignas(32) uint32_t sc_dup[8];  // read back by broadcast loads, which cost no shuffle
    __m256i mn, qs, qh;
    float d, dmin;
    KQ_INLINE void prepare(const uint8_t* p) {
        const auto* b = reinterpret_cast<const block*>(p);
        __m256i sc;
        kq_scale_min_dup(b->scales, &sc, &mn);
        _mm256_store_si256(reinterpret_cast<__m256i*>(sc_dup), sc);
        d = _cvtsh_ss(b->d);
        dmin = _cvtsh_ss(b->dmin);
        if constexpr (five) qh = kq_load(b->qh);
    }
    // Chunk c = sub-block c: the low (even c) or high (odd c) nibbles of qs[32 (c/2) ...],
    // plus bit c of qh as bit 4 for q5_K.
    template <int c>
    KQ_INLINE __m256i codes(const uint8_t* p) {
        const auto* b = reinterpret_cast<const block*>(p);
        const __m256i m4 = _mm256_set1_epi8(0x0F);
        if constexpr (c % 2 == 0) qs = kq_load(b->qs + 32 * (c / 2));
        __m256i q = c % 2 == 0 ? _mm256_and_si256(qs, m4) : _mm256_and_si256(_mm256_srli_epi16(qs, 4), m4);
        if constexpr (five) {
            // Move bit c of every byte to bit 4; 16-bit shifts are safe as only bit 4 of each
            // byte is kept and it comes from the same byte.
            const __m256i h = c <= 4 ? _mm256_slli_epi16(qh, 4 - c) : _mm256_srli_epi16(qh, c - 4);
            q = _mm256_or_si256(q, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
        }
        return q;
    }
    template <int c>
    KQ_INLINE __m256i scale() const {
        return _mm256_set1_epi32(int(sc_dup[c]));
    }
    // Integer start value of a row's accumulator (q4_K/q5_K: none; the min is separate).
    KQ_INLINE __m256i init(const int16_t*) const { return _mm256_setzero_si256(); }
    // Σ_j m_j · (Σ qx)_j over the super-block, as 8 int32 lanes.
    KQ_INLINE __m256i min_sum(const int16_t* bsums) const { return _mm256_madd_epi16(kq_load(bsums), mn); }
};

struct fmt_q6_k {
    using block = block_q6_k;
    static constexpr bool has_min = false;
    __m256i sc16, sc_half[2], ql0, ql1, qh;
    float d, dmin;
    KQ_INLINE void prepare(const uint8_t* p) {
        const auto* b = reinterpret_cast<const block*>(p);
        sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b->scales)));
        const __m256i lo = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(sc16));
        const __m256i hi = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(sc16, 1));
        sc_half[0] = _mm256_or_si256(lo, _mm256_slli_epi32(lo, 16));
        sc_half[1] = _mm256_or_si256(hi, _mm256_slli_epi32(hi, 16));
        d = _cvtsh_ss(b->d);
        dmin = 0.0f;
    }
    // Chunk c: half h = c / 4, part q = c % 4 (elements 128 h + 32 q ...), see dtype.h.
    template <int c>
    KQ_INLINE __m256i codes(const uint8_t* p) {
        constexpr int h = c / 4, q = c % 4;
        const auto* b = reinterpret_cast<const block*>(p);
        if constexpr (q == 0) {
            ql0 = kq_load(b->ql + 64 * h);
            ql1 = kq_load(b->ql + 64 * h + 32);
            qh = kq_load(b->qh + 32 * h);
        }
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
        const __m256i lo = q == 0 ? _mm256_and_si256(ql0, m4)
                         : q == 1 ? _mm256_and_si256(ql1, m4)
                         : q == 2 ? _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4)
                                  : _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4);
        // Bits 2q, 2q+1 of qh to bits 4, 5 (16-bit shifts: only bits 4-5 of each byte are kept).
        const __m256i hs = q == 0 ? _mm256_slli_epi16(qh, 4)
                         : q == 1 ? _mm256_slli_epi16(qh, 2)
                         : q == 2 ? qh
                                  : _mm256_srli_epi16(qh, 2);
        return _mm256_or_si256(lo, _mm256_and_si256(hs, m30));
    }
    // Sub-blocks 2c and 2c + 1 (16 elements each): scale 2 (c % 4) in the low 128-bit lane,
    // 2 (c % 4) + 1 in the high one.
    template <int c>
    KQ_INLINE __m256i scale() const {
        constexpr int j = 2 * (c % 4);
        return _mm256_permutevar8x32_epi32(sc_half[c / 4], _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1));
    }
    // -32 · Σ_j sc_j (Σ qx)_j: the codes are stored +32.
    KQ_INLINE __m256i init(const int16_t* bsums) const {
        return _mm256_madd_epi16(kq_load(bsums), _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_slli_epi16(sc16, 5)));
    }
    KQ_INLINE __m256i min_sum(const int16_t*) const { return _mm256_setzero_si256(); }
};

// ---- micro-kernel -------------------------------------------------------------------------------

// One chunk of 32 codes against the RX x rows. With few x rows, odd chunks go to a second
// accumulator (isum2) so that the chain of dependent vpdpwssd per row is half as long.
template <class F, class Ops, int RX, int c>
KQ_INLINE void kq_chunk(F& f, const uint8_t* blk, const int8_t* const (&xq)[RX], __m256i (&isum)[RX],
                        __m256i (&isum2)[RX]) {
    const __m256i q = f.template codes<c>(blk);
    const __m256i s = f.template scale<c>();
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i) {
        __m256i& acc = (RX <= 2 && c % 2 == 1) ? isum2[i] : isum[i];
        acc = Ops::dot(acc, _mm256_maddubs_epi16(q, kq_load(xq[i] + 32 * c)), s);
    }
}

// RX x rows × RW weight rows, full n_in.
template <class F, class Ops, int RX, int RW>
void kq_micro(const gemm_tile& t, int64_t i0, int64_t o0) {
    using block = typename F::block;
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    const int64_t nb = t.n_in / qk_k;
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    __m256 acc[RX][RW];
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const int8_t* xq[RX];
#pragma GCC unroll 4
        for (int i = 0; i < RX; ++i) xq[i] = x.qs + (i0 + i) * t.n_in + b * qk_k;
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) {
            const uint8_t* blk = w + size_t(r) * t.w_row_bytes + size_t(b) * sizeof(block);
            if constexpr (RX == 1 && RW == 1) {  // decode: see kq_drive
                const char* ahead = reinterpret_cast<const char*>(blk) + kq_gemv_prefetch_bytes;
#pragma GCC unroll 4
                for (size_t o = 0; o < sizeof(block) + 63; o += 64) _mm_prefetch(ahead + o, _MM_HINT_T0);
            }
            F f;
            f.prepare(blk);
            __m256i isum[RX], isum2[RX];
#pragma GCC unroll 4
            for (int i = 0; i < RX; ++i) {
                isum[i] = f.init(x.bsums + ((i0 + i) * nb + b) * 16);
                isum2[i] = _mm256_setzero_si256();
            }
            kq_chunk<F, Ops, RX, 0>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 1>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 2>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 3>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 4>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 5>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 6>(f, blk, xq, isum, isum2);
            kq_chunk<F, Ops, RX, 7>(f, blk, xq, isum, isum2);
#pragma GCC unroll 4
            for (int i = 0; i < RX; ++i) {
                if constexpr (RX <= 2) isum[i] = _mm256_add_epi32(isum[i], isum2[i]);
                const float dx = x.d[(i0 + i) * nb + b];
                acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_set1_ps(f.d * dx), acc[i][r]);
                if constexpr (F::has_min) {
                    const __m256i mins = f.min_sum(x.bsums + ((i0 + i) * nb + b) * 16);
                    acc[i][r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mins), _mm256_set1_ps(f.dmin * dx), acc[i][r]);
                }
            }
        }
    }
#pragma GCC unroll 4
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 8
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = kq_hsum(acc[i][r]);
}

// ---- tile driver: RW-row weight groups outer, RX-row x groups inner, smaller edge kernels ----

template <class F, class Ops, int RW>
void kq_x_rows(const gemm_tile& t, int64_t o0) {
    int64_t i = 0;
    for (; i + 4 <= t.m; i += 4) kq_micro<F, Ops, 4, RW>(t, i, o0);
    switch (t.m - i) {
        case 3: kq_micro<F, Ops, 3, RW>(t, i, o0); break;
        case 2: kq_micro<F, Ops, 2, RW>(t, i, o0); break;
        case 1: kq_micro<F, Ops, 1, RW>(t, i, o0); break;
        default: break;
    }
}

// Decode (m = 1) walks the weight rows one after another. The rows of a tile are contiguous,
// so that is one linear stream, which the hardware prefetcher follows, and a software prefetch
// kq_gemv_prefetch_bytes ahead runs in front of the kernel. Measured (TinyLlama Q4_K_M, one
// thread, CPU time per token): 8 rows side by side with a prefetch of the next 8 rows 38-40 ms,
// one row at a time 34-35 ms, with the prefetch 32-34 ms.
template <class F, class Ops>
void kq_drive(const gemm_tile& t) {
    int64_t o = 0;
    if (t.m == 1) {
        for (; o < t.n_o; ++o) kq_micro<F, Ops, 1, 1>(t, 0, o);
    }
    for (; o + Ops::rw <= t.n_o; o += Ops::rw) kq_x_rows<F, Ops, Ops::rw>(t, o);
    for (; o < t.n_o; ++o) kq_x_rows<F, Ops, 1>(t, o);
}

// ---- activation quantization (q8k_rows), identical bytes to the scalar path ------------------
// d = amax / 127 per 256, q = RNE(x · 127 / amax) (vcvtps2dq under the default MXCSR).
void kq_quantize_q8k_row(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (int64_t b = 0; b < n / qk_k; ++b) {
        const float* xb = x + b * qk_k;
        __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < qk_k; j += 8) a = _mm256_max_ps(a, _mm256_and_ps(_mm256_loadu_ps(xb + j), abs_mask));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float amax = _mm_cvtss_f32(m);
        const __m256 vid = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        for (int g = 0; g < qk_k; g += 32) {
            __m256i q[4];
            for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + g + 8 * j), vid));
            // Two groups of 16: q[0..1] and q[2..3].
            for (int h = 0; h < 2; ++h) {
                const __m256i s = _mm256_add_epi32(q[2 * h], q[2 * h + 1]);
                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
                bsums[b * 16 + g / 16 + h] = int16_t(_mm_cvtsi128_si32(s4));
            }
            // Packing works within 128-bit lanes; the permute restores element order.
            const __m256i p8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * qk_k + g),
                                _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        }
        d[b] = amax / 127.0f;
    }
}

}  // namespace

}  // namespace kvs::cpu::detail
