#include "sched/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <optional>

namespace kvs {

struct scheduler::request_state {
    request_params params;
    std::shared_ptr<request_stream> out;
    int64_t n_prompt = 0;
    std::vector<std::unique_ptr<sequence>> seqs;  // one per completion
    int32_t n_finished = 0;
    bool forked = false;  // siblings of completion 0 share its prompt pages
    int64_t completion_tokens = 0;
    int64_t cached_tokens = 0;  // prompt tokens reused from the prefix cache at first admission
    bool admitted_once = false;
};

struct scheduler::sequence {
    request_state* req;
    int32_t index;
    uint64_t order;               // admission priority: lower is older
    std::vector<int32_t> tokens;  // prompt + generated
    int64_t n_computed = 0;       // tokens whose K/V are in the cache
    int64_t base = 0;             // recompute: the token at KV slot (and position) 0 of the current window
    int32_t kv_seq = -1;          // kv_cache sequence, -1 when it holds no pages
    sampler smp;
    detok_stream detok;
    stop_matcher stops;
    int64_t n_generated = 0;
    bool finished = false;
    bool scheduled = false;       // in running_ or waiting_
    int64_t n_registered_pages = 0;  // leading full pages already in the prefix cache
    int32_t skipped = 0;          // times passed over by longest-prefix-match admission
    // speculative decoding
    int32_t draft_kv_seq = -1;    // the draft model's KV sequence, -1 when it holds no pages
    int64_t draft_computed = 0;   // tokens whose K/V are in the draft model's cache
    std::optional<sampler> draft_smp;  // this cycle's draft sampler (the history plus the drafts)
    std::vector<int32_t> drafts;  // this cycle's draft tokens
    int32_t n_draft = 0;          // drafts this cycle may still make (adaptive length shortens it)
    int32_t spec_slot = 0;        // index among the cycle's sequences (rows of spec_hidden_ / spec_q_)
    uint64_t n_cycles = 0;
    // embeddings
    std::vector<double> pooled;   // (n_embd) sum (mean), or the chosen row (cls, last)
    int64_t n_pooled = 0;

