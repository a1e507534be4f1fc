// Attention over paged KV for a ragged batch, returning (O, LSE) per query row and head.
// The page table is one CSR for the whole batch (FlashInfer's representation): sequence i
// owns page ids page_ids[page_indptr[i] .. page_indptr[i+1]); slot s of the sequence is row
// s % page_size of page page_ids[page_indptr[i] + s / page_size].
// The kernel never knows which policy chose the pages; it reads slots [q_kv_begin[r],
// q_kv_len[r]) of the row's sequence (causality and chunked prefill are expressed through
// q_kv_len, a sliding window through q_kv_begin). Per-head page selection (Quest) maps a
// (sequence, KV head) to another CSR entry holding that head's pages (seq_head_entry).
#pragma once

#include <cstdint>
#include <optional>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kvs::cpu {

// Storage of one layer's K and V pages in a KV format (the format is a property of the
// cache; the kernels dispatch on it). A page holds, per KV head, one contiguous block of K
// (k_head_bytes) and one of V (v_head_bytes); where the blocks lie is the view's business
// (paged_kv_view: page-major or head-major).
//   f32        K and V blocks: (page_size, head_dim) float; row t is the page's token t.
//   f16, bf16  K block: (page_size, head_dim2) 16-bit, head_dim2 = head_dim rounded up to even
//              (the pad is 0), so each 32-bit word is a pair of consecutive dimensions — the
//              operand of vdpbf16ps for Q·Kᵀ (a sum over dimensions).
//              V block: (page_size2 / 2, head_dim, 2) 16-bit, page_size2 = page_size rounded
//              up to even: tokens 2i and 2i+1 interleaved per dimension, so each 32-bit word
//              is a pair of consecutive tokens — the operand of vdpbf16ps for P·V (a sum
//              over tokens).
//   q8_0, q4_0, q4_1  per-group quantization along head_dim, llama.cpp's block formats laid
//              out for our kernels; K and V blocks alike, each token's row quantized in groups
//              of G = 32 dimensions (G = head_dim when head_dim < 32; otherwise head_dim must
//              be a multiple of 32):
//                codes  (page_size, q_row_bytes) uint8
//                         q8_0: u = q + 128, q = round(x / d) in [-127, 127]; x ≈ d · (u - 128)
//                         q4_0: u in [0, 15];                              x ≈ d · (u - 8)
//                         q4_1: u in [0, 15];                              x ≈ d · u + m
//                         4-bit: byte i of a group holds element i (low nibble) and element
//                         i + ceil(G / 2) (high nibble). Rows padded to 4 bytes (pad 0).
//                scales (page_size, n_groups) f16 d, then for q4_1 (page_size, n_groups) f16 m.
//              Bits per value: 8.5 (q8_0), 4.5 (q4_0), 5 (q4_1), as in llama.cpp.
//   KIVI (kivi_bits = 2 or 4; Liu et al., 2024) packed pages: a page's page_size tokens are one
//              quantization group G. Asymmetric b-bit codes u in [0, 2^b - 1], x ≈ a · u + m.
//              Codes, K and V alike: (page_size, kivi_row_bytes) uint8, token-major; byte i of a
//                         row holds elements i + j·Q (j < 8 / b) at bits [j·b, (j+1)·b), Q =
//                         ceil(head_dim · b / 8). Rows padded to 4 bytes (pad 0).
//              K block: codes, then per channel over the page's tokens (2, head_dim) f16: the
//                         scales a_d, then the minimums m_d (KIVI's per-channel keys).
//              V block: codes, then per token and group of kivi_v_group() = min(G, head_dim)
//                         channels (page_size, kivi_v_groups()) f16 scales, then (page_size,
//                         kivi_v_groups()) f16 minimums (KIVI's per-token values; head_dim a
//                         multiple of the group).
//              A KIVI cache keeps the newest tokens (its residual) in full-precision pages of
//              `type` and packs a page once it has aged out (kv_cache.h).
// K and V may be stored in different formats (v_type; llama.cpp's -ctk / -ctv): `type` is K's,
// and V's block follows for_v(), the layout of V's format.
struct kv_page_layout {
    dtype type = dtype::f32;
    int64_t n_kv_head = 0, page_size = 0, head_dim = 0;
    std::optional<dtype> v_type;  // V's format when it differs from K's
    int32_t kivi_bits = 0;        // 2 or 4: KIVI packed pages (K and V); 0: pages of `type` / v_type
    // A keys-only group (MLA's latent): V is read from K's block, row for row (any format,
    // 16-bit ones in K's row layout); V has no block or format of its own.
    bool v_is_k = false;

