// The interleaved16 weight layout (weight_layout::interleaved16): q4_0, q8_0, f16 and bf16
// matrices repacked once at load time so that the matrix kernels decode 16 weight rows per
// vector, multiply them with activations broadcast to every lane (vpdpbusd, vdpbf16ps, FMA)
// without horizontal sums, and stream one contiguous run of memory per 16 rows (decode and
// prefill alike).
//
// Layout. Rows are taken in groups of 16 (n_out must be a multiple of 16); a group is stored
// block column by block column (32 input elements per block). For block column b of a group:
//
//   q4_0 (288 bytes = 16 × 18):  d[16] f16 scales of rows 0..15, then 4 chunks of 64 bytes;
//        byte 4r + j of chunk g is byte 4g + j of row r's qs (its low nibble is element
//        4g + j, its high nibble element 16 + 4g + j).
//   q8_0 (544 bytes = 16 × 34):  d[16] f16 scales, then 8 chunks of 64 bytes; byte 4r + j of
//        chunk g is element 4g + j of row r, stored unsigned as q + 128 (q XOR 0x80).
//   f16, bf16 (1024 bytes = 16 × 64):  16 chunks of 64 bytes; chunk g holds elements 2g and
//        2g + 1 of each row r at bytes 4r .. 4r + 3 (a bf16 pair, as vdpbf16ps reads it).
//
// So a 64-byte chunk is 16 lanes of 4 consecutive codes, exactly what vpdpbusd multiplies
// against 4 activation bytes broadcast to every lane. Group g's bytes start at
// g · 16 · dtype_row_bytes(type, n_in), the same offset as its first row in row_major order.
#pragma once

#include <cstddef>

#include "kernels/cpu/ops.h"

namespace kvs::cpu {

inline constexpr int64_t interleave_rows = 16;

// w is row_major q4_0, q8_0, f16 or bf16 with n_out a multiple of 16 and n_in of 32.
bool can_interleave(const weight_view& w);
// Whether the best ISA of this CPU has interleaved16 kernels, so that loaders should repack.
// (Every ISA accepts the layout; the portable path is slow.)
bool interleave_preferred();
// Bytes of the repacked copy (equal to the row-major size).
size_t interleaved_bytes(const weight_view& w);
// Writes the interleaved16 copy of w (can_interleave(w)) into dst (interleaved_bytes(w)
// bytes) and returns the view of the copy. Rows [row0, row1) only, both multiples of 16, so
// that callers can split the work over threads; the returned view is the whole matrix.
weight_view interleave(const weight_view& w, void* dst, int64_t row0, int64_t row1);
// The inverse, for tests: writes the row_major bytes of an interleaved16 view into dst.
void deinterleave(const weight_view& w, void* dst);

}  // namespace kvs::cpu
