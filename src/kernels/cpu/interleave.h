// The interleaved16 weight layout (weight_layout::interleaved16): q4_0, q8_0, f16, bf16, q4_K, q5_K and q6_K
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
//   q4_K (2304 bytes = 16 × 144, per super-block column of 256 elements):
//        [0, 32)      d[16]     f16 super-block scales of rows 0..15
//        [32, 64)     dmin[16]  f16 super-block min scales
//        [64, 192)    8 × 16 bytes: byte 16j + r = (sc_j & 15) | (m_j & 15) << 4, the low
//                     4 bits of row r's 6-bit scale and min of sub-block j (32 elements)
//        [192, 256)   16 × uint32 (little-endian): word r holds sc_j >> 4 at bits 2j, 2j+1
//                     and m_j >> 4 at bits 16 + 2j, 16 + 2j + 1 (j = 0..7)
//        [256, 2304)  32 chunks of 64 bytes: byte 4r + k of chunk c is qs[4c + k] of row r,
//                     so chunks 8p .. 8p + 7 hold sub-block 2p in their low nibbles and
//                     2p + 1 in their high nibbles, elements 4(c % 8) .. 4(c % 8) + 3.
//        (sc, m) are unpacked from ggml's 12-byte packing at repack time; the kernels rebuild
//        the 6-bit values of 16 rows with one shift, mask and or per vector.
//   q5_K (2816 bytes = 16 × 176):
//        [0, 256)     as q4_K (d, dmin, scales and mins)
//        [256, 768)   8 chunks of 64 bytes: byte 4r + k of chunk c is qh[4c + k] of row r;
//                     bit j of it is the fifth bit (16) of element 32j + 4c + k, so one qh
//                     chunk serves code chunk c of every sub-block pair
//        [768, 2816)  the low 4 bits of the codes, as q4_K's [256, 2304)
//        (qh sits before the codes so that a column is read front to back: with it at the
//        end, decode streamed from DRAM at a third of the rate.)
//   q6_K (3360 bytes = 16 × 210):
//        [0, 32)       d[16] f16 super-block scales
//        [32, 288)     16 × 16 int8: byte 16j + r = scales[j] of row r (sub-block j, 16 elements)
//        [288, 3360)   4 runs of 768 bytes, in the order the kernels read them: run u = 2h + q
//                      covers elements 128h + 32p + 16q + i (p = 0..3, i = 0..15), i.e.
//                      sub-blocks 8h + 2p + q, as 12 chunks (k = 0..3, byte 4r + b of each
//                      is the row's byte n + b):
//                        chunk k:     qh, n = 32h + 16q + 4k
//                        chunk 4 + k: ql, n = 64h + 16q + 4k       (A)
//                        chunk 8 + k: ql, n = 64h + 32 + 16q + 4k  (B)
//                      Element 128h + 32p + 16q + 4k + b has code
//                        p = 0: A & 15 | (Q & 3) << 4       p = 1: B & 15 | (Q >> 2 & 3) << 4
//                        p = 2: A >> 4 | (Q >> 4 & 3) << 4  p = 3: B >> 4 | (Q >> 6 & 3) << 4
//                      with Q the byte of qh chunk k and A, B those of chunks 4 + k, 8 + k.
//
// So a 64-byte chunk is 16 lanes of 4 consecutive codes, exactly what vpdpbusd multiplies
// against 4 activation bytes broadcast to every lane. Group g's bytes start at
// g · 16 · dtype_row_bytes(type, n_in), the same offset as its first row in row_major order.
#pragma once

#include <cstddef>

#include "kernels/cpu/ops.h"

namespace kvs::cpu {

inline constexpr int64_t interleave_rows = 16;

// Byte offsets inside a q4_K / q5_K / q6_K super-block column (16 rows × 256 elements).
inline constexpr size_t k4_scales_offset = 64, k4_high_offset = 192, k4_codes_offset = 256;
inline constexpr size_t k5_qh_offset = 256, k5_codes_offset = 768;
inline constexpr size_t k6_scales_offset = 32, k6_codes_offset = 288;

// w is row_major q4_0, q8_0, f16, bf16 (n_in a multiple of 32) or q4_K, q5_K, q6_K (n_in a
// multiple of 256), with n_out a multiple of 16.
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
