// AVX-512 (VNNI) k-quant kernels: the shared 256-bit kernels (matmul_kquants_simd.h) with the
// scaled accumulation done by vpdpwssd (int16 pairs × int16 scale, added into int32 lanes), a
// 4 x rows × 4 weight rows prefill tile and a row-by-row GEMV. 256-bit vectors: on Zen 4
// a 512-bit op takes both 256-bit halves, so wider vectors would not add throughput here.
// Compiled with KVSERVE_AVX512_FLAGS; only called when dispatch.cpp found the CPU supports them.
#include "kernels/cpu/matmul_kquants.h"

// Same ISA guard as matmul_avx512.cpp.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if !defined(__AVX512F__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512bf16,avx2,fma,f16c")
#endif
#define KVS_ISA_PATH 1
#elif defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512VNNI__)
#define KVS_ISA_PATH 1
#endif

#if defined(KVS_ISA_PATH)

// GCC 12's intrinsic headers trip -Wuninitialized once inlined (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "kernels/cpu/matmul_kquants_simd.h"

namespace kvs::cpu::detail {

namespace {

struct ops_vnni {
    static constexpr int rw = 4;  // weight rows per prefill tile (x rows: 4)
    static __m256i dot(__m256i acc, __m256i p16, __m256i scale) { return _mm256_dpwssd_epi32(acc, p16, scale); }
};

}  // namespace

void gemm_q4_k_avx512(const gemm_tile& t) { kq_drive<fmt_scale_min<false>, ops_vnni>(t); }
void gemm_q5_k_avx512(const gemm_tile& t) { kq_drive<fmt_scale_min<true>, ops_vnni>(t); }
void gemm_q6_k_avx512(const gemm_tile& t) { kq_drive<fmt_q6_k, ops_vnni>(t); }
void quantize_q8k_row_avx512(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
    kq_quantize_q8k_row(x, n, qs, d, bsums);
}

}  // namespace kvs::cpu::detail

#endif
