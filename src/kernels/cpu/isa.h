// Internal contract between the ISA-neutral kernel front ends (matmul.cpp, ...) and the
// per-ISA implementations (*_scalar.cpp, *_avx2.cpp, *_avx512.cpp).
//
// ODR rule: this header is included by files compiled with wide ISA flags, so it must only
// declare plain data and functions; an inline function here would be compiled once per ISA
// and the linker could pick an AVX-512 copy for baseline callers. Per-ISA helpers stay
// `static` or in anonymous namespaces inside their .cpp files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvs::cpu::detail {

// Activations quantized to 8 bits in blocks of 32 (like ggml's q8_0/q8_1 for x), laid out
// as separate planes so that SIMD loads of consecutive blocks are contiguous.
struct q8_rows {
    const int8_t* qs;   // (m, n_in)       q = round(x / d)
    const float* d;     // (m, n_in / 32)  block scales
    const int32_t* s;   // (m, n_in / 32)  sum of q over each block (for unsigned weight codes)
    int64_t n_in;
};

// Activations quantized to 8 bits per super-block of 256 (like ggml's q8_K), for the k-quant
// weights (q4_K, q5_K, q6_K): one float scale per 256 elements lets a super-block's sub-block
// dots, each weighted by its integer sub-block scale, be summed in integer arithmetic.
struct q8k_rows {
    const int8_t* qs;      // (m, n_in)        q = round(x / d), |q| <= 127
    const float* d;        // (m, n_in / 256)  super-block scales
    const int16_t* bsums;  // (m, n_in / 16)   sum of q over each 16 elements
    int64_t n_in;
};

// One tile of y = x · wᵀ: weight rows [0, n_o) starting at `w` (rows `w_row_bytes` apart)
// against x rows [0, m); writes y[i * ldy + o]. `x` is float rows (m, n_in) for float
// weights, a q8_rows* for q8_0/q4_0/q4_1 weights (then n_in is a multiple of 32) or a
// q8k_rows* for k-quant weights (n_in a multiple of 256).
struct gemm_tile {
    const uint8_t* w;
    size_t w_row_bytes;
    int64_t n_o;
    int64_t n_in;
    const void* x;
    int64_t x_stride;  // float weights: elements between x rows
    int64_t m;
    float* y;
    int64_t ldy;
};

using gemm_fn = void (*)(const gemm_tile& t);

// Kernels of one instruction set. A null entry means "not provided by this ISA".
struct kernel_table {
    gemm_fn gemm_f32;
    gemm_fn gemm_f16;
    gemm_fn gemm_bf16;
    gemm_fn gemm_q8_0;
    gemm_fn gemm_q4_0;
    gemm_fn gemm_q4_1;
    // Quantizes one activation row x (n, a multiple of 32) into q8_rows planes:
    // d = max|x| / 127 per block, q = x / d rounded to nearest even, s = sum of q.
    void (*quantize_q8_row)(const float* x, int64_t n, int8_t* qs, float* d, int32_t* s);
    float (*dot_f32)(const float* a, const float* b, int64_t n);
    // out[i] = silu(gate[i]) * up[i] (n); out may alias gate or up.
    void (*swiglu)(const float* gate, const float* up, float* out, int64_t n);
    // K-quant weights (x is a q8k_rows*), and the activation quantizer for them: one row x
    // (n, a multiple of 256) into q8k_rows planes, d = max|x| / 127 per 256, q = x / d rounded
    // to nearest even, bsums = sums of q per 16.
    gemm_fn gemm_q4_k;
    gemm_fn gemm_q5_k;
    gemm_fn gemm_q6_k;
    void (*quantize_q8k_row)(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums);
};

// Kernels for weight_layout::interleaved16 (interleave.h). A tile's `w` points at the first
// row of a 16-row group and n_o is a multiple of 16; groups are 16 · w_row_bytes apart.
struct interleaved_kernel_table {
    bool native;  // faster than the row_major kernels of the same ISA (loaders repack only then)
    gemm_fn gemm_q4_0;
    gemm_fn gemm_q8_0;
    gemm_fn gemm_f16;   // float activations, f32 math
    gemm_fn gemm_bf16;
    gemm_fn gemm_f16_bf16dot;   // activations rounded to bf16 (bf16dot contract), or null
    gemm_fn gemm_bf16_bf16dot;
    gemm_fn gemm_q4_k;  // x is a q8k_rows* (as for the row_major k-quant kernels)
    gemm_fn gemm_q6_k;
    gemm_fn gemm_q5_k;
};

// Half-precision weights (f16, bf16) times activation rows rounded to bf16, with bf16 dot
// products (for m >= 2; see matmul_bf16dot_avx512.cpp for the precision contract). A tile's
// `x` is then bf16 rows (m, x_stride).
struct bf16dot_kernel_table {
    gemm_fn gemm_f16;
    gemm_fn gemm_bf16;
    void (*to_bf16_row)(const float* x, int64_t n, uint16_t* out);  // round to nearest even
};

// Null when the build does not contain that path (e.g. a non-x86 target).
const kernel_table* kernels_scalar();
const kernel_table* kernels_avx2();
const kernel_table* kernels_avx512();

// Interleaved kernels: the portable path, and AVX-512 with VNNI (null if not compiled).
const interleaved_kernel_table* interleaved_kernels_scalar();
const interleaved_kernel_table* interleaved_kernels_avx512();

// bf16 dot-product kernels: AVX-512 with AVX512-BF16 only (null if not compiled).
const bf16dot_kernel_table* bf16dot_kernels_avx512();

// The table of the active ISA (dispatch.cpp).
const kernel_table& active_kernels();
// The interleaved kernels of the active ISA, or the portable ones where it has none.
const interleaved_kernel_table& active_interleaved_kernels();
// The bf16 dot-product kernels of the active ISA, or null (then f16/bf16 use f32 math).
const bf16dot_kernel_table* active_bf16dot_kernels();

}  // namespace kvs::cpu::detail
