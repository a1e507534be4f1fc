// Internal contract between the attention front end (attention.cpp: planning, splitting, merging)
// and its per-ISA tile kernels (attention.cpp's portable one, attention_avx512.cpp).
// Same ODR rule as isa.h: plain data and function declarations only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvs::cpu::detail {

// KV storage formats the tile kernels read (kv_page_layout in attention.h describes them).
enum class kv_fmt : int32_t { f32 = 0, f16 = 1, bf16 = 2, q8_0 = 3, q4_0 = 4, q4_1 = 5, kivi = 6 };

// One attention task: the query vectors of n_rows consecutive rows of one sequence × n_group
// heads sharing one KV head, against the key slots [t0, t1) of that sequence (row r sees only
// slots in [kv_begin[r], kv_len[r]); kv_begin null: from slot 0). Query vector qv = r * n_group + g, for r < n_rows, g < n_group.
// Writes the normalized state of [t0, t1): o = Σ softmax · v and lse = log Σ exp(score)
// (scores include `scale`); rows with no visible slot get o = 0 and lse = -inf.
struct attn_work {
    const float* q;           // q of (r, g) at q + r * q_row_stride + g * hd
    int64_t q_row_stride;     // floats
    int64_t n_rows, n_group, hd;
    const int32_t* kv_len;    // (n_rows)
    const int32_t* kv_begin;  // (n_rows) or null (0 for every row)
    kv_fmt fmt;               // storage format of k (and of v unless v_fmt differs)
    kv_fmt v_fmt;             // storage format of v
    const uint8_t* k;         // layer base: pages k_page_bytes apart
    const uint8_t* v;         // layer base: pages v_page_bytes apart
    const int32_t* pages;     // the sequence's page ids
    int64_t page_size;
    int64_t k_row_elems;      // elements per stored K row (hd; rounded up to even for 16-bit)
    // Quantized formats (K and V blocks alike): dimensions per group, groups per row, code
    // bytes per row, and the byte offsets from a block's start to its f16 scales d and mins m.
    int64_t q_group, q_groups, q_row_bytes;
    size_t q_scale_off, q_min_off;
    int64_t v_q_row_bytes;           // the same for a quantized V in another format than K's
    size_t v_q_scale_off, v_q_min_off;
    int32_t kivi_bits;               // kv_fmt::kivi (K and V): 2 or 4
    size_t k_page_bytes, v_page_bytes;
    size_t k_head_off, v_head_off;  // bytes from a page's start to this KV head's block
    bool v_is_k;              // V is K's rows (a keys-only group; v, v_page_bytes, v_head_off are K's)
    int64_t t0, t1;           // key slot range
    float scale;
    float* o;                 // o of (r, g) at o + r * o_row_stride + g * hd
    int64_t o_row_stride;     // floats
    float* lse;               // lse of (r, g) at lse + r * lse_row_stride + g
    int64_t lse_row_stride;
};

// Most query vectors one tile kernel call takes (the front end splits larger groups).
constexpr int64_t attn_max_qv = 64;

using attn_fn = void (*)(const attn_work& w);

// Null when the build does not contain that path or it does not read that format.
attn_fn attention_kernel_avx512(kv_fmt fmt);

}  // namespace kvs::cpu::detail
