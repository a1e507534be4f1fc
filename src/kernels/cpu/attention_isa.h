// Internal contract between the attention front end (attention.cpp: planning, splitting, merging)
// and its per-ISA tile kernels (attention.cpp's portable one, attention_avx512.cpp).
// Same ODR rule as isa.h: plain data and function declarations only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kvs::cpu::detail {

// One attention task: the query vectors of n_rows consecutive rows of one sequence × n_group
// heads sharing one KV head, against the key slots [t0, t1) of that sequence (row r sees only
// slots < kv_len[r]). Query vector qv = r * n_group + g, for r < n_rows, g < n_group.
// Writes the normalized state of [t0, t1): o = Σ softmax · v and lse = log Σ exp(score)
// (scores include `scale`); rows with no visible slot get o = 0 and lse = -inf.
struct attn_work {
    const float* q;           // q of (r, g) at q + r * q_row_stride + g * hd
    int64_t q_row_stride;     // floats
    int64_t n_rows, n_group, hd;
    const int32_t* kv_len;    // (n_rows)
    const float* k;           // layer base, (n_pages, n_kv_head, page_size, hd)
    const float* v;           // layer base, same layout
    const int32_t* pages;     // the sequence's page ids
    int64_t page_size;
    size_t page_elems;        // floats per page (n_kv_head * page_size * hd)
    size_t head_off;          // floats from a page's start to this KV head (kvh * page_size * hd)
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

// Null when the build does not contain that path.
attn_fn attention_kernel_avx512();

}  // namespace kvs::cpu::detail