    sequence(request_state* r, int32_t i, uint64_t ord, const tokenizer& tok)
        : req(r), index(i), order(ord), tokens(r->params.prompt), smp(seeded(r->params.sampling, i)), detok(tok),
          stops(r->params.stop) {
        // Text continues the prompt: feed its last token so the first piece keeps its space.
        detok.push(tokens.back());
        detok.flush();
    }
    // Completion i samples with seed + i, so n > 1 completions differ yet stay reproducible.
    static sampling_params seeded(sampling_params sp, int32_t i) {
        sp.seed += uint64_t(i);
        return sp;
    }
    const kv_policy& policy() const { return req->params.policy; }
    bool recomputes() const { return policy().kind == kv_policy_kind::recompute; }
    bool h2o() const { return policy().kind == kv_policy_kind::h2o; }
    bool quest() const { return policy().kind == kv_policy_kind::quest; }
    const speculative_params& spec() const { return req->params.speculative; }
    // KV slots in use after `n` more tokens are computed (H2O: after its kept region).
    int64_t slots_after(int64_t n) const { return (h2o() ? h2o_kept_slots(policy(), n_computed) : n_computed - base) + n; }
};

struct scheduler::beam_group {
    request_state* req;
    std::vector<int32_t> prompt;  // the prompt's tokens
    beam_search search;
    std::vector<int32_t> kv_seqs;  // (live beams) the KV sequence of each live beam, in search.live() order
    beam_group(request_state* r, std::vector<int32_t> p, beam_search bs) : req(r), prompt(std::move(p)), search(std::move(bs)) {}
    int32_t width() const { return search.width(); }
};

namespace {
// True when the policy lets a sequence run past the context length.
bool unbounded_by_ctx(const kv_policy& p) { return p.slides() || p.kind == kv_policy_kind::recompute || p.kind == kv_policy_kind::h2o; }
}  // namespace

scheduler::scheduler(const language_model& model, const tokenizer& tok, kv_cache& kv, thread_pool& pool, const scheduler_config& config,
                     draft_model_ref draft)
    : scheduler(model, tok, kv_groups::wrap(kv), nullptr, pool, config, draft) {}

scheduler::scheduler(const language_model& model, const tokenizer& tok, kv_groups& kv, thread_pool& pool, const scheduler_config& config,
                     draft_model_ref draft)
    : scheduler(model, tok, nullptr, &kv, pool, config, draft) {}

scheduler::scheduler(const language_model& model, const tokenizer& tok, std::unique_ptr<kv_groups> owned, kv_groups* borrowed,
                     thread_pool& pool, const scheduler_config& config, draft_model_ref draft)
    : model_(model), tok_(tok), own_groups_(std::move(owned)), groups_(own_groups_ ? *own_groups_ : *borrowed),
      kv_(groups_.primary()), pool_(pool), cfg_(config), draft_(draft) {
    // Ring groups hold only their window: no page of theirs stands for a prefix, so the prefix
    // cache is off for models with one (docs/yoco.md).
    if (groups_.size() > 1) cfg_.prefix_cache = false;
    n_ctx_ = cfg_.n_ctx > 0 ? cfg_.n_ctx : model.hparams().n_ctx_train;
    cfg_.max_batch_tokens = std::max<int64_t>(1, cfg_.max_batch_tokens);
    cfg_.prefill_chunk = std::clamp<int64_t>(cfg_.prefill_chunk, 1, cfg_.max_batch_tokens);
    cfg_.h2o_chunk = std::clamp<int64_t>(cfg_.h2o_chunk, 1, std::max<int64_t>(1, cfg_.max_batch_tokens / 2));
    cfg_.admission_reserve = std::clamp<int64_t>(cfg_.admission_reserve, 0, cfg_.max_batch_tokens / 2);
    cfg_.max_seqs = std::max<int32_t>(1, cfg_.max_seqs);
    // One logit row per running sequence at most.
    state_ = std::make_unique<forward_state>(model, cfg_.max_batch_tokens, std::min<int64_t>(cfg_.max_batch_tokens, cfg_.max_seqs));
    if (cfg_.prefix_cache) cache_ = std::make_unique<prefix_cache>(kv_.pool(), kv_.config().page_size);
    state_->set_cascade(cfg_.cascade);
    hidden_.resize(size_t(cfg_.max_batch_tokens * model.hparams().n_embd));
    cfg_.spec_max_running = std::clamp<int32_t>(cfg_.spec_max_running, 0, cfg_.max_seqs);
    if (!draft_.model || !draft_.kv) draft_ = {};
    if (cfg_.spec_max_running > 0) {
        // Sized once: every speculating sequence's D + 1 rows in one pass.
        const int64_t rows = int64_t(cfg_.spec_max_running) * (k_max_draft_tokens + 1);
        const auto& hp = model.hparams();
        spec_state_ = std::make_unique<forward_state>(model, rows, rows);
        spec_state_->set_cascade(false);
        spec_hidden_.resize(size_t(rows * hp.n_embd));
        spec_hidden_rows_.resize(size_t(rows * hp.n_embd));
        spec_q_.resize(size_t(int64_t(cfg_.spec_max_running) * k_max_draft_tokens * hp.n_vocab));
        spec_p_.resize(size_t(hp.n_vocab));
        if (draft_.model) {
            draft_state_ = std::make_unique<forward_state>(*draft_.model, std::max(rows, cfg_.max_batch_tokens), cfg_.spec_max_running);
            draft_state_->set_cascade(false);
        }
    }
}

scheduler::~scheduler() = default;

status scheduler::validate(const request_params& p) const {
    const int64_t n_vocab = model_.hparams().n_vocab;
    const int64_t n_prompt = int64_t(p.prompt.size());
    if (n_prompt == 0) return status::error("the prompt is empty");
    for (int32_t t : p.prompt)
        if (t < 0 || t >= n_vocab) return status::error(strfmt("prompt token id %d is outside the vocabulary (0..%lld)", t, (long long)n_vocab - 1));
    const int32_t max_n = std::min(cfg_.max_n, cfg_.max_seqs);
    if (p.n < 1 || p.n > max_n) return status::error(strfmt("n must be in [1, %d], got %d", max_n, p.n));
    if (p.n_logprobs > 20) return status::error(strfmt("top_logprobs must be at most 20, got %d", p.n_logprobs));
    if (p.min_tokens < 0) return status::error("min_tokens must be non-negative");
    if (p.max_tokens == 0) return status::error("max_tokens must be at least 1");
    if (p.max_tokens > 0 && p.min_tokens > p.max_tokens)
        return status::error(strfmt("min_tokens (%lld) is larger than max_tokens (%lld)", (long long)p.min_tokens, (long long)p.max_tokens));
    sampling_params sp = p.sampling;
    sp.n_vocab = n_vocab;
    KVS_TRY(sp.validate());
    const kv_policy& pol = p.policy;
    const int32_t ps = kv_.config().page_size;
    if (p.embed) {
        if (p.n != 1) return status::error("an embedding is one completion (n = 1)");
        if (p.beam_width != 0 || p.speculative.on()) return status::error("an embedding generates nothing: no beam search or speculation");
        if (p.policy.kind != kv_policy_kind::dense) return status::error("an embedding reads its whole input (kv_policy dense)");
        if (n_prompt > n_ctx_)
            return status::error(strfmt("the input has %lld tokens, more than the context length %lld", (long long)n_prompt, (long long)n_ctx_));
        if (kv_cache::pages_for(n_prompt, ps) > kv_.pool().n_pages())
            return status::error(strfmt("the input needs %d KV pages, but the whole pool has %d (raise --kv-memory)",
                                        kv_cache::pages_for(n_prompt, ps), kv_.pool().n_pages()));
        return status::ok();
    }
    if (p.beam_width != 0) {
        if (p.beam_width < 1 || p.beam_width > max_n)
            return status::error(strfmt("the beam width (best_of) must be in [1, %d], got %d", max_n, p.beam_width));
        if (p.n > p.beam_width) return status::error(strfmt("n (%d) must not exceed the beam width (best_of, %d)", p.n, p.beam_width));
        if (p.beam_width > cfg_.max_batch_tokens)
            return status::error(strfmt("the beam width (%d) exceeds the tokens of one step (%lld)", p.beam_width, (long long)cfg_.max_batch_tokens));
        if (p.policy.kind != kv_policy_kind::dense)
            return status::error(strfmt("beam search does not combine with kv_policy %s", p.policy.spec().c_str()));
        if (p.speculative.on()) return status::error("beam search does not combine with speculative decoding");
        if (p.n_logprobs >= 0) return status::error("beam search does not return logprobs");
        if (!std::isfinite(p.length_penalty)) return status::error("length_penalty must be finite");
        if (p.max_tokens > 0) {
            // The beams' pages at worst: the prompt's once, each beam's generated tokens apart.
            const int64_t pages = kv_cache::pages_for(n_prompt, kv_.config().page_size) +
                                  int64_t(p.beam_width) * (kv_cache::pages_for(p.max_tokens, kv_.config().page_size) + 1);
            if (pages > kv_.pool().n_pages())
                return status::error(strfmt("beam search of width %d needs up to %lld KV pages, but the whole pool has %d (raise --kv-memory)",
                                            p.beam_width, (long long)pages, kv_.pool().n_pages()));
        }
    }
    if (groups_.size() > 1) {  // a model with ring groups (YOCO)
        const char* arch = model_.hparams().arch.c_str();
        if (!pol.is_dense())
            return status::error(strfmt("kv_policy %s: %s models run the dense policy only (their sliding window is the model's own)",
                                        pol.spec().c_str(), arch));
        if (p.speculative.on() || p.speculative.exit_layer != 0)
            return status::error(strfmt("speculative decoding is not supported on %s models", arch));
        if (p.beam_width > 0) return status::error(strfmt("beam search is not supported on %s models", arch));
        if (p.embed) return status::error(strfmt("embeddings are not supported on %s models (the last layers run for the last token only)", arch));
        for (size_t g = 1; g < groups_.size(); ++g)
            if (groups_.ring_page_bound(g, cfg_.prefill_chunk) > groups_.group(g).pool().n_pages())
                return status::error(strfmt("KV group '%s' needs %d pages per sequence, but its pool has %d (raise --kv-memory)",
                                            groups_.desc(g).name.c_str(), groups_.ring_page_bound(g, cfg_.prefill_chunk),
                                            groups_.group(g).pool().n_pages()));
    }
    if (const speculative_params& sp = p.speculative; sp.on() || sp.exit_layer != 0) {
        if (sp.draft_tokens < 1 || sp.draft_tokens > k_max_draft_tokens)
            return status::error(strfmt("speculative draft_tokens must be in [1, %d], got %d", k_max_draft_tokens, sp.draft_tokens));
        if (sp.exit_layer < 0 || sp.exit_layer >= model_.hparams().n_layer)
            return status::error(strfmt("speculative exit_layer must be in [1, %lld] (the model has %lld layers), got %d",
                                        (long long)model_.hparams().n_layer - 1, (long long)model_.hparams().n_layer, sp.exit_layer));
        if (sp.exit_layer == 0 && !draft_.model)
            return status::error("speculative decoding without exit_layer needs a draft model (start the server with --model-draft)");
        if (!(sp.min_draft_p >= 0.0f && sp.min_draft_p < 1.0f))
            return status::error(strfmt("speculative min_draft_p must be in [0, 1), got %g", double(sp.min_draft_p)));
        if (pol.kind == kv_policy_kind::h2o || pol.kind == kv_policy_kind::quest || pol.kind == kv_policy_kind::recompute)
            return status::error(strfmt("speculative decoding does not combine with kv_policy %s (its scores, bounds or windows "
                                        "would keep the rejected drafts)", pol.spec().c_str()));
        if (kv_.kivi()) return status::error("speculative decoding does not combine with the server's KIVI cache");
    }
    if (pol.kind == kv_policy_kind::h2o && !kv_.config().token_scores)
        return status::error("kv_policy h2o needs the KV cache's per-token scores (start the server with --token-scores)");
    if (pol.kind == kv_policy_kind::quest && !kv_.config().key_bounds)
        return status::error("kv_policy quest needs the KV cache's per-page key bounds (start the server with --key-bounds)");
    if (kv_.kivi() && (pol.kind == kv_policy_kind::quest || pol.kind == kv_policy_kind::h2o || pol.kind == kv_policy_kind::recompute))
        return status::error(strfmt("kv_policy %s does not combine with the server's KIVI cache", pol.spec().c_str()));
    if (unbounded_by_ctx(pol)) {
        // Positions and slots are 32-bit: a stream may run to 2^31 tokens.
        const int64_t limit = (int64_t(1) << 31) - 1;
        if (n_prompt + std::max<int64_t>(p.max_tokens, n_ctx_) > limit)
            return status::error(strfmt("the prompt plus max_tokens exceeds %lld tokens", (long long)limit));
        const int64_t longest = n_prompt + (p.max_tokens > 0 ? p.max_tokens : n_ctx_);
        // Pages the sequence holds at most: the policy's bound for a prompt chunk, one window
        // for recompute; never more than the whole sequence needs.
        int32_t pages = kv_cache::pages_for(longest, ps);
        if (pol.slides()) pages = std::min(pages, kv_cache::policy_page_bound(pol, cfg_.prefill_chunk, ps));
        else if (pol.kind == kv_policy_kind::h2o) pages = std::min(pages, kv_cache::pages_for(pol.heavy + pol.recent + cfg_.h2o_chunk, ps));
        else pages = std::min(pages, kv_cache::pages_for(pol.size, ps));
        if (pages > kv_.pool().n_pages())
            return status::error(strfmt("kv_policy %s needs %d KV pages per sequence, but the whole pool has %d (raise --kv-memory)",
                                        pol.spec().c_str(), pages, kv_.pool().n_pages()));
        return status::ok();
    }
    if (n_prompt >= n_ctx_)
        return status::error(strfmt("the prompt has %lld tokens, but the context length is %lld (the prompt must leave room for at least one new token)",
                                    (long long)n_prompt, (long long)n_ctx_));
    if (p.max_tokens > 0 && n_prompt + p.max_tokens > n_ctx_)
        return status::error(strfmt("the prompt (%lld tokens) plus max_tokens (%lld) exceeds the context length %lld",
                                    (long long)n_prompt, (long long)p.max_tokens, (long long)n_ctx_));
    const int64_t longest = p.max_tokens > 0 ? n_prompt + p.max_tokens : n_prompt + 1;
    const int32_t pages = kv_cache::pages_for(longest, ps);
    if (kv_.kivi()) {
        // Packed pages for what ages out, full pages for the residual and one prompt chunk.
        const int32_t packed = int32_t(kv_.kivi_packed_pages(longest));
        const int32_t full = std::min<int32_t>(pages, kv_cache::pages_for(kv_.config().kivi_residual + cfg_.prefill_chunk, ps) + 2);
        if (packed > kv_.pool().n_packed() || full > kv_.pool().n_full())
            return status::error(strfmt("the request needs %d packed and %d full-precision KV pages, but the pool has %d and %d (raise --kv-memory)",
                                        packed, full, kv_.pool().n_packed(), kv_.pool().n_full()));
        return status::ok();
    }
    if (pages > kv_.pool().n_pages())
        return status::error(strfmt("the request needs %d KV pages, but the whole pool has %d (raise --kv-memory)", pages, kv_.pool().n_pages()));
    return status::ok();
}

status scheduler::submit(request_params params, std::shared_ptr<request_stream> out) {
    KVS_TRY(validate(params));
    params.sampling.n_vocab = model_.hparams().n_vocab;
    auto r = std::make_unique<request_state>();
    r->params = std::move(params);
    r->out = std::move(out);
    r->n_prompt = int64_t(r->params.prompt.size());
    r->out->set_expected(r->params.n);
    const uint64_t base = next_arrival_++ * 64;
    const int32_t n_seqs = r->params.beam_width > 0 ? 1 : r->params.n;  // beams start from one prompt sequence
    for (int32_t i = 0; i < n_seqs; ++i)
        r->seqs.push_back(std::make_unique<sequence>(r.get(), i, base + uint64_t(i), tok_));
    sequence* first = r->seqs[0].get();
    first->scheduled = true;
    waiting_.push_back(first);
    requests_.push_back(std::move(r));
    return status::ok();
}

namespace {
template <class C, class T>
void insert_by_order(C& c, T* s) {
    auto it = std::upper_bound(c.begin(), c.end(), s, [](const T* a, const T* b) { return a->order < b->order; });
    c.insert(it, s);
}
}  // namespace

void scheduler::release(sequence* s) {
    if (s->kv_seq >= 0) {
        groups_.seq_remove(s->kv_seq);
        s->kv_seq = -1;
    }
    if (s->draft_kv_seq >= 0) {
        draft_.kv->seq_remove(s->draft_kv_seq);
        s->draft_kv_seq = -1;
    }
    s->draft_computed = 0;
    if (s->scheduled) {
        auto r = std::find(running_.begin(), running_.end(), s);
        if (r != running_.end()) running_.erase(r);
        auto w = std::find(waiting_.begin(), waiting_.end(), s);
        if (w != waiting_.end()) waiting_.erase(w);
        s->scheduled = false;
    }
}

void scheduler::preempt(sequence* s) {
    // A sequence planned earlier in this step (a decode, before a prefill needed its pages)
    // leaves the plan with its pages.
    plan_.erase(std::remove_if(plan_.begin(), plan_.end(), [s](const planned& pl) { return pl.seq == s; }),
                plan_.end());
    release(s);
    s->n_computed = 0;
    s->base = 0;
    s->n_registered_pages = 0;
    s->scheduled = true;
    insert_by_order(waiting_, s);
    ++metrics_.preemptions;
}

void scheduler::finish(sequence* s, finish_reason reason, request_event& ev) {
    ev.finish = reason;
    s->finished = true;
    release(s);
    request_state* r = s->req;
    if (r->params.beam_width > 0 && r->n_finished < r->params.n - 1) {
        // A beam search whose prompt ended before its beams started: every completion ends so.
        for (int32_t i = 1; i < r->params.n; ++i) {
            request_event e;
            e.index = i;
            e.finish = reason;
            e.error = ev.error;
            r->out->push(std::move(e));
        }
        r->n_finished = r->params.n - 1;
    }
    if (++r->n_finished == r->params.n) {
        // Completions that never started (siblings of a cancelled parent) finish with it.
        request_usage u;
        u.prompt_tokens = r->n_prompt;
        u.completion_tokens = r->completion_tokens;
        u.cached_tokens = r->cached_tokens;
        r->out->set_usage(u);
        if (reason == finish_reason::cancelled) ++metrics_.requests_cancelled;
        else ++metrics_.requests_finished;
    }
}

void scheduler::cancel_all() {
    for (auto& r : requests_) r->out->cancel();
    handle_cancellations();
    forget_finished_requests();
}

void scheduler::handle_cancellations() {
    for (auto& g : beams_)
        if (g->req->out->cancelled()) finish_beams(*g, true);
    beams_.erase(std::remove_if(beams_.begin(), beams_.end(), [](const std::unique_ptr<beam_group>& g) { return g->kv_seqs.empty(); }),
                 beams_.end());
    for (auto& r : requests_) {
        if (!r->out->cancelled() || r->n_finished == r->params.n) continue;
        for (auto& s : r->seqs) {
            if (s->finished) continue;
            request_event ev;
            ev.index = s->index;
            finish(s.get(), finish_reason::cancelled, ev);
            r->out->push(std::move(ev));
        }
    }
}

bool scheduler::make_room(sequence* s, int64_t n_tokens) {
    // KV slots [begin, end) are written this step (H2O also adds to the scores of, and moves
    // tokens among, all the slots before them).
    const int64_t begin = s->h2o() ? 0 : s->slots_after(0), end = s->slots_after(n_tokens);
    for (;;) {
        if (groups_.seq_reserve(s->kv_seq, end) && groups_.seq_prepare_write(s->kv_seq, begin, end)) return true;
        // Cached pages nobody uses go before any running sequence is preempted (+1: a
        // copy-on-write of the first written page).
        const int32_t need = kv_.pages_to_reserve(s->kv_seq, end) + 1, need_packed = kv_.packed_to_reserve(s->kv_seq, end);
        // (Ring groups' pages come back only with a preempted sequence's.)
        if (groups_.ring_can_reserve(s->kv_seq, end) && ensure_free_pages(need, need_packed) && groups_.seq_reserve(s->kv_seq, end) &&
            groups_.seq_prepare_write(s->kv_seq, begin, end))
            return true;
        // Out of pages: preempt the newest running sequence (running_ is ordered oldest first).
        sequence* victim = running_.back();
        if (victim == s) {
            if (running_.size() == 1) return false;  // alone and still no room: the caller ends it
            preempt(s);
            return false;
        }
        preempt(victim);
    }
}

int64_t scheduler::quest_cap(const sequence* s) const {
    const int64_t ps = kv_.config().page_size, n_prompt = s->req->n_prompt;
    const int64_t first_selecting = std::max(n_prompt, std::max<int64_t>(1, s->policy().budget / ps) * ps);
    return s->n_computed < first_selecting ? first_selecting - s->n_computed : 1;
}

int64_t scheduler::h2o_take(const sequence* s) const {
    const int64_t n_prompt = s->req->n_prompt, c = cfg_.h2o_chunk;
    if (s->n_computed < n_prompt) return std::min(n_prompt, (s->n_computed / c + 1) * c) - s->n_computed;
    return 1;
}

scheduler::planned* scheduler::plan_of(const sequence* s) {
    for (planned& pl : plan_)
        if (pl.seq == s) return &pl;
    return nullptr;
}

void scheduler::schedule_running(int64_t& budget, bool prefills) {
    for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
        sequence* s = running_[i];
        planned* pl = plan_of(s);
        const int64_t already = pl ? pl->n_tokens : 0;
        const int64_t need = int64_t(s->tokens.size()) - s->n_computed - already;
        // Pass 1 (decodes): sequences with exactly one token to compute. Pass 2 (prefills):
        // prompt chunks, up to prefill_chunk tokens per sequence and step in total.
        if (need <= 0) continue;
        if (!prefills && (need != 1 || already > 0)) continue;
        if (prefills && already == 0 && need == 1) continue;  // a decode: pass 1's
        int64_t take = std::min({need, budget, prefills ? cfg_.prefill_chunk - already : int64_t(1)});
        if (s->quest()) {
            if (already >= quest_cap(s)) continue;
            take = std::min(take, quest_cap(s) - already);
        }
        if (s->h2o() && prefills) {  // exactly its next chunk, or nothing this step
            if (already > 0 || h2o_take(s) > budget) continue;
            take = h2o_take(s);
        }
        if (take <= 0) continue;
        if (!make_room(s, already + take)) {
            if (s->scheduled && std::find(running_.begin(), running_.end(), s) != running_.end()) {
                // The only running sequence and the pool cannot hold it: end it.
                request_event ev;
                ev.index = s->index;
                ev.text = s->stops.flush();
                finish(s, finish_reason::length, ev);
                s->req->out->push(std::move(ev));
            }
            --i;
            continue;
        }
        pl = plan_of(s);  // make_room may have preempted others (and dropped their plans)
        if (pl) {
            pl->n_tokens += take;
            pl->wants_logits = s->n_computed + pl->n_tokens == int64_t(s->tokens.size());
        } else {
            plan_.push_back({s, take, s->n_computed + take == int64_t(s->tokens.size())});
        }
        budget -= take;
    }
}

