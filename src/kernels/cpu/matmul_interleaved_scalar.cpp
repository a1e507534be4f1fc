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

// K-quants against q8k_rows activations: the integer sums and the float expression of
// matmul_kquants_scalar.cpp, with codes and scales read from the interleaved column.
// q5_K is q4_K plus a fifth code bit per element from the qh chunks.
template <bool q5>
void gemm_q4_k_or_q5_k(const gemm_tile& t) {
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    const int64_t nb = t.n_in / qk_k;
    const size_t column_bytes = size_t(interleave_rows) * (q5 ? sizeof(block_q5_k) : sizeof(block_q4_k));
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        for (int r = 0; r < interleave_rows; ++r) {
            for (int64_t i = 0; i < t.m; ++i) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const uint8_t* col = group + size_t(b) * column_bytes;
                    uint16_t d, dmin;
                    uint32_t high;
                    __builtin_memcpy(&d, col + 2 * r, 2);
                    __builtin_memcpy(&dmin, col + 32 + 2 * r, 2);
                    __builtin_memcpy(&high, col + k4_high_offset + 4 * r, 4);
                    const int8_t* xq = x.qs + i * t.n_in + b * qk_k;
                    const int16_t* bs = x.bsums + (i * nb + b) * 16;
                    int32_t isum = 0, imin = 0;
                    for (int j = 0; j < 8; ++j) {
                        const uint8_t lo = col[k4_scales_offset + 16 * j + size_t(r)];
                        const int32_t sc = (lo & 15) | int32_t((high >> (2 * j)) & 3) << 4;
                        const int32_t m = (lo >> 4) | int32_t((high >> (16 + 2 * j)) & 3) << 4;
                        int32_t dot = 0;
                        for (int l = 0; l < 32; ++l) {
                            // Element 32j + l: byte l of sub-block pair j / 2, nibble j % 2.
                            const uint8_t byte = col[(q5 ? k5_codes_offset : k4_codes_offset) + 64 * size_t(8 * (j / 2) + l / 4) +
                                                     4 * size_t(r) + size_t(l % 4)];
                            int q = j % 2 == 0 ? byte & 15 : byte >> 4;
                            if constexpr (q5) {
                                const uint8_t qh = col[k5_qh_offset + 64 * size_t(l / 4) + 4 * size_t(r) + size_t(l % 4)];
                                q |= ((qh >> j) & 1) << 4;
                            }
                            dot += q * xq[32 * j + l];
                        }
                        isum += sc * dot;
                        imin += m * (bs[2 * j] + bs[2 * j + 1]);
                    }
                    const float dx = x.d[i * nb + b];
                    acc += f16_to_f32(d) * dx * float(isum) - f16_to_f32(dmin) * dx * float(imin);
                }
                t.y[i * t.ldy + g0 + r] = acc;
            }
        }
    }
}

void gemm_q4_k(const gemm_tile& t) { gemm_q4_k_or_q5_k<false>(t); }
void gemm_q5_k(const gemm_tile& t) { gemm_q4_k_or_q5_k<true>(t); }

void gemm_q6_k(const gemm_tile& t) {
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    const int64_t nb = t.n_in / qk_k;
    const size_t column_bytes = size_t(interleave_rows) * sizeof(block_q6_k);
    for (int64_t g0 = 0; g0 < t.n_o; g0 += interleave_rows) {
        const uint8_t* group = t.w + size_t(g0) * t.w_row_bytes;
        for (int r = 0; r < interleave_rows; ++r) {
            for (int64_t i = 0; i < t.m; ++i) {
                float acc = 0.0f;
                for (int64_t b = 0; b < nb; ++b) {
                    const uint8_t* col = group + size_t(b) * column_bytes;
                    uint16_t d;
                    __builtin_memcpy(&d, col + 2 * r, 2);
                    const int8_t* xq = x.qs + i * t.n_in + b * qk_k;
                    const int16_t* bs = x.bsums + (i * nb + b) * 16;
                    int32_t isum = 0;
                    for (int j = 0; j < 16; ++j) {
                        int32_t dot = 0;
                        for (int l = 0; l < 16; ++l) {
                            const int e = 16 * j + l, h = e / 128, p = e % 128 / 32, ll = e % 32;
                            const size_t lane = 4 * size_t(r) + size_t(ll % 4);
                            const uint8_t* run = col + k6_codes_offset + 768 * size_t(2 * h + ll / 16);
                            const uint8_t qh = run[64 * size_t(ll % 16 / 4) + lane];
                            const uint8_t ql = run[64 * size_t(4 * (1 + (p & 1)) + ll % 16 / 4) + lane];
                            const int q = (p < 2 ? ql & 15 : ql >> 4) | ((qh >> (2 * p)) & 3) << 4;
                            dot += q * xq[e];
                        }
                        isum += int32_t(int8_t(col[k6_scales_offset + 16 * size_t(j) + size_t(r)])) * (dot - 32 * bs[j]);
                    }
                    acc += f16_to_f32(d) * x.d[i * nb + b] * float(isum);
                }
                t.y[i * t.ldy + g0 + r] = acc;
            }
        }
    }
}

constexpr interleaved_kernel_table table{false, gemm_q4_0, gemm_q8_0, gemm_f16, gemm_bf16, nullptr, nullptr,
                                         gemm_q4_k, gemm_q6_k, gemm_q5_k};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_scalar() { return &table; }

}  // namespace kvs::cpu::detail
