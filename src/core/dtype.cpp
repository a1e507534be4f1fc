// dtype traits, half-precision conversions and the scalar block quantizers.
//
// The block formats and the quantizer arithmetic follow ggml exactly (same rounding, same
// tie-breaking in the max search) so that rows quantized here are byte-identical to rows
// quantized by ggml and GGUF files round-trip unchanged.
#include "core/dtype.h"

#include <algorithm>
#include <array>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/dtype_kquants.h"

namespace kvs {

namespace {

constexpr dtype_traits unknown_traits{"unknown", 1, 0, false, false};

// Indexed by type id; ids that ggml never assigned (or retired) stay "unknown".
constexpr std::array<dtype_traits, dtype_id_limit> make_traits_table() {
    std::array<dtype_traits, dtype_id_limit> t{};
    for (auto& e : t) e = unknown_traits;
    t[uint32_t(dtype::f32)] = {"f32", 1, 4, true, true};
    t[uint32_t(dtype::f16)] = {"f16", 1, 2, true, true};
    t[uint32_t(dtype::q4_0)] = {"q4_0", 32, 18, true, true};
    t[uint32_t(dtype::q4_1)] = {"q4_1", 32, 20, true, true};
    t[uint32_t(dtype::q5_0)] = {"q5_0", 32, 22, true, false};
    t[uint32_t(dtype::q5_1)] = {"q5_1", 32, 24, true, false};
    t[uint32_t(dtype::q8_0)] = {"q8_0", 32, 34, true, true};
    t[uint32_t(dtype::q8_1)] = {"q8_1", 32, 36, true, false};
    t[uint32_t(dtype::q2_k)] = {"q2_k", 256, 84, true, false};
    t[uint32_t(dtype::q3_k)] = {"q3_k", 256, 110, true, false};
    t[uint32_t(dtype::q4_k)] = {"q4_k", 256, 144, true, true};
    t[uint32_t(dtype::q5_k)] = {"q5_k", 256, 176, true, true};
    t[uint32_t(dtype::q6_k)] = {"q6_k", 256, 210, true, true};
    t[uint32_t(dtype::q8_k)] = {"q8_k", 256, 292, true, false};
    t[uint32_t(dtype::i8)] = {"i8", 1, 1, true, false};
    t[uint32_t(dtype::i16)] = {"i16", 1, 2, true, false};
    t[uint32_t(dtype::i32)] = {"i32", 1, 4, true, false};
    t[uint32_t(dtype::i64)] = {"i64", 1, 8, true, false};
    t[uint32_t(dtype::f64)] = {"f64", 1, 8, true, false};
    t[uint32_t(dtype::bf16)] = {"bf16", 1, 2, true, true};
    return t;
}

constexpr std::array<dtype_traits, dtype_id_limit> traits_table = make_traits_table();

uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}

float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

char ascii_lower(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }

}  // namespace

const dtype_traits& dtype_info(dtype t) {
    uint32_t id = uint32_t(t);
    return id < dtype_id_limit ? traits_table[id] : unknown_traits;
}

bool dtype_from_name(std::string_view name, dtype* out) {
    for (uint32_t id = 0; id < dtype_id_limit; ++id) {
        const dtype_traits& tr = traits_table[id];
        if (!tr.known) continue;
        std::string_view tn = tr.name;
        if (tn.size() != name.size()) continue;
        bool same = true;
        for (size_t i = 0; i < tn.size() && same; ++i) same = ascii_lower(name[i]) == tn[i];
        if (same) {
            if (out) *out = dtype(id);
            return true;
        }
    }
    return false;
}

// ---- IEEE binary16 ------------------------------------------------------------------------
// binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. binary32: 8 exponent (bias 127),
// 23 mantissa. Normal halves map to floats by re-biasing the exponent (+112) and shifting
// the mantissa left by 13; subnormal halves are mant * 2^-24 and become normal floats.

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (mant << 13));  // inf / NaN (payload kept)
    if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return bits_f32(sign);
    // Subnormal: mant * 2^-24 is exact in float (at most 10 significant bits).
    float v = float(mant) * 0x1p-24f;
    return bits_f32(sign | f32_bits(v));
}

uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = uint16_t((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7FFFFFFF;
    if (ax > 0x7F800000u) {  // NaN: keep it a NaN (quiet bit set), keep the top payload bits
        return uint16_t(sign | 0x7E00 | ((ax >> 13) & 0x3FF));
    }
    // 65520 = 0x477FF000 is halfway between 65504 (largest half) and 2^16; ties go to the
    // even neighbour, which is 2^16, i.e. infinity. So everything from there up is inf.
    if (ax >= 0x477FF000u) return uint16_t(sign | 0x7C00);
    if (ax < 0x38800000u) {  // below 2^-14: result is a half subnormal (units of 2^-24) or 0
        uint32_t e = ax >> 23;
        if (e < 102) return sign;  // < 2^-25: rounds to zero (2^-25 itself ties to even 0)
        uint32_t m = (ax & 0x7FFFFF) | 0x800000;  // value = m * 2^(e - 150)
        uint32_t shift = 126 - e;                 // value / 2^-24 = m >> shift (+ fraction)
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) ++r;  // may carry into the min normal: ok
        return uint16_t(sign | r);
    }
    // Normal: re-bias the exponent and drop 13 mantissa bits with round-to-nearest-even; a
    // carry out of the mantissa correctly bumps the exponent.
    uint32_t r = (ax - 0x38000000u) >> 13;
    uint32_t rem = ax & 0x1FFF;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) ++r;
    return uint16_t(sign | r);
}

// ---- bfloat16: the top 16 bits of a binary32 ------------------------------------------------

float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFF) > 0x7F800000u) return uint16_t((x >> 16) | 0x0040);  // quiet NaN
    // Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate. Overflow
    // past the largest finite bf16 carries into the exponent and yields inf, as it should.
    x += 0x7FFF + ((x >> 16) & 1);
    return uint16_t(x >> 16);
}

// ---- block quantizers (scalar references) ---------------------------------------------------

