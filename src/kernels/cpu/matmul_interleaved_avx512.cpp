// AVX-512 VNNI kernels for interleaved16 weights (layout in interleave.h). Compiled with
// KVSERVE_AVX512_FLAGS; only called when dispatch.cpp found the CPU supports them.
//
// Per 16-row group and block column: the 16 f16 scales become one vector, the codes of the
// 16 rows become 8 vectors of 16 lanes × 4 bytes (two per 64-byte load for q4_0: low and high
// nibbles), and for each activation row 8 vpdpbusd against 4 activation bytes broadcast to
// every lane leave the 16 rows' block dots in one vector: one convert, one scale and one FMA
// then serve 16 outputs. The codes are decoded once and reused by up to 8 activation rows.
//
// f16 / bf16: a 64-byte chunk is 16 rows × 2 elements. Against bf16 activations (m >= 2, the
// bf16dot contract of matmul_bf16dot_avx512.cpp) one vdpbf16ps per chunk and activation row
// adds both products into the 16 rows' lanes; two groups share each activation broadcast.
// Against float activations (decode) the pairs are widened to f32 and multiplied by the
// activation pair, and adjacent lanes are summed at the end: exact f32 math.
#include "kernels/cpu/isa.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__) && \
    defined(__AVX512BF16__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

// GCC 12's intrinsic headers build "undefined" vectors as `__m512 y = y;` (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/interleave.h"

namespace kvs::cpu::detail {

namespace {

struct q4_0_codes {
    static constexpr size_t column_bytes = 16 * sizeof(block_q4_0);
    static constexpr int32_t offset = 8;  // w = (code - 8) · d
    static void decode(const uint8_t* col, __m512i (&c)[8]) {
        const __m512i m4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
        for (int g = 0; g < 4; ++g) {
            const __m512i v = _mm512_loadu_si512(col + 32 + 64 * g);
            c[g] = _mm512_and_si512(v, m4);
            c[g + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
        }
    }
};

struct q8_0_codes {
    static constexpr size_t column_bytes = 16 * sizeof(block_q8_0);
    static constexpr int32_t offset = 128;  // stored code = q + 128
    static void decode(const uint8_t* col, __m512i (&c)[8]) {
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) c[g] = _mm512_loadu_si512(col + 32 + 64 * g);
    }
};

// 4 activation bytes broadcast to 16 lanes.
__m512i bcast4(const int8_t* p) { return _mm512_broadcastd_epi32(_mm_loadu_si32(p)); }

// RX activation rows [i0, i0 + RX) × one 16-row group; y points at the group's first output.
template <class C, int RX>
void group_micro(const gemm_tile& t, const q8_rows& x, int64_t i0, const uint8_t* group, float* y) {
    const int64_t nb = t.n_in / 32;
    __m512 acc[RX];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = group + size_t(b) * C::column_bytes;
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col)));
        __m512i c[8];
        C::decode(col, c);
#pragma GCC unroll 8
        for (int i = 0; i < RX; ++i) {
            const int64_t row = i0 + i;
            const int8_t* xq = x.qs + row * t.n_in + b * 32;
            // Σ (code - offset)·qx = Σ code·qx - offset·Σ qx: start from the second term.
            __m512i s0 = _mm512_set1_epi32(-C::offset * x.s[row * nb + b]);
            if constexpr (RX >= 4) {
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) s0 = _mm512_dpbusd_epi32(s0, c[g], bcast4(xq + 4 * g));
            } else {  // few rows: two dependency chains keep the VNNI unit busy
                __m512i s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int g = 0; g < 8; g += 2) {
                    s0 = _mm512_dpbusd_epi32(s0, c[g], bcast4(xq + 4 * g));
                    s1 = _mm512_dpbusd_epi32(s1, c[g + 1], bcast4(xq + 4 * g + 4));
                }
                s0 = _mm512_add_epi32(s0, s1);
            }
            const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[row * nb + b]));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), scale, acc[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) _mm512_storeu_ps(y + (i0 + i) * t.ldy, acc[i]);
}

