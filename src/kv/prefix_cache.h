// The prefix cache (RadixAttention at page granularity): a tree over token ids in which each
// edge is one full page of `page_size` tokens and each node holds the KV page computed for
// that prefix. A request reuses the pages of the longest cached prefix and computes only the
// rest; finished (and preempted) sequences leave their full pages in the tree.
//
// Ownership: the tree holds one pool reference on every page it contains. A page whose only
// reference is the tree's is "cached": it may be evicted (leaves first, least recently used
// first) when the pool needs pages. A page that some sequence also holds (ref > 1) is pinned:
// it is never evicted, and neither are its ancestors (only leaves are evicted).
// Every page is therefore exactly one of: free, cached (tree only), or owned by sequences
// (and possibly also in the tree).
//
// Namespaces: a request's `salt` (e.g. a tenant id) selects a separate tree root, so tenants
// never share pages. The eviction order is a replaceable policy (eviction_policy); LRU is the
// default.
//
// Contract: not thread-safe; the scheduler thread owns it, together with the page pool.
// Only full pages enter the tree, and full pages are never written again (slots below a
// sequence's computed count are immutable), so sharing them needs no copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "kv/page_pool.h"

namespace kvs {

struct prefix_cache_metrics {
    int64_t queried_tokens = 0;  // prompt tokens looked up
    int64_t hit_tokens = 0;      // of which found in the cache
    int64_t inserted_pages = 0;
    int64_t evicted_pages = 0;
};

class prefix_cache {
public:
    struct node;

    // Decides which evictable leaf goes first: returns true if `a` should be evicted before `b`.
    using eviction_policy = std::function<bool(const node& a, const node& b)>;
    static eviction_policy lru();

    prefix_cache(page_pool& pool, int32_t page_size, eviction_policy policy = lru());
    ~prefix_cache();
    prefix_cache(const prefix_cache&) = delete;
    prefix_cache& operator=(const prefix_cache&) = delete;

    // The pages of the longest cached prefix of tokens[0, n_tokens), whole pages only, at most
    // max_pages. Marks them used now (for LRU). Does not take references: the caller attaches
    // the pages to a sequence (which refs them) before anything can be evicted.
    std::vector<int32_t> match(const std::string& salt, const int32_t* tokens, int64_t n_tokens, int64_t max_pages);
    // Registers the first n_pages full pages of a sequence (tokens and the page ids holding
    // them). Pages already cached for the same prefix stay as they are (the sequence's copy
    // stays private); new ones are added with a tree reference. Returns pages added.
    int64_t insert(const std::string& salt, const int32_t* tokens, const int32_t* pages, int64_t n_pages);
    // Evicts cached leaves until the pool has n_free free full pages and n_free_packed free
    // packed ones, or nothing is evictable. Returns pages evicted.
    int64_t evict_until_free(int32_t n_free, int32_t n_free_packed = 0);
    // Pages only the tree holds (evictable now or after their descendants).
    int64_t n_cached_only() const;
    int64_t n_pages() const { return n_nodes_; }
    const prefix_cache_metrics& metrics() const { return metrics_; }
    void count_query(int64_t queried, int64_t hit) {
        metrics_.queried_tokens += queried;
        metrics_.hit_tokens += hit;
    }
    // Every page in the tree, once (for integrity checks of the pool).
    void collect_pages(std::vector<int32_t>& out) const;
    // Tree shape: parents and children consistent, each node a full page, no page twice.
    status check_integrity() const;
    // Drops every unpinned page (tests, shutdown).
    void clear();

    struct node {
        node* parent = nullptr;
        std::vector<int32_t> tokens;  // (page_size) the token ids of this page
        int32_t page = -1;            // KV page holding them
        uint64_t last_used = 0;       // tick of the last match or insert through this node
        std::unordered_multimap<uint64_t, std::unique_ptr<node>> children;  // by hash of tokens
    };

private:
    node* root_for(const std::string& salt, bool create);
    node* find_child(node* n, const int32_t* tokens) const;
    uint64_t hash_page(const int32_t* tokens) const;

    page_pool& pool_;
    int32_t page_size_;
    eviction_policy policy_;
    std::unordered_map<std::string, std::unique_ptr<node>> roots_;  // one tree per salt
    uint64_t tick_ = 0;
    int64_t n_nodes_ = 0;
    prefix_cache_metrics metrics_;
};

}  // namespace kvs
