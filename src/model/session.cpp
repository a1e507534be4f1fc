#include "model/session.h"

#include <algorithm>
#include <cstring>

namespace kvs {

result<std::unique_ptr<session>> session::create(const language_model& model, thread_pool& pool, const session_params& p) {
    std::unique_ptr<session> s(new session(model, pool));
    s->policy_ = p.policy;
    s->n_ctx_ = p.n_ctx > 0 ? p.n_ctx : model.hparams().n_ctx_train;
    if (s->n_ctx_ > (int64_t(1) << 24)) return status::error(strfmt("context length %lld is too large", (long long)s->n_ctx_));
    if (p.page_size <= 0) return status::error("page size must be positive");
    const kv_policy& pol = p.policy;
    const bool h2o = pol.kind == kv_policy_kind::h2o;
    if (model.hparams().deepseek2()) {
        if (p.kivi.bits) return status::error("KIVI pages are not supported on deepseek2 models");
    }
    s->bounded_ = !(pol.slides() || pol.kind == kv_policy_kind::recompute || h2o);
    // Tokens per forward pass: a recompute pass is one window.
    const int64_t span = pol.kind == kv_policy_kind::recompute ? pol.size : s->n_ctx_;
    s->n_batch_ = std::clamp<int64_t>(p.n_batch, 1, s->bounded_ ? s->n_ctx_ : std::max(p.n_batch, int64_t(1)));
    if (pol.kind == kv_policy_kind::recompute) s->n_batch_ = std::max<int64_t>(s->n_batch_, pol.size);
    // Pool: the whole context (dense), the policy's bound for a chunk (window, streaming),
    // one window (recompute), or H2O's region plus one chunk.
    const int32_t n_pages = pol.slides() ? kv_cache::policy_page_bound(pol, s->n_batch_, p.page_size)
                            : h2o        ? kv_cache::pages_for(pol.heavy + pol.recent + s->n_batch_, p.page_size)
                                         : kv_cache::pages_for(span, p.page_size);
    const int32_t ps = p.kivi.bits ? p.kivi.group : p.page_size;  // KIVI: a page is one group
    if (ps <= 0 || ps > 4096) return status::error(strfmt("page size %d is out of range", ps));
    kv_config geom = model.kv_geometry(ps, p.kivi.bits ? 1 : n_pages, p.kv_type.value_or(model.auto_kv_type()));
    if (p.kv_v_type && *p.kv_v_type != geom.type) geom.v_type = p.kv_v_type;
    geom.key_bounds = pol.kind == kv_policy_kind::quest;
    geom.token_scores = h2o;
    if (p.kivi.bits) {
        if (pol.kind == kv_policy_kind::quest || h2o || pol.kind == kv_policy_kind::recompute)
            return status::error(strfmt("KIVI does not combine with the %s policy", pol.spec().c_str()));
        geom.kivi_bits = p.kivi.bits;
        geom.kivi_residual = p.kivi.residual;
        // The sequence's residual and one chunk in full precision; every page packed.
        const int64_t span_pages = pol.slides() ? kv_cache::policy_page_bound(pol, s->n_batch_, ps) : kv_cache::pages_for(span, ps);
        geom.n_pages = int32_t(std::min<int64_t>(span_pages, (p.kivi.residual + ps - 1) / ps + 3 + kv_cache::pages_for(s->n_batch_, ps)));
        geom.n_packed_pages = int32_t(span_pages);
    }
    if (model.hparams().yoco()) {
        // YOCO: the global group holds the context, the self group the window of one chunk.
        if (!pol.is_dense()) return status::error("a yoco model runs the dense policy only (its self-decoder's sliding window is the model's own)");
        if (p.kivi.bits) return status::error("KIVI pages are not supported on yoco models");
        std::vector<kv_group_desc> groups = model.kv_group_layout(ps, geom.type);
        for (kv_group_desc& g : groups) {
            g.config.v_type = geom.v_type;
            g.config.n_pages = g.window ? kv_cache::policy_page_bound(kv_policy{kv_policy_kind::window, g.window}, s->n_batch_, ps)
                                        : kv_cache::pages_for(span, ps);
        }
        auto kg = kv_groups::create(std::move(groups));
        if (!kg) return kg.error();
        s->groups_ = std::move(kg.value());
    } else {
        auto kv = kv_cache::create(geom);
        if (!kv) return kv.error();
        s->own_kv_ = std::move(kv.value());
        s->groups_ = kv_groups::wrap(*s->own_kv_);
    }
    s->kv_ = &s->groups_->primary();
    const int64_t max_rows = std::clamp<int64_t>(p.max_logit_rows, 1, s->n_batch_);
    s->st_ = std::make_unique<forward_state>(model, s->n_batch_, max_rows);
    s->seq_ = s->groups_->seq_add(pol);
    s->last_logits_.assign(size_t(model.hparams().n_vocab), 0.0f);
    s->want_.assign(size_t(s->n_batch_), 0);
    return s;
}

void session::reset() {
    groups_->seq_remove(seq_);
    seq_ = groups_->seq_add(policy_);
    n_past_ = 0;
    history_.clear();
}

status session::forward_chunk(const int32_t* tokens, int64_t m, const uint8_t* want_logits) {
    // H2O writes the chunk after the slots it keeps; every other policy at the token's index.
    const int64_t first_slot = policy_.kind == kv_policy_kind::h2o ? h2o_kept_slots(policy_, n_past_) : n_past_;
    if (!groups_->seq_reserve(seq_, first_slot + m)) return status::error("kv cache: out of pages");
    peak_pages_ = std::max(peak_pages_, int32_t(kv_->seq_pages(seq_).size()));
    peak_bytes_ = std::max(peak_bytes_, kv_bytes());
    batch_.clear();
    for (int64_t i = 0; i < m; ++i) batch_.add(tokens[i], int32_t(n_past_ + i), seq_, want_logits[i] != 0, int32_t(first_slot + i));
    KVS_TRY(model_.forward(batch_, *groups_, *st_, pool_));
    n_past_ += m;
    groups_->seq_trim(seq_, n_past_);  // sliding policies: pages no later query reads
    return status::ok();
}

status session::eval(const int32_t* tokens, int64_t n, int64_t first_row, std::vector<float>* all_logits) {
    if (n <= 0) return status::ok();
    if (policy_.kind == kv_policy_kind::recompute) return eval_recompute(tokens, n, first_row, all_logits);
    if (bounded_ && n_past_ + n > n_ctx_)
        return status::error(strfmt("the prompt and output need %lld tokens, more than the context length %lld",
                                    (long long)(n_past_ + n), (long long)n_ctx_));
    if (n_past_ + n > (int64_t(1) << 31) - 1) return status::error("the sequence would pass 2^31 tokens");
    const int64_t n_vocab = model_.hparams().n_vocab;
    if (all_logits) {
        first_row = std::clamp<int64_t>(first_row, 0, n);
        all_logits->resize(size_t((n - first_row) * n_vocab));
    }
    // With all logits wanted, a pass may return at most max_logits rows.
    const int64_t step = all_logits ? std::min(n_batch_, st_->max_logits()) : n_batch_;
    std::vector<uint8_t>& want = want_;
    for (int64_t start = 0; start < n; start += step) {
        const int64_t m = std::min(step, n - start);
        for (int64_t i = 0; i < m; ++i) {
            const int64_t row = start + i;
            want[size_t(i)] = (all_logits && row >= first_row) || row == n - 1;
        }
        KVS_TRY(forward_chunk(tokens + start, m, want.data()));
        // Collect logits in row order.
        int64_t r = 0;
        for (int64_t i = 0; i < m; ++i) {
            if (!want[size_t(i)]) continue;
            const float* src = st_->logits() + r * n_vocab;
            const int64_t row = start + i;
            if (all_logits && row >= first_row)
                std::memcpy(all_logits->data() + (row - first_row) * n_vocab, src, size_t(n_vocab) * sizeof(float));
            if (row == n - 1) std::memcpy(last_logits_.data(), src, size_t(n_vocab) * sizeof(float));
            ++r;
        }
    }
    return status::ok();
}

// Recompute: the logits after token t come from a fresh prefill of tokens
// [max(0, t - W + 1), t] at positions 0.. (the sequence is emptied before each one).
status session::eval_recompute(const int32_t* tokens, int64_t n, int64_t first_row, std::vector<float>* all_logits) {
    const int64_t n_vocab = model_.hparams().n_vocab, w = policy_.size;
    if (all_logits) {
        first_row = std::clamp<int64_t>(first_row, 0, n);
        all_logits->resize(size_t((n - first_row) * n_vocab));
    }
    std::vector<uint8_t>& want = want_;
    for (int64_t i = 0; i < n; ++i) {
        history_.push_back(tokens[i]);
        const bool need = i == n - 1 || (all_logits && i >= first_row);
        if (!need) continue;  // only the rows whose logits are asked for are computed
        const int64_t len = std::min<int64_t>(w, int64_t(history_.size()));
        groups_->seq_remove(seq_);
        seq_ = groups_->seq_add(policy_);
        const int64_t past = int64_t(history_.size());
        n_past_ = 0;
        std::fill(want.begin(), want.begin() + len, 0);
        want[size_t(len - 1)] = 1;
        KVS_TRY(forward_chunk(history_.data() + (past - len), len, want.data()));
        n_past_ = past;
        const float* src = st_->logits();
        if (all_logits && i >= first_row) std::memcpy(all_logits->data() + (i - first_row) * n_vocab, src, size_t(n_vocab) * sizeof(float));
        if (i == n - 1) std::memcpy(last_logits_.data(), src, size_t(n_vocab) * sizeof(float));
    }
    n_past_ = int64_t(history_.size());
    return status::ok();
}

}  // namespace kvs