template <class C>
void gemm_interleaved(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        float* y = t.y + g0;
        int64_t i = 0;
        for (; i + 8 <= t.m; i += 8) group_micro<C, 8>(t, x, i, group, y);
        switch (t.m - i) {
            case 7: group_micro<C, 7>(t, x, i, group, y); break;
            case 6: group_micro<C, 6>(t, x, i, group, y); break;
            case 5: group_micro<C, 5>(t, x, i, group, y); break;
            case 4: group_micro<C, 4>(t, x, i, group, y); break;
            case 3: group_micro<C, 3>(t, x, i, group, y); break;
            case 2: group_micro<C, 2>(t, x, i, group, y); break;
            case 1: group_micro<C, 1>(t, x, i, group, y); break;
            default: break;
        }
    }
}

void gemm_q4_0(const gemm_tile& t) { gemm_interleaved<q4_0_codes>(t); }
void gemm_q8_0(const gemm_tile& t) { gemm_interleaved<q8_0_codes>(t); }

// ---- f16 / bf16 ------------------------------------------------------------------------------

constexpr size_t half_column_bytes = 16 * 64;  // 32 elements of 16 rows

// 16 half-precision values (8 rows × 2 elements) widened to f32, in order.
struct widen_f16 {
    static __m512 widen(__m256i h) { return _mm512_cvtph_ps(h); }
};
struct widen_bf16 {
    static __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
};

// One chunk (16 rows × 2 elements) as bf16 pairs.
struct pairs_bf16 {
    static __m512bh load(const uint8_t* p) { return __m512bh(_mm512_loadu_si512(p)); }
};
struct pairs_f16 {  // rounded to bf16 (bf16dot contract)
    static __m512bh load(const uint8_t* p) {
        const __m512i h = _mm512_loadu_si512(p);
        return _mm512_cvtne2ps_pbh(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)),
                                   _mm512_cvtph_ps(_mm512_castsi512_si256(h)));
    }
};

// Float activations, one row at a time: lanes hold (row, element parity) pairs, summed at the end.
template <class W>
void half_float_group(const gemm_tile& t, const float* x, const uint8_t* group, float* y) {
    const int64_t nb = t.n_in / 32;
    __m512 lo0 = _mm512_setzero_ps(), hi0 = _mm512_setzero_ps();
    __m512 lo1 = _mm512_setzero_ps(), hi1 = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = group + size_t(b) * half_column_bytes;
        const float* xb = x + b * 32;
#pragma GCC unroll 16
        for (int g = 0; g < 16; g += 2) {
            // [x(2g), x(2g+1)] repeated: one 64-bit broadcast.
            const __m512 xp0 = _mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(xb + 2 * g)));
            const __m512 xp1 = _mm512_castpd_ps(_mm512_set1_pd(*reinterpret_cast<const double*>(xb + 2 * g + 2)));
            const uint8_t* c0 = col + 64 * g;
            const uint8_t* c1 = c0 + 64;
            lo0 = _mm512_fmadd_ps(W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0))), xp0, lo0);
            hi0 = _mm512_fmadd_ps(W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + 32))), xp0, hi0);
            lo1 = _mm512_fmadd_ps(W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1))), xp1, lo1);
            hi1 = _mm512_fmadd_ps(W::widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c1 + 32))), xp1, hi1);
        }
    }
    const __m512 lo = _mm512_add_ps(lo0, lo1), hi = _mm512_add_ps(hi0, hi1);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi)));
}

template <class W>
void gemm_half_float(const gemm_tile& t) {
    const auto* x = static_cast<const float*>(t.x);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows)
        for (int64_t i = 0; i < t.m; ++i)
            half_float_group<W>(t, x + i * t.x_stride, t.w + size_t(g0) * t.w_row_bytes, t.y + i * t.ldy + g0);
}

