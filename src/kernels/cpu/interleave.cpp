// Repacking between row_major and interleaved16 (layout in interleave.h).
#include "kernels/cpu/interleave.h"

#include <cstring>
#include <type_traits>

#include "kernels/cpu/isa.h"

namespace kvs::cpu {

namespace {

// Bytes of one row's block (32 elements) and how they split into the scale header and the
// codes that are spread over 64-byte chunks.
struct geometry {
    size_t block_bytes;   // per row: 18 (q4_0), 34 (q8_0), 64 (f16, bf16)
    size_t header_bytes;  // per row: 2 (the f16 scale) or 0
    size_t column_bytes;  // 16 * block_bytes
    int n_chunks;         // (block_bytes - header_bytes) / 4
};

geometry geometry_of(dtype t) {
    geometry g{};
    g.block_bytes = size_t(dtype_row_bytes(t, 32));
    g.header_bytes = t == dtype::q4_0 || t == dtype::q8_0 ? 2 : 0;
    g.column_bytes = size_t(interleave_rows) * g.block_bytes;
    g.n_chunks = int((g.block_bytes - g.header_bytes) / 4);
    return g;
}

bool is_kquant(dtype t) { return t == dtype::q4_k || t == dtype::q5_k || t == dtype::q6_k; }

// One row's super-block <-> its place in a k-quant column (layout in interleave.h). `pack`
// copies from blk into col; otherwise from col back into blk. B is block_q4_k or block_q5_k
// (the same scales and low code bits; q5_K adds qh).
template <class B>
void q4_k_row(uint8_t* col, int r, uint8_t* blk_bytes, bool pack) {
    auto* blk = reinterpret_cast<B*>(blk_bytes);
    if constexpr (requires { blk->qh; }) {
        for (int c = 0; c < 8; ++c) {
            uint8_t* lane = col + k5_qh_offset + 64 * c + 4 * r;
            if (pack) std::memcpy(lane, blk->qh + 4 * c, 4);
            else std::memcpy(blk->qh + 4 * c, lane, 4);
        }
    }
    uint8_t* lo = col + k4_scales_offset;
    uint8_t* hi = col + k4_high_offset + 4 * r;
    uint8_t* codes = col + (std::is_same_v<B, block_q5_k> ? k5_codes_offset : k4_codes_offset);
    if (pack) {
        std::memcpy(col + 2 * r, &blk->d, 2);
        std::memcpy(col + 32 + 2 * r, &blk->dmin, 2);
        uint8_t sc[8], m[8];
        kquant_scale_min(blk->scales, sc, m);
        uint32_t high = 0;
        for (int j = 0; j < 8; ++j) {
            lo[16 * j + r] = uint8_t((sc[j] & 15) | (m[j] & 15) << 4);
            high |= uint32_t(sc[j] >> 4) << (2 * j) | uint32_t(m[j] >> 4) << (16 + 2 * j);
        }
        std::memcpy(hi, &high, 4);
        for (int c = 0; c < 32; ++c) std::memcpy(codes + 64 * c + 4 * r, blk->qs + 4 * c, 4);
    } else {
        std::memcpy(&blk->d, col + 2 * r, 2);
        std::memcpy(&blk->dmin, col + 32 + 2 * r, 2);
        uint32_t high;
        std::memcpy(&high, hi, 4);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; ++j) {
            sc[j] = uint8_t((lo[16 * j + r] & 15) | ((high >> (2 * j)) & 3) << 4);
            m[j] = uint8_t((lo[16 * j + r] >> 4) | ((high >> (16 + 2 * j)) & 3) << 4);
        }
        for (int j = 0; j < 4; ++j) {
            blk->scales[j] = uint8_t(sc[j] | (sc[j + 4] >> 4) << 6);
            blk->scales[j + 4] = uint8_t(m[j] | (m[j + 4] >> 4) << 6);
            blk->scales[j + 8] = uint8_t((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
        }
        for (int c = 0; c < 32; ++c) std::memcpy(blk->qs + 4 * c, codes + 64 * c + 4 * r, 4);
    }
}

// Where lane 0's copy of ql[n] / qh[n] (n a multiple of 4) lies in a q6_K column.
size_t k6_ql_position(int n) {
    const int h = n / 64, s = n % 64 / 32, l = n % 32;
    return k6_codes_offset + 768 * size_t(2 * h + l / 16) + 64 * size_t(4 * (1 + s) + l % 16 / 4);
}
size_t k6_qh_position(int n) {
    const int h = n / 32, l = n % 32;
    return k6_codes_offset + 768 * size_t(2 * h + l / 16) + 64 * size_t(l % 16 / 4);
}

void q6_k_row(uint8_t* col, int r, uint8_t* blk_bytes, bool pack) {
    auto* blk = reinterpret_cast<block_q6_k*>(blk_bytes);
    auto move = [pack](void* packed, void* row, size_t n) {
        if (pack) std::memcpy(packed, row, n);
        else std::memcpy(row, packed, n);
    };
    move(col + 2 * r, &blk->d, 2);
    for (int j = 0; j < 16; ++j) move(col + k6_scales_offset + 16 * j + r, &blk->scales[j], 1);
    for (int n = 0; n < 128; n += 4) move(col + k6_ql_position(n) + 4 * size_t(r), blk->ql + n, 4);
    for (int n = 0; n < 64; n += 4) move(col + k6_qh_position(n) + 4 * size_t(r), blk->qh + n, 4);
}

// Repacks (pack) or restores rows [row0, row1) of a k-quant matrix.
void kquant_rows(dtype t, int64_t n_in, uint8_t* row_major, uint8_t* packed, int64_t row0, int64_t row1, bool pack) {
    const size_t block_bytes = dtype_row_bytes(t, qk_k);
    const size_t row_bytes = dtype_row_bytes(t, n_in);
    const size_t column_bytes = size_t(interleave_rows) * block_bytes;
    const int64_t nb = n_in / qk_k;
    for (int64_t g0 = row0; g0 < row1; g0 += interleave_rows) {
        uint8_t* group = packed + size_t(g0) * row_bytes;
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* col = group + size_t(b) * column_bytes;
            for (int r = 0; r < interleave_rows; ++r) {
                uint8_t* blk = row_major + size_t(g0 + r) * row_bytes + size_t(b) * block_bytes;
                if (t == dtype::q4_k) q4_k_row<block_q4_k>(col, r, blk, pack);
                else if (t == dtype::q5_k) q4_k_row<block_q5_k>(col, r, blk, pack);
                else q6_k_row(col, r, blk, pack);
            }
        }
    }
}

}  // namespace

bool can_interleave(const weight_view& w) {
    const bool type_ok = w.type == dtype::q4_0 || w.type == dtype::q8_0 || w.type == dtype::f16 ||
                         w.type == dtype::bf16 || is_kquant(w.type);
    const int64_t block = is_kquant(w.type) ? qk_k : 32;
    return w.layout == weight_layout::row_major && type_ok &&
           w.n_out > 0 && w.n_out % interleave_rows == 0 && w.n_in > 0 && w.n_in % block == 0;
}

bool interleave_preferred() { return detail::active_interleaved_kernels().native; }

size_t interleaved_bytes(const weight_view& w) { return dtype_row_bytes(w.type, w.n_in) * size_t(w.n_out); }

weight_view interleave(const weight_view& w, void* dst, int64_t row0, int64_t row1) {
    if (is_kquant(w.type)) {
        kquant_rows(w.type, w.n_in, const_cast<uint8_t*>(static_cast<const uint8_t*>(w.data)),
                    static_cast<uint8_t*>(dst), row0, row1, true);
        weight_view v = w;
        v.data = dst;
        v.layout = weight_layout::interleaved16;
        return v;
    }
    const geometry geo = geometry_of(w.type);
    const int64_t nb = w.n_in / 32;
    const size_t row_bytes = dtype_row_bytes(w.type, w.n_in);
    const bool flip = w.type == dtype::q8_0;
    const auto* src = static_cast<const uint8_t*>(w.data);
    auto* out = static_cast<uint8_t*>(dst);
    for (int64_t g0 = row0; g0 < row1; g0 += interleave_rows) {
        uint8_t* group = out + size_t(g0) * row_bytes;
        for (int64_t b = 0; b < nb; ++b) {
            uint8_t* col = group + size_t(b) * geo.column_bytes;
            for (int r = 0; r < interleave_rows; ++r) {
                const uint8_t* blk = src + size_t(g0 + r) * row_bytes + size_t(b) * geo.block_bytes;
                std::memcpy(col + geo.header_bytes * size_t(r), blk, geo.header_bytes);  // f16 scale
                const uint8_t* qs = blk + geo.header_bytes;
                uint8_t* chunks = col + geo.header_bytes * size_t(interleave_rows);
                for (int c = 0; c < geo.n_chunks; ++c) {
                    uint32_t four;
                    std::memcpy(&four, qs + 4 * c, 4);
                    if (flip) four ^= 0x80808080u;
                    std::memcpy(chunks + 64 * c + 4 * r, &four, 4);
                }
            }
        }
    }
    weight_view v = w;
    v.data = dst;
    v.layout = weight_layout::interleaved16;
    return v;
}

void deinterleave(const weight_view& w, void* dst) {
    if (is_kquant(w.type)) {
        kquant_rows(w.type, w.n_in, static_cast<uint8_t*>(dst),
                    const_cast<uint8_t*>(static_cast<const uint8_t*>(w.data)), 0, w.n_out, false);
        return;
    }
    const geometry geo = geometry_of(w.type);
    const int64_t nb = w.n_in / 32;
    const size_t row_bytes = dtype_row_bytes(w.type, w.n_in);
    const bool flip = w.type == dtype::q8_0;
    const auto* src = static_cast<const uint8_t*>(w.data);
    auto* out = static_cast<uint8_t*>(dst);
    for (int64_t g0 = 0; g0 < w.n_out; g0 += interleave_rows) {
        const uint8_t* group = src + size_t(g0) * row_bytes;
        for (int64_t b = 0; b < nb; ++b) {
            const uint8_t* col = group + size_t(b) * geo.column_bytes;
            for (int r = 0; r < interleave_rows; ++r) {
                uint8_t* blk = out + size_t(g0 + r) * row_bytes + size_t(b) * geo.block_bytes;
                std::memcpy(blk, col + geo.header_bytes * size_t(r), geo.header_bytes);
                const uint8_t* chunks = col + geo.header_bytes * size_t(interleave_rows);
                for (int c = 0; c < geo.n_chunks; ++c) {
                    const uint8_t* lane = chunks + 64 * c + 4 * r;
                    for (int j = 0; j < 4; ++j)
                        blk[geo.header_bytes + 4 * size_t(c) + size_t(j)] = flip ? uint8_t(lane[j] ^ 0x80) : lane[j];
                }
            }
        }
    }
}

}  // namespace kvs::cpu