bool scheduler::ensure_free_pages(int32_t n, int32_t n_packed) {
    auto enough = [&] { return kv_.pool().n_free() >= n && kv_.pool().n_free_packed() >= n_packed; };
    if (enough()) return true;
    if (cache_) metrics_.prefix_evicted_pages += cache_->evict_until_free(n, n_packed);
    return enough();
}

// Starts a sequence (no pages yet) from the longest cached prefix of its tokens.
void scheduler::attach_cached_prefix(sequence* s) {
    request_state* r = s->req;
    if (!cache_ || s->n_computed != 0 || s->recomputes() || r->params.embed) return;
    const int64_t ps = kv_.config().page_size;
    const int64_t n = int64_t(s->tokens.size());
    std::vector<int32_t> pages = cache_->match(r->params.cache_salt, s->tokens.data(), n, shareable_pages(s));
    // KIVI: only a prefix whose last pages (what the next query reads in full precision) are
    // still full pages.
    pages.resize(size_t(kv_.kivi_usable_prefix(pages.data(), int64_t(pages.size()))));
    kv_.seq_attach(s->kv_seq, pages);
    s->n_computed = int64_t(pages.size()) * ps;
    s->n_registered_pages = int64_t(pages.size());
    groups_.seq_trim(s->kv_seq, s->n_computed);  // a sliding sequence keeps only what its next rows read
    if (!r->admitted_once) {
        metrics_.prefix_queried_tokens += r->n_prompt;
        metrics_.prefix_hit_tokens += std::min(s->n_computed, r->n_prompt);
        r->cached_tokens = std::min(s->n_computed, r->n_prompt);
    }
}