    dtype v() const { return v_type.value_or(type); }
    // The layout V's blocks follow (its `type` is V's format).
    kv_page_layout for_v() const { return {v(), n_kv_head, page_size, head_dim, std::nullopt, kivi_bits}; }
    bool is_kivi() const { return kivi_bits != 0; }
    // KIVI: code bytes per token row, byte offsets of the K block's channel parameters and of the
    // V block's token parameters.
    int64_t kivi_row_bytes() const { return ((head_dim * kivi_bits + 7) / 8 + 3) / 4 * 4; }
    int64_t kivi_codes_per_byte() const { return 8 / kivi_bits; }
    int64_t kivi_q() const { return (head_dim + kivi_codes_per_byte() - 1) / kivi_codes_per_byte(); }
    size_t kivi_param_offset() const { return size_t(page_size * kivi_row_bytes()); }  // block start → scales
    size_t kivi_k_block_bytes() const { return kivi_param_offset() + size_t(4 * head_dim); }
    int64_t kivi_v_group() const { return page_size < head_dim ? page_size : head_dim; }
    int64_t kivi_v_groups() const { return head_dim / kivi_v_group(); }
    size_t kivi_v_block_bytes() const { return kivi_param_offset() + size_t(4 * page_size * kivi_v_groups()); }

    static bool supported(dtype t) {
        return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16 || quantized(t);
    }
    static bool quantized(dtype t) { return t == dtype::q8_0 || t == dtype::q4_0 || t == dtype::q4_1; }
    bool is_quantized() const { return quantized(type); }
    // The head size this format can store ("" if it can), else why not.
    const char* head_dim_problem() const {
        if (is_kivi()) return head_dim % kivi_v_group() ? "KIVI needs head_dim to be a multiple of its group (or smaller)" : "";
        return (is_quantized() || quantized(v())) && head_dim > 32 && head_dim % 32
                   ? "quantized KV formats need head_dim < 32 or a multiple of 32"
                   : "";
    }
    // Quantized formats: dimensions per group, groups per row, code bytes per row.
    int64_t q_group() const { return head_dim < 32 ? head_dim : 32; }
    int64_t q_groups() const { return head_dim / q_group(); }
    int64_t q_row_bytes() const {
        const int64_t b = type == dtype::q8_0 ? head_dim : q_groups() * ((q_group() + 1) / 2);
        return (b + 3) / 4 * 4;
    }
    size_t q_scale_offset() const { return size_t(page_size * q_row_bytes()); }  // block start → d
    size_t q_min_offset() const { return q_scale_offset() + size_t(page_size * q_groups()) * 2; }  // → m (q4_1)
    size_t q_block_bytes() const {
        const size_t b = q_min_offset() + (type == dtype::q4_1 ? size_t(page_size * q_groups()) * 2 : 0);
        return (b + 3) / 4 * 4;
    }
    size_t elem_bytes() const { return type == dtype::f32 ? 4 : 2; }
    int64_t k_row_elems() const { return type == dtype::f32 ? head_dim : (head_dim + 1) / 2 * 2; }
    int64_t v_rows() const { return type == dtype::f32 ? page_size : (page_size + 1) / 2 * 2; }  // (of `type`)
    size_t k_head_bytes() const {
        if (is_kivi()) return kivi_k_block_bytes();
        return is_quantized() ? q_block_bytes() : size_t(page_size * k_row_elems()) * elem_bytes();
    }
    size_t v_head_bytes() const {
        if (v_is_k) return k_head_bytes();
        if (is_kivi()) return kivi_v_block_bytes();
        if (v_type) return for_v().v_head_bytes();
        return is_quantized() ? q_block_bytes() : size_t(v_rows() * head_dim) * elem_bytes();
    }
    size_t k_page_bytes() const { return size_t(n_kv_head) * k_head_bytes(); }
    size_t v_page_bytes() const { return size_t(n_kv_head) * v_head_bytes(); }
};

// Writes one token's K and V (each (n_kv_head, head_dim) float, rounded to nearest even for
// 16-bit formats, quantized per group for q8_0/q4_0/q4_1 (kv_quant.h)) into row `row` of one page: KV head h's blocks are at k0 + h·k_head_stride
// and v0 + h·v_head_stride (bytes). With l.v_is_k only K is written (v0 and v are ignored).
void kv_store_row(const kv_page_layout& l, void* k0, void* v0, size_t k_head_stride, size_t v_head_stride, int64_t row,
                  const float* k, const float* v);
// Copies row src_row of one KV head's K and V blocks to row dst_row of another (or the same)
// head's blocks, bit for bit in any format (H2O moves kept tokens between slots).
void kv_copy_row(const kv_page_layout& l, void* k_dst, void* v_dst, int64_t dst_row, const void* k_src, const void* v_src,
                 int64_t src_row);
