#include "model/session.h"

#include <algorithm>
#include <cstring>

namespace kvs {

result<std::unique_ptr<session>> session::create(const llama_model& model, thread_pool& pool, const session_params& p) {
    std::unique_ptr<session> s(new session(model, pool));
    s->n_ctx_ = p.n_ctx > 0 ? p.n_ctx : model.hparams().n_ctx_train;
    if (s->n_ctx_ > (int64_t(1) << 24)) return status::error(strfmt("context length %lld is too large", (long long)s->n_ctx_));
    s->n_batch_ = std::clamp<int64_t>(p.n_batch, 1, s->n_ctx_);
    if (p.page_size <= 0) return status::error("page size must be positive");
    const int32_t n_pages = kv_cache::pages_for(s->n_ctx_, p.page_size);
    auto kv = kv_cache::create(model.kv_geometry(p.page_size, n_pages, p.kv_type));
    if (!kv) return kv.error();
    s->kv_ = std::move(kv.value());
    const int64_t max_rows = std::clamp<int64_t>(p.max_logit_rows, 1, s->n_batch_);
    s->st_ = std::make_unique<forward_state>(model, s->n_batch_, max_rows);
    s->seq_ = s->kv_->seq_add();
    s->last_logits_.assign(size_t(model.hparams().n_vocab), 0.0f);
    return s;
}

void session::reset() {
    kv_->seq_remove(seq_);
    seq_ = kv_->seq_add();
    n_past_ = 0;
}

status session::eval(const int32_t* tokens, int64_t n, int64_t first_row, std::vector<float>* all_logits) {
    if (n <= 0) return status::ok();
    if (n_past_ + n > n_ctx_)
        return status::error(strfmt("the prompt and output need %lld tokens, more than the context length %lld",
                                    (long long)(n_past_ + n), (long long)n_ctx_));
    if (!kv_->seq_reserve(seq_, n_past_ + n)) return status::error("kv cache: out of pages");
    const int64_t n_vocab = model_.hparams().n_vocab;
    if (all_logits) {
        first_row = std::clamp<int64_t>(first_row, 0, n);
        all_logits->resize(size_t((n - first_row) * n_vocab));
    }
    // With all logits wanted, a pass may return at most max_logits rows.
    const int64_t step = all_logits ? std::min(n_batch_, st_->max_logits()) : n_batch_;
    for (int64_t start = 0; start < n; start += step) {
        const int64_t m = std::min(step, n - start);
        batch_.clear();
        for (int64_t i = 0; i < m; ++i) {
            const int64_t row = start + i;
            batch_.add(tokens[row], int32_t(n_past_ + i), seq_, (all_logits && row >= first_row) || row == n - 1);
        }
        KVS_TRY(model_.forward(batch_, *kv_, *st_, pool_));
        // Collect logits in row order.
        int64_t r = 0;
        for (int64_t i = 0; i < m; ++i) {
            if (!batch_.want_logits[size_t(i)]) continue;
            const float* src = st_->logits() + r * n_vocab;
            const int64_t row = start + i;
            if (all_logits && row >= first_row)
                std::memcpy(all_logits->data() + (row - first_row) * n_vocab, src, size_t(n_vocab) * sizeof(float));
            if (row == n - 1) std::memcpy(last_logits_.data(), src, size_t(n_vocab) * sizeof(float));
            ++r;
        }
        n_past_ += m;
    }
    return status::ok();
}

}  // namespace kvs