int64_t scheduler::shareable_pages(const sequence* s) const {
    if (s->recomputes()) return 0;
    const int64_t ps = kv_.config().page_size;
    // At least the last token is computed (its logits are needed), and only pages whose KV a
    // dense cache would hold too (a policy's dense prefix) are shared.
    return std::min<int64_t>((int64_t(s->tokens.size()) - 1) / ps, dense_prefix_tokens(s) / ps);
}

int64_t scheduler::dense_prefix_tokens(const sequence* s) const {
    // A Quest prompt is read densely however it is chunked (batch::prompt): its KV is a dense
    // cache's, past the budget too. Generated tokens past the budget selected what they read.
    if (s->quest()) return std::max<int64_t>(s->policy().dense_prefix_tokens(), s->req->n_prompt);
    return s->policy().dense_prefix_tokens();
}

void scheduler::register_full_pages(sequence* s) {
    if (!cache_ || s->kv_seq < 0 || s->recomputes()) return;
    const int64_t ps = kv_.config().page_size;
    // Only pages within the policy's dense prefix: past it, a policy's KV differs from a dense
    // cache's (and a sliding sequence drops its pages).
    const int64_t full = std::min<int64_t>(s->n_computed, dense_prefix_tokens(s)) / ps;
    if (full <= s->n_registered_pages) return;
    // Logical pages [0, full), wherever they sit in a sliding table; stop at a dropped one.
    std::vector<int32_t>& pages = page_scratch_;
    pages.clear();
    for (int64_t lp = 0; lp < full && kv_.seq_holds(s->kv_seq, lp * ps); ++lp) pages.push_back(kv_.page_of(s->kv_seq, lp * ps));
    if (int64_t(pages.size()) <= s->n_registered_pages) return;
    cache_->insert(s->req->params.cache_salt, s->tokens.data(), pages.data(), int64_t(pages.size()));
    s->n_registered_pages = int64_t(pages.size());
}

// Index of the waiting sequence to admit next: the front, unless a fresh request within the
// LPM window has a longer cached prefix (and the front has not been passed over too often).
size_t scheduler::pick_waiting() {
    sequence* front = waiting_.front();
    if (!cache_ || cfg_.lpm_window <= 1 || front->n_generated > 0 || front->skipped >= cfg_.lpm_max_skips) return 0;
    auto cached_pages = [&](sequence* s) {
        const int64_t n = int64_t(s->tokens.size());
        return int64_t(cache_->match(s->req->params.cache_salt, s->tokens.data(), n, shareable_pages(s)).size());
    };
    size_t best = 0;
    int64_t best_len = cached_pages(front);
    const size_t window = std::min(waiting_.size(), size_t(cfg_.lpm_window));
    for (size_t i = 1; i < window; ++i) {
        sequence* s = waiting_[i];
        if (s->n_generated > 0) continue;  // preempted sequences keep their place
        const int64_t len = cached_pages(s);
        if (len > best_len) best = i, best_len = len;
    }
    for (size_t i = 0; i < best; ++i) ++waiting_[i]->skipped;
    return best;
}

// True if a running sequence is about to compute full pages of this sequence's prefix that are
// not cached yet: admitting it now would compute them twice, waiting a step or two reuses them.
bool scheduler::waits_for_inflight_prefix(sequence* s) {
    if (!cache_ || s->n_generated > 0 || s->req->params.embed) return false;
    const int64_t ps = kv_.config().page_size;
    const int64_t n = int64_t(s->tokens.size());
    const int64_t max_pages = shareable_pages(s);
    if (max_pages == 0) return false;
    const int64_t cached = int64_t(cache_->match(s->req->params.cache_salt, s->tokens.data(), n, max_pages).size());
    for (const sequence* r : running_) {
        if (r->req->params.cache_salt != s->req->params.cache_salt || r->recomputes()) continue;
        // Only the pages the running sequence will register (its dense prefix).
        const int64_t limit = std::min({max_pages * ps, int64_t(r->tokens.size()), dense_prefix_tokens(r) / ps * ps});
        int64_t common = 0;
        while (common < limit && r->tokens[size_t(common)] == s->tokens[size_t(common)]) ++common;
        if (common / ps > cached) return true;
    }
    return false;
}

// Running sequences plus the siblings that running n > 1 parents will still fork.
int32_t scheduler::slots_in_use() const {
    int32_t n = int32_t(running_.size());
    for (const sequence* s : running_)
        if (s->index == 0 && !s->req->forked) n += std::max(s->req->params.n, s->req->params.beam_width) - 1;
    for (const auto& g : beams_) n += g->width();
    return n;
}

void scheduler::admit_waiting(int64_t& budget) {
    const int32_t watermark = running_.empty() ? 0 : std::max<int32_t>(1, kv_.pool().n_pages() / 100);
    std::vector<sequence*> deferred;  // wait for a running sequence's prefix pages
    while (!waiting_.empty() && budget > 0 && slots_in_use() < cfg_.max_seqs) {
        const size_t at = pick_waiting();
        sequence* s = waiting_[at];
        if (waits_for_inflight_prefix(s)) {
            deferred.push_back(s);
            waiting_.erase(waiting_.begin() + long(at));
            continue;
        }
        // A request with n > 1 completions keeps room for the siblings it will fork.
        const int32_t slots = s->req->params.beam_width > 0                ? s->req->params.beam_width
                              : (s->index == 0 && !s->req->forked) ? s->req->params.n - s->req->n_finished
                                                                   : 1;
        if (slots_in_use() + slots > cfg_.max_seqs) break;
        if (s->kv_seq < 0) start_kv_sequence(s);
        attach_cached_prefix(s);
        const int64_t need = int64_t(s->tokens.size()) - s->n_computed;
        const int64_t take = s->h2o()     ? h2o_take(s)
                             : s->quest() ? std::min({need, budget, cfg_.prefill_chunk, quest_cap(s)})
                                          : std::min({need, budget, cfg_.prefill_chunk});
        if (take > budget) break;  // an H2O chunk that does not fit: wait for the next step
        const int32_t pages = kv_.pages_to_reserve(s->kv_seq, s->slots_after(take));
        const int32_t packed = kv_.packed_to_reserve(s->kv_seq, s->slots_after(take));
        if (!ensure_free_pages(pages + watermark, packed) || !groups_.seq_reserve(s->kv_seq, s->slots_after(take))) {
            // Not now: give the cached pages back (they stay in the tree) and wait.
            groups_.seq_remove(s->kv_seq);
            s->kv_seq = -1;
            s->n_computed = 0;
            s->base = 0;
            s->n_registered_pages = 0;
            break;
        }
        s->req->admitted_once = true;
        waiting_.erase(waiting_.begin() + long(at));
        insert_by_order(running_, s);
        plan_.push_back({s, take, s->n_computed + take == int64_t(s->tokens.size())});
        budget -= take;
    }
    for (sequence* s : deferred) insert_by_order(waiting_, s);
}

