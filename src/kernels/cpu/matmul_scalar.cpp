// Portable tile kernels: the fallback path on CPUs without AVX2, and the structure the SIMD
// paths mirror (same activation quantization, same integer block dots), so all paths agree
// to float rounding.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/matmul_kquants.h"

namespace kvs::cpu::detail {

namespace {

// Float dot with 8 independent partial sums (lets the compiler keep several adds in flight).
float dot_scalar(const float* a, const float* b, int64_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
    }
    for (; i < n; ++i) acc[0] += a[i] * b[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Round to nearest even for |v| < 2^22: adding 1.5 * 2^23 pushes the fraction bits out of
// the mantissa, the FPU rounds (to nearest even), and subtracting restores the integer.
float round_even(float v) {
    constexpr float magic = 12582912.0f;
    volatile float t = v + magic;  // volatile: keep the two roundings separate
    return t - magic;
}

void quantize_q8_row_scalar(const float* x, int64_t n, int8_t* qs, float* d, int32_t* s) {
    for (int64_t b = 0; b < n / 32; ++b) {
        const float* xb = x + b * 32;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        float db = amax / 127.0f;
        float id = db != 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int j = 0; j < 32; ++j) {
            int q = int(round_even(xb[j] * id));
            qs[b * 32 + j] = int8_t(q);
            sum += q;
        }
        d[b] = db;
        s[b] = sum;
    }
}

// Float weights: convert each weight row to f32 once, then dot it with every x row.
template <class convert_row>
void gemm_float(const gemm_tile& t, convert_row convert) {
    static thread_local std::vector<float> wrow;
    if (wrow.size() < size_t(t.n_in)) wrow.resize(size_t(t.n_in));
    const auto* x = static_cast<const float*>(t.x);
    for (int64_t o = 0; o < t.n_o; ++o) {
        convert(t.w + size_t(o) * t.w_row_bytes, wrow.data(), t.n_in);
        for (int64_t i = 0; i < t.m; ++i) {
            t.y[i * t.ldy + o] = dot_scalar(wrow.data(), x + i * t.x_stride, t.n_in);
        }
    }
}

void gemm_f32(const gemm_tile& t) {
    gemm_float(t, [](const uint8_t* w, float* out, int64_t n) { std::memcpy(out, w, size_t(n) * 4); });
}

void gemm_f16(const gemm_tile& t) {
    gemm_float(t, [](const uint8_t* w, float* out, int64_t n) { dequantize_row(dtype::f16, w, out, n); });
}

void gemm_bf16(const gemm_tile& t) {
    gemm_float(t, [](const uint8_t* w, float* out, int64_t n) { dequantize_row(dtype::bf16, w, out, n); });
}

// Quantized weights: per block, an exact integer dot of the weight codes with the 8-bit
// activations, scaled by both block scales.
//   q8_0: w = q * dw                → dw * dx * Σ q·qx
//   q4_0: w = (q - 8) * dw          → dw * dx * (Σ q·qx - 8 Σ qx)
//   q4_1: w = q * dw + mw           → dw * dx * Σ q·qx + mw * dx * Σ qx
void gemm_q8_0(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    for (int64_t o = 0; o < t.n_o; ++o) {
        const auto* wb = reinterpret_cast<const block_q8_0*>(t.w + size_t(o) * t.w_row_bytes);
        for (int64_t i = 0; i < t.m; ++i) {
            const int8_t* xq = x.qs + i * t.n_in;
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t sum = 0;
                for (int j = 0; j < 32; ++j) sum += int32_t(wb[b].qs[j]) * xq[b * 32 + j];
                acc += f16_to_f32(wb[b].d) * x.d[i * nb + b] * float(sum);
            }
            t.y[i * t.ldy + o] = acc;
        }
    }
}

int32_t nibble_dot(const uint8_t* qs, const int8_t* xq) {
    int32_t sum = 0;
    for (int j = 0; j < 16; ++j) {
        sum += int32_t(qs[j] & 0x0F) * xq[j] + int32_t(qs[j] >> 4) * xq[16 + j];
    }
    return sum;
}

void gemm_q4_0(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    for (int64_t o = 0; o < t.n_o; ++o) {
        const auto* wb = reinterpret_cast<const block_q4_0*>(t.w + size_t(o) * t.w_row_bytes);
        for (int64_t i = 0; i < t.m; ++i) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t sum = nibble_dot(wb[b].qs, x.qs + i * t.n_in + b * 32) - 8 * x.s[i * nb + b];
                acc += f16_to_f32(wb[b].d) * x.d[i * nb + b] * float(sum);
            }
            t.y[i * t.ldy + o] = acc;
        }
    }
}

void gemm_q4_1(const gemm_tile& t) {
    const auto& x = *static_cast<const q8_rows*>(t.x);
    const int64_t nb = t.n_in / 32;
    for (int64_t o = 0; o < t.n_o; ++o) {
        const auto* wb = reinterpret_cast<const block_q4_1*>(t.w + size_t(o) * t.w_row_bytes);
        for (int64_t i = 0; i < t.m; ++i) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                int32_t sum = nibble_dot(wb[b].qs, x.qs + i * t.n_in + b * 32);
                float dx = x.d[i * nb + b];
                acc += f16_to_f32(wb[b].d) * dx * float(sum) +
                       f16_to_f32(wb[b].m) * dx * float(x.s[i * nb + b]);
            }
            t.y[i * t.ldy + o] = acc;
        }
    }
}

// silu(g) = g · sigmoid(g) = g / (1 + e^-g); for g → -inf, e^-g overflows to inf and the
// quotient correctly goes to -0.
void swiglu_scalar(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

constexpr kernel_table table{gemm_f32,  gemm_f16,  gemm_bf16, gemm_q8_0,
                             gemm_q4_0, gemm_q4_1, quantize_q8_row_scalar, dot_scalar, swiglu_scalar,
                             gemm_q4_k_scalar, gemm_q5_k_scalar, gemm_q6_k_scalar, quantize_q8k_row_scalar};

}  // namespace

const kernel_table* kernels_scalar() { return &table; }

}  // namespace kvs::cpu::detail
