// K-quant tile kernels (q4_K, q5_K, q6_K weights against q8k_rows activations), one set per
// instruction set, defined in matmul_kquants_{scalar,avx2,avx512}.cpp and placed in the
// kernel_table of each ISA (isa.h). Plain function declarations only (isa.h's ODR rule); the
// AVX2 / AVX-512 ones must only be called when dispatch.cpp found the CPU supports them.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.h"

namespace kvs::cpu::detail {

void gemm_q4_k_scalar(const gemm_tile& t);
void gemm_q5_k_scalar(const gemm_tile& t);
void gemm_q6_k_scalar(const gemm_tile& t);
void quantize_q8k_row_scalar(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);

void gemm_q4_k_avx2(const gemm_tile& t);
void gemm_q5_k_avx2(const gemm_tile& t);
void gemm_q6_k_avx2(const gemm_tile& t);
void quantize_q8k_row_avx2(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);

void gemm_q4_k_avx512(const gemm_tile& t);
void gemm_q5_k_avx512(const gemm_tile& t);
void gemm_q6_k_avx512(const gemm_tile& t);
// interleaved16 weights (interleave.h), in interleaved_kernels_avx512's table.
void gemm_q4_k_interleaved_avx512(const gemm_tile& t);
void gemm_q5_k_interleaved_avx512(const gemm_tile& t);
void gemm_q6_k_interleaved_avx512(const gemm_tile& t);
void quantize_q8k_row_avx512(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);

}  // namespace kvs::cpu::detail