void scheduler::start_kv_sequence(sequence* s) {
    s->kv_seq = groups_.seq_add(s->policy());
    if (s->recomputes()) {
        // The next token's window: the last W tokens, at slots and positions 0..W-1.
        s->base = std::max<int64_t>(0, int64_t(s->tokens.size()) - s->policy().size);
        s->n_computed = s->base;
    }
}

void scheduler::restart_window(sequence* s) {
    groups_.seq_remove(s->kv_seq);
    s->n_computed = 0;
    s->base = 0;
    start_kv_sequence(s);
}

void scheduler::fork_siblings(sequence* parent) {
    request_state* r = parent->req;
    r->forked = true;
    for (auto& s : r->seqs) {
        if (s.get() == parent || s->finished) continue;
        s->kv_seq = groups_.seq_fork(parent->kv_seq);
        s->n_computed = parent->n_computed;
        s->base = parent->base;
        s->n_registered_pages = parent->n_registered_pages;
        s->scheduled = true;
        insert_by_order(running_, s.get());
    }
}

const float* scheduler::masked_logits(const sequence* s, const float* logits) {
    const request_params& p = s->req->params;
    if (s->n_generated >= p.min_tokens || p.ignore_eos) return logits;
    // min_tokens: end-of-generation and stop tokens cannot be drawn yet.
    const int64_t n_vocab = model_.hparams().n_vocab;
    thread_local std::vector<float> masked;
    masked.assign(logits, logits + n_vocab);
    for (int64_t t = 0; t < n_vocab; ++t)
        if (tok_.is_eog(int32_t(t))) masked[size_t(t)] = -std::numeric_limits<float>::infinity();
    for (int32_t t : p.stop_token_ids)
        if (t >= 0 && t < n_vocab) masked[size_t(t)] = -std::numeric_limits<float>::infinity();
    return masked.data();
}

void scheduler::sample_and_emit(sequence* s, const float* logits) {
    const int32_t tok = s->smp.sample(masked_logits(s, logits), model_.hparams().n_vocab);
    emit_token(s, tok, logits);
}

bool scheduler::emit_token(sequence* s, int32_t tok, const float* logits) {
    const request_params& p = s->req->params;
    const int64_t n_vocab = model_.hparams().n_vocab;
    request_event ev;
    ev.index = s->index;
    if (p.n_logprobs >= 0) {
        token_logprobs lp;
        if (s->smp.logprobs(logits, n_vocab, tok, p.n_logprobs, &lp)) ev.logprobs.push_back(std::move(lp));
    }
    (void)s->smp.accept(tok);
    s->tokens.push_back(tok);
    ++s->n_generated;
    ++s->req->completion_tokens;
    ++metrics_.generated_tokens;
    ev.tokens.push_back(tok);

    const bool stop_token = (!p.ignore_eos && tok_.is_eog(tok)) ||
                            std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), tok) != p.stop_token_ids.end();
    finish_reason reason = finish_reason::none;
    bool stopped = false;
    if (stop_token && s->n_generated > p.min_tokens) {
        ev.text = s->stops.push(s->detok.flush(), &stopped);
        if (!stopped) ev.text += s->stops.flush();
        reason = finish_reason::stop;
    } else {
        ev.text = s->stops.push(s->detok.push(tok), &stopped);
        if (stopped) {
            reason = finish_reason::stop;
        } else if ((p.max_tokens > 0 && s->n_generated >= p.max_tokens) || reached_context(s)) {
            ev.text += s->stops.push(s->detok.flush(), &stopped);
            if (!stopped) ev.text += s->stops.flush();
            reason = stopped ? finish_reason::stop : finish_reason::length;
        }
    }
    if (reason != finish_reason::none) finish(s, reason, ev);
    else if (s->recomputes()) restart_window(s);  // the next token is computed afresh
    s->req->out->push(std::move(ev));
    return reason == finish_reason::none;
}

bool scheduler::reached_context(const sequence* s) const {
    // Dense: the sequence fills the context. Policies that run past it: with no max_tokens,
    // a context's worth of new tokens.
    if (!unbounded_by_ctx(s->policy())) return int64_t(s->tokens.size()) >= n_ctx_;
    return s->req->params.max_tokens < 0 && s->n_generated >= n_ctx_;
}

void scheduler::forget_finished_requests() {
    requests_.erase(std::remove_if(requests_.begin(), requests_.end(),
                                   [](const std::unique_ptr<request_state>& r) { return r->n_finished == r->params.n; }),
                    requests_.end());
}

result<bool> scheduler::step() {
    handle_cancellations();
    plan_.clear();
    // Decodes first, then running prompt chunks, then admissions — but while requests wait,
    // a share of the budget is held back for them, so that a short prompt (or one mostly
    // served from the prefix cache) starts within a step instead of queueing behind every
    // long prompt in progress. Whatever admission leaves goes back to the running chunks.
    int64_t budget = cfg_.max_batch_tokens;
    // Beam groups first: each live beam computes its last token (a group that gets no pages
    // for them ends with what it has).
    int64_t beam_rows = 0;
    std::vector<beam_group*> stepping;  // groups with rows in this pass (a group waits while its rows do not fit)
    for (auto& g : beams_) {
        if (beam_rows + int64_t(g->kv_seqs.size()) > cfg_.max_batch_tokens) continue;
        if (!beam_room(*g)) {
            finish_beams(*g, false);
            continue;
        }
        beam_rows += int64_t(g->kv_seqs.size());
        stepping.push_back(g.get());
    }
    beams_.erase(std::remove_if(beams_.begin(), beams_.end(), [](const std::unique_ptr<beam_group>& g) { return g->kv_seqs.empty(); }),
                 beams_.end());
    budget = std::max<int64_t>(0, budget - beam_rows);
    schedule_running(budget, false);
    const int64_t reserve = waiting_.empty() ? 0 : std::min(budget, cfg_.admission_reserve);
    int64_t prefill_budget = budget - reserve;
    schedule_running(prefill_budget, true);
    budget = prefill_budget + reserve;
    admit_waiting(budget);
    schedule_running(budget, true);
    if (plan_.empty() && stepping.empty()) {
        forget_finished_requests();
        return !beams_.empty();
    }
    // Speculation: decode rows of speculating sequences become draft-and-verify cycles, grouped
    // by drafter (an exit layer, or the draft model), while the load is light.
    status spec_status = status::ok();
    if (spec_state_ && int32_t(running_.size()) <= cfg_.spec_max_running) {
        std::vector<sequence*> cycling;
        for (auto it = plan_.begin(); it != plan_.end();) {
            if (it->n_tokens == 1 && it->wants_logits && prepare_speculation(it->seq)) {
                it->seq->spec_slot = int32_t(cycling.size());
                cycling.push_back(it->seq);
                it = plan_.erase(it);
            } else {
                ++it;
            }
        }
        while (!cycling.empty()) {
            const int32_t exit_layer = cycling.front()->spec().exit_layer;
            std::vector<sequence*> group;
            for (auto it = cycling.begin(); it != cycling.end();)
                if ((*it)->spec().exit_layer == exit_layer) group.push_back(*it), it = cycling.erase(it);
                else ++it;
            if (status st = speculate(group); !st) {
                for (sequence* g : group) {
                    if (g->finished) continue;
                    request_event ev;
                    ev.index = g->index;
                    ev.error = st.message();
                    finish(g, finish_reason::error, ev);
                    g->req->out->push(std::move(ev));
                }
                spec_status = st;
            }
        }
        if (plan_.empty() && stepping.empty()) {
            ++metrics_.steps;
            forget_finished_requests();
            if (!spec_status) return spec_status;
            return true;
        }
    }
    batch_.clear();
    for (const planned& pl : plan_) {
        sequence* s = pl.seq;
        for (int64_t i = 0; i < pl.n_tokens; ++i) {
            const int64_t t = s->n_computed + i;  // token index; its slot and position count from base
            batch_.add(s->tokens[size_t(t)], int32_t(t - s->base), s->kv_seq, pl.wants_logits && i == pl.n_tokens - 1,
                       int32_t(s->slots_after(i)));
            batch_.prompt.push_back(t < s->req->n_prompt ? 1 : 0);
        }
    }
    for (const beam_group* g : stepping) {
        const auto& live = g->search.live();
        for (size_t i = 0; i < live.size(); ++i) {
            const int32_t t = int32_t(g->prompt.size() + live[i].tokens.size()) - 1;  // the beam's last token
            batch_.add(live[i].tokens.back(), t, g->kv_seqs[i], true, t);
            batch_.prompt.push_back(0);
        }
    }
    bool any_embed = false;
    for (const planned& pl : plan_) any_embed |= pl.seq->req->params.embed;
    layer_span full;
    if (any_embed) full.hidden_out = hidden_.data();
    status st = model_.forward(batch_, groups_, *state_, pool_, nullptr, full);
    if (!st) {
        // An internal failure: fail the requests of this step, keep serving the others.
        for (const planned& pl : plan_) {
            if (pl.seq->finished) continue;
            request_event ev;
            ev.index = pl.seq->index;
            ev.error = st.message();
            finish(pl.seq, finish_reason::error, ev);
            pl.seq->req->out->push(std::move(ev));
        }
        for (auto& g : beams_) finish_beams(*g, true);
        beams_.clear();
        forget_finished_requests();
        return st;
    }
    ++metrics_.steps;
    if (!state_->last_cascade_plan().empty()) {
        ++metrics_.cascade_steps;
        for (const auto& g : state_->last_cascade_plan().groups) metrics_.cascade_rows += int64_t(g.rows.size());
    }
    const int64_t n_vocab = model_.hparams().n_vocab;
    int64_t row = 0, batch_row = 0;
    for (const planned& pl : plan_) {
        sequence* s = pl.seq;
        const bool prompt_part = s->n_computed < s->req->n_prompt;
        s->n_computed += pl.n_tokens;
        batch_row += pl.n_tokens;
        if (s->req->params.embed) {
            register_full_pages(s);
            metrics_.prompt_tokens += pl.n_tokens;
            if (pl.wants_logits) ++row;
            pool_embedding(s, batch_row - pl.n_tokens, pl.n_tokens);
            continue;
        }
        register_full_pages(s);
        groups_.seq_trim(s->kv_seq, s->slots_after(0));  // sliding policies: pages no later row reads
        if (prompt_part) metrics_.prompt_tokens += std::min(pl.n_tokens, s->req->n_prompt - (s->n_computed - pl.n_tokens));
        if (!pl.wants_logits) continue;
        const float* logits = state_->logits() + row * n_vocab;
        ++row;
        if (s->req->params.beam_width > 0) {  // the prompt's logits start the beams
            start_beams(s, logits);
            continue;
        }
        if (s->index == 0 && s->req->params.n > 1 && !s->req->forked) {
            fork_siblings(s);
            for (auto& sib : s->req->seqs)
                if (sib.get() != s && !sib->finished) sample_and_emit(sib.get(), logits);
        }
        sample_and_emit(s, logits);
    }
    // The groups that had rows in this pass (groups started above come after them) advance from
    // their rows' logits, which follow the plan's.
    for (beam_group* g : stepping) {
        const int64_t rows = int64_t(g->kv_seqs.size());
        advance_beams(*g, state_->logits() + row * n_vocab, n_vocab);
        row += rows;
    }
    beams_.erase(std::remove_if(beams_.begin(), beams_.end(), [](const std::unique_ptr<beam_group>& g) { return g->kv_seqs.empty(); }),
                 beams_.end());
    forget_finished_requests();
    if (!spec_status) return spec_status;
    if (cache_) metrics_.prefix_cached_pages = cache_->n_pages();
    metrics_.kv_pages_by_policy.fill(0);
    for (const sequence* s : running_)
        if (s->kv_seq >= 0) metrics_.kv_pages_by_policy[size_t(s->policy().kind)] += int64_t(kv_.seq_pages(s->kv_seq).size());
    return true;
}

