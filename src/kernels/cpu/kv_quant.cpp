#include "kernels/cpu/kv_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace kvs::cpu {

namespace {

constexpr float f16_max = 65504.0f;

uint16_t* scales(const kv_page_layout& l, uint8_t* block, int64_t row) {
    return reinterpret_cast<uint16_t*>(block + l.q_scale_offset()) + row * l.q_groups();
}
const uint16_t* scales(const kv_page_layout& l, const uint8_t* block, int64_t row) {
    return reinterpret_cast<const uint16_t*>(block + l.q_scale_offset()) + row * l.q_groups();
}
uint16_t* mins(const kv_page_layout& l, uint8_t* block, int64_t row) {
    return reinterpret_cast<uint16_t*>(block + l.q_min_offset()) + row * l.q_groups();
}
const uint16_t* mins(const kv_page_layout& l, const uint8_t* block, int64_t row) {
    return reinterpret_cast<const uint16_t*>(block + l.q_min_offset()) + row * l.q_groups();
}

// Code of element i of a group (4-bit: low nibble for i < half, high nibble past it).
int code_at(dtype t, const uint8_t* group_codes, int64_t gs, int64_t i) {
    if (t == dtype::q8_0) return group_codes[i];
    const int64_t half = (gs + 1) / 2;
    return i < half ? group_codes[i] & 0x0F : group_codes[i - half] >> 4;
}

float decode(dtype t, int u, float d, float m) {
    switch (t) {
        case dtype::q8_0: return d * float(u - 128);
        case dtype::q4_0: return d * float(u - 8);
        default: return d * float(u) + m;
    }
}

// Bytes of codes per group.
int64_t group_bytes(const kv_page_layout& l) { return l.type == dtype::q8_0 ? l.q_group() : (l.q_group() + 1) / 2; }

uint16_t f16_scale(float d) { return f32_to_f16(std::min(d, f16_max)); }  // d >= 0

}  // namespace

void kv_quantize_row(const kv_page_layout& l, const float* x, uint8_t* block, int64_t row) {
    const int64_t gs = l.q_group(), ng = l.q_groups(), gb = group_bytes(l);
    uint8_t* codes = block + row * l.q_row_bytes();
    std::memset(codes, 0, size_t(l.q_row_bytes()));
    uint16_t* ds = scales(l, block, row);
    for (int64_t g = 0; g < ng; ++g) {
        const float* xg = x + g * gs;
        uint8_t* cg = codes + g * gb;
        if (l.type == dtype::q8_0) {
            float amax = 0;
            for (int64_t i = 0; i < gs; ++i) amax = std::max(amax, std::fabs(xg[i]));
            ds[g] = f16_scale(amax / 127.0f);
            const float d = f16_to_f32(ds[g]);
            for (int64_t i = 0; i < gs; ++i) {
                const float q = d > 0 ? std::clamp(std::nearbyint(xg[i] / d), -127.0f, 127.0f) : 0.0f;
                cg[i] = uint8_t(int(q) + 128);
            }
            continue;
        }
        int u[32];
        if (l.type == dtype::q4_0) {
            float amax = 0, vmax = 0;
            for (int64_t i = 0; i < gs; ++i)
                if (std::fabs(xg[i]) > amax) amax = std::fabs(xg[i]), vmax = xg[i];
            const float d0 = vmax / -8.0f;
            ds[g] = f32_to_f16(std::clamp(d0, -f16_max, f16_max));
            const float d = f16_to_f32(ds[g]);
            for (int64_t i = 0; i < gs; ++i) u[i] = d != 0 ? int(std::clamp(std::nearbyint(xg[i] / d), -8.0f, 7.0f)) + 8 : 8;
        } else {
            float mn = xg[0], mx = xg[0];
            for (int64_t i = 1; i < gs; ++i) mn = std::min(mn, xg[i]), mx = std::max(mx, xg[i]);
            uint16_t* ms = mins(l, block, row);
            ms[g] = f32_to_f16(std::clamp(mn, -f16_max, f16_max));
            const float m = f16_to_f32(ms[g]);
            ds[g] = f16_scale((mx - m) / 15.0f);
            const float d = f16_to_f32(ds[g]);
            for (int64_t i = 0; i < gs; ++i) u[i] = d > 0 ? int(std::clamp(std::nearbyint((xg[i] - m) / d), 0.0f, 15.0f)) : 0;
        }
        const int64_t half = (gs + 1) / 2;
        for (int64_t i = 0; i < half; ++i) cg[i] = uint8_t(u[i] | (i + half < gs ? u[i + half] << 4 : 0));
    }
}

float kv_dequantize(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d) {
    const int64_t gs = l.q_group(), g = d / gs;
    const uint8_t* cg = block + row * l.q_row_bytes() + g * group_bytes(l);
    const float m = l.type == dtype::q4_1 ? f16_to_f32(mins(l, block, row)[g]) : 0.0f;
    return decode(l.type, code_at(l.type, cg, gs, d % gs), f16_to_f32(scales(l, block, row)[g]), m);
}

void kv_dequantize_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out) {
    const int64_t gs = l.q_group(), ng = l.q_groups(), gb = group_bytes(l);
    const uint8_t* codes = block + row * l.q_row_bytes();
    const uint16_t* ds = scales(l, block, row);
    for (int64_t g = 0; g < ng; ++g) {
        const float d = f16_to_f32(ds[g]);
        const float m = l.type == dtype::q4_1 ? f16_to_f32(mins(l, block, row)[g]) : 0.0f;
        for (int64_t i = 0; i < gs; ++i) out[g * gs + i] = decode(l.type, code_at(l.type, codes + g * gb, gs, i), d, m);
    }
}

