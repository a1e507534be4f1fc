// Attention for a batch with a cascade plan (kv/cascade.h): every row first attends to its
// own pages (grouped rows skip the shared prefix), then each group's rows attend to the shared
// pages together in one pass — one "sequence" of many query rows, so the kernel reads each
// shared page once for all of them — and the two states are merged through their LSE.
// Equal to plain paged attention up to rounding.
#pragma once

#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kv/cascade.h"

namespace kvs {

// Reusable buffers (grow once, then no allocation).
struct cascade_scratch {
    std::vector<int32_t> indptr, ids, kv_len, q_seq;  // suffix / shared CSR
    std::vector<float> q, o, lse;                      // gathered rows of one group
};

// b, kv, o, lse as for cpu::attention_paged; with an empty plan it is exactly that call.
void attention_with_cascade(const cpu::attention_batch& b, const cpu::paged_kv_view& kv, const cascade_plan& plan,
                            float* o, float* lse, cascade_scratch& s, thread_pool& pool);

}  // namespace kvs
