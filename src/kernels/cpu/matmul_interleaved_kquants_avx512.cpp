// AVX-512 VNNI kernels for interleaved16 q4_K, q5_K and q6_K weights (layout in interleave.h)
// against q8k_rows activations. Compiled with KVSERVE_AVX512_FLAGS; only called when
// dispatch.cpp found the CPU supports them.
//
// Per 16-row group and super-block column: the 16 rows' scales (d, dmin) become float
// vectors and the sub-block scales (and q4_K mins) int32 vectors, decoded once; the codes of
// one sub-block become 16-lane × 4-byte vectors, decoded once and reused by up to 8 activation
// rows. For each activation row, vpdpbusd against 4 activation bytes broadcast to every lane
// leaves the 16 rows' sub-block dots in one vector (no horizontal sums); vpmulld applies the
// sub-block scale, the q4_K min term is vpdpwssd of the int16 mins against the activation
// sums per 32 (from bsums), and the q6_K code offset (-32) starts each dot from -32 · bsum.
// The integer super-block sums equal the portable path's; one convert and FMA per super-block
// and activation row then serve 16 outputs. Decode (m = 1) reads each group's columns in
// order: one contiguous stream per 16 rows.
#include "kernels/cpu/matmul_kquants.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#include "kernels/cpu/intrinsics.h"

#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/interleave.h"

namespace kvs::cpu::detail {

namespace {

// 4 activation bytes broadcast to 16 lanes.
__m512i bcast4(const void* p) {
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// The activation rows of one micro-kernel call, per super-block: RX × 256 codes, RX scales
// and per-row integers derived from bsums (q4_K: the sums per 32 as int16, for the min term;
// q6_K: -32 · the sums per 16, the code offset's share of each sub-block dot).
template <int RX>
struct xk_block {
    int8_t qs[RX][256];
    float d[RX];
    int16_t s32[RX][8];
    int32_t bias16[RX][16];
};

template <int RX>
void pack_rows(const gemm_tile& t, const q8k_rows& x, int64_t i0, xk_block<RX>* out) {
    const int64_t nb = t.n_in / qk_k;
    for (int64_t b = 0; b < nb; ++b) {
        for (int i = 0; i < RX; ++i) {
            const int64_t row = i0 + i;
            __builtin_memcpy(out[b].qs[i], x.qs + row * t.n_in + b * qk_k, qk_k);
            out[b].d[i] = x.d[row * nb + b];
            const int16_t* bs = x.bsums + (row * nb + b) * 16;
            for (int j = 0; j < 8; ++j) out[b].s32[i][j] = int16_t(bs[2 * j] + bs[2 * j + 1]);
            for (int j = 0; j < 16; ++j) out[b].bias16[i][j] = -32 * int32_t(bs[j]);
        }
    }
}

// acc += d · dx · isum for each activation row: the column's 16 f16 super-block scales d (at
// its start, for every k-quant) times the row's activation scale; one convert and FMA per row.
template <int RX>
void add_superblock(__m512 (&acc)[RX], const __m512i (&isum)[RX], const uint8_t* col, const xk_block<RX>& xv) {
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col)));
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[i]), _mm512_mul_ps(dw, _mm512_set1_ps(xv.d[i])), acc[i]);
}

__m512i load16_u8(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
__m512i load16_s8(const uint8_t* p) { return _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }

// ---- q4_K --------------------------------------------------------------------------------------

// q5_K (Q5 = true) is q4_K with a fifth code bit: qh chunk k holds it for code chunk k of
// every sub-block s = 2p + h, at bit s.
template <int RX, bool Q5>
void q4_k_group(const gemm_tile& t, const xk_block<RX>* xb, const uint8_t* group, float* y) {
    constexpr size_t column_bytes = 16 * (Q5 ? sizeof(block_q5_k) : sizeof(block_q4_k));
    constexpr size_t codes_offset = Q5 ? k5_codes_offset : k4_codes_offset;
    const int64_t nb = t.n_in / qk_k;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m3 = _mm512_set1_epi32(3);
    const __m512i m15 = _mm512_set1_epi32(15);
    const __m512i m16 = _mm512_set1_epi8(0x10);
    __m512 acc[RX];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = group + size_t(b) * column_bytes;
        const xk_block<RX>& xv = xb[b];
        const __m512i high = _mm512_loadu_si512(col + k4_high_offset);
        // Min term first, folded into acc at once (fewer live registers in the code loop):
        // int16 pairs (m_2k, m_2k+1) per lane against the activation sums per 32.
        {
            __m512i imin[RX];
#pragma GCC unroll 8
            for (int i = 0; i < RX; ++i) imin[i] = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
                const __m512i lo0 = load16_u8(col + k4_scales_offset + 32 * k);
                const __m512i lo1 = load16_u8(col + k4_scales_offset + 32 * k + 16);
                const __m512i mn0 = _mm512_or_si512(_mm512_srli_epi32(lo0, 4),
                                                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 16 + 4 * k), m3), 4));
                const __m512i mn1 = _mm512_or_si512(_mm512_srli_epi32(lo1, 4),
                                                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(high, 18 + 4 * k), m3), 4));
                const __m512i pair = _mm512_or_si512(mn0, _mm512_slli_epi32(mn1, 16));
