// The prefix cache on tiny fake pages (page size 4, no model): exact pages reused, exact
// eviction order, pinned pages never evicted, salts separate tenants, and the accounting
// (every page free, cached or owned) holds after every operation of a random sequence.
#include <gtest/gtest.h>

#include <random>

#include "kv/kv_cache.h"
#include "kv/prefix_cache.h"

using namespace kvs;

namespace {

struct env {
    std::unique_ptr<kv_cache> kv;
    std::unique_ptr<prefix_cache> cache;
    explicit env(int32_t n_pages) {
        kv_config c;
        c.n_layer = 1;
        c.n_kv_head = 1;
        c.head_dim = 2;
        c.page_size = 4;
        c.n_pages = n_pages;
        kv = std::move(kv_cache::create(c).value());
        cache = std::make_unique<prefix_cache>(kv->pool(), 4);
    }
    // A sequence holding `tokens`: cached prefix attached, the rest in fresh pages; its full
    // pages registered. Returns the sequence id.
    int32_t run(const std::vector<int32_t>& tokens, const std::string& salt = "") {
        int32_t s = kv->seq_add();
        auto hit = cache->match(salt, tokens.data(), int64_t(tokens.size()), (int64_t(tokens.size()) - 1) / 4);
        kv->seq_attach(s, hit);
        EXPECT_TRUE(kv->seq_reserve(s, int64_t(tokens.size())));
        cache->insert(salt, tokens.data(), kv->seq_pages(s).data(), int64_t(tokens.size()) / 4);
        return s;
    }
    status check() const {
        std::vector<int32_t> tree;
        cache->collect_pages(tree);
        KVS_TRY(cache->check_integrity());
        return kv->check_integrity(tree);
    }
};

std::vector<int32_t> seq(int32_t start, int32_t n) {
    std::vector<int32_t> v;
    for (int32_t i = 0; i < n; ++i) v.push_back(start + i);
    return v;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

}  // namespace

TEST(PrefixCache, ReusesTheExactPagesOfTheLongestPrefix) {
    env e(16);
    auto sys = seq(100, 8);  // two full pages
    int32_t a = e.run(cat(sys, seq(1, 3)));  // pages 0, 1 (full, cached) + 2 (partial)
    EXPECT_EQ(e.kv->seq_pages(a), (std::vector<int32_t>{0, 1, 2}));
    EXPECT_EQ(e.cache->n_pages(), 2);
    int32_t b = e.run(cat(sys, seq(50, 5)));  // reuses 0, 1; new 3, 4
    EXPECT_EQ(e.kv->seq_pages(b), (std::vector<int32_t>{0, 1, 3, 4}));
    EXPECT_EQ(e.kv->pool().ref_count(0), 3);  // a, b and the tree
    // Only whole pages match, and never the last token: 8 tokens match 1 page, not 2.
    auto hit = e.cache->match("", sys.data(), 8, 7 / 4);
    EXPECT_EQ(hit, (std::vector<int32_t>{0}));
    // A different second page shares only the first.
    auto other = cat(seq(100, 4), seq(7, 8));
    EXPECT_EQ(e.cache->match("", other.data(), 12, 2), (std::vector<int32_t>{0}));
    EXPECT_TRUE(e.check()) << e.check().message();
}

TEST(PrefixCache, SaltsSeparateTenants) {
    env e(16);
    auto t = seq(100, 12);
    e.run(t, "tenant-a");
    EXPECT_EQ(e.cache->match("tenant-b", t.data(), 12, 2).size(), 0u);
    EXPECT_EQ(e.cache->match("", t.data(), 12, 2).size(), 0u);
    EXPECT_EQ(e.cache->match("tenant-a", t.data(), 12, 2).size(), 2u);
    EXPECT_TRUE(e.check());
}

TEST(PrefixCache, EvictsUnusedLeavesLeastRecentlyUsedFirstAndNeverPinnedOnes) {
    env e(8);
    int32_t a = e.run(seq(10, 8));  // pages 0, 1 -> chain 0 -> 1
    int32_t b = e.run(seq(20, 4));  // page 2
    int32_t c = e.run(seq(30, 4));  // page 3
    e.kv->seq_remove(a);
    e.kv->seq_remove(b);
    // c still runs: page 3 is pinned. Cached only: 0, 1, 2. Touch a's prefix so it is newer.
    auto t = seq(10, 8);
    e.cache->match("", t.data(), 8, 2);
    EXPECT_EQ(e.kv->pool().n_free(), 4);
    // Need 5 free: evict the least recently used leaf, page 2.
    EXPECT_EQ(e.cache->evict_until_free(5), 1);
    EXPECT_EQ(e.kv->pool().ref_count(2), 0);
    EXPECT_EQ(e.kv->pool().ref_count(1), 1);
    EXPECT_TRUE(e.check());
    // Need all: 1 (leaf) then 0 (which became a leaf) go; pinned 3 stays.
    EXPECT_EQ(e.cache->evict_until_free(8), 2);
    EXPECT_EQ(e.kv->pool().n_free(), 7);
    EXPECT_EQ(e.kv->pool().ref_count(3), 2);
    EXPECT_EQ(e.cache->n_pages(), 1);
    EXPECT_TRUE(e.check());
    e.kv->seq_remove(c);
    EXPECT_EQ(e.cache->n_cached_only(), 1);
    e.cache->clear();
    EXPECT_EQ(e.kv->pool().n_free(), 8);
    EXPECT_TRUE(e.check());
}

TEST(PrefixCache, InnerNodesAreNotEvictedBeforeTheirLeaves) {
    env e(8);
    int32_t a = e.run(seq(10, 12));  // chain 0 -> 1 -> 2
    e.kv->seq_remove(a);
    // Make the root-side page the least recently used: still only the leaf may go.
    EXPECT_EQ(e.cache->evict_until_free(6), 1);
    EXPECT_EQ(e.kv->pool().ref_count(2), 0);
    EXPECT_EQ(e.kv->pool().ref_count(0), 1);
    EXPECT_TRUE(e.check());
}

TEST(PrefixCache, RandomOperationsKeepTheAccounting) {
    env e(24);
    std::mt19937 rng(3);
    std::vector<int32_t> live;
    const std::vector<std::string> salts = {"", "x"};
    for (int step = 0; step < 3000; ++step) {
        const int op = int(rng() % 4);
        if (op == 0 && live.size() < 6) {
            // A prompt from a small alphabet so prefixes collide often.
            std::vector<int32_t> t(size_t(1 + rng() % 14));
            for (auto& x : t) x = int32_t(rng() % 2);
            const std::string& salt = salts[rng() % 2];
            int32_t s = e.kv->seq_add();
            auto hit = e.cache->match(salt, t.data(), int64_t(t.size()), (int64_t(t.size()) - 1) / 4);
            e.kv->seq_attach(s, hit);
            const int32_t need = kv_cache::pages_for(int64_t(t.size()), 4) - int32_t(hit.size());
            e.cache->evict_until_free(need);
            if (e.kv->seq_reserve(s, int64_t(t.size()))) {
                e.cache->insert(salt, t.data(), e.kv->seq_pages(s).data(), int64_t(t.size()) / 4);
                live.push_back(s);
            } else {
                e.kv->seq_remove(s);
            }
        } else if (op == 1 && !live.empty()) {
            size_t i = rng() % live.size();
            e.kv->seq_remove(live[i]);
            live.erase(live.begin() + long(i));
        } else if (op == 2) {
            e.cache->evict_until_free(int32_t(rng() % 25));
        } else {
            std::vector<int32_t> t(size_t(4 + rng() % 8));
            for (auto& x : t) x = int32_t(rng() % 2);
            auto hit = e.cache->match(salts[rng() % 2], t.data(), int64_t(t.size()), 3);
            for (int32_t p : hit) ASSERT_GE(e.kv->pool().ref_count(p), 1);
        }
        ASSERT_TRUE(e.check()) << "step " << step << ": " << e.check().message();
    }
    for (int32_t s : live) e.kv->seq_remove(s);
    e.cache->clear();
    EXPECT_EQ(e.kv->pool().n_free(), 24);
}