// bf16 activations: RX rows × G groups of 16 weight rows.
template <class P, int RX, int G>
void half_dot_micro(const gemm_tile& t, const uint16_t* x, int64_t i0, int64_t g0) {
    const int64_t nb = t.n_in / 32;
    const size_t group_bytes = size_t(interleave_rows) * t.w_row_bytes;
    const uint8_t* w = t.w + size_t(g0) * t.w_row_bytes;
    __m512 acc[RX][G];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 2
        for (int g = 0; g < G; ++g) acc[i][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const size_t col = size_t(b) * half_column_bytes;
#pragma GCC unroll 2
        for (int c = 0; c < 16; ++c) {
            __m512bh wv[G];
#pragma GCC unroll 2
            for (int g = 0; g < G; ++g) wv[g] = P::load(w + size_t(g) * group_bytes + col + 64 * c);
#pragma GCC unroll 8
            for (int i = 0; i < RX; ++i) {
                const __m512bh xv = __m512bh(bcast4(reinterpret_cast<const int8_t*>(x + (i0 + i) * t.x_stride + b * 32 + 2 * c)));
#pragma GCC unroll 2
                for (int g = 0; g < G; ++g) acc[i][g] = _mm512_dpbf16_ps(acc[i][g], wv[g], xv);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 2
        for (int g = 0; g < G; ++g) _mm512_storeu_ps(t.y + (i0 + i) * t.ldy + g0 + 16 * g, acc[i][g]);
}

template <class P, int G>
void half_dot_rows(const gemm_tile& t, const uint16_t* x, int64_t g0) {
    int64_t i = 0;
    for (; i + 8 <= t.m; i += 8) half_dot_micro<P, 8, G>(t, x, i, g0);
    switch (t.m - i) {
        case 7: half_dot_micro<P, 7, G>(t, x, i, g0); break;
        case 6: half_dot_micro<P, 6, G>(t, x, i, g0); break;
        case 5: half_dot_micro<P, 5, G>(t, x, i, g0); break;
        case 4: half_dot_micro<P, 4, G>(t, x, i, g0); break;
        case 3: half_dot_micro<P, 3, G>(t, x, i, g0); break;
        case 2: half_dot_micro<P, 2, G>(t, x, i, g0); break;
        case 1: half_dot_micro<P, 1, G>(t, x, i, g0); break;
        default: break;
    }
}

template <class P>
void gemm_half_dot(const gemm_tile& t) {
    const auto* x = static_cast<const uint16_t*>(t.x);
    int64_t g0 = 0;
    for (; g0 + 32 <= t.n_o; g0 += 32) half_dot_rows<P, 2>(t, x, g0);
    if (g0 < t.n_o) half_dot_rows<P, 1>(t, x, g0);
}

// f16 weights against bf16 activations: each pair of groups is rounded to bf16 once into a
// per-thread panel (the same interleaved layout), then multiplied as bf16 by every activation
// row of the tile, so the conversion is paid once per tile rather than once per 8 rows.
void gemm_f16_dot(const gemm_tile& t) {
    if (t.m <= 8) {
        gemm_half_dot<pairs_f16>(t);
        return;
    }
    static thread_local std::vector<uint8_t> panel;
    const size_t group_bytes = size_t(interleave_rows) * t.w_row_bytes;
    if (panel.size() < 2 * group_bytes) panel.resize(2 * group_bytes);
    const auto* x = static_cast<const uint16_t*>(t.x);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += 32) {
        const int n_groups = g0 + 32 <= t.n_o ? 2 : 1;
        const uint8_t* src = t.w + size_t(g0) * t.w_row_bytes;
        for (size_t off = 0; off < size_t(n_groups) * group_bytes; off += 64)
            _mm512_storeu_si512(panel.data() + off, __m512i(pairs_f16::load(src + off)));
        gemm_tile pt = t;
        pt.w = panel.data();
        pt.n_o = 16 * n_groups;
        pt.y = t.y + g0;
        if (n_groups == 2) {
            half_dot_rows<pairs_bf16, 2>(pt, x, 0);
        } else {
            half_dot_rows<pairs_bf16, 1>(pt, x, 0);
        }
    }
}

void gemm_f16(const gemm_tile& t) { gemm_half_float<widen_f16>(t); }
void gemm_bf16(const gemm_tile& t) { gemm_half_float<widen_bf16>(t); }
void gemm_bf16_dot(const gemm_tile& t) { gemm_half_dot<pairs_bf16>(t); }

constexpr interleaved_kernel_table table{true,     gemm_q4_0,    gemm_q8_0,    gemm_f16,
                                         gemm_bf16, gemm_f16_dot, gemm_bf16_dot};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_avx512() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const interleaved_kernel_table* interleaved_kernels_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
