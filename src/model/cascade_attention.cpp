#include "model/cascade_attention.h"

#include <algorithm>
#include <cstring>

namespace kvs {

void attention_with_cascade(const cpu::attention_batch& b, const cpu::paged_kv_view& kv, const cascade_plan& plan,
                            float* o, float* lse, cascade_scratch& s, thread_pool& pool) {
    if (plan.empty()) {
        cpu::attention_paged(b, kv, o, lse, pool);
        return;
    }
    const int64_t hd = kv.head_dim, ps = kv.page_size, n_head = b.n_head;
    // 1. Own pages: a CSR where grouped rows' sequences start after the shared pages.
    int32_t n_seq = 0;
    for (int64_t r = 0; r < b.n_q; ++r) n_seq = std::max(n_seq, b.q_seq[r] + 1);
    if (b.seq_head_entry) {  // entries that only per-head lists name come along unchanged
        const int32_t n_rows_entries = n_seq;
        for (int64_t i = 0; i < int64_t(n_rows_entries) * kv.n_kv_head; ++i) n_seq = std::max(n_seq, b.seq_head_entry[i] + 1);
    }
    std::vector<int32_t>& skip = s.q_seq;  // per sequence, reused below
    skip.assign(size_t(n_seq), 0);
    for (int64_t r = 0; r < b.n_q; ++r) skip[size_t(b.q_seq[r])] = plan.skip_pages[size_t(r)];
    s.indptr.assign(1, 0);
    s.ids.clear();
    for (int32_t q = 0; q < n_seq; ++q) {
        s.ids.insert(s.ids.end(), b.page_ids + b.page_indptr[q] + skip[size_t(q)], b.page_ids + b.page_indptr[q + 1]);
        s.indptr.push_back(int32_t(s.ids.size()));
    }
    s.kv_len.resize(size_t(b.n_q));
    for (int64_t r = 0; r < b.n_q; ++r) s.kv_len[size_t(r)] = b.q_kv_len[r] - plan.skip_pages[size_t(r)] * int32_t(ps);
    cpu::attention_batch own = b;
    own.page_indptr = s.indptr.data();
    own.page_ids = s.ids.data();
    own.q_kv_len = s.kv_len.data();
    cpu::attention_paged(own, kv, o, lse, pool);

    // 2. Shared pages: each group as one sequence of many query rows; merged into step 1.
    for (const cascade_group& g : plan.groups) {
        const int64_t n = int64_t(g.rows.size());
        const size_t row_floats = size_t(n_head * hd);
        s.q.resize(size_t(n) * row_floats);
        s.o.resize(size_t(n) * row_floats);
        s.lse.resize(size_t(n * n_head));
        for (int64_t i = 0; i < n; ++i)
            std::memcpy(s.q.data() + size_t(i) * row_floats, b.q + size_t(g.rows[size_t(i)]) * row_floats, row_floats * sizeof(float));
        s.q_seq.assign(size_t(n), 0);
        s.kv_len.assign(size_t(n), int32_t(int64_t(g.shared_pages.size()) * ps));
        const int32_t indptr[2] = {0, int32_t(g.shared_pages.size())};
        cpu::attention_batch shared = b;
        shared.n_q = n;
        shared.q = s.q.data();
        shared.q_seq = s.q_seq.data();
        shared.q_kv_len = s.kv_len.data();
        shared.page_indptr = indptr;
        shared.page_ids = g.shared_pages.data();
        shared.seq_head_entry = nullptr;  // grouped rows read every shared page with every head
        cpu::attention_paged(shared, kv, s.o.data(), s.lse.data(), pool);
        for (int64_t i = 0; i < n; ++i) {
            const int64_t r = g.rows[size_t(i)];
            cpu::attention_merge(o + r * n_head * hd, lse + r * n_head, s.o.data() + i * n_head * hd, s.lse.data() + i * n_head, n_head, hd);
        }
    }
}

}  // namespace kvs