bool scheduler::prepare_speculation(sequence* s) {
    const speculative_params& sp = s->spec();
    if (!sp.on() || s->finished || s->recomputes() || s->h2o() || s->quest() || kv_.kivi()) return false;
    if (sp.exit_layer == 0 && !draft_.model) return false;
    if (s->n_computed < s->req->n_prompt || s->n_computed + 1 != int64_t(s->tokens.size())) return false;  // not decoding
    const request_params& p = s->req->params;
    // Drafts past the end are wasted: a cycle emits at most n_draft + 1 tokens.
    int64_t n_draft = sp.draft_tokens;
    if (p.max_tokens > 0) n_draft = std::min<int64_t>(n_draft, p.max_tokens - s->n_generated - 1);
    if (!unbounded_by_ctx(s->policy())) n_draft = std::min<int64_t>(n_draft, n_ctx_ - int64_t(s->tokens.size()));
    if (n_draft < 1) return false;
    // Pages for the drafts' rows, without preempting anyone (speculation only where it is free).
    const int64_t begin = s->slots_after(0), end = s->slots_after(n_draft + 1);
    if (!groups_.seq_reserve(s->kv_seq, end) || !groups_.seq_prepare_write(s->kv_seq, begin, end)) {
        groups_.seq_rollback(s->kv_seq, s->slots_after(1));
        return false;
    }
    if (sp.exit_layer == 0) {
        // The draft model's rows: its catch-up to the pending token, then the drafts but the last.
        kv_cache& dkv = *draft_.kv;
        if (s->draft_kv_seq < 0) {
            s->draft_kv_seq = dkv.seq_add();
            dkv.seq_set_policy(s->draft_kv_seq, s->policy());
            s->draft_computed = 0;
        }
        const int64_t dend = s->n_computed - s->base + n_draft;
        const int64_t dbegin = s->draft_computed - s->base;
        if (!dkv.seq_reserve(s->draft_kv_seq, dend) || !dkv.seq_prepare_write(s->draft_kv_seq, dbegin, dend)) {
            dkv.seq_rollback(s->draft_kv_seq, dbegin);
            groups_.seq_rollback(s->kv_seq, s->slots_after(1));
            return false;
        }
    }
    s->n_draft = int32_t(n_draft);
    return true;
}

namespace {
// The largest softmax probability of a logit row (the draft's confidence, temperature 1).
float top_probability(const float* logits, int64_t n) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < n; ++t) mx = std::max(mx, logits[t]);
    if (!std::isfinite(mx)) return 1.0f;
    double sum = 0.0;
    for (int64_t t = 0; t < n; ++t) sum += std::exp(double(logits[t]) - double(mx));
    return float(1.0 / sum);
}
}  // namespace

status scheduler::draft_catch_up(const std::vector<sequence*>& group) {
    // The draft model computes the tokens the target accepted since its last cycle (the whole
    // prompt at the first), in passes of at most its state's rows, up to the pending token.
    for (;;) {
        spec_batch_.clear();
        const int64_t cap = draft_state_->max_tokens();
        for (sequence* s : group) {
            const int64_t pending = s->n_computed;  // the pending token's index
            while (s->draft_computed + 0 < pending && spec_batch_.size() < cap) {
                const int64_t t = s->draft_computed;
                spec_batch_.add(s->tokens[size_t(t)], int32_t(t - s->base), s->draft_kv_seq, false, int32_t(t - s->base));
                ++s->draft_computed;
            }
        }
        if (spec_batch_.size() == 0) return status::ok();
        KVS_TRY(draft_.model->forward(spec_batch_, *draft_.kv, *draft_state_, pool_));
    }
}

