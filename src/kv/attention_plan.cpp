#include "kv/attention_plan.h"

#include <algorithm>

namespace kvs {

status plan_attention(int64_t n, const int32_t* seq_ids, const int32_t* slots, const kv_cache& kv, attention_plan& p,
                      const uint8_t* prompt_rows) {
    if (p.seq_index.empty()) p.seq_index.assign(64, -1);
    p.page_indptr.assign(1, 0);
    p.page_ids.clear();
    p.q_seq.resize(size_t(n));
    p.q_kv_begin.resize(size_t(n));
    p.q_kv_len.resize(size_t(n));
    p.any_begin = false;
    p.sink_rows.clear();
    p.sink_pos.clear();
    p.sink_len.clear();
    p.sink_q_seq.clear();
    p.quest_rows.clear();
    p.quest_pages.clear();
    p.h2o_entries.clear();
    p.h2o_row_indptr.assign(1, 0);
    p.h2o_rows.clear();
    p.h2o_seqs.clear();
    p.h2o_filled.clear();
    status st = status::ok();
    for (int64_t i = 0; i < n; ++i) {
        const int32_t s = seq_ids[i];
        const int64_t slot = slots[i];
        if (!kv.seq_exists(s) || !kv.seq_holds(s, slot)) {
            st = status::error(strfmt("batch row %lld: slot %lld of sequence %d is not held", (long long)i, (long long)slot, s));
            break;
        }
        if (size_t(s) >= p.seq_index.size()) p.seq_index.resize(size_t(s) + 1, -1);
        if (p.seq_index[size_t(s)] < 0) {
            p.seq_index[size_t(s)] = int32_t(p.page_indptr.size() - 1);
            const auto& pages = kv.seq_pages(s);
            p.page_ids.insert(p.page_ids.end(), pages.begin(), pages.end());
            p.page_indptr.push_back(int32_t(p.page_ids.size()));
        }
        const int32_t entry = p.seq_index[size_t(s)];
        p.q_seq[size_t(i)] = entry;
        p.q_kv_len[size_t(i)] = int32_t(kv.table_slot(s, slot) + 1);
        p.q_kv_begin[size_t(i)] = 0;
        const kv_policy& pol = kv.seq_policy(s);
        if (!pol.slides()) continue;
        const int64_t first = slot - pol.size + 1;  // the window's first logical slot
        const int64_t n_sinks = pol.kind == kv_policy_kind::streaming ? pol.sinks : 0;
        if (first <= n_sinks) continue;  // nothing has left the cache yet: all of [0, slot]
        if (!kv.seq_holds(s, first)) {
            st = status::error(strfmt("batch row %lld: the window of slot %lld of sequence %d starts at a dropped slot",
                                      (long long)i, (long long)slot, s));
            break;
        }
        p.q_kv_begin[size_t(i)] = int32_t(kv.table_slot(s, first));
        p.any_begin = true;
        if (n_sinks > 0) {
            p.sink_rows.push_back(int32_t(i));
            p.sink_pos.push_back(int32_t(n_sinks + pol.size - 1));
            p.sink_len.push_back(int32_t(n_sinks));
            p.sink_q_seq.push_back(entry);
        }
    }
    for (int64_t i = 0; i < n; ++i)
        if (size_t(seq_ids[i]) < p.seq_index.size()) p.seq_index[size_t(seq_ids[i])] = -1;
    if (!st) return st;
    // H2O: rows grouped by sequence entry.
    for (int64_t i = 0; i < n; ++i) {
        if (kv.seq_policy(seq_ids[i]).kind != kv_policy_kind::h2o) continue;
        const int32_t entry = p.q_seq[size_t(i)];
        size_t e = 0;
        while (e < p.h2o_entries.size() && p.h2o_entries[e] != entry) ++e;
        if (e == p.h2o_entries.size()) {
            p.h2o_entries.push_back(entry);
            p.h2o_seqs.push_back(seq_ids[i]);
            p.h2o_filled.push_back(0);
        }
        p.h2o_filled[e] = std::max<int64_t>(p.h2o_filled[e], int64_t(slots[i]) + 1);
    }
    if (!p.h2o_entries.empty()) {
        p.h2o_row_indptr.assign(p.h2o_entries.size() + 1, 0);
        p.h2o_rows.resize(0);
        for (size_t e = 0; e < p.h2o_entries.size(); ++e) {
            for (int64_t i = 0; i < n; ++i)
                if (p.q_seq[size_t(i)] == p.h2o_entries[e]) p.h2o_rows.push_back(int32_t(i));
            p.h2o_row_indptr[e + 1] = int32_t(p.h2o_rows.size());
        }
    }
    // Quest: decode rows (the only row of their sequence here, not a prompt token) that span more
    // pages than the budget.
    const int32_t ps = kv.config().page_size;
    p.rows_of_entry.assign(p.page_indptr.size() - 1, 0);
    for (int64_t i = 0; i < n; ++i) ++p.rows_of_entry[size_t(p.q_seq[size_t(i)])];
    for (int64_t i = 0; i < n; ++i) {
        const kv_policy& pol = kv.seq_policy(seq_ids[i]);
        if (pol.kind != kv_policy_kind::quest || p.rows_of_entry[size_t(p.q_seq[size_t(i)])] != 1) continue;
        if (prompt_rows && prompt_rows[i]) continue;  // prefill stays dense
        const int32_t budget_pages = int32_t(std::max<int64_t>(1, pol.budget / ps));
        if (kv_cache::pages_for(p.q_kv_len[size_t(i)], ps) <= budget_pages) continue;  // everything fits: dense
        p.quest_rows.push_back(int32_t(i));
        p.quest_pages.push_back(budget_pages);
    }
    return st;
}

}  // namespace kvs
