// Cascade planning (FlashInfer's cascade inference): when several decode rows belong to
// sequences whose page tables start with the same pages (a shared prefix: prefix-cache hits,
// n > 1 forks), attention over those pages is computed once for all of their queries — one
// matrix-matrix pass over the shared KV instead of one matrix-vector pass per sequence — and
// merged with each row's attention over its own remaining pages through their LSE states.
//
// The planner only reads page tables (CSR as handed to the attention kernel); it decides per
// forward pass, and the plan holds for every layer of the KV group (page ids are shared by all
// layers). Contract: rows grouped are the only row of their sequence in the batch, and every
// shared page lies entirely below the row's KV length.
#pragma once

#include <cstdint>
#include <vector>

namespace kvs {

struct cascade_group {
    std::vector<int32_t> rows;          // batch rows whose attention shares the prefix
    std::vector<int32_t> shared_pages;  // leading page ids common to all of them
};

struct cascade_options {
    int32_t min_rows = 2;          // a group needs at least this many rows
    int32_t min_shared_pages = 4;  // and at least this many shared pages
};

struct cascade_plan {
    std::vector<cascade_group> groups;
    std::vector<int32_t> skip_pages;  // (n_rows) shared pages a row's own pass skips (0 if ungrouped)
    bool empty() const { return groups.empty(); }
};

// q_seq/q_kv_len: (n_rows); page_indptr/page_ids: the batch's CSR; page_size in tokens.
// q_kv_begin (n_rows, or null): rows that start past slot 0 (a sliding window) are never
// grouped — they do not read the shared prefix. ungrouped (n_rows, or null): rows marked
// non-zero are never grouped either (Quest rows in the layers where they read per-head lists).
cascade_plan plan_cascade(int64_t n_rows, const int32_t* q_seq, const int32_t* q_kv_len, const int32_t* page_indptr,
                          const int32_t* page_ids, int64_t page_size, const cascade_options& options = {},
                          const int32_t* q_kv_begin = nullptr, const uint8_t* ungrouped = nullptr);

}  // namespace kvs