status scheduler::speculate(const std::vector<sequence*>& group) {
    using clock = std::chrono::steady_clock;
    const auto& hp = model_.hparams();
    const int64_t d = hp.n_embd, n_vocab = hp.n_vocab;
    const int32_t exit_layer = group.front()->spec().exit_layer;
    const bool self = exit_layer > 0;
    const int64_t rows_per_seq = k_max_draft_tokens + 1;
    auto t0 = clock::now();
    for (sequence* s : group) {
        s->drafts.clear();
        if (s->draft_smp) *s->draft_smp = s->smp;  // copy-assign: reuses its tables
        else s->draft_smp.emplace(s->smp);
        // The draft draws independently of the target's stream.
        s->draft_smp->reseed(s->smp.params().seed ^ (0x9e3779b97f4a7c15ull * (++s->n_cycles)));
    }
    if (!self) KVS_TRY(draft_catch_up(group));

    // Draft passes: pass j computes row j of every sequence (the pending token, then draft j)
    // and, while drafts remain, drafts token j + 1 from its logits.
    for (int32_t j = 0;; ++j) {
        spec_batch_.clear();
        std::vector<sequence*> rows;
        for (sequence* s : group) {
            if (j > s->n_draft || (!self && j == s->n_draft)) continue;  // the draft model needs its last draft's KV only later
            const int64_t t = s->n_computed + j;
            const int32_t tok = j == 0 ? s->tokens[size_t(t)] : s->drafts[size_t(j - 1)];
            const int32_t kv_seq = self ? s->kv_seq : s->draft_kv_seq;
            spec_batch_.add(tok, int32_t(t - s->base), kv_seq, j < s->n_draft, int32_t(s->slots_after(j)));
            rows.push_back(s);
        }
        if (rows.empty()) break;
        if (self) {
            layer_span span;
            span.end = exit_layer;
            span.hidden_out = spec_hidden_rows_.data();
            KVS_TRY(model_.forward(spec_batch_, groups_, *spec_state_, pool_, nullptr, span));
        } else {
            KVS_TRY(draft_.model->forward(spec_batch_, *draft_.kv, *draft_state_, pool_));
            for (sequence* s : rows) s->draft_computed = s->n_computed + j + 1;
        }
        const float* logits = self ? spec_state_->logits() : draft_state_->logits();
        int64_t lrow = 0;
        for (size_t r = 0; r < rows.size(); ++r) {
            sequence* s = rows[r];
            if (self)
                std::copy_n(spec_hidden_rows_.data() + int64_t(r) * d, d,
                            spec_hidden_.data() + (int64_t(s->spec_slot) * rows_per_seq + j) * d);
            if (!spec_batch_.want_logits[r]) continue;
            const float* lg = logits + (lrow++) * n_vocab;
            sampler& ds = *s->draft_smp;
            int32_t tok;
            if (ds.params().temperature <= k_greedy_temperature) {
                tok = ds.sample(lg, n_vocab);
            } else {
                float* q = spec_q_.data() + (int64_t(s->spec_slot) * k_max_draft_tokens + j) * n_vocab;
                ds.distribution(lg, n_vocab, q);
                tok = sample_from_probs(q, n_vocab, ds.uniform());
            }
            (void)ds.accept(tok);
            s->drafts.push_back(tok);
            if (s->spec().min_draft_p > 0.0f && int32_t(s->drafts.size()) < s->n_draft &&
                top_probability(lg, n_vocab) < s->spec().min_draft_p)
                s->n_draft = int32_t(s->drafts.size());  // unsure: this draft is the cycle's last
        }
    }
    auto t1 = clock::now();
    metrics_.spec_draft_seconds += std::chrono::duration<double>(t1 - t0).count();

    // Verification: rows 0..n_draft of every sequence in one pass of the target (self: layers
    // [E, L) from the exit hidden states), logits on every row.
    spec_batch_.clear();
    for (sequence* s : group) {
        for (int32_t j = 0; j <= s->n_draft; ++j) {
            const int64_t t = s->n_computed + j;
            const int32_t tok = j == 0 ? s->tokens[size_t(t)] : s->drafts[size_t(j - 1)];
            if (self)
                std::copy_n(spec_hidden_.data() + (int64_t(s->spec_slot) * rows_per_seq + j) * d, d,
                            spec_hidden_rows_.data() + spec_batch_.size() * d);
            spec_batch_.add(tok, int32_t(t - s->base), s->kv_seq, true, int32_t(s->slots_after(j)));
        }
    }
    if (self) {
        layer_span span;
        span.begin = exit_layer;
        span.hidden_in = spec_hidden_rows_.data();
        KVS_TRY(model_.forward(spec_batch_, groups_, *spec_state_, pool_, nullptr, span));
    } else {
        KVS_TRY(model_.forward(spec_batch_, groups_, *spec_state_, pool_));
    }
    metrics_.spec_verify_seconds += std::chrono::duration<double>(clock::now() - t1).count();
    int64_t row = 0;
    for (sequence* s : group) {
        accept_drafts(s, spec_state_->logits() + row * n_vocab, n_vocab);
        row += 1 + int64_t(s->drafts.size());
    }
    return status::ok();
}

// Emits the target's verdict on one sequence's drafts and rolls back the rejected rows.
// `logits`: (n_draft + 1, n_vocab), row j the target's distribution after row j's token.
void scheduler::accept_drafts(sequence* s, const float* logits, int64_t n_vocab) {
    const int64_t n0 = s->n_computed;  // the pending token's index (row 0)
    const int32_t n_draft = int32_t(s->drafts.size());
    const bool greedy = s->smp.params().temperature <= k_greedy_temperature;
    int32_t emitted = 0, accepted = 0;
    bool running = true;
    for (int32_t j = 0; j <= n_draft && running; ++j) {
        const float* lg = logits + int64_t(j) * n_vocab;
        const float* target = masked_logits(s, lg);
        int32_t tok;
        bool keep;
        if (greedy || j == n_draft) {
            // Greedy: the target's own choice, and a draft survives iff it is that choice. After
            // the last draft, the target's next token (greedy or drawn) comes free.
            tok = s->smp.sample(target, n_vocab);
            keep = j < n_draft && tok == s->drafts[size_t(j)];
        } else {
            s->smp.distribution(target, n_vocab, spec_p_.data());
            const float* q = spec_q_.data() + (int64_t(s->spec_slot) * k_max_draft_tokens + j) * n_vocab;
            const double u_accept = s->smp.uniform(), u_resample = s->smp.uniform();
            const spec_verdict v = speculative_accept(spec_p_.data(), q, n_vocab, s->drafts[size_t(j)], u_accept, u_resample);
            tok = v.token;
            keep = v.accepted;
        }
        ++emitted;
        accepted += keep ? 1 : 0;
        running = emit_token(s, tok, lg);
        if (!keep) break;
    }
    ++metrics_.spec_cycles;
    metrics_.spec_drafted += n_draft;
    metrics_.spec_accepted += accepted;
    metrics_.spec_emitted += emitted;
    if (!running) return;  // finished: its pages are gone
    // Rows 0..emitted-1 hold the pending token and the accepted drafts; the rest roll back.
    s->n_computed = n0 + emitted;
    groups_.seq_rollback(s->kv_seq, s->slots_after(0));
    if (s->draft_kv_seq >= 0) {
        s->draft_computed = std::min(s->draft_computed, s->n_computed);
        draft_.kv->seq_rollback(s->draft_kv_seq, s->draft_computed - s->base);
        draft_.kv->seq_trim(s->draft_kv_seq, s->draft_computed - s->base);
    }
    register_full_pages(s);
    groups_.seq_trim(s->kv_seq, s->slots_after(0));
}

void scheduler::start_beams(sequence* s, const float* logits) {
    request_state* r = s->req;
    const request_params& p = r->params;
    auto is_end = [this, &p](int32_t t) {
        return tok_.is_eog(t) || std::find(p.stop_token_ids.begin(), p.stop_token_ids.end(), t) != p.stop_token_ids.end();
    };
    // max_tokens < 0: until the context is full.
    const int64_t max_new = p.max_tokens > 0 ? p.max_tokens : n_ctx_ - int64_t(s->tokens.size());
    auto g = std::make_unique<beam_group>(r, s->tokens, beam_search(p.beam_width, p.length_penalty, max_new, p.min_tokens, p.ignore_eos, is_end));
    const auto ext = g->search.step({logits}, model_.hparams().n_vocab);
    for (size_t i = 0; i < ext.size(); ++i) g->kv_seqs.push_back(groups_.seq_fork(s->kv_seq));
    // The prompt sequence hands its pages to the beams and leaves the running set.
    s->finished = true;
    release(s);
    metrics_.generated_tokens += int64_t(ext.size());
    if (g->search.done()) {
        finish_beams(*g, false);
        return;
    }
    beams_.push_back(std::move(g));
}

bool scheduler::beam_room(beam_group& g) {
    const auto& live = g.search.live();
    for (size_t i = 0; i < live.size(); ++i) {
        const int64_t slot = int64_t(g.prompt.size() + live[i].tokens.size()) - 1;
        for (;;) {
            if (groups_.seq_reserve(g.kv_seqs[i], slot + 1) && groups_.seq_prepare_write(g.kv_seqs[i], slot, slot + 1)) break;
            // Cached pages nobody uses first, then the newest running sequence (beams are never
            // preempted); with neither, the group cannot continue.
            if (ensure_free_pages(kv_.pages_to_reserve(g.kv_seqs[i], slot + 1) + 1) && groups_.seq_reserve(g.kv_seqs[i], slot + 1) &&
                groups_.seq_prepare_write(g.kv_seqs[i], slot, slot + 1))
                break;
            if (running_.empty()) return false;
            preempt(running_.back());
        }
    }
    return true;
}

