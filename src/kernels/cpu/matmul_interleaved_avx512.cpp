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

#include "kernels/cpu/intrinsics.h"

#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/matmul_kquants.h"

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

// Distance of the software prefetch in the q4_0/q8_0 interleaved16 kernels, used for tiles of
// 4 or more activation rows. With few rows a weight chunk is reused only a few times, so its
// first pass streams from DRAM faster than the hardware prefetcher alone keeps up with (batched
// decode of 16 rows: +9%); with many rows the chunk is in L2 and the prefetches are cheap hits.
// A single row (decode) already streams at the DRAM rate, and the k-quant and bf16 kernels
// (more work per weight byte) measured slower with it (-9%, -25%): they leave the stream to
// the hardware prefetcher.
constexpr size_t weight_prefetch_distance = 4096;

// Prefetch the Bytes of weight stream that start `weight_prefetch_distance` after `p` (a block
// column of a group: the next columns and groups follow it contiguously).
template <size_t Bytes>
void prefetch_weights_ahead(const uint8_t* p) {
#pragma GCC unroll 64
    for (size_t off = 0; off < Bytes; off += 64)
        _mm_prefetch(reinterpret_cast<const char*>(p + weight_prefetch_distance + off), _MM_HINT_T0);
}

// 4 activation bytes broadcast to 16 lanes.
__m512i bcast4(const int8_t* p) {
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// The activation rows of one micro-kernel call, repacked block by block so that everything a
// block needs sits at constant offsets from one pointer (eight rows' separate pointers would
// not fit in the general registers): per block, RX × 32 codes, RX scales, RX biases.
template <int RX>
struct x_block {
    int8_t qs[RX][32];
    float d[RX];
    int32_t bias[RX];  // -offset · Σ qx: the code offset's share of the block dot
};

template <class C, int RX>
void pack_rows(const gemm_tile& t, const q8_rows& x, int64_t i0, x_block<RX>* out) {
    const int64_t nb = t.n_in / 32;
    for (int64_t b = 0; b < nb; ++b) {
        for (int i = 0; i < RX; ++i) {
            const int64_t row = i0 + i;
            __builtin_memcpy(out[b].qs[i], x.qs + row * t.n_in + b * 32, 32);
            out[b].d[i] = x.d[row * nb + b];
            out[b].bias[i] = -C::offset * x.s[row * nb + b];
        }
    }
}

// RX activation rows × one 16-row group; y points at the group's first output of row 0.
template <class C, int RX>
void group_micro(const gemm_tile& t, const x_block<RX>* xb, const uint8_t* group, float* y) {
    const int64_t nb = t.n_in / 32;
    __m512 acc[RX];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = group + size_t(b) * C::column_bytes;
        if constexpr (RX >= 4) prefetch_weights_ahead<C::column_bytes>(col);  // not for decode: see above
        const x_block<RX>& xv = xb[b];
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(col)));
        __m512i c[8];
        C::decode(col, c);
#pragma GCC unroll 8
        for (int i = 0; i < RX; ++i) {
            // Σ (code - offset)·qx = Σ code·qx - offset·Σ qx: start from the second term.
            __m512i s0 = _mm512_set1_epi32(xv.bias[i]);
            if constexpr (RX >= 4) {
#pragma GCC unroll 8
                for (int g = 0; g < 8; ++g) s0 = _mm512_dpbusd_epi32(s0, c[g], bcast4(xv.qs[i] + 4 * g));
            } else {  // few rows: two dependency chains keep the VNNI unit busy
                __m512i s1 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int g = 0; g < 8; g += 2) {
                    s0 = _mm512_dpbusd_epi32(s0, c[g], bcast4(xv.qs[i] + 4 * g));
                    s1 = _mm512_dpbusd_epi32(s1, c[g + 1], bcast4(xv.qs[i] + 4 * g + 4));
                }
                s0 = _mm512_add_epi32(s0, s1);
            }
            const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xv.d[i]));
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s0), scale, acc[i]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i) _mm512_storeu_ps(y + i * t.ldy, acc[i]);
}

// Rows [i0, i0 + RX) against every group of the tile.
template <class C, int RX>
void rows_by_groups(const gemm_tile& t, const q8_rows& x, int64_t i0) {
    static thread_local std::vector<x_block<8>> storage;
    const size_t nb = size_t(t.n_in / 32);
    const size_t blocks = (nb * sizeof(x_block<RX>) + sizeof(x_block<8>) - 1) / sizeof(x_block<8>);
    if (storage.size() < blocks) storage.resize(blocks);
    auto* xb = reinterpret_cast<x_block<RX>*>(storage.data());
    pack_rows<C, RX>(t, x, i0, xb);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows)
        group_micro<C, RX>(t, xb, t.w + size_t(g0) * t.w_row_bytes, t.y + i0 * t.ldy + g0);
}

