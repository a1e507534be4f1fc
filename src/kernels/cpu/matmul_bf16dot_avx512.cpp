// AVX512-BF16 kernels for f16 / bf16 weights against a batch of activation rows (m >= 2):
// vdpbf16ps multiplies 32 bf16 pairs per instruction, twice the rate of f32 FMA, which is
// what prompt processing and batched decode of half-precision models are bound by.
//
// Precision: the activations are rounded to bf16 (round to nearest even) once per matmul,
// as llama.cpp does for BF16 models; f16 weights are rounded to bf16 as they are loaded into
// registers; products and sums are f32. Decode (m = 1) keeps exact f32 math: it is bound by
// memory bandwidth, not arithmetic.
#include "kernels/cpu/isa.h"

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#include "kernels/cpu/intrinsics.h"

namespace kvs::cpu::detail {

namespace {

__mmask32 tail_mask32(int64_t n) { return n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1); }

// 32 weights at element k of a row as bf16 pairs; `mask` limits the read to the row's tail.
struct weights_bf16 {
    static __m512bh load(const uint8_t* w, int64_t k, __mmask32 mask) {
        return __m512bh(_mm512_maskz_loadu_epi16(mask, w + 2 * k));
    }
};
struct weights_f16 {
    static __m512bh load(const uint8_t* w, int64_t k, __mmask32 mask) {
        const __m512i h = _mm512_maskz_loadu_epi16(mask, w + 2 * k);
        const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
        const __m512 hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
        return _mm512_cvtne2ps_pbh(hi, lo);
    }
};

// RX activation rows × RW weight rows over the full n_in: each weight vector is used RX
// times and each activation vector RW times.
template <class L, int RX, int RW>
void micro(const gemm_tile& t, const uint16_t* x, int64_t i0, int64_t o0) {
    __m512 acc[RX][RW];
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_setzero_ps();
    const uint8_t* w = t.w + size_t(o0) * t.w_row_bytes;
    for (int64_t k = 0; k < t.n_in; k += 32) {
        const __mmask32 mask = tail_mask32(t.n_in - k);
        __m512bh wv[RW];
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) wv[r] = L::load(w + size_t(r) * t.w_row_bytes, k, mask);
#pragma GCC unroll 8
        for (int i = 0; i < RX; ++i) {
            const __m512bh xv = __m512bh(_mm512_maskz_loadu_epi16(mask, x + (i0 + i) * t.x_stride + k));
#pragma GCC unroll 4
            for (int r = 0; r < RW; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], xv, wv[r]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < RX; ++i)
#pragma GCC unroll 4
        for (int r = 0; r < RW; ++r) t.y[(i0 + i) * t.ldy + o0 + r] = _mm512_reduce_add_ps(acc[i][r]);
}

template <class L, int RW>
void x_rows(const gemm_tile& t, const uint16_t* x, int64_t o0) {
    int64_t i = 0;
    for (; i + 6 <= t.m; i += 6) micro<L, 6, RW>(t, x, i, o0);
    switch (t.m - i) {
        case 5: micro<L, 5, RW>(t, x, i, o0); break;
        case 4: micro<L, 4, RW>(t, x, i, o0); break;
        case 3: micro<L, 3, RW>(t, x, i, o0); break;
        case 2: micro<L, 2, RW>(t, x, i, o0); break;
        case 1: micro<L, 1, RW>(t, x, i, o0); break;
        default: break;
    }
}

// t.x is bf16 activation rows (m, x_stride).
template <class L>
void gemm(const gemm_tile& t) {
    const auto* x = static_cast<const uint16_t*>(t.x);
    int64_t o = 0;
    for (; o + 4 <= t.n_o; o += 4) x_rows<L, 4>(t, x, o);
    for (; o < t.n_o; ++o) x_rows<L, 1>(t, x, o);
}

void gemm_bf16(const gemm_tile& t) { gemm<weights_bf16>(t); }
void gemm_f16(const gemm_tile& t) { gemm<weights_f16>(t); }

// Round to nearest even, 32 at a time (vcvtne2ps2bf16), the tail masked.
void to_bf16_row(const float* x, int64_t n, uint16_t* out) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512(out + i, __m512i(v));
    }
    for (; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1);
        const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
        _mm256_mask_storeu_epi16(out + i, m, __m256i(v));
    }
}

constexpr bf16dot_kernel_table table{gemm_f16, gemm_bf16, to_bf16_row};

}  // namespace

const bf16dot_kernel_table* bf16dot_kernels_avx512() { return &table; }

}  // namespace kvs::cpu::detail

#else

namespace kvs::cpu::detail {
const bf16dot_kernel_table* bf16dot_kernels_avx512() { return nullptr; }
}  // namespace kvs::cpu::detail

#endif
