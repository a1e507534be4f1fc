#include "kv/kv_cache.h"

#include <cstring>
#include <new>

namespace kvs {

kv_cache::kv_cache(const kv_config& config) : cfg_(config), pool_(config.n_pages) {
    page_elems_ = size_t(cfg_.n_kv_head * cfg_.page_size * cfg_.head_dim);
    layer_elems_ = size_t(cfg_.n_pages) * page_elems_;
}

result<std::unique_ptr<kv_cache>> kv_cache::create(const kv_config& c) {
    if (c.n_layer <= 0 || c.n_kv_head <= 0 || c.head_dim <= 0)
        return status::error("kv cache: layers, KV heads and head size must be positive");
    if (c.page_size <= 0 || c.page_size > 4096)
        return status::error(strfmt("kv cache: page size %d is out of range (1..4096)", c.page_size));
    if (c.n_pages <= 0) return status::error("kv cache: the pool needs at least one page");
    std::unique_ptr<kv_cache> kv(new kv_cache(c));
    size_t n = size_t(c.n_layer) * kv->layer_elems_;
    kv->k_.reset(new (std::nothrow) float[n]);
    kv->v_.reset(new (std::nothrow) float[n]);
    if (!kv->k_ || !kv->v_)
        return status::error(strfmt("kv cache: cannot allocate %.1f MiB for %d pages", 2.0 * double(n) * 4 / 1048576.0, c.n_pages));
    return kv;
}

int32_t kv_cache::seq_add() {
    for (size_t s = 0; s < seqs_.size(); ++s)
        if (!seqs_[s].live) {
            seqs_[s].live = true;
            return int32_t(s);
        }
    seqs_.push_back({true, {}});
    return int32_t(seqs_.size() - 1);
}

bool kv_cache::seq_exists(int32_t seq) const {
    return seq >= 0 && size_t(seq) < seqs_.size() && seqs_[size_t(seq)].live;
}

void kv_cache::seq_remove(int32_t seq) {
    seq_state& s = seqs_[size_t(seq)];
    for (auto it = s.pages.rbegin(); it != s.pages.rend(); ++it) pool_.unref(*it);
    s.pages.clear();
    s.live = false;
}

bool kv_cache::can_reserve(int32_t seq, int64_t n_slots) const {
    int32_t need = pages_for(n_slots, cfg_.page_size) - int32_t(seq_pages(seq).size());
    return need <= 0 || pool_.can_allocate(need);
}

bool kv_cache::seq_reserve(int32_t seq, int64_t n_slots) {
    seq_state& s = seqs_[size_t(seq)];
    int32_t need = pages_for(n_slots, cfg_.page_size) - int32_t(s.pages.size());
    if (need <= 0) return true;
    return pool_.allocate(need, s.pages);
}

void kv_cache::copy_page(int32_t dst, int32_t src) {
    for (int64_t l = 0; l < cfg_.n_layer; ++l) {
        std::memcpy(k_layer(l) + size_t(dst) * page_elems_, k_layer(l) + size_t(src) * page_elems_, page_elems_ * sizeof(float));
        std::memcpy(v_layer(l) + size_t(dst) * page_elems_, v_layer(l) + size_t(src) * page_elems_, page_elems_ * sizeof(float));
    }
}

bool kv_cache::seq_prepare_write(int32_t seq, int64_t begin, int64_t end) {
    seq_state& s = seqs_[size_t(seq)];
    if (end <= begin) return true;
    int64_t first = begin / cfg_.page_size, last = (end - 1) / cfg_.page_size;
    if (last >= int64_t(s.pages.size())) return false;
    int32_t n_shared = 0;
    for (int64_t p = first; p <= last; ++p) n_shared += pool_.ref_count(s.pages[size_t(p)]) > 1;
    if (!pool_.can_allocate(n_shared)) return false;
    for (int64_t p = first; p <= last; ++p) {
        int32_t old = s.pages[size_t(p)];
        if (pool_.ref_count(old) <= 1) continue;
        std::vector<int32_t> fresh;
        pool_.allocate(1, fresh);
        copy_page(fresh[0], old);
        pool_.unref(old);
        s.pages[size_t(p)] = fresh[0];
    }
    return true;
}

int32_t kv_cache::seq_fork(int32_t src) {
    int32_t dst = seq_add();
    seqs_[size_t(dst)].pages = seqs_[size_t(src)].pages;
    for (int32_t p : seqs_[size_t(dst)].pages) pool_.ref(p);
    return dst;
}

void kv_cache::seq_attach(int32_t seq, const std::vector<int32_t>& pages) {
    seq_state& s = seqs_[size_t(seq)];
    for (int32_t p : pages) {
        pool_.ref(p);
        s.pages.push_back(p);
    }
}

void kv_cache::write(int64_t layer, int32_t seq, int64_t slot, const float* k, const float* v) {
    const int32_t page = seqs_[size_t(seq)].pages[size_t(slot / cfg_.page_size)];
    const int64_t row = slot % cfg_.page_size;
    const int64_t hd = cfg_.head_dim;
    float* kp = k_layer(layer) + size_t(page) * page_elems_;
    float* vp = v_layer(layer) + size_t(page) * page_elems_;
    for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
        std::memcpy(kp + size_t((h * cfg_.page_size + row) * hd), k + h * hd, size_t(hd) * sizeof(float));
        std::memcpy(vp + size_t((h * cfg_.page_size + row) * hd), v + h * hd, size_t(hd) * sizeof(float));
    }
}

status kv_cache::check_integrity(const std::vector<int32_t>& other_owners) const {
    KVS_TRY(pool_.check_integrity());
    std::vector<int32_t> owners(static_cast<size_t>(cfg_.n_pages), 0);
    for (int32_t p : other_owners) {
        if (p < 0 || p >= cfg_.n_pages) return status::error(strfmt("invalid page %d held outside the tables", p));
        ++owners[size_t(p)];
    }
    for (size_t s = 0; s < seqs_.size(); ++s) {
        if (!seqs_[s].live && !seqs_[s].pages.empty())
            return status::error(strfmt("removed sequence %zu still holds pages", s));
        for (int32_t p : seqs_[s].pages) {
            if (p < 0 || p >= cfg_.n_pages) return status::error(strfmt("sequence %zu holds invalid page %d", s, p));
            ++owners[size_t(p)];
        }
    }
    for (int32_t p = 0; p < cfg_.n_pages; ++p)
        if (owners[size_t(p)] != pool_.ref_count(p))
            return status::error(strfmt("page %d: ref count %d but %d owners hold it", p, pool_.ref_count(p), owners[size_t(p)]));
    return status::ok();
}

}  // namespace kvs