template <class C>
void gemm_interleaved(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    int64_t i = 0;
    for (; i + 8 <= t.m; i += 8) rows_by_groups<C, 8>(t, x, i);
    switch (t.m - i) {
        case 7: rows_by_groups<C, 7>(t, x, i); break;
        case 6: rows_by_groups<C, 6>(t, x, i); break;
        case 5: rows_by_groups<C, 5>(t, x, i); break;
        case 4: rows_by_groups<C, 4>(t, x, i); break;
        case 3: rows_by_groups<C, 3>(t, x, i); break;
        case 2: rows_by_groups<C, 2>(t, x, i); break;
        case 1: rows_by_groups<C, 1>(t, x, i); break;
        default: break;
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

// bf16 activations: RX rows × G groups of 16 weight rows. `xp` holds the RX rows block by
// block (RX × 32 bf16 per block), so that every broadcast is at a constant offset.
template <class P, int RX, int G>
void half_dot_micro(const gemm_tile& t, const uint16_t* xp, int64_t i0, int64_t g0) {
    const int64_t nb = t.n_in / 32;
    const size_t group_bytes = size_t(interleave_rows) * t.w_row_bytes;
    const uint8_t* w = t.w + size_t(g0) * t.w_row_bytes;
    __m512 acc[RX][G];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 2
        for (int g = 0; g < G; ++g) acc[i][g] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* col = w + size_t(b) * half_column_bytes;
        const auto* xb = reinterpret_cast<const int8_t*>(xp + b * RX * 32);
#pragma GCC unroll 2
        for (int c = 0; c < 16; ++c) {
            __m512bh wv[G];
#pragma GCC unroll 2
            for (int g = 0; g < G; ++g) wv[g] = P::load(col + size_t(g) * group_bytes + 64 * c);
#pragma GCC unroll 8
            for (int i = 0; i < RX; ++i) {
                const __m512bh xv = __m512bh(bcast4(xb + 64 * i + 4 * c));
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

// Rows [i0, i0 + RX) of bf16 activations against every group of the tile, two groups at a time.
template <class P, int RX>
void half_dot_rows(const gemm_tile& t, const uint16_t* x, int64_t i0) {
    static thread_local std::vector<uint16_t> packed;
    const int64_t nb = t.n_in / 32;
    if (packed.size() < size_t(nb * RX * 32)) packed.resize(size_t(nb * RX * 32));
    for (int64_t b = 0; b < nb; ++b)
        for (int i = 0; i < RX; ++i)
            __builtin_memcpy(packed.data() + (b * RX + i) * 32, x + (i0 + i) * t.x_stride + b * 32, 64);
    int64_t g0 = 0;
    for (; g0 + 32 <= t.n_o; g0 += 32) half_dot_micro<P, RX, 2>(t, packed.data(), i0, g0);
    if (g0 < t.n_o) half_dot_micro<P, RX, 1>(t, packed.data(), i0, g0);
}

template <class P>
void gemm_half_dot(const gemm_tile& t) {
    const auto* x = static_cast<const uint16_t*>(t.x);
    int64_t i = 0;
    for (; i + 8 <= t.m; i += 8) half_dot_rows<P, 8>(t, x, i);
    switch (t.m - i) {
        case 7: half_dot_rows<P, 7>(t, x, i); break;
        case 6: half_dot_rows<P, 6>(t, x, i); break;
        case 5: half_dot_rows<P, 5>(t, x, i); break;
        case 4: half_dot_rows<P, 4>(t, x, i); break;
        case 3: half_dot_rows<P, 3>(t, x, i); break;
        case 2: half_dot_rows<P, 2>(t, x, i); break;
        case 1: half_dot_rows<P, 1>(t, x, i); break;
        default: break;
    }
}

// f16 weights against bf16 activations: the tile's weights are rounded to bf16 once into a
// per-thread panel (the same interleaved layout; a tile is at most a few hundred KB), then
// multiplied as bf16 by every activation row, so the conversion is paid once per tile rather
// than once per 8 rows.
void gemm_f16_dot(const gemm_tile& t) {
    if (t.m <= 8) {
        gemm_half_dot<pairs_f16>(t);
        return;
    }
    static thread_local std::vector<uint8_t> panel;
    const size_t bytes = size_t(t.n_o) * t.w_row_bytes;
    if (panel.size() < bytes) panel.resize(bytes);
    for (size_t off = 0; off < bytes; off += 64)
        _mm512_storeu_si512(panel.data() + off, __m512i(pairs_f16::load(t.w + off)));
    gemm_tile pt = t;
    pt.w = panel.data();
    gemm_half_dot<pairs_bf16>(pt);
}

void gemm_f16(const gemm_tile& t) { gemm_half_float<widen_f16>(t); }
void gemm_bf16(const gemm_tile& t) { gemm_half_float<widen_bf16>(t); }
void gemm_bf16_dot(const gemm_tile& t) { gemm_half_dot<pairs_bf16>(t); }

constexpr interleaved_kernel_table table{true,     gemm_q4_0,    gemm_q8_0,    gemm_f16,
                                         gemm_bf16, gemm_f16_dot, gemm_bf16_dot,
                                         gemm_q4_k_interleaved_avx512, gemm_q6_k_interleaved_avx512,
                                         gemm_q5_k_interleaved_avx512};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_avx512() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const interleaved_kernel_table* interleaved_kernels_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
