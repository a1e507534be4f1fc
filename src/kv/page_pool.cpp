#include "kv/page_pool.h"

namespace kvs {

page_pool::page_pool(int32_t n_full, int32_t n_packed) : ref_(size_t(n_full) + size_t(n_packed), 0), n_full_(n_full) {
    free_.reserve(size_t(n_full));
    free_packed_.reserve(size_t(n_packed));
    // Hand out low ids first: the lowest id is on top of each stack.
    for (int32_t p = n_full - 1; p >= 0; --p) free_.push_back(p);
    for (int32_t p = n_full + n_packed - 1; p >= n_full; --p) free_packed_.push_back(p);
}

namespace {

bool take(std::vector<int32_t>& free_list, std::vector<int32_t>& ref, int32_t n, std::vector<int32_t>& out) {
    if (n < 0 || n > int32_t(free_list.size())) return false;
    for (int32_t k = 0; k < n; ++k) {
        const int32_t p = free_list.back();
        free_list.pop_back();
        ref[size_t(p)] = 1;
        out.push_back(p);
    }
    return true;
}

}  // namespace

bool page_pool::allocate(int32_t n, std::vector<int32_t>& out) { return take(free_, ref_, n, out); }
bool page_pool::allocate_packed(int32_t n, std::vector<int32_t>& out) { return take(free_packed_, ref_, n, out); }

void page_pool::ref(int32_t page) { ++ref_[size_t(page)]; }

void page_pool::unref(int32_t page) {
    if (--ref_[size_t(page)] == 0) (is_packed(page) ? free_packed_ : free_).push_back(page);
}

status page_pool::check_integrity() const {
    std::vector<uint8_t> in_free(ref_.size(), 0);
    for (int32_t p : free_)
        if (p < 0 || p >= n_full_) return status::error(strfmt("free list holds invalid page %d", p));
    for (int32_t p : free_packed_)
        if (p < n_full_ || size_t(p) >= ref_.size()) return status::error(strfmt("packed free list holds invalid page %d", p));
    std::vector<int32_t> all(free_);
    all.insert(all.end(), free_packed_.begin(), free_packed_.end());
    for (int32_t p : all) {
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
