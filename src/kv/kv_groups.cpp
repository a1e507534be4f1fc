#include "kv/kv_groups.h"

#include <algorithm>

namespace kvs {

result<std::unique_ptr<kv_groups>> kv_groups::create(std::vector<kv_group_desc> groups) {
    if (groups.empty()) return status::error("kv groups: a model declares at least one group");
    if (groups[0].window != 0) return status::error("kv groups: the primary group (0) must be growing");
    std::unique_ptr<kv_groups> g(new kv_groups());
    for (size_t i = 0; i < groups.size(); ++i) {
        if (i > 0 && groups[i].window <= 0)
            return status::error(strfmt("kv groups: group %zu (%s) must be a ring group (window > 0)", i, groups[i].name.c_str()));
        if (groups[i].window > 0 && groups[i].config.kivi_bits)
            return status::error(strfmt("kv groups: KIVI pages do not apply to the ring group '%s'", groups[i].name.c_str()));
        auto c = kv_cache::create(groups[i].config);
        if (!c) return c.error().with_context("KV group '" + groups[i].name + "'");
        g->caches_.push_back(c.value().get());
        g->owned_.push_back(std::move(c.value()));
    }
    g->descs_ = std::move(groups);
    return g;
}

std::unique_ptr<kv_groups> kv_groups::wrap(kv_cache& only, std::string name) {
    std::unique_ptr<kv_groups> g(new kv_groups());
    g->descs_.push_back({std::move(name), only.config(), 0});
    g->caches_.push_back(&only);
    return g;
}

kv_policy kv_groups::ring_policy(size_t g) const {
    kv_policy p;
    p.kind = kv_policy_kind::window;
    p.size = descs_[g].window;
    return p;
}

int32_t kv_groups::seq_add(const kv_policy& policy) {
    const int32_t seq = caches_[0]->seq_add();
    caches_[0]->seq_set_policy(seq, policy);
    for (size_t g = 1; g < caches_.size(); ++g) {
        const int32_t s = caches_[g]->seq_add();
        // Every add and remove goes through this set, so the groups hand out the same ids.
        if (s != seq) std::abort();
        caches_[g]->seq_set_policy(s, ring_policy(g));
    }
    return seq;
}

void kv_groups::seq_remove(int32_t seq) {
    for (kv_cache* c : caches_) c->seq_remove(seq);
}

int32_t kv_groups::seq_fork(int32_t src) {
    const int32_t seq = caches_[0]->seq_fork(src);
    for (size_t g = 1; g < caches_.size(); ++g)
        if (caches_[g]->seq_fork(src) != seq) std::abort();
    return seq;
}

bool kv_groups::ring_can_reserve(int32_t seq, int64_t n_slots) const {
    for (size_t g = 1; g < caches_.size(); ++g)
        if (!caches_[g]->can_reserve(seq, n_slots)) return false;
    return true;
}

int32_t kv_groups::ring_pages_to_reserve(int32_t seq, int64_t n_slots) const {
    int32_t n = 0;
    for (size_t g = 1; g < caches_.size(); ++g) n += caches_[g]->pages_to_reserve(seq, n_slots);
    return n;
}

bool kv_groups::seq_reserve(int32_t seq, int64_t n_slots) {
    for (kv_cache* c : caches_)
        if (!c->can_reserve(seq, n_slots)) return false;
    for (kv_cache* c : caches_) c->seq_reserve(seq, n_slots);
    return true;
}

bool kv_groups::seq_prepare_write(int32_t seq, int64_t begin, int64_t end) {
    for (kv_cache* c : caches_) {
        // A ring table holds only the window: the slots it dropped are not written again.
        const int64_t b = std::max(begin, int64_t(c->seq_n_dropped(seq)) * c->config().page_size);
        if (b < end && !c->seq_prepare_write(seq, b, end)) return false;
    }
    return true;
}

int32_t kv_groups::seq_trim(int32_t seq, int64_t n_computed) {
    int32_t n = 0;
    for (kv_cache* c : caches_) n += c->seq_trim(seq, n_computed);
    return n;
}

int32_t kv_groups::seq_rollback(int32_t seq, int64_t n_slots) {
    int32_t n = 0;
    for (kv_cache* c : caches_) n += c->seq_rollback(seq, n_slots);
    return n;
}

int32_t kv_groups::ring_page_bound(size_t g, int64_t n_chunk) const {
    return kv_cache::policy_page_bound(ring_policy(g), n_chunk, descs_[g].config.page_size);
}

int64_t kv_groups::seq_bytes_at(int64_t n_tokens) const {
    int64_t bytes = 0;
    for (size_t g = 0; g < caches_.size(); ++g) {
        const kv_cache& c = *caches_[g];
        const int32_t ps = c.config().page_size;
        const int64_t pages = g == 0 ? kv_cache::pages_for(n_tokens, ps)
                                     : std::min<int64_t>(kv_cache::pages_for(n_tokens, ps), ring_page_bound(g, 1));
        bytes += pages * int64_t(c.config().page_bytes());
    }
    return bytes;
}

status kv_groups::check_integrity(const std::vector<int32_t>& other_owners, int64_t n_chunk) const {
    KVS_TRY(caches_[0]->check_integrity(other_owners));
    for (size_t g = 1; g < caches_.size(); ++g) {
        const kv_cache& c = *caches_[g];
        if (status s = c.check_integrity(); !s) return s.with_context("KV group '" + descs_[g].name + "'");
        const int32_t bound = ring_page_bound(g, n_chunk);
        const int32_t limit = std::max(c.seq_id_limit(), caches_[0]->seq_id_limit());
        for (int32_t seq = 0; seq < limit; ++seq) {
            const bool here = c.seq_exists(seq), there = caches_[0]->seq_exists(seq);
            if (!here && !there) continue;
            if (here != there)
                return status::error(strfmt("KV group '%s': sequence %d exists in one group and not the other", descs_[g].name.c_str(), seq));
            if (c.seq_policy(seq) != ring_policy(g))
                return status::error(strfmt("KV group '%s': sequence %d runs another policy than the ring's", descs_[g].name.c_str(), seq));
            if (int32_t(c.seq_pages(seq).size()) > bound)
                return status::error(strfmt("KV group '%s': sequence %d holds %zu pages, more than the ring's bound %d",
                                            descs_[g].name.c_str(), seq, c.seq_pages(seq).size(), bound));
        }
    }
    return status::ok();
}

}  // namespace kvs
