// Portable k-quant tile kernels and the q8_K-style activation quantizer: the fallback path and
// the arithmetic the SIMD paths mirror exactly in integers (so all paths agree to float
// rounding in the per-super-block scaling).
//
// Per super-block of 256, weight row w and activation row x (scale dx, codes qx):
//   q4_K/q5_K: w = d·sc_j·q - dmin·m_j on sub-block j (32 elements)
//       Σ w·x = dx·d·Σ_j sc_j·(Σ q·qx)_j  -  dx·dmin·Σ_j m_j·(Σ qx)_j
//   q6_K:      w = d·sc_j·(q - 32) on sub-block j (16 elements)
//       Σ w·x = dx·d·(Σ_j sc_j·(Σ q·qx)_j - 32·Σ_j sc_j·(Σ qx)_j)
// The inner sums are exact int32; the sub-block sums of qx come from q8k_rows::bsums.
#include <cmath>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/cpu/matmul_kquants.h"

namespace kvs::cpu::detail {

namespace {

// Round to nearest even (|v| <= 127 here); see matmul_scalar.cpp.
float round_even(float v) {
    constexpr float magic = 12582912.0f;
    volatile float t = v + magic;
    return t - magic;
}

// Code q (0..15 or 0..31) of element e of a q4_K / q5_K block.
int q4k_code(const uint8_t* qs, int e) {
    const uint8_t b = qs[32 * (e / 64) + e % 32];
    return (e % 64) < 32 ? (b & 15) : (b >> 4);
}

template <bool five>
void gemm_scale_min(const gemm_tile& t) {
    using block = std::conditional_t<five, block_q5_k, block_q4_k>;
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    const int64_t nb = t.n_in / qk_k;
    for (int64_t o = 0; o < t.n_o; ++o) {
        const auto* wb = reinterpret_cast<const block*>(t.w + size_t(o) * t.w_row_bytes);
        for (int64_t i = 0; i < t.m; ++i) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                uint8_t sc[8], m[8];
                kquant_scale_min(wb[b].scales, sc, m);
                const int8_t* xq = x.qs + i * t.n_in + b * qk_k;
                const int16_t* bs = x.bsums + (i * nb + b) * 16;
                int32_t isum = 0, imin = 0;
                for (int j = 0; j < 8; ++j) {
                    int32_t dot = 0;
                    for (int l = 0; l < 32; ++l) {
                        const int e = 32 * j + l;
                        int q = q4k_code(wb[b].qs, e);
                        if constexpr (five) q |= ((wb[b].qh[l] >> j) & 1) << 4;
                        dot += q * xq[e];
                    }
                    isum += int32_t(sc[j]) * dot;
                    imin += int32_t(m[j]) * (bs[2 * j] + bs[2 * j + 1]);
                }
                const float dx = x.d[i * nb + b];
                acc += f16_to_f32(wb[b].d) * dx * float(isum) - f16_to_f32(wb[b].dmin) * dx * float(imin);
            }
            t.y[i * t.ldy + o] = acc;
        }
    }
}

// Code q (0..63) of element e of a q6_K block.
int q6k_code(const block_q6_k& blk, int e) {
    const int h = e / 128, r = e % 128, l = r % 32, part = r / 32;  // part: 0..3 as in dtype.h
    const uint8_t lo = blk.ql[64 * h + 32 * (part & 1) + l];
    const int low = (part < 2) ? (lo & 15) : (lo >> 4);
    const int high = (blk.qh[32 * h + l] >> (2 * part)) & 3;
    return low | (high << 4);
}

}  // namespace

void gemm_q4_k_scalar(const gemm_tile& t) { gemm_scale_min<false>(t); }
void gemm_q5_k_scalar(const gemm_tile& t) { gemm_scale_min<true>(t); }

void gemm_q6_k_scalar(const gemm_tile& t) {
    const auto& x = *static_cast<const q8k_rows*>(t.x);
    const int64_t nb = t.n_in / qk_k;
    for (int64_t o = 0; o < t.n_o; ++o) {
        const auto* wb = reinterpret_cast<const block_q6_k*>(t.w + size_t(o) * t.w_row_bytes);
        for (int64_t i = 0; i < t.m; ++i) {
            float acc = 0.0f;
            for (int64_t b = 0; b < nb; ++b) {
                const int8_t* xq = x.qs + i * t.n_in + b * qk_k;
                const int16_t* bs = x.bsums + (i * nb + b) * 16;
                int32_t isum = 0;
                for (int j = 0; j < 16; ++j) {
                    int32_t dot = 0;
                    for (int l = 0; l < 16; ++l) dot += q6k_code(wb[b], 16 * j + l) * xq[16 * j + l];
                    isum += int32_t(wb[b].scales[j]) * (dot - 32 * bs[j]);
                }
                acc += f16_to_f32(wb[b].d) * x.d[i * nb + b] * float(isum);
            }
            t.y[i * t.ldy + o] = acc;
        }
    }
}

void quantize_q8k_row_scalar(const float* x, int64_t n, int8_t* qs, float* d, int16_t* bsums) {
    for (int64_t b = 0; b < n / qk_k; ++b) {
        const float* xb = x + b * qk_k;
        float amax = 0.0f;
        for (int j = 0; j < qk_k; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int g = 0; g < 16; ++g) {
            int32_t sum = 0;
            for (int j = 16 * g; j < 16 * g + 16; ++j) {
                const int q = int(round_even(xb[j] * id));
                qs[b * qk_k + j] = int8_t(q);
                sum += q;
            }
            bsums[b * 16 + g] = int16_t(sum);
        }
        d[b] = amax / 127.0f;
    }
}

}  // namespace kvs::cpu::detail
