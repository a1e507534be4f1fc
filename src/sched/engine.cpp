#include "sched/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

namespace kvs {

result<std::unique_ptr<engine>> engine::create(const language_model& model, const tokenizer& tok, const engine_config& c) {
    std::unique_ptr<engine> e(new engine());
    const int32_t ps = c.kivi.bits ? c.kivi.group : c.page_size;  // KIVI: a page is one group
    if (ps <= 0 || ps > 4096) return status::error(strfmt("page size %d is out of range", ps));
    kv_config geom = model.kv_geometry(ps, 1, c.kv_type.value_or(model.auto_kv_type()));
    if (c.kv_v_type && *c.kv_v_type != geom.type) geom.v_type = c.kv_v_type;
    geom.key_bounds = c.key_bounds;
    geom.token_scores = c.token_scores;
    geom.kivi_bits = c.kivi.bits;
    geom.kivi_residual = c.kivi.residual;
    if (c.draft_model && c.kivi.bits) return status::error("a draft model does not combine with a KIVI cache");
    // Ring groups (YOCO's self-decoder): every sequence's window of one prefill chunk, for
    // max_seqs sequences, taken from the budget before the primary group's pages.
    if (model.hparams().deepseek2() && c.kivi.bits) return status::error("KIVI pages are not supported on deepseek2 models");
    std::vector<kv_group_desc> groups = model.kv_group_layout(ps, geom.type);
    int64_t ring_bytes = 0;
    for (size_t g = 1; g < groups.size(); ++g) {
        if (c.kivi.bits) return status::error(strfmt("KIVI pages are not supported on %s models", model.hparams().arch.c_str()));
        if (c.draft_model) return status::error(strfmt("a draft model is not supported on %s models", model.hparams().arch.c_str()));
        groups[g].config.v_type = geom.v_type;
        const int64_t bound = kv_cache::policy_page_bound({kv_policy_kind::window, groups[g].window},
                                                          std::clamp<int64_t>(c.sched.prefill_chunk, 1, std::max<int64_t>(1, c.sched.max_batch_tokens)), ps);
        groups[g].config.n_pages = int32_t(std::max<int64_t>(1, c.sched.max_seqs) * bound + 1);
        ring_bytes += int64_t(groups[g].config.n_pages) * int64_t(groups[g].config.page_bytes());
    }
    if (groups.size() > 1) {
        geom.n_layer = groups[0].config.n_layer;  // the primary group's layers
        if (c.key_bounds || c.token_scores)
            return status::error(strfmt("Quest's key bounds and H2O's token scores are not supported on %s models", model.hparams().arch.c_str()));
    }
    if (c.draft_model && c.draft_model->hparams().n_vocab != model.hparams().n_vocab)
        return status::error(strfmt("the draft model's vocabulary has %lld tokens, the model's %lld: speculation needs the same vocabulary",
                                    (long long)c.draft_model->hparams().n_vocab, (long long)model.hparams().n_vocab));
    kv_config draft_geom;
    if (c.draft_model) draft_geom = c.draft_model->kv_geometry(ps, 1, c.kv_type.value_or(c.draft_model->auto_kv_type()));
    // With a draft model, a page of the budget is a target page and a draft page.
    const int64_t bytes_per_page = int64_t(geom.page_bytes()) + (c.draft_model ? int64_t(draft_geom.page_bytes()) : 0);
    const int64_t n_ctx = c.sched.n_ctx > 0 ? c.sched.n_ctx : model.hparams().n_ctx_train;
    int64_t n_pages;
    if (c.kivi.bits) {
        // The budget in bytes (kv_tokens: that many tokens at the residual format's size).
        const int64_t budget = c.kv_memory_bytes > 0 ? c.kv_memory_bytes
                               : c.kv_tokens > 0     ? kv_cache::pages_for(c.kv_tokens, ps) * bytes_per_page
                                                     : std::min<int64_t>(int64_t(c.sched.max_seqs) * kv_cache::pages_for(n_ctx, ps) * bytes_per_page,
                                                                         int64_t(2) << 30);
        KVS_TRY(kivi_size_pools(geom, budget, c.sched.max_seqs, n_ctx, c.sched.max_batch_tokens));
        n_pages = geom.n_pages;
    } else if (c.kv_tokens > 0) {
        n_pages = kv_cache::pages_for(c.kv_tokens, ps);
    } else if (c.kv_memory_bytes > 0) {
        if (ring_bytes >= c.kv_memory_bytes)
            return status::error(strfmt("the KV memory budget (%.1f MiB) does not hold the ring groups' windows (%.1f MiB)",
                                        double(c.kv_memory_bytes) / 1048576.0, double(ring_bytes) / 1048576.0));
        n_pages = (c.kv_memory_bytes - ring_bytes) / bytes_per_page;
    } else {
        n_pages = std::min<int64_t>(int64_t(c.sched.max_seqs) * kv_cache::pages_for(n_ctx, ps), (int64_t(2) << 30) / bytes_per_page);
    }
    if (n_pages < 1) return status::error("the KV memory budget is smaller than one page");
    if (n_pages > (int64_t(1) << 30)) return status::error("the KV pool is too large");
    geom.n_pages = int32_t(n_pages);
    groups[0].config = geom;
    auto kv = kv_groups::create(std::move(groups));
    if (!kv) return kv.error();
    e->kv_ = std::move(kv.value());
    draft_model_ref draft;
    if (c.draft_model) {
        draft_geom.n_pages = int32_t(n_pages);
        auto dkv = kv_cache::create(draft_geom);
        if (!dkv) return dkv.error().with_context("draft model KV cache");
        e->draft_kv_ = std::move(dkv.value());
        draft = {c.draft_model, e->draft_kv_.get()};
        e->stats_.draft_kv_pages_total = int32_t(n_pages);
        e->stats_.draft_kv_page_bytes = int64_t(draft_geom.page_bytes());
    }
    e->pool_ = std::make_unique<thread_pool>(std::max(1, c.threads));
    e->sched_ = std::make_unique<scheduler>(model, tok, *e->kv_, *e->pool_, c.sched, draft);
    e->max_queued_ = std::max<int32_t>(1, c.max_queued);
    const kv_cache& primary = e->kv_->primary();
    e->stats_.kv_pages_total = primary.pool().n_pages();
    e->stats_.kv_page_bytes = int64_t(primary.config().page_bytes());
    e->stats_.kv_bytes_per_token = int64_t(primary.bytes_per_token());
    e->stats_.kv_packed_pages_total = primary.pool().n_packed();
    e->stats_.kv_packed_page_bytes = int64_t(primary.config().packed_page_bytes());
    for (size_t g = 0; g < e->kv_->size(); ++g) {
        const kv_cache& kc = e->kv_->group(g);
        e->stats_.kv_groups.push_back({e->kv_->desc(g).name, kc.pool().n_pages(), 0, int64_t(kc.config().page_bytes()),
                                       e->kv_->desc(g).window, kc.config().n_layer});
    }
    e->thread_ = std::thread([p = e.get()] { p->loop(); });
    return e;
}

engine::~engine() {
    {
        std::lock_guard<std::mutex> l(mu_);
        accepting_ = false;
        stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
}

result<std::shared_ptr<request_stream>> engine::submit(request_params params) {
    status v = sched_->validate(params);
    if (!v) return status::error(v.message(), 400);
    auto stream = std::make_shared<request_stream>();
    {
        std::lock_guard<std::mutex> l(mu_);
        if (!accepting_) return status::error("the server is shutting down", 503);
        if (int32_t(inbox_.size()) + stats_.waiting >= max_queued_)
            return status::error(strfmt("the queue is full (%d requests waiting)", max_queued_), 503);
        inbox_.emplace_back(std::move(params), stream);
    }
    cv_.notify_all();
    return stream;
}

status engine::check_integrity() const {
    std::lock_guard<std::mutex> l(step_mu_);
    return sched_->check_integrity();
}

engine_stats engine::stats() const {
    std::lock_guard<std::mutex> l(mu_);
    return stats_;
}

void engine::shutdown(bool drain) {
    std::unique_lock<std::mutex> l(mu_);
    accepting_ = false;
    if (drain) idle_cv_.wait(l, [&] { return inbox_.empty() && stats_.running == 0 && stats_.waiting == 0; });
}

void engine::loop() {
    using clock = std::chrono::steady_clock;
    std::vector<std::pair<request_params, std::shared_ptr<request_stream>>> incoming;
    for (;;) {
        {
            std::unique_lock<std::mutex> l(mu_);
            cv_.wait(l, [&] { return stop_ || !inbox_.empty() || !sched_->idle(); });
            if (stop_) break;
            incoming.swap(inbox_);
        }
        std::unique_lock<std::mutex> step_lock(step_mu_);
        for (auto& [params, stream] : incoming) {
            if (status s = sched_->submit(std::move(params), stream); !s) {
                request_event ev;
                ev.finish = finish_reason::error;
                ev.error = s.message();
                stream->set_expected(1);
                stream->push(std::move(ev));
            }
        }
        incoming.clear();
        auto t0 = clock::now();
        auto r = sched_->step();
        const double dt = std::chrono::duration<double>(clock::now() - t0).count();
        if (!r) std::fprintf(stderr, "kvserve: step failed: %s\n", r.message().c_str());
        {
            std::lock_guard<std::mutex> l(mu_);
            stats_.running = sched_->n_running();
            stats_.waiting = sched_->n_waiting();
            stats_.kv_pages_cached = int32_t(sched_->n_cached_only_pages());
            const kv_cache& primary = kv_->primary();
            stats_.kv_pages_used = primary.pool().n_used() - stats_.kv_pages_cached;
            stats_.kv_packed_pages_used = primary.pool().n_packed() - primary.pool().n_free_packed();
            stats_.kv_bytes_used = int64_t(std::max(0, stats_.kv_pages_used - stats_.kv_packed_pages_used)) * stats_.kv_page_bytes +
                                   int64_t(stats_.kv_packed_pages_used) * stats_.kv_packed_page_bytes;
            for (size_t g = 0; g < kv_->size(); ++g) {
                kv_group_stats& gs = stats_.kv_groups[g];
                gs.pages_used = g == 0 ? stats_.kv_pages_used : kv_->group(g).pool().n_used();
                if (g > 0) stats_.kv_bytes_used += int64_t(gs.pages_used) * gs.page_bytes;
            }
            stats_.sched = sched_->metrics();
            if (draft_kv_) stats_.draft_kv_pages_used = draft_kv_->pool().n_used();
            stats_.busy_seconds += dt;
        }
        step_lock.unlock();
        idle_cv_.notify_all();
    }
    // Stopping: everything unfinished ends as cancelled.
    std::lock_guard<std::mutex> step_lock(step_mu_);
    sched_->cancel_all();
    idle_cv_.notify_all();
}

}  // namespace kvs
