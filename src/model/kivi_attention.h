// Attention over a KIVI cache (kv_cache.h): each row reads the table pages its position has
// aged out of the residual in their packed form and the rest in full precision. Two kernel
// calls — the packed pages (a KIVI view) and the full ones — over disjoint slot ranges of
// every row, merged through their LSE (attention_merge), so the result is attention over the
// row's whole slot range with each slot read in the form the KIVI rule gives it.
//
// Row r (sequence seq, logical slot L) reads table pages [0, k_r) packed, k_r the table
// pages holding logical pages below kv.kivi_packed_pages(L), and the rest full. A table page
// below k_r that is still full (this step ages it out) is read through its twin, which the
// forward pass quantized for this layer (kv_cache::kivi_pack_layer) before the attention.
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kv/kv_cache.h"

namespace kvs {

// The two batches of one attention batch, decided once per forward pass.
struct kivi_plan {
    bool any_packed = false;                             // some row reads a packed page
    std::vector<int32_t> p_indptr, p_ids, p_len;         // packed CSR (ids into packed_view), (n_q) slot ends
    std::vector<int32_t> f_indptr, f_ids, f_begin, f_len;  // full CSR, (n_q) slot ranges
};

// b: the batch as for a plain cache (its CSR holds the sequences' tables); row_seq, row_slot:
// (b.n_q) each row's kv sequence and logical slot. Fails if a page a row reads packed has
// neither a packed form nor a twin, or one it reads in full precision is packed.
status plan_kivi(const cpu::attention_batch& b, const int32_t* row_seq, const int32_t* row_slot, const kv_cache& kv,
                 kivi_plan& out);

struct kivi_scratch {
    std::vector<float> o, lse;  // the packed pass's state
};

// o, lse as for cpu::attention_paged over the layer's pages.
void kivi_attention(const cpu::attention_batch& b, const kivi_plan& plan, const kv_cache& kv, int64_t layer, float* o,
                    float* lse, kivi_scratch& s, thread_pool& pool);

}  // namespace kvs
