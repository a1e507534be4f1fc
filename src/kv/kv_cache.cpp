#include "kv/kv_cache.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace kvs {

bool kv_type_from_name(std::string_view name, dtype* out) {
    dtype t;
    if (!dtype_from_name(name, &t) || !cpu::kv_page_layout::supported(t)) return false;
    *out = t;
    return true;
}

void kv_cache::free_deleter::operator()(uint8_t* p) const { std::free(p); }

kv_cache::kv_cache(const kv_config& config) : cfg_(config), pool_(config.n_pages), layout_(config.layout()) {
    k_layer_bytes_ = size_t(cfg_.n_pages) * layout_.k_page_bytes();
    v_layer_bytes_ = size_t(cfg_.n_pages) * layout_.v_page_bytes();
}

result<std::unique_ptr<kv_cache>> kv_cache::create(const kv_config& c) {
    if (c.n_layer <= 0 || c.n_kv_head <= 0 || c.head_dim <= 0)
        return status::error("kv cache: layers, KV heads and head size must be positive");
    if (c.page_size <= 0 || c.page_size > 4096)
        return status::error(strfmt("kv cache: page size %d is out of range (1..4096)", c.page_size));
    if (c.n_pages <= 0) return status::error("kv cache: the pool needs at least one page");
    if (!cpu::kv_page_layout::supported(c.type))
        return status::error(strfmt("kv cache: storage format %s is not supported (f32, f16, bf16)", dtype_name(c.type)));
    std::unique_ptr<kv_cache> kv(new kv_cache(c));
    // Zeroed (calloc: the OS hands out zero pages lazily), so never-written pad slots that a
    // kernel may load beside real ones hold finite values.
    const size_t nk = size_t(c.n_layer) * kv->k_layer_bytes_, nv = size_t(c.n_layer) * kv->v_layer_bytes_;
    kv->k_.reset(static_cast<uint8_t*>(std::calloc(nk, 1)));
    kv->v_.reset(static_cast<uint8_t*>(std::calloc(nv, 1)));
    if (!kv->k_ || !kv->v_)
        return status::error(strfmt("kv cache: cannot allocate %.1f MiB for %d pages", double(nk + nv) / 1048576.0, c.n_pages));
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
    const size_t kb = layout_.k_head_bytes(), vb = layout_.v_head_bytes();
    for (int64_t l = 0; l < cfg_.n_layer; ++l)
        for (int64_t h = 0; h < cfg_.n_kv_head; ++h) {
            std::memcpy(k_block(l, dst, h), k_block(l, src, h), kb);
            std::memcpy(v_block(l, dst, h), v_block(l, src, h), vb);
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
    cpu::kv_store_row(layout_, k_block(layer, page, 0), v_block(layer, page, 0), size_t(cfg_.n_pages) * layout_.k_head_bytes(),
                      size_t(cfg_.n_pages) * layout_.v_head_bytes(), slot % cfg_.page_size, k, v);
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
