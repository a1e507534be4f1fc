// KV policies: which tokens a sequence keeps in its cache and which it reads (kv-design.md,
// "Capacity policies"). A policy is chosen per sequence; it decides slots, the pages a
// sequence holds and the slot ranges each query row attends — the attention kernel never
// branches on it.
//
// Spec strings (the same on every command, `--kv-policy SPEC`, and in the API, "kv_policy"):
//   dense                      every token kept and read (the default)
//   window:size=W              the W most recent tokens, the current one included; keys keep
//                              their original positions
//   streaming:sinks=S,size=W   StreamingLLM: the first S tokens plus the W most recent (current
//                              included), positions assigned inside the cache (sinks 0..S-1, the
//                              window after them), so no distance ever exceeds S+W-1
//   recompute:size=W           the quality baseline: each token is computed by prefilling the last
//                              W tokens afresh at positions 0..W-1 (no cache carried between tokens)
//   h2o:heavy=H,recent=R       H2O heavy hitters (per layer and KV head)
//   quest:budget=B             Quest query-aware page selection (per layer and KV head)
// Keys may come in any order; every key of a policy is required.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace kvs {

enum class kv_policy_kind { dense, window, streaming, recompute, h2o, quest };
// "dense", "window", "streaming", "recompute", "h2o", "quest".
const char* kv_policy_kind_name(kv_policy_kind k);
inline constexpr int n_kv_policy_kinds = 6;

struct kv_policy {
    kv_policy_kind kind = kv_policy_kind::dense;
    int64_t size = 0;    // window, streaming, recompute: W (tokens)
    int64_t sinks = 0;   // streaming: S (tokens)
    int64_t heavy = 0;   // h2o: H (tokens per layer and KV head)
    int64_t recent = 0;  // h2o: R (tokens)
    int64_t budget = 0;  // quest: B (tokens read per layer and KV head)

    // Parses a spec; the error names what is wrong ("window: size must be a positive
    // integer, got 'x'").
    static result<kv_policy> parse(std::string_view spec);
    // The canonical spec ("streaming:sinks=4,size=508"); parse(spec()) gives this policy back.
    std::string spec() const;

    bool is_dense() const { return kind == kv_policy_kind::dense; }
    // Window and StreamingLLM: the sequence's pages form a sliding run (pages that leave the
    // window go back to the pool) and generation may run past the model's context length.
    bool slides() const { return kind == kv_policy_kind::window || kind == kv_policy_kind::streaming; }
    // Tokens a sequence keeps in its cache at most (0: unbounded — dense, Quest, recompute).
    int64_t kept_tokens() const;
    // The leading tokens whose KV equals what a dense cache holds (before the policy first
    // drops or skips a token): pages within them may be shared with dense sequences through
    // the prefix cache. INT64_MAX for dense; 0 for recompute and H2O (whose scores no shared
    // page carries).
    int64_t dense_prefix_tokens() const;

    bool operator==(const kv_policy&) const = default;
};

}  // namespace kvs