#pragma GCC unroll 8
                for (int i = 0; i < RX; ++i) imin[i] = _mm512_dpwssd_epi32(imin[i], pair, bcast4(xv.s32[i] + 2 * k));
            }
            const __m512 dm = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + 32)));
#pragma GCC unroll 8
            for (int i = 0; i < RX; ++i)
                acc[i] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(imin[i]), _mm512_mul_ps(dm, _mm512_set1_ps(xv.d[i])), acc[i]);
        }
        // Sub-block s = 2p + h: the low (h = 0) or high (h = 1) nibbles of chunks 8p .. 8p + 7,
        // one half at a time so that only 8 code vectors are live.
        __m512i isum[RX];
#pragma GCC unroll 8
        for (int i = 0; i < RX; ++i) isum[i] = _mm512_setzero_si512();
#pragma GCC unroll 1
        for (int p = 0; p < 4; ++p) {
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const int s = 2 * p + h;
                const __m512i lo = load16_u8(col + k4_scales_offset + 16 * s);
                const __m512i sc = _mm512_or_si512(
                    _mm512_and_si512(lo, m15), _mm512_slli_epi32(_mm512_and_si512(_mm512_srl_epi32(high, _mm_cvtsi32_si128(2 * s)), m3), 4));
                // q5_K: rotating each 32-bit lane right by s - 4 (mod 32) brings bit s of every
                // byte to bit 4 of the same byte; a | (b & 0x10) is one ternlog.
                const __m512i qh_rotate = _mm512_set1_epi32((s - 4) & 31);
                __m512i c[8];
#pragma GCC unroll 8
                for (int k = 0; k < 8; ++k) {
                    const __m512i v = _mm512_loadu_si512(col + codes_offset + 64 * (8 * p + k));
                    c[k] = _mm512_and_si512(h == 0 ? v : _mm512_srli_epi16(v, 4), m4);
                    if constexpr (Q5) {
                        const __m512i qh = _mm512_rorv_epi32(_mm512_loadu_si512(col + k5_qh_offset + 64 * k), qh_rotate);
                        c[k] = _mm512_ternarylogic_epi32(c[k], qh, m16, 0xF8);
                    }
                }
#pragma GCC unroll 8
                for (int i = 0; i < RX; ++i) {
                    const int8_t* xq = xv.qs[i] + 32 * s;
                    __m512i dot = _mm512_setzero_si512();
#pragma GCC unroll 8
                    for (int k = 0; k < 8; ++k) dot = _mm512_dpbusd_epi32(dot, c[k], bcast4(xq + 4 * k));
                    isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(dot, sc));
                }
            }
        }
        add_superblock<RX>(acc, isum, col, xv);
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) _mm512_storeu_ps(y + i * t.ldy, acc[i]);
}

// ---- q6_K --------------------------------------------------------------------------------------

