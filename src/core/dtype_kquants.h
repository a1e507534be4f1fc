// Internal to src/core: the k-quant block quantizers and dequantizers behind quantize_row /
// dequantize_row (dtype.cpp). nb is the number of 256-element super-blocks.
#pragma once

#include <cstdint>

#include "core/dtype.h"

namespace kvs::detail {

void quantize_q4_k(const float* x, block_q4_k* y, int64_t nb);
void quantize_q5_k(const float* x, block_q5_k* y, int64_t nb);
void quantize_q6_k(const float* x, block_q6_k* y, int64_t nb);
void dequantize_q4_k(const block_q4_k* x, float* y, int64_t nb);
void dequantize_q5_k(const block_q5_k* x, float* y, int64_t nb);
void dequantize_q6_k(const block_q6_k* x, float* y, int64_t nb);

}  // namespace kvs::detail
