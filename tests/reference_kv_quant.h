// Float64 reference of the per-group KV quantizers (q8_0, q4_0, q4_1), written from the
// formats' definitions (llama.cpp's block formats), and of KIVI's asymmetric b-bit quantization
// (Liu et al., 2024: keys per channel, values per token): no page layout, no packing — values
// in, their codes, scales and decoded values out. The scales (and minimums) are rounded to f16
// as the formats store them; everything else is double.
#pragma once

#include <cstdint>
#include <vector>

#include "core/dtype.h"

namespace kvs::test {

struct quant_group {
    std::vector<int> codes;       // q8_0: q in [-127, 127]; q4_0: q in [-8, 7]; q4_1: u in [0, 15]
    double d = 0, m = 0;          // the stored (f16) scale and min (m: q4_1 only)
    std::vector<double> decoded;  // what a reader reconstructs
};

// Quantizes one group of n values in format t.
quant_group reference_quantize_group(dtype t, const float* x, int64_t n);
// A whole row of head_dim values, in groups of 32 (one group of head_dim when head_dim < 32).
std::vector<double> reference_quantize_row(dtype t, const float* x, int64_t head_dim);

// KIVI over one group of G tokens (a packed page), b = bits (2 or 4), levels L = 2^b - 1. Each
// quantization run (a key channel over the G tokens, or a value token's group of channels):
//   m = min x clamped to [-65504, 65504], stored f16;
//   a = min((max x - m) / L, 65504) with m the stored min, stored f16;
//   u = clamp(round_half_even((x - m) / a), 0, L), 0 when a <= 0;   decoded a · u + m.
struct kivi_reference {
    int64_t tokens = 0, head_dim = 0;
    std::vector<int> codes;       // (tokens, head_dim)
    std::vector<double> scale;    // keys: (head_dim) a_d; values: (tokens, head_dim / group)
    std::vector<double> min;      // like scale: m
    // (tokens, head_dim): |(x - m) / a - (nearest tie)| in steps, so a caller can tell a code a
    // float computation may legitimately round the other way (a near-tie) from a wrong one.
    std::vector<double> tie_margin;
    // Like scale: 1 where the exact (max - m) / L lies within 2^-21 (relative) of the midpoint
    // between two f16 values, so that a float32 computation of it (two roundings of 2^-24) may
    // legitimately store the other neighbour.
    std::vector<uint8_t> scale_tie;
    std::vector<double> decoded;  // (tokens, head_dim): a · u + m
};
// Keys: k (G, head_dim) floats, quantized per channel over the G tokens.
kivi_reference reference_kivi_keys(int bits, const float* k, int64_t G, int64_t head_dim);
// Values: v (G, head_dim) floats, quantized per token in groups of `group` consecutive channels
// (head_dim a multiple of group).
kivi_reference reference_kivi_values(int bits, const float* v, int64_t G, int64_t head_dim, int64_t group);

}  // namespace kvs::test
