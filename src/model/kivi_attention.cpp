#include "model/kivi_attention.h"

#include <algorithm>
#include <limits>

namespace kvs {

status plan_kivi(const cpu::attention_batch& b, const int32_t* row_seq, const int32_t* row_slot, const kv_cache& kv,
                 kivi_plan& out) {
    const int64_t ps = kv.config().page_size;
    const int32_t n_full = kv.config().n_pages;
    const int64_t n_entries = [&] {
        int64_t m = 0;
        for (int64_t r = 0; r < b.n_q; ++r) m = std::max<int64_t>(m, b.q_seq[r] + 1);
        return m;
    }();
    // Packed table pages each row reads, and per entry the fewest and most over its rows.
    std::vector<int64_t> k_row(size_t(b.n_q));
    std::vector<int64_t> k_min(size_t(n_entries), std::numeric_limits<int64_t>::max()), k_max(size_t(n_entries), 0);
    std::vector<int32_t> entry_seq(size_t(n_entries), -1);
    for (int64_t r = 0; r < b.n_q; ++r) {
        const int32_t e = b.q_seq[r], seq = row_seq[r];
        const int64_t n_table = b.page_indptr[e + 1] - b.page_indptr[e];
        const int64_t target = kv.kivi_packed_pages(row_slot[r]);  // logical pages read packed
        const int64_t pinned = kv.seq_n_pinned(seq), dropped = kv.seq_n_dropped(seq);
        int64_t k = target <= pinned ? target : pinned + std::max<int64_t>(0, target - pinned - dropped);
        k = std::min(k, n_table);
        k_row[size_t(r)] = k;
        k_min[size_t(e)] = std::min(k_min[size_t(e)], k);
        k_max[size_t(e)] = std::max(k_max[size_t(e)], k);
        entry_seq[size_t(e)] = seq;
    }
    out.any_packed = false;
    out.p_indptr.assign(1, 0);
    out.f_indptr.assign(1, 0);
    out.p_ids.clear();
    out.f_ids.clear();
    for (int64_t e = 0; e < n_entries; ++e) {
        const int32_t* ids = b.page_ids + b.page_indptr[e];
        const int64_t n_table = b.page_indptr[e + 1] - b.page_indptr[e];
        const int32_t seq = entry_seq[size_t(e)];
        if (seq < 0) k_min[size_t(e)] = k_max[size_t(e)] = 0;
        for (int64_t i = 0; i < k_max[size_t(e)]; ++i) {
            int32_t p = ids[i];
            if (!kv.pool().is_packed(p)) p = kv.kivi_twin(seq, size_t(i));
            if (p < 0) return status::error(strfmt("kivi: table page %lld of sequence %d is read packed but has no packed form", (long long)i, seq));
            out.p_ids.push_back(p - n_full);
        }
        for (int64_t i = k_min[size_t(e)]; i < n_table; ++i) {
            if (kv.pool().is_packed(ids[i]))
                return status::error(strfmt("kivi: table page %lld of sequence %d is read in full precision but is packed", (long long)i, seq));
            out.f_ids.push_back(ids[i]);
        }
        out.p_indptr.push_back(int32_t(out.p_ids.size()));
        out.f_indptr.push_back(int32_t(out.f_ids.size()));
    }
    out.p_len.resize(size_t(b.n_q));
    out.f_begin.resize(size_t(b.n_q));
    out.f_len.resize(size_t(b.n_q));
    for (int64_t r = 0; r < b.n_q; ++r) {
        const int64_t len = b.q_kv_len[r], begin = b.q_kv_begin ? std::min<int64_t>(b.q_kv_begin[r], len) : 0;
        const int64_t split = k_row[size_t(r)] * ps, base = k_min[size_t(b.q_seq[r])] * ps;
        out.p_len[size_t(r)] = int32_t(std::min(len, split));
        out.any_packed = out.any_packed || begin < out.p_len[size_t(r)];
        out.f_begin[size_t(r)] = int32_t(std::max(begin, split) - base);
        out.f_len[size_t(r)] = int32_t(std::max(len, split) - base);
    }
    return status::ok();
}

void kivi_attention(const cpu::attention_batch& b, const kivi_plan& plan, const kv_cache& kv, int64_t layer, float* o,
                    float* lse, kivi_scratch& s, thread_pool& pool) {
    cpu::attention_batch fb = b;
    fb.page_indptr = plan.f_indptr.data();
    fb.page_ids = plan.f_ids.data();
    fb.q_kv_begin = plan.f_begin.data();
    fb.q_kv_len = plan.f_len.data();
    fb.seq_head_entry = nullptr;
    cpu::attention_paged(fb, kv.view(layer), o, lse, pool);
    if (!plan.any_packed) return;
    const int64_t hd = kv.config().head_dim;
    s.o.resize(size_t(b.n_q * b.n_head * hd));
    s.lse.resize(size_t(b.n_q * b.n_head));
    cpu::attention_batch pb = b;
    pb.page_indptr = plan.p_indptr.data();
    pb.page_ids = plan.p_ids.data();
    pb.q_kv_len = plan.p_len.data();
    pb.seq_head_entry = nullptr;
    cpu::attention_paged(pb, kv.packed_view(layer), s.o.data(), s.lse.data(), pool);
    cpu::attention_merge(o, lse, s.o.data(), s.lse.data(), b.n_q * b.n_head, hd);
}

}  // namespace kvs
