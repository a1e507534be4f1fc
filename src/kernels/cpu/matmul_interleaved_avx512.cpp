// AVX-512 VNNI kernels for interleaved16 weights (layout in interleave.h). Compiled with
// KVSERVE_AVX512_FLAGS; only called when dispatch.cpp found the CPU supports them.
//
// Per 16-row group and block column: the 16 f16 scales become one vector, the codes of the
// 16 rows become 8 vectors of 16 lanes × 4 bytes (two per 64-byte load for q4_0: low and high
// nibbles), and for each activation row 8 vpdpbusd against 4 activation bytes broadcast to
// every lane leave the 16 rows' block dots in one vector: one convert, one scale and one FMA
// then serve 16 outputs. The codes are decoded once and reused by up to 8 activation rows.
#include "kernels/cpu/isa.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

// GCC 12's intrinsic headers build "undefined" vectors as `__m512 y = y;` (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

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

constexpr interleaved_kernel_table table{true, gemm_q4_0, gemm_q8_0};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_avx512() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const interleaved_kernel_table* interleaved_kernels_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
