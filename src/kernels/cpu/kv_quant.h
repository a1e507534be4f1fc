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

// KIVI (Liu et al., 2024), asymmetric b-bit (kv_page_layout::kivi_bits), over one whole page
// of page_size tokens:
//   keys per channel:  for each dimension d, over the page's tokens, m_d = min k_{t,d}, a_d =
//                      (max k_{t,d} - m_d) / (2^b - 1), u = clamp(round((k - m_d) / a_d), 0, 2^b - 1);
//   values per token:  for each token and group of q_group() dimensions, m and a likewise over
//                      the group's values.
// a and m are stored f16 (a = 0 when the values are equal: every code 0 decodes to m); codes are
// computed against the f16-rounded a and m, round to nearest even.
// k, v: (page_size, head_dim) floats, the page's tokens in order.
void kivi_quantize_k(const kv_page_layout& l, const float* k, uint8_t* block);
void kivi_quantize_v(const kv_page_layout& l, const float* v, uint8_t* block);
// Code u of element d of row `row` of a KIVI block (K or V: same code layout).
int kivi_code(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d);
// Element (row, d) of a KIVI K or V block, decoded; whole rows into out (head_dim).
float kivi_dequantize_k(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d);
float kivi_dequantize_v(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d);
void kivi_dequantize_k_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out);
void kivi_dequantize_v_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out);

}  // namespace kvs::cpu
