// Float64 reference of the per-group KV quantizers (q8_0, q4_0, q4_1), written from the
// formats' definitions (llama.cpp's block formats): no page layout, no packing — one group of
// values in, its codes, scales and decoded values out. The scales are rounded to f16 as the
// formats store them; everything else is double.
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

}  // namespace kvs::test
