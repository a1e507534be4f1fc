// The serving engine: one model, one KV page pool and one scheduler driven by a background
// thread. Clients on any thread submit requests and read their events from request_streams.
//
// Contract: submit(), stats() and shutdown() are thread-safe. The model and tokenizer must
// outlive the engine. A request is validated in the caller's thread (errors come back at once,
// nothing is queued); a full queue is refused with code 503.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "sched/scheduler.h"

namespace kvs {

struct engine_config {
    scheduler_config sched;
    int32_t page_size = 16;       // tokens per KV page
    std::optional<dtype> kv_type;  // KV storage format (f32, f16, bf16, q8_0, q4_0, q4_1); unset: the model's (language_model::auto_kv_type)
    std::optional<dtype> kv_v_type;  // V's format when it differs from K's (unset: kv_type's)
    kivi_config kivi;             // KIVI pages (bits 0: off); its group is the page size, kv_type the residual's format
    int64_t kv_tokens = 0;        // pool capacity in tokens; 0 = from kv_memory_bytes
    int64_t kv_memory_bytes = 0;  // pool size in bytes; 0 with kv_tokens 0 = max_seqs full contexts, capped at 2 GiB
    int threads = 1;
    int32_t max_queued = 256;     // waiting requests beyond this are refused (503)
    bool key_bounds = false;      // keep Quest's per-page key bounds (requests may use quest)
    bool token_scores = false;    // keep H2O's per-token scores and positions (requests may use h2o)
    // Speculative decoding's draft model (the target's vocabulary; must outlive the engine), or
    // null. Its KV pool has as many pages as the target's, both from the one KV budget.
    const language_model* draft_model = nullptr;
};

// One KV group's pool (kv_groups.h).
struct kv_group_stats {
    std::string name;
    int32_t pages_total = 0, pages_used = 0;  // group 0: pages_used without the prefix cache's
    int64_t page_bytes = 0;
    int64_t window = 0;   // ring groups: W; 0 growing
    int64_t n_layer = 0;  // layers the group serves
};

struct engine_stats {
    int32_t running = 0, waiting = 0;
    int32_t kv_pages_total = 0;
    int64_t kv_page_bytes = 0;        // bytes of one page (K, V and metadata, all layers)
    int64_t kv_bytes_per_token = 0;   // kv_page_bytes / page size (depends on --kv-type)
    int32_t kv_pages_used = 0;    // held by sequences
    int32_t kv_pages_cached = 0;  // held only by the prefix cache (evictable)
    int32_t kv_packed_pages_total = 0, kv_packed_pages_used = 0;  // KIVI's packed pages (in kv_pages_total / _used)
    int64_t kv_packed_page_bytes = 0;
    int64_t kv_bytes_used = 0;    // bytes of the pages held by sequences, every group (cached pages at the full-precision size)
    std::vector<kv_group_stats> kv_groups;  // every KV group; group 0 is the one kv_pages_* describe
    int32_t draft_kv_pages_total = 0, draft_kv_pages_used = 0;  // the draft model's pool (speculative decoding)
    int64_t draft_kv_page_bytes = 0;
    scheduler_metrics sched;
    double busy_seconds = 0;      // time spent in steps
};

class engine {
public:
    static result<std::unique_ptr<engine>> create(const language_model& model, const tokenizer& tok, const engine_config& config);
    ~engine();  // stops the loop; unfinished requests end as cancelled
    engine(const engine&) = delete;
    engine& operator=(const engine&) = delete;

    // Errors: invalid request (code 400), queue full (503), shutting down (503).
    result<std::shared_ptr<request_stream>> submit(request_params params);
    engine_stats stats() const;
    // The scheduler's and KV cache's integrity check (every page owned exactly as the tables
    // say, every running sequence holding the pages its tokens need), run between two steps.
    status check_integrity() const;
    int32_t max_queued() const { return max_queued_; }
    const scheduler_config& config() const { return sched_->config(); }
    int64_t n_ctx() const { return sched_->n_ctx(); }
    // Stops accepting requests; with drain, waits until every accepted request has finished.
    void shutdown(bool drain);

private:
    engine() = default;
    void loop();

    std::unique_ptr<kv_groups> kv_;
    std::unique_ptr<kv_cache> draft_kv_;  // the draft model's pages, or null
    std::unique_ptr<thread_pool> pool_;
    std::unique_ptr<scheduler> sched_;
    int32_t max_queued_ = 256;

    mutable std::mutex step_mu_;       // held by the loop while it touches the scheduler
    mutable std::mutex mu_;
    std::condition_variable cv_;       // wakes the loop (new work, stop)
    std::condition_variable idle_cv_;  // wakes shutdown(drain)
    std::vector<std::pair<request_params, std::shared_ptr<request_stream>>> inbox_;
    bool accepting_ = true, stop_ = false;
    engine_stats stats_;
    std::thread thread_;
};

}  // namespace kvs
