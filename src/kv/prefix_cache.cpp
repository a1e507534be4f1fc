#include "kv/prefix_cache.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

namespace kvs {

prefix_cache::eviction_policy prefix_cache::lru() {
    return [](const node& a, const node& b) { return a.last_used < b.last_used; };
}

prefix_cache::prefix_cache(page_pool& pool, int32_t page_size, eviction_policy policy)
    : pool_(pool), page_size_(page_size), policy_(std::move(policy)) {}

prefix_cache::~prefix_cache() = default;

uint64_t prefix_cache::hash_page(const int32_t* tokens) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the ids
    for (int32_t i = 0; i < page_size_; ++i) {
        h ^= uint64_t(uint32_t(tokens[i]));
        h *= 1099511628211ull;
    }
    return h;
}

prefix_cache::node* prefix_cache::root_for(const std::string& salt, bool create) {
    auto it = roots_.find(salt);
    if (it != roots_.end()) return it->second.get();
    if (!create) return nullptr;
    auto& r = roots_[salt];
    r = std::make_unique<node>();
    return r.get();
}

prefix_cache::node* prefix_cache::find_child(node* n, const int32_t* tokens) const {
    auto range = n->children.equal_range(hash_page(tokens));
    for (auto it = range.first; it != range.second; ++it)
        if (std::memcmp(it->second->tokens.data(), tokens, size_t(page_size_) * sizeof(int32_t)) == 0) return it->second.get();
    return nullptr;
}

std::vector<int32_t> prefix_cache::match(const std::string& salt, const int32_t* tokens, int64_t n_tokens, int64_t max_pages) {
    std::vector<int32_t> pages;
    node* n = root_for(salt, false);
    if (!n) return pages;
    const uint64_t now = ++tick_;
    const int64_t limit = std::min(max_pages, n_tokens / page_size_);
    for (int64_t p = 0; p < limit; ++p) {
        node* c = find_child(n, tokens + p * page_size_);
        if (!c) break;
        c->last_used = now;
        pages.push_back(c->page);
        n = c;
    }
    return pages;
}

int64_t prefix_cache::insert(const std::string& salt, const int32_t* tokens, const int32_t* pages, int64_t n_pages) {
    node* n = root_for(salt, true);
    const uint64_t now = ++tick_;
    int64_t added = 0;
    for (int64_t p = 0; p < n_pages; ++p) {
        const int32_t* t = tokens + p * page_size_;
        node* c = find_child(n, t);
        if (!c) {
            auto fresh = std::make_unique<node>();
            fresh->parent = n;
            fresh->tokens.assign(t, t + page_size_);
            fresh->page = pages[p];
            pool_.ref(pages[p]);
            c = fresh.get();
            n->children.emplace(hash_page(t), std::move(fresh));
            ++n_nodes_;
            ++added;
        }
        c->last_used = now;
        n = c;
    }
    metrics_.inserted_pages += added;
    return added;
}

int64_t prefix_cache::evict_until_free(int32_t n_free, int32_t n_free_packed) {
    int64_t evicted = 0;
    while (pool_.n_free() < n_free || pool_.n_free_packed() < n_free_packed) {
        // Evictable: leaves whose page only the tree holds.
        std::vector<node*> leaves;
        std::vector<node*> stack;
        for (auto& [salt, r] : roots_) stack.push_back(r.get());
        while (!stack.empty()) {
            node* n = stack.back();
            stack.pop_back();
            for (auto& [h, c] : n->children) {
                if (c->children.empty()) {
                    if (pool_.ref_count(c->page) == 1) leaves.push_back(c.get());
                } else {
                    stack.push_back(c.get());
                }
            }
        }
        if (leaves.empty()) break;
        std::sort(leaves.begin(), leaves.end(), [&](const node* a, const node* b) { return policy_(*a, *b); });
        const int64_t want = std::max<int64_t>({1, int64_t(n_free) - pool_.n_free(), int64_t(n_free_packed) - pool_.n_free_packed()});
        for (size_t i = 0; i < leaves.size() && int64_t(i) < want; ++i) {
            node* leaf = leaves[i];
            node* parent = leaf->parent;
            pool_.unref(leaf->page);
            auto range = parent->children.equal_range(hash_page(leaf->tokens.data()));
            for (auto it = range.first; it != range.second; ++it)
                if (it->second.get() == leaf) {
                    parent->children.erase(it);
                    break;
                }
            --n_nodes_;
            ++evicted;
        }
    }
    metrics_.evicted_pages += evicted;
    return evicted;
}

int64_t prefix_cache::n_cached_only() const {
    int64_t n = 0;
    std::vector<const node*> stack;
    for (auto& [salt, r] : roots_) stack.push_back(r.get());
    while (!stack.empty()) {
        const node* x = stack.back();
        stack.pop_back();
        for (auto& [h, c] : x->children) {
            n += pool_.ref_count(c->page) == 1;
            stack.push_back(c.get());
        }
    }
    return n;
}

void prefix_cache::collect_pages(std::vector<int32_t>& out) const {
    std::vector<const node*> stack;
    for (auto& [salt, r] : roots_) stack.push_back(r.get());
    while (!stack.empty()) {
        const node* x = stack.back();
        stack.pop_back();
        for (auto& [h, c] : x->children) {
            out.push_back(c->page);
            stack.push_back(c.get());
        }
    }
}

status prefix_cache::check_integrity() const {
    std::unordered_set<int32_t> seen;
    int64_t count = 0;
    std::vector<const node*> stack;
    for (auto& [salt, r] : roots_) {
        if (r->parent || r->page != -1) return status::error("prefix cache: a root holds a page");
        stack.push_back(r.get());
    }
    while (!stack.empty()) {
        const node* x = stack.back();
        stack.pop_back();
        for (auto& [h, c] : x->children) {
            if (c->parent != x) return status::error("prefix cache: a child does not point to its parent");
            if (int32_t(c->tokens.size()) != page_size_) return status::error("prefix cache: a node is not a full page");
            if (h != hash_page(c->tokens.data())) return status::error("prefix cache: a node is filed under the wrong hash");
            if (c->page < 0 || c->page >= pool_.n_pages()) return status::error(strfmt("prefix cache: invalid page %d", c->page));
            if (!seen.insert(c->page).second) return status::error(strfmt("prefix cache: page %d is in the tree twice", c->page));
            if (pool_.ref_count(c->page) < 1) return status::error(strfmt("prefix cache: page %d is in the tree but free", c->page));
            ++count;
            stack.push_back(c.get());
        }
    }
    if (count != n_nodes_) return status::error("prefix cache: node count is off");
    return status::ok();
}

void prefix_cache::clear() {
    // Evict everything evictable; pinned pages (and their ancestors) stay.
    evict_until_free(pool_.n_full(), pool_.n_packed());
}

}  // namespace kvs
