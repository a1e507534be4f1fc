// Portable kernels for interleaved16 weights (layout in interleave.h): the reference the
// AVX-512 path is tested against, and the fallback on CPUs without it. Same arithmetic as the
// row_major scalar kernels (integer block dots against 8-bit activations), so the two layouts
// give identical results on this path.
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/isa.h"

namespace kvs::cpu::detail {

namespace {

// Σ over the block of (code - offset) · qx, with code of row r, element k read from the
// interleaved column: q4_0 chunk k%16/4 (high nibble for k >= 16), q8_0 chunk k/4.
template <bool q4>
int32_t column_dot(const uint8_t* col, int r, const int8_t* xq) {
    int32_t sum = 0;
    for (int k = 0; k < 32; ++k) {
        int32_t code;
        if constexpr (q4) {
            const int kk = k % 16;
            const uint8_t byte = col[32 + 64 * (kk / 4) + 4 * r + kk % 4];
            code = int32_t(k < 16 ? byte & 0x0F : byte >> 4) - 8;
        } else {
            code = int32_t(col[32 + 64 * (k / 4) + 4 * r + k % 4]) - 128;
        }
        sum += code * xq[k];
    }
    return sum;
}

template <bool q4>
void gemm_interleaved(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    const size_t column_bytes = size_t(interleave_rows) * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        for (int r = 0; r < interleave_rows; ++r) {
            for (int64_t i = 0; i < t.m; ++i) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const uint8_t* col = group + size_t(b) * column_bytes;
                    uint16_t d;
                    __builtin_memcpy(&d, col + 2 * r, 2);
                    const int32_t sum = column_dot<q4>(col, r, x.qs + i * t.n_in + b * 32);
                    acc += f16_to_f32(d) * x.d[i * nb + b] * float(sum);
                }
                t.y[i * t.ldy + g0 + r] = acc;
            }
        }
    }
}

void gemm_q4_0(const gemm_tile& t) { gemm_interleaved<true>(t); }
void gemm_q8_0(const gemm_tile& t) { gemm_interleaved<false>(t); }

// Half-precision weights, float activations: element k of row r is the 16-bit value at
// chunk k / 2, lane r, half k % 2 of its block column (1024 bytes per 32 elements).
template <dtype T>
void gemm_half(const gemm_tile& t) {
    const auto* x = static_cast<const float*>(t.x);
    const int64_t nb = t.n_in / 32;
    std::vector<float> row(size_t(t.n_in));
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        for (int r = 0; r < interleave_rows; ++r) {
            for (int64_t b = 0; b < nb; ++b) {
                const uint8_t* col = group + size_t(b) * 1024;
                for (int k = 0; k < 32; ++k) {
                    uint16_t h;
                    __builtin_memcpy(&h, col + 64 * (k / 2) + 4 * r + 2 * (k % 2), 2);
                    row[size_t(b * 32 + k)] = T == dtype::f16 ? f16_to_f32(h) : bf16_to_f32(h);
                }
            }
            for (int64_t i = 0; i < t.m; ++i) {
                // Eight partial sums, as the row_major portable kernel does.
                float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                const float* xi = x + i * t.x_stride;
                for (int64_t k = 0; k < t.n_in; k += 8)
                    for (int j = 0; j < 8; ++j) acc[j] += row[size_t(k + j)] * xi[k + j];
                t.y[i * t.ldy + g0 + r] =
                    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
            }
        }
    }
}

void gemm_f16(const gemm_tile& t) { gemm_half<dtype::f16>(t); }
void gemm_bf16(const gemm_tile& t) { gemm_half<dtype::bf16>(t); }

constexpr interleaved_kernel_table table{false, gemm_q4_0, gemm_q8_0, gemm_f16, gemm_bf16, nullptr, nullptr};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_scalar() { return &table; }

}  // namespace kvs::cpu::detail
