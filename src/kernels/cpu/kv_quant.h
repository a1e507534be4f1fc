// Per-group KV quantization: one token's row of head_dim floats to and from the codes and
// f16 scales of a q8_0, q4_0 or q4_1 block (kv_page_layout in attention.h describes the
// block). The scalar definitions every kernel path is tested against; the attention kernels
// read the blocks directly and never call these per element in their inner loops.
//
//   q8_0  per group: d = max|x| / 127 (stored f16), q = round(x / d) clamped to [-127, 127].
//   q4_0  per group: d = x_amax / -8 where x_amax is the element of largest magnitude (with its
//         sign, llama.cpp's definition), q = clamp(round(x / d), -8, 7), stored as q + 8.
//   q4_1  per group: m = min x, d = (max x - m) / 15 (both stored f16), u = clamp(round((x - m) / d), 0, 15).
// Codes are computed against the f16-rounded d (and m), so each is the nearest code to what is
// decoded; round is to nearest even.
#pragma once

#include <cstdint>

#include "kernels/cpu/attention.h"

namespace kvs::cpu {

// Quantizes x (head_dim) into row `row` of a quantized block (codes and scales).
void kv_quantize_row(const kv_page_layout& l, const float* x, uint8_t* block, int64_t row);
// Row `row` of a quantized block, decoded: out (head_dim).
void kv_dequantize_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out);
// Element d of row `row`, decoded.
float kv_dequantize(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d);
// Copies row src_row of one quantized block to row dst_row of another (or the same): codes
// and scales, bit for bit.
void kv_copy_quant_row(const kv_page_layout& l, uint8_t* dst, int64_t dst_row, const uint8_t* src, int64_t src_row);

}  // namespace kvs::cpu
