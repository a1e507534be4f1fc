// Multi-head latent attention in the un-absorbed form, for prefill rows (DeepSeek-V2).
//
// The absorbed form (deepseek2.h) attends each query over the cached latent entries directly:
// per head and cached token, kv_lora + qk_rope multiply-adds for the score and kv_lora for the
// value (1,088 on V2-Lite), plus per row and head W_UK,iᵀ q_nope and W_UV,i o. The un-absorbed
// form first lifts the context's latents back to per-head keys and values — [k_nope_i; v_i] =
// W_kv_b,i c (H·(qk_nope + v_head)·kv_lora per cached token), k_i = [k_nope_i; k_pe] with the
// shared rotated k_pe — then runs ordinary multi-head attention: qk_nope + qk_rope + v_head
// multiply-adds per head and cached token (the value padded to the key's width here: 384 on
// V2-Lite). Lifting costs once per cached token and layer, attention once per (row, cached
// token), so the un-absorbed form is the cheaper one when a sequence brings many rows at once
// (a prefill chunk) and the absorbed one for decode (mla_unabsorbed_cheaper decides, from the
// multiply-adds weighted by the measured speeds of the two kernels).
//
// Both forms compute the same attention (the paper's equations), so the same logits to float
// rounding: tests/test_deepseek2.cpp checks that, with either form forced.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/ops.h"

namespace kvs {

struct mla_dims {
    int64_t n_head = 0, kv_lora = 0, qk_nope = 0, qk_rope = 0, v_head = 0;
    int64_t entry() const { return kv_lora + qk_rope; }
    int64_t qk() const { return qk_nope + qk_rope; }
};

// Scratch of the un-absorbed pass, grown on first use and reused.
struct mla_unabsorbed_scratch {
    std::vector<float> c;        // (L, kv_lora) the context's latents
    std::vector<float> k_pe;     // (L, qk_rope) their rotated k_pe
    std::vector<float> kv_up;    // (L, H·(qk_nope + v_head)) W_kv_b c: per head [k_nope; v]
    std::vector<float> k, v;     // (H, L, qk) one page of the context's per-head keys and values (v zero-padded)
    std::vector<float> q, o;     // (n, H, qk) the rows' queries and outputs
    std::vector<float> lse;      // (n, H)
    std::vector<int32_t> zeros, len;
};

// Whether one sequence's n_rows rows over contexts of total_len slots in all (the longest
// max_len) are cheaper un-absorbed. Never for a single row.
bool mla_unabsorbed_cheaper(const mla_dims& dm, int64_t n_rows, int64_t max_len, int64_t total_len);

// Attention of n_rows rows of one sequence in the un-absorbed form. q: the rows' queries,
// (n_rows, H, qk) with q_pe rotated at each row's position (row i at q + i·q_stride); row i
// attends slots [0, len[i]) of the sequence (pages: its page table over `latent`, the layer's
// keys-only view of [c; k_pe]). kv_up: (H·(qk_nope + v_head), kv_lora), per head the rows of
// W_UK,i then W_UV,i. Writes each row's per-head values (n_rows, H·v_head) at heads + i·heads_stride.
void mla_attend_unabsorbed(const mla_dims& dm, const cpu::weight_view& kv_up, const cpu::paged_kv_view& latent, const int32_t* pages,
                           int64_t n_rows, const int32_t* len, const float* q, int64_t q_stride, float scale, float* heads,
                           int64_t heads_stride, mla_unabsorbed_scratch& sc, thread_pool& pool);

}  // namespace kvs
