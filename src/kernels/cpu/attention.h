// Attention over paged KV for a ragged batch, returning (O, LSE) per query row and head.
// The page table is one CSR for the whole batch (FlashInfer's representation): sequence i
// owns page ids page_ids[page_indptr[i] .. page_indptr[i+1]); slot s of the sequence is row
// s % page_size of page page_ids[page_indptr[i] + s / page_size].
// The kernel never knows which policy chose the pages; it reads slots [0, q_kv_len[r]) of
// the row's sequence (causality and chunked prefill are expressed through q_kv_len).
#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace kvs::cpu {

struct paged_kv_view {
    const float* k = nullptr;  // (n_pages, n_kv_head, page_size, head_dim)
    const float* v = nullptr;  // (n_pages, n_kv_head, page_size, head_dim)
    int64_t n_kv_head = 0;
    int64_t page_size = 0;
    int64_t head_dim = 0;
};

struct attention_batch {
    int64_t n_q = 0;                     // query rows
    int64_t n_head = 0;                  // query heads; a multiple of n_kv_head (GQA/MQA)
    const float* q = nullptr;            // (n_q, n_head, head_dim), already rotated
    const int32_t* q_seq = nullptr;      // (n_q) sequence index of each row, into page_indptr
    const int32_t* q_kv_len = nullptr;   // (n_q) the row attends to slots [0, q_kv_len)
    const int32_t* page_indptr = nullptr;  // (n_seq + 1)
    const int32_t* page_ids = nullptr;     // (page_indptr[n_seq])
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
