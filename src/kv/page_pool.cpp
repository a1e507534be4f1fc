#include "kv/page_pool.h"

namespace kvs {

page_pool::page_pool(int32_t n_pages) : ref_(size_t(n_pages), 0) {
    free_.reserve(size_t(n_pages));
    // Hand out low ids first: page 0 is on top of the stack.
    for (int32_t p = n_pages - 1; p >= 0; --p) free_.push_back(p);
}

bool page_pool::allocate(int32_t n, std::vector<int32_t>& out) {
    if (!can_allocate(n)) return false;
    for (int32_t k = 0; k < n; ++k) {
        int32_t p = free_.back();
        free_.pop_back();
        ref_[size_t(p)] = 1;
        out.push_back(p);
    }
    return true;
}

void page_pool::ref(int32_t page) { ++ref_[size_t(page)]; }

void page_pool::unref(int32_t page) {
    if (--ref_[size_t(page)] == 0) free_.push_back(page);
}

status page_pool::check_integrity() const {
    std::vector<uint8_t> in_free(ref_.size(), 0);
    for (int32_t p : free_) {
        if (p < 0 || size_t(p) >= ref_.size()) return status::error(strfmt("free list holds invalid page %d", p));
        if (in_free[size_t(p)]) return status::error(strfmt("page %d is twice in the free list", p));
        in_free[size_t(p)] = 1;
    }
    for (size_t p = 0; p < ref_.size(); ++p) {
        if (ref_[p] < 0) return status::error(strfmt("page %zu has negative ref count %d", p, ref_[p]));
        if (in_free[p] && ref_[p] != 0) return status::error(strfmt("page %zu is free but has %d owners", p, ref_[p]));
        if (!in_free[p] && ref_[p] == 0) return status::error(strfmt("page %zu has no owner and is not free (leaked)", p));
    }
    return status::ok();
}

}  // namespace kvs
