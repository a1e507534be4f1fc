// A model's KV groups (kv-design.md, "KV groups"): sets of layers that store KV the same way,
// each with its own page pool and one page table per sequence. A Llama-family model has one
// group (every layer, the request's policy). YOCO has two: the *global* group (one layer's K/V,
// growing, read by every cross-decoder layer) and the *self* group (the self-decoder's layers,
// a ring of W tokens: every sequence runs the window policy there whatever it asked for).
//
// Group 0 is the primary group: it is growing, it carries the request's KV policy, and the
// prefix cache, the cascade planner and admission by context length work on it. Groups 1.. are
// ring groups whose pages per sequence are bounded (kv_cache::policy_page_bound), sized so that
// every running sequence fits: they are checked at admission, never the reason to preempt.
//
// Sequences are added, forked and removed in every group at once, so a sequence has the same id
// in every group; logical slots are the same too (slot = token index), each group keeping only
// the slots its policy reads.
//
// Contract
//  - Single owner, like kv_cache. The groups may be owned (create) or borrowed (one cache the
//    caller owns, wrap): the caches must outlive the set.
//  - seq_reserve is all-or-nothing over the groups. seq_prepare_write may have made some
//    pages exclusive when it fails (copies only; no content changes).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kv/kv_cache.h"

namespace kvs {

struct kv_group_desc {
    std::string name;      // "all" (Llama), "global", "self" (YOCO)
    kv_config config;      // geometry of the group's layers (n_layer = layers served), format, pages
    int64_t window = 0;    // ring group: every sequence keeps the W newest tokens (window policy); 0 = growing
};

class kv_groups {
public:
    // Creates one cache per group; groups 1.. must be ring groups.
    static result<std::unique_ptr<kv_groups>> create(std::vector<kv_group_desc> groups);
    // One group over a cache the caller owns (Llama family: tests, tools that build their cache).
    static std::unique_ptr<kv_groups> wrap(kv_cache& only, std::string name = "all");
    kv_groups(const kv_groups&) = delete;
    kv_groups& operator=(const kv_groups&) = delete;

    size_t size() const { return caches_.size(); }
    kv_cache& group(size_t g) { return *caches_[g]; }
    const kv_cache& group(size_t g) const { return *caches_[g]; }
    kv_cache& primary() { return *caches_[0]; }
    const kv_cache& primary() const { return *caches_[0]; }
    const kv_group_desc& desc(size_t g) const { return descs_[g]; }
    // The policy every sequence runs in ring group g (window:size=W).
    kv_policy ring_policy(size_t g) const;

    // Sequences, in every group. `policy` applies to the primary group.
    int32_t seq_add(const kv_policy& policy);
    void seq_remove(int32_t seq);
    int32_t seq_fork(int32_t src);
    // The ring groups can reserve logical slots [0, n_slots) for `seq` (the primary group is
    // the caller's to check, with its eviction and preemption).
    bool ring_can_reserve(int32_t seq, int64_t n_slots) const;
    // Pages the ring groups would take (summed; for error messages and metrics).
    int32_t ring_pages_to_reserve(int32_t seq, int64_t n_slots) const;
    bool seq_reserve(int32_t seq, int64_t n_slots);
    bool seq_prepare_write(int32_t seq, int64_t begin, int64_t end);
    // Drops the pages no later query reads (sliding tables, ring groups). Returns pages dropped.
    int32_t seq_trim(int32_t seq, int64_t n_computed);
    int32_t seq_rollback(int32_t seq, int64_t n_slots);

    // Pages a sequence holds at most in ring group g while computing chunks of n_chunk tokens.
    int32_t ring_page_bound(size_t g, int64_t n_chunk) const;
    // Bytes of K/V a sequence of n tokens holds over all groups (ring groups: at most W slots
    // of pages, rounded to pages as they are held between decode steps).
    int64_t seq_bytes_at(int64_t n_tokens) const;
    // Bytes of one token in the growing group (what every further token costs).
    size_t growing_bytes_per_token() const { return primary().bytes_per_token(); }

    // Every group's integrity (the primary with `other_owners`, e.g. the prefix cache's pages),
    // the same live sequences in every group, and every ring table within its bound.
    status check_integrity(const std::vector<int32_t>& other_owners = {}, int64_t n_chunk = 1) const;

private:
    kv_groups() = default;
    std::vector<kv_group_desc> descs_;
    std::vector<std::unique_ptr<kv_cache>> owned_;
    std::vector<kv_cache*> caches_;
};

}  // namespace kvs