// Element (row, d) of one KV head's K or V block, as float (references and tests).
float kv_load_k(const kv_page_layout& l, const void* k_block, int64_t row, int64_t d);
float kv_load_v(const kv_page_layout& l, const void* v_block, int64_t row, int64_t d);
// Row `row` of one KV head's K block, all head_dim values as float (any format but KIVI).
void kv_load_k_row(const kv_page_layout& l, const void* k_block, int64_t row, float* out);

struct paged_kv_view {
    const void* k = nullptr;  // layer base of the K blocks
    const void* v = nullptr;  // layer base of the V blocks
    int64_t n_kv_head = 0;
    int64_t page_size = 0;
    int64_t head_dim = 0;
    dtype type = dtype::f32;  // storage format (kv_page_layout): K's, and V's unless v_type is set
    // 0: page-major, (n_pages, n_kv_head, block) — a page's heads side by side.
    // n > 0: head-major over a pool of n pages, (n_kv_head, n, block) — one KV head's pages side
    // by side, so one head's walk over a sequence of consecutive pages is one sequential stream
    // (what the KV cache uses: a head reads only its block of each page, and with page-major
    // pages that is a 2-4 KB run every 8-16 KB, which the hardware prefetchers do not follow).
    int64_t head_major_pages = 0;

    std::optional<dtype> v_type;  // V's format when it differs from K's
    int32_t kivi_bits = 0;        // KIVI packed pages (kv_page_layout::kivi_bits)
    bool v_is_k = false;          // V read from K's blocks (kv_page_layout::v_is_k; v == k)

    kv_page_layout layout() const { return {type, n_kv_head, page_size, head_dim, v_type, kivi_bits, v_is_k}; }
    size_t k_page_stride() const { return head_major_pages ? layout().k_head_bytes() : layout().k_page_bytes(); }
    size_t v_page_stride() const { return head_major_pages ? layout().v_head_bytes() : layout().v_page_bytes(); }
    size_t k_head_stride() const { return layout().k_head_bytes() * size_t(head_major_pages ? head_major_pages : 1); }
    size_t v_head_stride() const { return layout().v_head_bytes() * size_t(head_major_pages ? head_major_pages : 1); }
    const uint8_t* k_block(int64_t page, int64_t head) const {
        return static_cast<const uint8_t*>(k) + size_t(page) * k_page_stride() + size_t(head) * k_head_stride();
    }
    const uint8_t* v_block(int64_t page, int64_t head) const {
        return static_cast<const uint8_t*>(v) + size_t(page) * v_page_stride() + size_t(head) * v_head_stride();
    }
};

struct attention_batch {
    int64_t n_q = 0;                     // query rows
    int64_t n_head = 0;                  // query heads; a multiple of n_kv_head (GQA/MQA)
    const float* q = nullptr;            // (n_q, n_head, head_dim), already rotated
    const int32_t* q_seq = nullptr;      // (n_q) sequence index of each row, into page_indptr
    const int32_t* q_kv_len = nullptr;   // (n_q) the row attends to slots [q_kv_begin, q_kv_len)
    const int32_t* q_kv_begin = nullptr; // (n_q) first slot each row attends; null: 0 for every row
    const int32_t* page_indptr = nullptr;  // (n_seq + 1)
    const int32_t* page_ids = nullptr;     // (page_indptr[n_seq])
    // (n_seq, n_kv_head) or null: KV head h of the rows of sequence entry i reads the pages of
    // entry seq_head_entry[i * n_kv_head + h] instead of entry i's (its slots then index into
    // that entry's pages; the row's q_kv_begin/q_kv_len apply unchanged). Null: every head
    // reads its sequence's pages, at no cost.
    const int32_t* seq_head_entry = nullptr;
    float scale = 1.0f;                  // usually 1/sqrt(head_dim)
};

// o: (n_q, n_head, head_dim); lse: (n_q, n_head), natural log of the softmax denominator
// including the scale (so two states over disjoint KV sets merge exactly). A row with no
// KV gets o = 0 and lse = -inf. Work is split over (row, KV head) pairs.
void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse, thread_pool& pool);

// Merges state (o_b, lse_b) into (o_a, lse_a), both (n, head_dim) / (n): the result is the
// attention over the union of the two KV sets.
void attention_merge(float* o_a, float* lse_a, const float* o_b, const float* lse_b, int64_t n, int64_t head_dim);

namespace ref {
// Float64 reference: materializes all scores of a row, exact softmax.
void attention_paged(const attention_batch& b, const paged_kv_view& kv, float* o, float* lse);
}  // namespace ref

}  // namespace kvs::cpu
