#include "sampling/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvs {

namespace {

// Heap order: "a is better than b" (higher logit; on ties the lower id).
bool better(const token_logprob& a, const token_logprob& b) {
    return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
}

float clean(float x) { return std::isnan(x) ? -std::numeric_limits<float>::infinity() : x; }

}  // namespace

status compute_logprobs(const float* logits, int64_t n_vocab, int32_t token, int32_t n_top,
                        token_logprobs* out) {
    if (!logits || !out) return status::error("logprobs: logits and out must not be null");
    if (n_vocab <= 0 || n_vocab > std::numeric_limits<int32_t>::max())
        return status::error(strfmt("logprobs: n_vocab must be in [1, 2^31), got %lld",
                                    static_cast<long long>(n_vocab)));
    if (token < 0 || token >= n_vocab)
        return status::error(strfmt("logprobs: token %d out of range [0, %lld)", token,
                                    static_cast<long long>(n_vocab)));
    if (n_top < 0) return status::error(strfmt("logprobs: n_top must be >= 0, got %d", n_top));

    // log-sum-exp in double: lse = max + log(sum exp(x - max)).
    const float neg_inf = -std::numeric_limits<float>::infinity();
    float max_logit = neg_inf;
    for (int64_t i = 0; i < n_vocab; ++i) max_logit = std::max(max_logit, clean(logits[i]));
    // +inf logits share all the mass: logprob = -log(count of +inf) for them, -inf elsewhere.
    const bool has_pos_inf = std::isinf(max_logit) && max_logit > 0;
    double lse = std::numeric_limits<double>::infinity();  // all masked: every logprob is -inf
    double inf_share = 0.0;
    if (has_pos_inf) {
        int64_t n_inf = 0;
        for (int64_t i = 0; i < n_vocab; ++i) n_inf += (clean(logits[i]) == max_logit);
        inf_share = -std::log(double(n_inf));
    } else if (max_logit != neg_inf) {
        double sum = 0.0;
        for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(double(clean(logits[i])) - max_logit);
        lse = double(max_logit) + std::log(sum);
    }
    auto logprob_of = [&](float x) -> float {
        x = clean(x);
        if (has_pos_inf) return x == max_logit ? float(inf_share) : neg_inf;
        if (x == neg_inf) return neg_inf;
        return float(double(x) - lse);
    };

    out->chosen = {token, logprob_of(logits[token])};

    // Top-N by a min-heap of the best n_top seen so far (heap front = worst kept), keyed on the
    // raw logit (same order as the logprob); converted to logprobs at the end.
    const int64_t n_keep = std::min<int64_t>(n_top, n_vocab);
    std::vector<token_logprob>& top = out->top;
    top.clear();
    if (n_keep > 0) {
        for (int64_t i = 0; i < n_vocab; ++i) {
            token_logprob e{static_cast<int32_t>(i), clean(logits[i])};
            if (int64_t(top.size()) < n_keep) {
                top.push_back(e);
                std::push_heap(top.begin(), top.end(), better);
            } else if (better(e, top.front())) {
                std::pop_heap(top.begin(), top.end(), better);
                top.back() = e;
                std::push_heap(top.begin(), top.end(), better);
            }
        }
        std::sort_heap(top.begin(), top.end(), better);  // ascending in "worse" => best first
        for (token_logprob& e : top) e.logprob = logprob_of(e.logprob);
    }
    return status::ok();
}

}  // namespace kvs