void kv_copy_quant_row(const kv_page_layout& l, uint8_t* dst, int64_t dst_row, const uint8_t* src, int64_t src_row) {
    std::memmove(dst + dst_row * l.q_row_bytes(), src + src_row * l.q_row_bytes(), size_t(l.q_row_bytes()));
    const size_t sb = size_t(l.q_groups()) * 2;
    std::memmove(scales(l, dst, dst_row), scales(l, src, src_row), sb);
    if (l.type == dtype::q4_1) std::memmove(mins(l, dst, dst_row), mins(l, src, src_row), sb);
}

namespace {

// Asymmetric b-bit parameters of n values (stride apart): the f16 scale and minimum, and the codes.
void kivi_quantize_run(const float* x, int64_t n, int64_t stride, int bits, uint16_t* a_out, uint16_t* m_out, int* u) {
    float mn = x[0], mx = x[0];
    for (int64_t i = 1; i < n; ++i) mn = std::min(mn, x[i * stride]), mx = std::max(mx, x[i * stride]);
    const float levels = float((1 << bits) - 1);
    *m_out = f32_to_f16(std::clamp(mn, -f16_max, f16_max));
    const float m = f16_to_f32(*m_out);
    *a_out = f16_scale((mx - m) / levels);
    const float a = f16_to_f32(*a_out);
    for (int64_t i = 0; i < n; ++i)
        u[i] = a > 0 ? int(std::clamp(std::nearbyint((x[i * stride] - m) / a), 0.0f, levels)) : 0;
}

void kivi_put_code(const kv_page_layout& l, uint8_t* row_codes, int64_t d, int u) {
    const int64_t q = l.kivi_q();
    row_codes[d % q] = uint8_t(row_codes[d % q] | (u << (l.kivi_bits * (d / q))));
}

const uint16_t* kivi_params(const uint8_t* block, const kv_page_layout& l) {
    return reinterpret_cast<const uint16_t*>(block + l.kivi_param_offset());
}

}  // namespace

void kivi_quantize_k(const kv_page_layout& l, const float* k, uint8_t* block) {
    const int64_t hd = l.head_dim, ps = l.page_size, rb = l.kivi_row_bytes();
    std::memset(block, 0, l.kivi_k_block_bytes());
    uint16_t* a = reinterpret_cast<uint16_t*>(block + l.kivi_param_offset());  // (hd) scales, then (hd) mins
    std::vector<int> u(static_cast<size_t>(ps));
    for (int64_t d = 0; d < hd; ++d) {
        kivi_quantize_run(k + d, ps, hd, l.kivi_bits, a + d, a + hd + d, u.data());
        for (int64_t t = 0; t < ps; ++t) kivi_put_code(l, block + t * rb, d, u[size_t(t)]);
    }
}

void kivi_quantize_v(const kv_page_layout& l, const float* v, uint8_t* block) {
    const int64_t hd = l.head_dim, ps = l.page_size, rb = l.kivi_row_bytes(), gs = l.kivi_v_group(), ng = l.kivi_v_groups();
    std::memset(block, 0, l.kivi_v_block_bytes());
    uint16_t* a = reinterpret_cast<uint16_t*>(block + l.kivi_param_offset());  // (ps, ng) scales, then (ps, ng) mins
    std::vector<int> u(static_cast<size_t>(gs));
    for (int64_t t = 0; t < ps; ++t)
        for (int64_t g = 0; g < ng; ++g) {
            kivi_quantize_run(v + t * hd + g * gs, gs, 1, l.kivi_bits, a + t * ng + g, a + ps * ng + t * ng + g, u.data());
            for (int64_t i = 0; i < gs; ++i) kivi_put_code(l, block + t * rb, g * gs + i, u[size_t(i)]);
        }
}

int kivi_code(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d) {
    const int64_t q = l.kivi_q();
    return (block[row * l.kivi_row_bytes() + d % q] >> (l.kivi_bits * (d / q))) & ((1 << l.kivi_bits) - 1);
}

float kivi_dequantize_k(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d) {
    const uint16_t* p = kivi_params(block, l);
    return f16_to_f32(p[d]) * float(kivi_code(l, block, row, d)) + f16_to_f32(p[l.head_dim + d]);
}

float kivi_dequantize_v(const kv_page_layout& l, const uint8_t* block, int64_t row, int64_t d) {
    const uint16_t* p = kivi_params(block, l);
    const int64_t ng = l.kivi_v_groups(), i = row * ng + d / l.kivi_v_group();
    return f16_to_f32(p[i]) * float(kivi_code(l, block, row, d)) + f16_to_f32(p[l.page_size * ng + i]);
}

void kivi_dequantize_k_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out) {
    for (int64_t d = 0; d < l.head_dim; ++d) out[d] = kivi_dequantize_k(l, block, row, d);
}

void kivi_dequantize_v_row(const kv_page_layout& l, const uint8_t* block, int64_t row, float* out) {
    for (int64_t d = 0; d < l.head_dim; ++d) out[d] = kivi_dequantize_v(l, block, row, d);
}

}  // namespace kvs::cpu
