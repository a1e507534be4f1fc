#include "kv/cascade.h"

#include <algorithm>
#include <map>

namespace kvs {

cascade_plan plan_cascade(int64_t n_rows, const int32_t* q_seq, const int32_t* q_kv_len, const int32_t* page_indptr,
                          const int32_t* page_ids, int64_t page_size, const cascade_options& opt,
                          const int32_t* q_kv_begin, const uint8_t* ungrouped) {
    cascade_plan plan;
    plan.skip_pages.assign(static_cast<size_t>(n_rows), 0);
    // Candidates: the only row of their sequence, with at least min_shared_pages full pages.
    std::map<int32_t, int32_t> rows_of_seq;
    for (int64_t r = 0; r < n_rows; ++r) ++rows_of_seq[q_seq[r]];
    // Rows are grouped by their first min_shared_pages page ids, then the group's common run
    // is extended as far as all of them agree.
    std::map<std::vector<int32_t>, std::vector<int32_t>> by_first_pages;
    for (int64_t r = 0; r < n_rows; ++r) {
        const int32_t s = q_seq[r];
        if (rows_of_seq[s] != 1 || (q_kv_begin && q_kv_begin[r] > 0) || (ungrouped && ungrouped[r])) continue;
        const int64_t full = std::min<int64_t>(q_kv_len[r] / page_size, page_indptr[s + 1] - page_indptr[s]);
        if (full < opt.min_shared_pages) continue;
        const int32_t* p = page_ids + page_indptr[s];
        by_first_pages[std::vector<int32_t>(p, p + opt.min_shared_pages)].push_back(int32_t(r));
    }
    for (auto& [first, rows] : by_first_pages) {
        if (int32_t(rows.size()) < opt.min_rows) continue;
        // Longest common run of page ids, within every row's full pages.
        const int32_t* base = page_ids + page_indptr[q_seq[rows[0]]];
        int64_t common = q_kv_len[rows[0]] / page_size;
        for (int32_t r : rows) {
            const int32_t* p = page_ids + page_indptr[q_seq[r]];
            const int64_t full = std::min<int64_t>(q_kv_len[r] / page_size, page_indptr[q_seq[r] + 1] - page_indptr[q_seq[r]]);
            int64_t k = 0;
            while (k < std::min(common, full) && p[k] == base[k]) ++k;
            common = k;
        }
        if (common < opt.min_shared_pages) continue;
        cascade_group g;
        g.rows = rows;
        g.shared_pages.assign(base, base + common);
        for (int32_t r : rows) plan.skip_pages[size_t(r)] = int32_t(common);
        plan.groups.push_back(std::move(g));
    }
    return plan;
}

}  // namespace kvs
