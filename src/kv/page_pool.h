// The page pool: ids of fixed-size KV pages with reference counts (PagedAttention).
//
// Two classes of pages may share the id space: ids [0, n_full) are full-precision pages (what
// every new token is written to), ids [n_full, n_pages) packed pages (a KIVI cache's pages
// quantized as they age; kv_cache.h). A pool without packed pages is the plain pool.
//
// Contract
//  - Every page is exactly one of: free (in its class's free list, ref 0) or owned (ref >= 1).
//  - `can_allocate(n)` has no side effects; `allocate(n, out)` either hands out n full pages
//    (ref 1 each) or changes nothing and returns false; *_packed likewise for packed pages.
//  - A page with ref > 1 is shared and must never be written: writers copy it first
//    (the caller does the copy; the pool only counts).
//  - Freed pages go back to the free list so that the page freed LAST is handed out FIRST;
//    callers free a sequence's pages tail-first so shared prefixes live longest.
//  - Not thread-safe: one owner (the scheduler thread) mutates it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace kvs {

class page_pool {
public:
    explicit page_pool(int32_t n_full, int32_t n_packed = 0);

    int32_t n_pages() const { return int32_t(ref_.size()); }  // both classes
    int32_t n_full() const { return n_full_; }
    int32_t n_packed() const { return n_pages() - n_full_; }
    bool is_packed(int32_t page) const { return page >= n_full_; }
    int32_t n_free() const { return int32_t(free_.size()); }  // full pages
    int32_t n_free_packed() const { return int32_t(free_packed_.size()); }
    int32_t n_used() const { return n_pages() - n_free() - n_free_packed(); }
    int32_t ref_count(int32_t page) const { return ref_[size_t(page)]; }

    bool can_allocate(int32_t n) const { return n >= 0 && n <= n_free(); }
    bool can_allocate_packed(int32_t n) const { return n >= 0 && n <= n_free_packed(); }
    // All-or-nothing: appends n page ids to `out` (ref 1) or returns false untouched.
    bool allocate(int32_t n, std::vector<int32_t>& out);
    bool allocate_packed(int32_t n, std::vector<int32_t>& out);
    void ref(int32_t page);    // one more owner
    void unref(int32_t page);  // one owner fewer; at 0 the page is free again

    // Checks: every page free xor referenced, no duplicates in the free list, refs >= 0.
    status check_integrity() const;

private:
    std::vector<int32_t> ref_;   // (n_pages) owners per page
    int32_t n_full_ = 0;
    std::vector<int32_t> free_;         // stack of free full page ids; back() is handed out next
    std::vector<int32_t> free_packed_;  // the same for packed pages
};

}  // namespace kvs
