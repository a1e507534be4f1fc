// Portable kernels for interleaved16 weights (layout in interleave.h): the reference the
// AVX-512 path is tested against, and the fallback on CPUs without it. Same arithmetic as the
// row_major scalar kernels (integer block dots against 8-bit activations), so the two layouts
// give identical results on this path.
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

constexpr interleaved_kernel_table table{false, gemm_q4_0, gemm_q8_0};

}  // namespace

const interleaved_kernel_table* interleaved_kernels_scalar() { return &table; }

}  // namespace kvs::cpu::detail
