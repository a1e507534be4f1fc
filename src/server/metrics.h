// Prometheus text exposition (format 0.0.4) for GET /metrics: the engine's gauges and counters
// plus the HTTP server's own counters.
//
//   kvserve_requests_running / _waiting            gauge    sequences in the scheduler
//   kvserve_kv_pages_used / _cached / _free / _total  gauge  KV pages of the pool: held by
//                                                  sequences / only by the prefix cache / free
//   kvserve_kv_cache_usage_ratio                   gauge    used / total
//   kvserve_prefix_cache_queried_tokens_total, _hit_tokens_total, _evicted_pages_total  counter
//   kvserve_prompt_tokens_total                    counter  prompt tokens computed (recompute included)
//   kvserve_generation_tokens_total                counter  tokens sampled
//   kvserve_generation_tokens_per_second           gauge    generated tokens / seconds the engine was busy
//   kvserve_preemptions_total                      counter  sequences preempted by recompute
//   kvserve_requests_finished_total / _cancelled_total  counter
//   kvserve_spec_cycles_total, _draft_tokens_total, _accepted_tokens_total, _emitted_tokens_total  counter
//                                                  speculative decoding: cycles, drafts proposed / accepted,
//                                                  tokens the cycles emitted
//   kvserve_spec_acceptance_ratio                  gauge    accepted / drafted (0 before any draft)
//   kvserve_spec_draft_seconds_total, _verify_seconds_total  counter  time in draft / verification passes
//   kvserve_draft_kv_pages_used / _total           gauge    the draft model's KV pool (only with a draft model)
//   kvserve_engine_steps_total, kvserve_engine_busy_seconds_total  counter
//   kvserve_http_requests_total{code="200"}        counter  HTTP responses by status code
//   kvserve_http_rejected_total{reason="..."}      counter  requests refused before they ran:
//                                                  queue_full, draining, body_too_large, unauthorized
//   kvserve_http_request_timeouts_total            counter  generation requests ended by request_timeout
//   kvserve_http_client_disconnects_total          counter  generation requests whose client went away
//   kvserve_http_read_timeouts_total               counter  connections closed for a request that came too slowly
//
// Contract: server_metrics is thread-safe (handlers on many threads count responses).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "sched/engine.h"

namespace kvs {

class server_metrics {
public:
    void count_response(int http_status);
    void count_rejected(const std::string& reason);
    void count_request_timeout();
    void count_client_disconnect();
    int64_t rejected(const std::string& reason) const;
    // The exposition text for the given engine snapshot and this server's counters (and the
    // connection watchdog's read timeouts).
    std::string render(const engine_stats& stats, int64_t read_timeouts) const;

private:
    mutable std::mutex mu_;
    std::map<int, int64_t> responses_;          // HTTP status -> count
    std::map<std::string, int64_t> rejected_;   // reason -> count
    int64_t request_timeouts_ = 0, client_disconnects_ = 0;
};

}  // namespace kvs
