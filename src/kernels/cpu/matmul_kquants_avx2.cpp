// AVX2 + FMA + F16C k-quant kernels: the shared 256-bit kernels (matmul_kquants_simd.h) with
// the scaled accumulation done by vpmaddwd (int16 pairs × int16 scale → int32) and vpaddd; a
// 4 x rows × 2 weight rows prefill tile (16 vector registers). Compiled with
// KVSERVE_AVX2_FLAGS; only called when dispatch.cpp found the CPU supports them.
#include "kernels/cpu/matmul_kquants.h"

// Same ISA guard as matmul_avx2.cpp.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(__AVX2__)
#pragma GCC target("avx2,fma,f16c")
#endif
#define KVS_ISA_PATH 1
#elif defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

#include "kernels/cpu/intrinsics.h"

#include "kernels/cpu/matmul_kquants_simd.h"

namespace kvs::cpu::detail {

namespace {

struct ops_avx2 {
    static constexpr int rw = 2;
    static __m256i dot(__m256i acc, __m256i p16, __m256i scale) {
        return _mm256_add_epi32(acc, _mm256_madd_epi16(p16, scale));
    }
};

}  // namespace

void gemm_q4_k_avx2(const gemm_tile& t) { kq_drive<fmt_scale_min<false>, ops_avx2>(t); }
void gemm_q5_k_avx2(const gemm_tile& t) { kq_drive<fmt_scale_min<true>, ops_avx2>(t); }
void gemm_q6_k_avx2(const gemm_tile& t) { kq_drive<fmt_q6_k, ops_avx2>(t); }
void quantize_q8k_row_avx2(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
    kq_quantize_q8k_row(x, n, qs, d, bsums);
}

}  // namespace kvs::cpu::detail

#endif