template <int RX>
void q6_k_group(const gemm_tile& t, const xk_block<RX>* xb, const uint8_t* group, float* y) {
    constexpr size_t column_bytes = 16 * sizeof(block_q6_k);
    const int64_t nb = t.n_in / qk_k;
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    const __m512i m30 = _mm512_set1_epi8(0x30);
    __m512 acc[RX];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = group + size_t(b) * column_bytes;
        const xk_block<RX>& xv = xb[b];
        __m512i isum[RX];
#pragma GCC unroll 8
        for (int i = 0; i < RX; ++i) isum[i] = _mm512_setzero_si512();
        // Half h, elements l in [16q, 16q + 16), ql chunk set s (0: A, parts 0 and 2; 1: B,
        // parts 1 and 3): two sub-blocks, j = 8h + 2p + q.
#pragma GCC unroll 1
        for (int hq = 0; hq < 4; ++hq) {
            const int h = hq / 2, q = hq % 2;
#pragma GCC unroll 2
            for (int s = 0; s < 2; ++s) {
                const int p_lo = s, p_hi = s + 2;
                const int j_lo = 8 * h + 2 * p_lo + q, j_hi = 8 * h + 2 * p_hi + q;
                const __m512i sc_lo = load16_s8(col + k6_scales_offset + 16 * j_lo);
                const __m512i sc_hi = load16_s8(col + k6_scales_offset + 16 * j_hi);
                __m512i c[8];
#pragma GCC unroll 4
                for (int kk = 0; kk < 4; ++kk) {
                    const uint8_t* run = col + k6_codes_offset + 768 * hq;
                    const __m512i a = _mm512_loadu_si512(run + 64 * (4 * (1 + s) + kk));
                    const __m512i qh = _mm512_loadu_si512(run + 64 * kk);
                    // high bits of part p sit at bits 2p, 2p + 1 of qh: move them to 4, 5.
                    const __m512i h_lo = s == 0 ? _mm512_slli_epi16(qh, 4) : _mm512_slli_epi16(qh, 2);
                    const __m512i h_hi = s == 0 ? qh : _mm512_srli_epi16(qh, 2);
                    c[kk] = _mm512_or_si512(_mm512_and_si512(a, m4), _mm512_and_si512(h_lo, m30));
                    c[kk + 4] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(a, 4), m4), _mm512_and_si512(h_hi, m30));
                }
#pragma GCC unroll 8
                for (int i = 0; i < RX; ++i) {
                    const int8_t* xq = xv.qs[i] + 128 * h + 16 * q;
                    __m512i d0 = _mm512_set1_epi32(xv.bias16[i][j_lo]);
                    __m512i d1 = _mm512_set1_epi32(xv.bias16[i][j_hi]);
#pragma GCC unroll 4
                    for (int kk = 0; kk < 4; ++kk) {
                        d0 = _mm512_dpbusd_epi32(d0, c[kk], bcast4(xq + 32 * p_lo + 4 * kk));
                        d1 = _mm512_dpbusd_epi32(d1, c[kk + 4], bcast4(xq + 32 * p_hi + 4 * kk));
                    }
                    isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(d0, sc_lo));
                    isum[i] = _mm512_add_epi32(isum[i], _mm512_mullo_epi32(d1, sc_hi));
                }
            }
        }
        add_superblock<RX>(acc, isum, col, xv);
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) _mm512_storeu_ps(y + i * t.ldy, acc[i]);
}

// Rows [i0, i0 + RX) against every group of the tile.
enum class kquant { q4, q5, q6 };

template <kquant K, int RX>
void rows_by_groups(const gemm_tile& t, const q8k_rows& x, int64_t i0) {
    static thread_local std::vector<xk_block<8>> storage;
    const size_t nb = size_t(t.n_in / qk_k);
    const size_t blocks = (nb * sizeof(xk_block<RX>) + sizeof(xk_block<8>) - 1) / sizeof(xk_block<8>);
    if (storage.size() < blocks) storage.resize(blocks);
    auto* xb = reinterpret_cast<xk_block<RX>*>(storage.data());
    pack_rows<RX>(t, x, i0, xb);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        float* y = t.y + i0 * t.ldy + g0;
        if constexpr (K == kquant::q6) q6_k_group<RX>(t, xb, group, y);
        else q4_k_group<RX, K == kquant::q5>(t, xb, group, y);
    }
}

template <kquant K>
void gemm_kquant(const gemm_tile& t) {
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    int64_t i = 0;
    for (; i + 8 <= t.m; i += 8) rows_by_groups<K, 8>(t, x, i);
    switch (t.m - i) {
        case 7: rows_by_groups<K, 7>(t, x, i); break;
        case 6: rows_by_groups<K, 6>(t, x, i); break;
        case 5: rows_by_groups<K, 5>(t, x, i); break;
        case 4: rows_by_groups<K, 4>(t, x, i); break;
        case 3: rows_by_groups<K, 3>(t, x, i); break;
        case 2: rows_by_groups<K, 2>(t, x, i); break;
        case 1: rows_by_groups<K, 1>(t, x, i); break;
        default: break;
    }
}

}  // namespace

void gemm_q4_k_interleaved_avx512(const gemm_tile& t) { gemm_kquant<kquant::q4>(t); }
void gemm_q5_k_interleaved_avx512(const gemm_tile& t) { gemm_kquant<kquant::q5>(t); }
void gemm_q6_k_interleaved_avx512(const gemm_tile& t) { gemm_kquant<kquant::q6>(t); }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
void gemm_q4_k_interleaved_avx512(const gemm_tile&) {}
void gemm_q5_k_interleaved_avx512(const gemm_tile&) {}
void gemm_q6_k_interleaved_avx512(const gemm_tile&) {}
}  // namespace kvs::cpu::detail

#endif