void scheduler::advance_beams(beam_group& g, const float* logits, int64_t n_vocab) {
    std::vector<const float*> rows;
    for (size_t i = 0; i < g.kv_seqs.size(); ++i) rows.push_back(logits + int64_t(i) * n_vocab);
    const auto ext = g.search.step(rows, n_vocab);
    metrics_.generated_tokens += int64_t(ext.size());
    // Each new beam continues its parent's KV: a fork shares every page (the partial last page
    // is copied when the beam writes it); the old sequences then go, freeing what only dropped
    // beams held.
    std::vector<int32_t> next;
    for (const auto& e : ext) next.push_back(groups_.seq_fork(g.kv_seqs[size_t(e.parent)]));
    for (int32_t k : g.kv_seqs) groups_.seq_remove(k);
    g.kv_seqs = std::move(next);
    if (g.search.done()) finish_beams(g, false);
}

void scheduler::finish_beams(beam_group& g, bool cancelled) {
    for (int32_t k : g.kv_seqs) groups_.seq_remove(k);
    g.kv_seqs.clear();
    request_state* r = g.req;
    if (r->n_finished == r->params.n) return;
    const request_params& p = r->params;
    // A group cut short (no pages for its next step) ends its live beams as they are.
    std::vector<beam_hypothesis> best = g.search.best(p.n);
    if (!cancelled && int32_t(best.size()) < p.n) {
        for (const auto& b : g.search.live()) {
            if (int32_t(best.size()) >= p.n) break;
            best.push_back({b.tokens, b.cum_logprob, b.cum_logprob, false});
        }
    }
    int64_t completion_tokens = 0;
    std::vector<request_event> events;  // pushed once the usage is set (a client may read it on the last event)
    for (int32_t i = 0; i < p.n; ++i) {
        request_event ev;
        ev.index = i;
        if (cancelled || size_t(i) >= best.size()) {
            ev.finish = cancelled ? finish_reason::cancelled : finish_reason::length;
            events.push_back(std::move(ev));
            continue;
        }
        const beam_hypothesis& h = best[size_t(i)];
        std::vector<int32_t> shown = h.tokens;
        if (h.ended) shown.pop_back();  // the ending token is not part of the text
        detok_stream d(tok_);
        d.push(g.prompt.back());  // the text continues the prompt (keeps a leading space)
        d.flush();
        for (int32_t t : shown) ev.text += d.push(t);
        ev.text += d.flush();
        ev.finish = h.ended ? finish_reason::stop : finish_reason::length;
        // Stop strings cut the finished text at their first occurrence.
        size_t cut = std::string::npos;
        for (const std::string& stop : p.stop)
            if (!stop.empty()) cut = std::min(cut, ev.text.find(stop));
        if (cut != std::string::npos) {
            ev.text.resize(cut);
            ev.finish = finish_reason::stop;
        }
        ev.tokens = h.tokens;
        completion_tokens += int64_t(h.tokens.size());
        events.push_back(std::move(ev));
    }
    r->completion_tokens = completion_tokens;
    r->n_finished = p.n;
    request_usage u;
    u.prompt_tokens = r->n_prompt;
    u.completion_tokens = completion_tokens;
    u.cached_tokens = r->cached_tokens;
    r->out->set_usage(u);
    for (request_event& ev : events) r->out->push(std::move(ev));
    if (cancelled) ++metrics_.requests_cancelled;
    else ++metrics_.requests_finished;
}

void scheduler::pool_embedding(sequence* s, int64_t row, int64_t n) {
    const auto& hp = model_.hparams();
    const int64_t d = hp.n_embd;
    const pooling_type pooling = s->req->params.pooling;
    if (s->pooled.empty()) s->pooled.assign(size_t(d), 0.0);
    std::vector<float> normed(static_cast<size_t>(d));
    const int64_t first = s->n_computed - n;  // token index of the first row
    for (int64_t i = 0; i < n; ++i) {
        const int64_t t = first + i;
        const bool take = pooling == pooling_type::mean || (pooling == pooling_type::cls && t == 0) ||
                          (pooling == pooling_type::last && t + 1 == int64_t(s->tokens.size()));
        if (!take) continue;
        model_.final_norm(hidden_.data() + (row + i) * d, normed.data());
        for (int64_t j = 0; j < d; ++j) s->pooled[size_t(j)] += normed[size_t(j)];
        ++s->n_pooled;
    }
    if (s->n_computed < int64_t(s->tokens.size())) return;
    request_event ev;
    ev.index = s->index;
    double norm = 0;
    for (double& v : s->pooled) {
        v /= double(std::max<int64_t>(1, s->n_pooled));
        norm += v * v;
    }
    norm = std::sqrt(norm);
    ev.embedding.resize(size_t(d));
    for (int64_t j = 0; j < d; ++j) ev.embedding[size_t(j)] = float(norm > 0 ? s->pooled[size_t(j)] / norm : 0.0);
    finish(s, finish_reason::stop, ev);
    s->req->out->push(std::move(ev));
}

void scheduler::drop_prefix_cache() {
    if (!cache_) return;
    cache_->clear();
    metrics_.prefix_cached_pages = cache_->n_pages();
}

status scheduler::check_integrity() const {
    std::vector<int32_t> tree_pages;
    if (cache_) {
        KVS_TRY(cache_->check_integrity());
        cache_->collect_pages(tree_pages);
    }
    KVS_TRY(groups_.check_integrity(tree_pages));
    for (const sequence* s : running_) {
        if (s->kv_seq < 0 || !kv_.seq_exists(s->kv_seq)) return status::error("a running sequence has no KV sequence");
        if (kv_.seq_capacity(s->kv_seq) < s->slots_after(0)) return status::error("a running sequence holds fewer pages than its computed tokens need");
        if (kv_.seq_policy(s->kv_seq) != s->policy()) return status::error("a running sequence's KV table has another policy");
        // Between steps a sliding sequence holds at most its policy's bound for one token.
        const int32_t bound = kv_cache::policy_page_bound(s->policy(), 1, kv_.config().page_size);
        if (s->policy().slides() && int32_t(kv_.seq_pages(s->kv_seq).size()) > bound)
            return status::error(strfmt("a %s sequence holds %zu pages, more than its bound %d", s->policy().spec().c_str(),
                                        kv_.seq_pages(s->kv_seq).size(), bound));
        // Between steps an H2O sequence holds its region of heavy + recent slots, no more.
        const int32_t h2o_bound = kv_cache::pages_for(s->policy().heavy + s->policy().recent, kv_.config().page_size);
        if (s->h2o() && int32_t(kv_.seq_pages(s->kv_seq).size()) > h2o_bound)
            return status::error(strfmt("a %s sequence holds %zu pages, more than its bound %d", s->policy().spec().c_str(),
                                        kv_.seq_pages(s->kv_seq).size(), h2o_bound));
        if (s->finished) return status::error("a finished sequence is still running");
    }
    for (const sequence* s : waiting_) {
        if (s->kv_seq >= 0 && !kv_.seq_pages(s->kv_seq).empty()) return status::error("a waiting sequence holds pages");
        if (s->n_computed != 0) return status::error("a waiting sequence has computed tokens");
    }
    if (draft_.kv) {
        KVS_TRY(draft_.kv->check_integrity());
        for (const sequence* s : running_)
            if (s->draft_kv_seq >= 0 && draft_.kv->seq_capacity(s->draft_kv_seq) < s->draft_computed - s->base)
                return status::error("a running sequence's draft cache holds fewer pages than its drafted tokens need");
        for (const sequence* s : waiting_)
            if (s->draft_kv_seq >= 0) return status::error("a waiting sequence holds draft-model pages");
        int32_t draft_seqs = 0;
        for (const sequence* s : running_) draft_seqs += s->draft_kv_seq >= 0;
        if (draft_seqs == 0 && draft_.kv->pool().n_used() != 0)
            return status::error(strfmt("no sequence holds draft-model pages, but %d are in use (leak)", draft_.kv->pool().n_used()));
    }
    for (const auto& g : beams_) {
        if (g->kv_seqs.size() != g->search.live().size()) return status::error("a beam group's KV sequences and live beams differ in number");
        for (size_t i = 0; i < g->kv_seqs.size(); ++i) {
            if (!kv_.seq_exists(g->kv_seqs[i])) return status::error("a live beam has no KV sequence");
            const int64_t computed = int64_t(g->prompt.size() + g->search.live()[i].tokens.size()) - 1;
            if (kv_.seq_capacity(g->kv_seqs[i]) < computed) return status::error("a live beam holds fewer pages than its tokens need");
        }
    }
    const int64_t cached_only = cache_ ? cache_->n_cached_only() : 0;
    if (running_.empty() && beams_.empty() && kv_.pool().n_used() != cached_only)
        return status::error(strfmt("no sequence runs, but %d pages are in use and only %lld are cached (leak)", kv_.pool().n_used(),
                                    (long long)cached_only));
    return status::ok();
}

}  // namespace kvs
