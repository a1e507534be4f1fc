// Repacking between row_major and interleaved16 (layout in interleave.h).
#include "kernels/cpu/interleave.h"

#include <cstring>

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

}  // namespace

bool can_interleave(const weight_view& w) {
    const bool type_ok = w.type == dtype::q4_0 || w.type == dtype::q8_0 || w.type == dtype::f16 || w.type == dtype::bf16;
    return w.layout == weight_layout::row_major && type_ok &&
           w.n_out > 0 && w.n_out % interleave_rows == 0 && w.n_in > 0 && w.n_in % 32 == 0;
}

bool interleave_preferred() { return detail::active_interleaved_kernels().native; }

size_t interleaved_bytes(const weight_view& w) { return dtype_row_bytes(w.type, w.n_in) * size_t(w.n_out); }

weight_view interleave(const weight_view& w, void* dst, int64_t row0, int64_t row1) {
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
