#include "server/metrics.h"

namespace kvs {

namespace {

void add(std::string& out, const char* name, const char* type, const char* help, double value) {
    out += strfmt("# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, value);
}

}  // namespace

void server_metrics::count_response(int http_status) {
    std::lock_guard<std::mutex> l(mu_);
    ++responses_[http_status];
}

void server_metrics::count_rejected(const std::string& reason) {
    std::lock_guard<std::mutex> l(mu_);
    ++rejected_[reason];
}

void server_metrics::count_request_timeout() {
    std::lock_guard<std::mutex> l(mu_);
    ++request_timeouts_;
}

void server_metrics::count_client_disconnect() {
    std::lock_guard<std::mutex> l(mu_);
    ++client_disconnects_;
}

int64_t server_metrics::rejected(const std::string& reason) const {
    std::lock_guard<std::mutex> l(mu_);
    auto it = rejected_.find(reason);
    return it == rejected_.end() ? 0 : it->second;
}

std::string server_metrics::render(const engine_stats& s, int64_t read_timeouts) const {
    std::string out;
    const int32_t free = s.kv_pages_total - s.kv_pages_used - s.kv_pages_cached;
    add(out, "kvserve_requests_running", "gauge", "Sequences running in the scheduler.", s.running);
    add(out, "kvserve_requests_waiting", "gauge", "Sequences waiting for admission.", s.waiting);
    add(out, "kvserve_kv_pages_used", "gauge", "KV cache pages in use.", s.kv_pages_used);
    add(out, "kvserve_kv_pages_cached", "gauge", "KV cache pages held only by the prefix cache (evictable).", s.kv_pages_cached);
    add(out, "kvserve_kv_pages_free", "gauge", "KV cache pages free.", free);
    add(out, "kvserve_kv_pages_total", "gauge", "KV cache pages in the pool.", s.kv_pages_total);
    add(out, "kvserve_kv_bytes_per_token", "gauge", "KV cache bytes per token (K and V of all layers, in the cache's format).",
        double(s.kv_bytes_per_token));
    add(out, "kvserve_kv_bytes_used", "gauge", "KV cache bytes in pages held by sequences.", double(s.kv_bytes_used));
    add(out, "kvserve_kv_packed_pages_used", "gauge", "KIVI packed KV pages in use (of kvserve_kv_pages_used).", s.kv_packed_pages_used);
    add(out, "kvserve_kv_packed_pages_total", "gauge", "KIVI packed KV pages in the pool (of kvserve_kv_pages_total).",
        s.kv_packed_pages_total);
    out += "# HELP kvserve_kv_pages_by_policy KV pages in the tables of running sequences, by KV policy.\n"
           "# TYPE kvserve_kv_pages_by_policy gauge\n";
    for (int k = 0; k < n_kv_policy_kinds; ++k)
        out += strfmt("kvserve_kv_pages_by_policy{policy=\"%s\"} %lld\n", kv_policy_kind_name(kv_policy_kind(k)),
                      (long long)s.sched.kv_pages_by_policy[size_t(k)]);
    add(out, "kvserve_kv_cache_usage_ratio", "gauge", "Fraction of KV cache pages in use.",
        s.kv_pages_total > 0 ? double(s.kv_pages_used) / s.kv_pages_total : 0.0);
    add(out, "kvserve_prompt_tokens_total", "counter", "Prompt tokens computed (recompute after preemption included).",
        double(s.sched.prompt_tokens));
    add(out, "kvserve_generation_tokens_total", "counter", "Tokens generated.", double(s.sched.generated_tokens));
    add(out, "kvserve_generation_tokens_per_second", "gauge", "Generated tokens per second of engine busy time.",
        s.busy_seconds > 0 ? double(s.sched.generated_tokens) / s.busy_seconds : 0.0);
    add(out, "kvserve_preemptions_total", "counter", "Sequences preempted by recompute.", double(s.sched.preemptions));
    add(out, "kvserve_requests_finished_total", "counter", "Requests finished (stop or length).", double(s.sched.requests_finished));
    add(out, "kvserve_requests_cancelled_total", "counter", "Requests cancelled (client gone or server stopping).",
        double(s.sched.requests_cancelled));
    add(out, "kvserve_prefix_cache_queried_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
        double(s.sched.prefix_queried_tokens));
    add(out, "kvserve_prefix_cache_hit_tokens_total", "counter", "Prompt tokens whose KV was reused from the prefix cache.",
        double(s.sched.prefix_hit_tokens));
    add(out, "kvserve_prefix_cache_evicted_pages_total", "counter", "Prefix cache pages evicted.", double(s.sched.prefix_evicted_pages));
    const double queried = double(s.sched.prefix_queried_tokens);
    add(out, "kvserve_prefix_cache_hit_rate", "gauge", "Share of looked-up prompt tokens found in the prefix cache.",
        queried > 0 ? double(s.sched.prefix_hit_tokens) / queried : 0.0);
    add(out, "kvserve_cascade_steps_total", "counter", "Forward passes that used shared-prefix (cascade) attention.",
        double(s.sched.cascade_steps));
    add(out, "kvserve_cascade_rows_total", "counter", "Decode rows whose shared prefix was attended once for their group.",
        double(s.sched.cascade_rows));
    add(out, "kvserve_spec_cycles_total", "counter", "Speculative decoding cycles (draft, then one verification pass).",
        double(s.sched.spec_cycles));
    add(out, "kvserve_spec_draft_tokens_total", "counter", "Draft tokens proposed by speculative decoding.", double(s.sched.spec_drafted));
    add(out, "kvserve_spec_accepted_tokens_total", "counter", "Draft tokens the model accepted.", double(s.sched.spec_accepted));
    add(out, "kvserve_spec_emitted_tokens_total", "counter", "Tokens emitted by speculative cycles (accepted drafts and the model's own).",
        double(s.sched.spec_emitted));
    add(out, "kvserve_spec_acceptance_ratio", "gauge", "Share of draft tokens accepted.",
        s.sched.spec_drafted > 0 ? double(s.sched.spec_accepted) / double(s.sched.spec_drafted) : 0.0);
    add(out, "kvserve_spec_draft_seconds_total", "counter", "Seconds in draft passes (and the draft model's catch-up).",
        s.sched.spec_draft_seconds);
    add(out, "kvserve_spec_verify_seconds_total", "counter", "Seconds in speculative verification passes.", s.sched.spec_verify_seconds);
    if (s.draft_kv_pages_total > 0) {
        add(out, "kvserve_draft_kv_pages_used", "gauge", "Draft model KV cache pages in use.", s.draft_kv_pages_used);
        add(out, "kvserve_draft_kv_pages_total", "gauge", "Draft model KV cache pages in the pool.", s.draft_kv_pages_total);
    }
    if (s.kv_groups.size() > 1) {  // models with several KV groups (YOCO): each group's pool
        out += "# HELP kvserve_kv_group_pages_used KV pages in use per KV group.\n# TYPE kvserve_kv_group_pages_used gauge\n";
        for (const kv_group_stats& g : s.kv_groups)
            out += strfmt("kvserve_kv_group_pages_used{group=\"%s\"} %d\n", g.name.c_str(), g.pages_used);
        out += "# HELP kvserve_kv_group_pages_total KV pages in the pool per KV group.\n# TYPE kvserve_kv_group_pages_total gauge\n";
        for (const kv_group_stats& g : s.kv_groups)
            out += strfmt("kvserve_kv_group_pages_total{group=\"%s\"} %d\n", g.name.c_str(), g.pages_total);
        out += "# HELP kvserve_kv_group_page_bytes Bytes of one page per KV group.\n# TYPE kvserve_kv_group_page_bytes gauge\n";
        for (const kv_group_stats& g : s.kv_groups)
            out += strfmt("kvserve_kv_group_page_bytes{group=\"%s\"} %lld\n", g.name.c_str(), (long long)g.page_bytes);
    }
    add(out, "kvserve_engine_steps_total", "counter", "Scheduler steps (forward passes).", double(s.sched.steps));
    add(out, "kvserve_engine_busy_seconds_total", "counter", "Seconds the engine spent in steps.", s.busy_seconds);
    std::lock_guard<std::mutex> l(mu_);
    out += "# HELP kvserve_http_requests_total HTTP responses by status code.\n# TYPE kvserve_http_requests_total counter\n";
    for (const auto& [code, n] : responses_) out += strfmt("kvserve_http_requests_total{code=\"%d\"} %lld\n", code, (long long)n);
    out += "# HELP kvserve_http_rejected_total Requests refused before they ran, by reason.\n"
           "# TYPE kvserve_http_rejected_total counter\n";
    for (const char* reason : {"queue_full", "draining", "body_too_large", "unauthorized"}) {
        auto it = rejected_.find(reason);
        out += strfmt("kvserve_http_rejected_total{reason=\"%s\"} %lld\n", reason, (long long)(it == rejected_.end() ? 0 : it->second));
    }
    add(out, "kvserve_http_request_timeouts_total", "counter", "Generation requests ended by the request timeout.", double(request_timeouts_));
    add(out, "kvserve_http_client_disconnects_total", "counter", "Generation requests whose client went away before the end.",
        double(client_disconnects_));
    add(out, "kvserve_http_read_timeouts_total", "counter", "Connections closed because a request did not arrive within the read timeout.",
        double(read_timeouts));
    return out;
}

}  // namespace kvs