namespace {

// q8_0: d = max|x| / 127, q = round(x / d) (half away from zero), stored d is f16.
void quantize_q8_0(const float* x, block_q8_0* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, x += qk8_0) {
        float amax = 0.0f;
        for (int j = 0; j < qk8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_f16(d);
        for (int j = 0; j < qk8_0; ++j) y[b].qs[j] = int8_t(std::roundf(x[j] * id));
    }
}

// q4_0: the scale maps the element of largest magnitude (with its sign) to -8, so the
// full [-8, 7] range is used on that side; q = min(15, trunc(x / d + 8.5)).
void quantize_q4_0(const float* x, block_q4_0* y, int64_t nb) {
    constexpr int half = qk4_0 / 2;
    for (int64_t b = 0; b < nb; ++b, x += qk4_0) {
        float amax = 0.0f, vmax = 0.0f;
        for (int j = 0; j < qk4_0; ++j) {
            if (amax < std::fabs(x[j])) {  // strict: the first of equal magnitudes wins
                amax = std::fabs(x[j]);
                vmax = x[j];
            }
        }
        float d = vmax / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_f16(d);
        for (int j = 0; j < half; ++j) {
            int q0 = std::min(15, int(int8_t(x[j] * id + 8.5f)));
            int q1 = std::min(15, int(int8_t(x[half + j] * id + 8.5f)));
            y[b].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

// q4_1: asymmetric, value = q * d + m with m = min, d = (max - min) / 15,
// q = min(15, trunc((x - min) / d + 0.5)).
void quantize_q4_1(const float* x, block_q4_1* y, int64_t nb) {
    constexpr int half = qk4_0 / 2;
    for (int64_t b = 0; b < nb; ++b, x += qk4_0) {
        float vmin = FLT_MAX, vmax = -FLT_MAX;
        for (int j = 0; j < qk4_0; ++j) {
            if (x[j] < vmin) vmin = x[j];
            if (x[j] > vmax) vmax = x[j];
        }
        float d = (vmax - vmin) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f32_to_f16(d);
        y[b].m = f32_to_f16(vmin);
        for (int j = 0; j < half; ++j) {
            int q0 = std::min(15, int(int8_t((x[j] - vmin) * id + 0.5f)));
            int q1 = std::min(15, int(int8_t((x[half + j] - vmin) * id + 0.5f)));
            y[b].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void dequantize_q8_0(const block_q8_0* x, float* y, int64_t nb) {
    for (int64_t b = 0; b < nb; ++b, y += qk8_0) {
        float d = f16_to_f32(x[b].d);
        for (int j = 0; j < qk8_0; ++j) y[j] = float(x[b].qs[j]) * d;
    }
}

void dequantize_q4_0(const block_q4_0* x, float* y, int64_t nb) {
    constexpr int half = qk4_0 / 2;
    for (int64_t b = 0; b < nb; ++b, y += qk4_0) {
        float d = f16_to_f32(x[b].d);
        for (int j = 0; j < half; ++j) {
            y[j] = float(int(x[b].qs[j] & 0x0F) - 8) * d;
            y[half + j] = float(int(x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

void dequantize_q4_1(const block_q4_1* x, float* y, int64_t nb) {
    constexpr int half = qk4_0 / 2;
    for (int64_t b = 0; b < nb; ++b, y += qk4_0) {
        float d = f16_to_f32(x[b].d);
        float m = f16_to_f32(x[b].m);
        for (int j = 0; j < half; ++j) {
            y[j] = float(x[b].qs[j] & 0x0F) * d + m;
            y[half + j] = float(x[b].qs[j] >> 4) * d + m;
        }
    }
}

}  // namespace

bool dequantize_row(dtype t, const void* src, float* dst, int64_t n) {
    const dtype_traits& tr = dtype_info(t);
    if (!tr.supported || n % tr.block_size != 0) return false;
    int64_t nb = n / tr.block_size;
    switch (t) {
        case dtype::f32:
            std::memcpy(dst, src, size_t(n) * sizeof(float));
            return true;
        case dtype::f16: {
            const auto* h = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
            return true;
        }
        case dtype::bf16: {
            const auto* h = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(h[i]);
            return true;
        }
        case dtype::q8_0: dequantize_q8_0(static_cast<const block_q8_0*>(src), dst, nb); return true;
        case dtype::q4_0: dequantize_q4_0(static_cast<const block_q4_0*>(src), dst, nb); return true;
        case dtype::q4_1: dequantize_q4_1(static_cast<const block_q4_1*>(src), dst, nb); return true;
        case dtype::q4_k: detail::dequantize_q4_k(static_cast<const block_q4_k*>(src), dst, nb); return true;
        case dtype::q5_k: detail::dequantize_q5_k(static_cast<const block_q5_k*>(src), dst, nb); return true;
        case dtype::q6_k: detail::dequantize_q6_k(static_cast<const block_q6_k*>(src), dst, nb); return true;
        default: return false;
    }
}

bool quantize_row(dtype t, const float* src, void* dst, int64_t n) {
    const dtype_traits& tr = dtype_info(t);
    if (!tr.supported || n % tr.block_size != 0) return false;
    int64_t nb = n / tr.block_size;
    switch (t) {
        case dtype::f32:
            std::memcpy(dst, src, size_t(n) * sizeof(float));
            return true;
        case dtype::f16: {
            auto* h = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) h[i] = f32_to_f16(src[i]);
            return true;
        }
        case dtype::bf16: {
            auto* h = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) h[i] = f32_to_bf16(src[i]);
            return true;
        }
        case dtype::q8_0: quantize_q8_0(src, static_cast<block_q8_0*>(dst), nb); return true;
        case dtype::q4_0: quantize_q4_0(src, static_cast<block_q4_0*>(dst), nb); return true;
        case dtype::q4_1: quantize_q4_1(src, static_cast<block_q4_1*>(dst), nb); return true;
        case dtype::q4_k: detail::quantize_q4_k(src, static_cast<block_q4_k*>(dst), nb); return true;
        case dtype::q5_k: detail::quantize_q5_k(src, static_cast<block_q5_k*>(dst), nb); return true;
        case dtype::q6_k: detail::quantize_q6_k(src, static_cast<block_q6_k*>(dst), nb); return true;
        default: return false;
    }
}

}  // namespace kvs
