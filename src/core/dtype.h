// Element and block formats, bit-compatible with GGUF/ggml so real files load unchanged.
// Type ids are ggml's (`ggml_type`), which is what GGUF tensor infos store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvs {

enum class dtype : uint32_t {
    f32 = 0,
    f16 = 1,
    q4_0 = 2,
    q4_1 = 3,
    q5_0 = 6,
    q5_1 = 7,
    q8_0 = 8,
    q8_1 = 9,
    q2_k = 10,
    q3_k = 11,
    q4_k = 12,
    q5_k = 13,
    q6_k = 14,
    q8_k = 15,
    i8 = 24,
    i16 = 25,
    i32 = 26,
    i64 = 27,
    f64 = 28,
    bf16 = 30,
};

inline constexpr uint32_t dtype_id_limit = 40;  // ids at or above this are never valid

struct dtype_traits {
    const char* name;    // ggml's name: "f32", "q4_0", ...
    int64_t block_size;  // elements per block (1 for plain types)
    int64_t type_size;   // bytes per block
    bool known;          // a ggml type id kvserve recognizes (may still lack kernels)
    bool supported;      // kvserve can dequantize it and multiply by it
};

// Traits of a type id; unknown ids get {name "unknown", known=false}.
const dtype_traits& dtype_info(dtype t);
inline const char* dtype_name(dtype t) { return dtype_info(t).name; }
// Parses "f32", "F16", "q4_0", "Q8_0", "bf16" ...; returns false if unknown.
bool dtype_from_name(std::string_view name, dtype* out);

// Bytes of a row of n elements; n must be a multiple of block_size (callers validate).
inline size_t dtype_row_bytes(dtype t, int64_t n) {
    const dtype_traits& tr = dtype_info(t);
    return size_t(n / tr.block_size) * size_t(tr.type_size);
}

// Half-precision conversions (IEEE binary16 and bfloat16), exact and round-to-nearest-even.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);
float bf16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);

// Block layouts (ggml's, byte for byte).
inline constexpr int64_t qk4_0 = 32;
inline constexpr int64_t qk8_0 = 32;
struct block_q4_0 {
    uint16_t d;          // f16 scale
    uint8_t qs[16];      // 32 nibbles: low nibbles are elements 0..15, high 16..31; value = (q - 8) * d
};
struct block_q4_1 {
    uint16_t d;          // f16 scale
    uint16_t m;          // f16 min; value = q * d + m
    uint8_t qs[16];
};
struct block_q8_0 {
    uint16_t d;          // f16 scale; value = q * d
    int8_t qs[32];
};
static_assert(sizeof(block_q4_0) == 18 && sizeof(block_q4_1) == 20 && sizeof(block_q8_0) == 34);

// K-quants: super-blocks of 256 elements with per-sub-block scales (ggml's "k-quants").
inline constexpr int64_t qk_k = 256;
// q4_K: 8 sub-blocks of 32; value = d · sc[j] · q - dmin · m[j], q in [0, 15], sc and m 6-bit.
// scales[12] packs (sc, m) of sub-block j (ggml's get_scale_min_k4):
//   j < 4:  sc = scales[j] & 63,                                m = scales[j + 4] & 63
//   j >= 4: sc = (scales[j + 4] & 15) | (scales[j - 4] >> 6) << 4,
//           m  = (scales[j + 4] >> 4) | (scales[j] >> 6) << 4
// qs[32 c + l] holds element 64 c + l (low nibble, sub-block 2c) and 64 c + 32 + l (high
// nibble, sub-block 2c + 1), c = 0..3, l = 0..31.
struct block_q4_k {
    uint16_t d;           // f16 super-block scale of the 6-bit scales
    uint16_t dmin;        // f16 super-block scale of the 6-bit mins
    uint8_t scales[12];   // 8 × (6-bit scale, 6-bit min), packed as above
    uint8_t qs[128];      // 256 nibbles
};
// q5_K: as q4_K with 5-bit q in [0, 31]; bit j of qh[l] is bit 4 of element 32 j + l.
struct block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[32];       // high bits: bit j ↔ sub-block j
    uint8_t qs[128];      // low nibbles, laid out as q4_K's
};
// q6_K: 16 sub-blocks of 16; value = d · scales[j] · (q - 32), q in [0, 63]. For each half
// h (128 elements; ql += 64 h, qh += 32 h, element e = 128 h + ...) and l = 0..31:
//   e = l:      ql[l] & 15      | (qh[l] >> 0 & 3) << 4
//   e = 32 + l: ql[32 + l] & 15 | (qh[l] >> 2 & 3) << 4
//   e = 64 + l: ql[l] >> 4      | (qh[l] >> 4 & 3) << 4
//   e = 96 + l: ql[32 + l] >> 4 | (qh[l] >> 6 & 3) << 4
// and sub-block j = e / 16 (over the whole super-block) has scale scales[j].
struct block_q6_k {
    uint8_t ql[128];      // low 4 bits
    uint8_t qh[64];       // high 2 bits
    int8_t scales[16];    // signed 8-bit sub-block scales
    uint16_t d;           // f16 super-block scale
};
static_assert(sizeof(block_q4_k) == 144 && sizeof(block_q5_k) == 176 && sizeof(block_q6_k) == 210);

// Unpacks the eight 6-bit (scale, min) pairs of a q4_K / q5_K block.
void kquant_scale_min(const uint8_t* scales, uint8_t sc[8], uint8_t m[8]);

// Row conversions; n is a multiple of the block size. These are the scalar references the
// SIMD paths are tested against. Unsupported types return false and write nothing.
bool dequantize_row(dtype t, const void* src, float* dst, int64_t n);
bool quantize_row(dtype t, const float* src, void* dst, int64_t n);

}  // namespace kvs
