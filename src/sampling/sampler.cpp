#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <span>
#include <limits>

namespace kvs {

namespace {

constexpr float k_neg_inf = -std::numeric_limits<float>::infinity();

// "Closed range" check that also rejects NaN (every comparison with NaN is false).
bool in_range(float x, float lo, float hi) { return x >= lo && x <= hi; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// sampling_params

status sampling_params::validate() const {
    if (n_vocab <= 0 || n_vocab > std::numeric_limits<int32_t>::max())
        return status::error(
            strfmt("n_vocab must be in [1, 2^31), got %lld", static_cast<long long>(n_vocab)));
    if (!(temperature >= 0.0f) || !std::isfinite(temperature))
        return status::error(
            strfmt("temperature must be finite and >= 0 (0 = greedy), got %g", double(temperature)));
    if (!(top_p > 0.0f && top_p <= 1.0f))
        return status::error(strfmt("top_p must be in (0, 1], got %g", double(top_p)));
    if (!in_range(min_p, 0.0f, 1.0f))
        return status::error(strfmt("min_p must be in [0, 1], got %g", double(min_p)));
    if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
        return status::error(strfmt("repeat_penalty must be finite and > 0 (1 = off), got %g",
                                    double(repeat_penalty)));
    if (repeat_last_n < -1)
        return status::error(strfmt(
            "repeat_last_n must be >= -1 (0 = off, -1 = all tokens), got %d", repeat_last_n));
    if (!in_range(presence_penalty, -2.0f, 2.0f))
        return status::error(
            strfmt("presence_penalty must be in [-2, 2], got %g", double(presence_penalty)));
    if (!in_range(frequency_penalty, -2.0f, 2.0f))
        return status::error(
            strfmt("frequency_penalty must be in [-2, 2], got %g", double(frequency_penalty)));
    // top_k: any value is meaningful (<= 0 = off, >= n_vocab = no-op).
    return status::ok();
}

// ---------------------------------------------------------------------------------------------
// construction and history

result<sampler> sampler::create(const sampling_params& params) {
    if (status s = params.validate(); !s) return s.with_context("sampling params");
    return sampler(params);
}

sampler::sampler(const sampling_params& params) : params_(params), rng_(params.seed) {
    if (params_.repeat_last_n > 0) window_.assign(size_t(params_.repeat_last_n), 0);
    ensure_capacity(std::max<int64_t>(params_.n_vocab, 1));
}

void sampler::ensure_capacity(int64_t n_vocab) {
    if (n_vocab <= capacity_) return;
    capacity_ = n_vocab;
    counts_.resize(size_t(n_vocab), 0);
    if (params_.repeat_last_n > 0) window_counts_.resize(size_t(n_vocab), 0);
    seen_.reserve(size_t(n_vocab));  // distinct ids <= n_vocab: push_back never reallocates
    logits_.resize(size_t(n_vocab));
    vals_.resize(size_t(n_vocab));
    cand_.resize(size_t(n_vocab));
    cross_.resize(size_t(n_vocab));
}

void sampler::reset() {
    for (int32_t t : seen_) {
        counts_[size_t(t)] = 0;
        if (!window_counts_.empty()) window_counts_[size_t(t)] = 0;
    }
    seen_.clear();
    window_pos_ = 0;
    window_len_ = 0;
    n_accepted_ = 0;
    rng_.seed(params_.seed);
}

status sampler::accept(int32_t token) {
    if (token < 0 || token >= capacity_)
        return status::error(strfmt("accept: token %d out of range [0, %lld)", token,
                                    static_cast<long long>(capacity_)));
    if (counts_[size_t(token)]++ == 0) seen_.push_back(token);
    ++n_accepted_;
    if (!window_.empty()) {
        const int64_t n_window = int64_t(window_.size());
        if (window_len_ == n_window) {
            --window_counts_[size_t(window_[size_t(window_pos_)])];  // evict the oldest
        } else {
            ++window_len_;
        }
        window_[size_t(window_pos_)] = token;
        ++window_counts_[size_t(token)];
        window_pos_ = (window_pos_ + 1) % n_window;
    }
    return status::ok();
}

int32_t sampler::count(int32_t token) const {
    return (token >= 0 && token < capacity_) ? counts_[size_t(token)] : 0;
}

// ---------------------------------------------------------------------------------------------
// penalties

void sampler::apply_penalties(float* logits, int64_t n_vocab) const {
    const float r = params_.repeat_penalty;
    const bool use_repeat = r != 1.0f && params_.repeat_last_n != 0;
    const float freq = params_.frequency_penalty;
    const float pres = params_.presence_penalty;
    const bool use_openai = freq != 0.0f || pres != 0.0f;
    if (!use_repeat && !use_openai) return;
    // Every token in the repeat window was accepted, so seen_ covers both penalties.
    for (int32_t t : seen_) {
        if (t >= n_vocab) continue;
        float& x = logits[t];
        if (use_repeat) {
            const int32_t in_window =
                window_counts_.empty() ? counts_[size_t(t)] : window_counts_[size_t(t)];
            if (in_window > 0) x = x > 0.0f ? x / r : x * r;
        }
        if (use_openai) {
            const int32_t c = counts_[size_t(t)];  // > 0 for every id in seen_
            x -= freq * float(c) + pres * float(c > 0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sampling

double sampler::next_uniform() {
    return double(rng_() >> 11) * 0x1.0p-53;  // top 53 bits -> [0, 1), library-independent
}

int32_t sampler::sample(const float* logits, int64_t n_vocab) {
    if (!logits || n_vocab <= 0 || n_vocab > std::numeric_limits<int32_t>::max()) return -1;
    ensure_capacity(n_vocab);
    float* x = logits_.data();
    std::memcpy(x, logits, size_t(n_vocab) * sizeof(float));
    apply_penalties(x, n_vocab);

    if (params_.temperature <= k_greedy_temperature) {
        // Strict '>' keeps the lowest index on ties and never selects NaN.
        int32_t best = 0;
        float best_x = k_neg_inf;
        for (int64_t i = 0; i < n_vocab; ++i) {
            if (x[i] > best_x) {
                best_x = x[i];
                best = int32_t(i);
            }
        }
        return best;
    }

    const int64_t n_cand = gather_candidates(x, n_vocab);
    if (n_cand == 0) return 0;  // everything masked
    return sample_from_candidates(n_cand);
}

void sampler::distribution(const float* logits, int64_t n_vocab, float* probs) {
    if (!logits || !probs || n_vocab <= 0) return;
    ensure_capacity(n_vocab);
    std::fill(probs, probs + n_vocab, 0.0f);
    float* x = logits_.data();
    std::memcpy(x, logits, size_t(n_vocab) * sizeof(float));
    apply_penalties(x, n_vocab);
    if (params_.temperature <= k_greedy_temperature) {
        int32_t best = 0;
        float best_x = k_neg_inf;
        for (int64_t i = 0; i < n_vocab; ++i)
            if (x[i] > best_x) best_x = x[i], best = int32_t(i);
        probs[best] = 1.0f;
        return;
    }
    int64_t n_cand = gather_candidates(x, n_vocab);
    if (n_cand == 0) {  // everything masked: sample() returns token 0
        probs[0] = 1.0f;
        return;
    }
    n_cand = truncate_candidates(n_cand);
    double total = 0.0;
    for (int64_t i = 0; i < n_cand; ++i) total += cand_[size_t(i)].prob;
    for (int64_t i = 0; i < n_cand; ++i) probs[cand_[size_t(i)].id] = float(double(cand_[size_t(i)].prob) / total);
}

int64_t sampler::gather_candidates(const float* x, int64_t n_vocab) {
    // Top-k threshold: the k-th largest unmasked logit, selected over plain floats (cheaper
    // than selecting structs). NaN and -inf are not candidates ('>' is false for both).
    const int64_t k = params_.top_k;
    float threshold = k_neg_inf;
    int64_t n_ties = n_vocab;  // how many logits equal to `threshold` may still be taken
    if (k > 0 && k < n_vocab) {
        float* v = vals_.data();
        int64_t n_valid = 0;
        if (k <= k_top_k_heap_max) {
            // Small k: a min-heap of the k largest in one pass; most logits are rejected by a
            // single well-predicted compare against the heap's minimum.
            for (int64_t i = 0; i < n_vocab; ++i) {
                const float xi = x[i];
                if (!(xi > k_neg_inf)) continue;
                if (n_valid < k) {
                    v[n_valid++] = xi;
                    std::push_heap(v, v + n_valid, std::greater<float>());
                } else if (xi > v[0]) {
                    std::pop_heap(v, v + k, std::greater<float>());
                    v[k - 1] = xi;
                    std::push_heap(v, v + k, std::greater<float>());
                }
            }
        } else {
            for (int64_t i = 0; i < n_vocab; ++i)
                if (x[i] > k_neg_inf) v[n_valid++] = x[i];
            if (n_valid > k) std::nth_element(v, v + (k - 1), v + n_valid, std::greater<float>());
        }
        if (n_valid >= k) {
            threshold = *std::min_element(v, v + k);  // the k-th largest
            int64_t n_above = 0;
            for (int64_t i = 0; i < k; ++i) n_above += v[i] > threshold;
            n_ties = k - n_above;
        }
    }
    // One pass in id order: everything above the threshold, plus the lowest-id ties.
    int64_t n_cand = 0;
    for (int64_t i = 0; i < n_vocab; ++i) {
        const float xi = x[i];
        if (xi > threshold || (xi == threshold && xi > k_neg_inf && n_ties-- > 0))
            cand_[size_t(n_cand++)] = {int32_t(i), xi, 0.0f};
    }
    return n_cand;
}

int64_t sampler::truncate_candidates(int64_t n_cand) {
    const float inv_t = 1.0f / params_.temperature;
    if (params_.temperature != 1.0f)
        for (int64_t i = 0; i < n_cand; ++i) cand_[size_t(i)].logit *= inv_t;
    softmax(n_cand);
    n_cand = apply_top_p(n_cand);
    return apply_min_p(n_cand);
}

int32_t sampler::sample_from_candidates(int64_t n_cand) {
    n_cand = truncate_candidates(n_cand);

    // Inverse CDF over the kept (unnormalised) probabilities.
    double total = 0.0;
    for (int64_t i = 0; i < n_cand; ++i) total += cand_[size_t(i)].prob;
    const double u = next_uniform() * total;
    double cum = 0.0;
    for (int64_t i = 0; i < n_cand; ++i) {
        cum += cand_[size_t(i)].prob;
        if (u < cum) return cand_[size_t(i)].id;
    }
    // Rounding left u >= cum: return the last candidate with non-zero mass.
    for (int64_t i = n_cand - 1; i > 0; --i)
        if (cand_[size_t(i)].prob > 0.0f) return cand_[size_t(i)].id;
    return cand_[0].id;
}

void sampler::softmax(int64_t n_cand) {
    float max_logit = k_neg_inf;
    for (int64_t i = 0; i < n_cand; ++i) max_logit = std::max(max_logit, cand_[size_t(i)].logit);
    if (std::isinf(max_logit)) {
        // +inf logits share all the mass equally. Logits are replaced by the probabilities
        // (same order, finite) so top-p can bucket them.
        for (candidate& c : std::span(cand_.data(), size_t(n_cand))) {
            c.prob = c.logit == max_logit ? 1.0f : 0.0f;
            c.logit = c.prob;
        }
    } else {
        for (int64_t i = 0; i < n_cand; ++i)
            cand_[size_t(i)].prob = std::exp(cand_[size_t(i)].logit - max_logit);
    }
    double sum = 0.0;
    for (int64_t i = 0; i < n_cand; ++i) sum += cand_[size_t(i)].prob;
    const float inv = float(1.0 / sum);  // sum >= 1: the max term is exp(0)
    for (int64_t i = 0; i < n_cand; ++i) cand_[size_t(i)].prob *= inv;
}

int64_t sampler::apply_top_p(int64_t n_cand) {
    const double top_p = params_.top_p;
    if (top_p >= 1.0 || n_cand <= 1) return n_cand;
    // Bucket by logit (monotone in probability) instead of sorting: one pass sums the mass per
    // bucket, the buckets are walked from the top until the mass reaches top_p, and only the
    // crossing bucket is sorted to find the exact cut. O(n) + sort of one bucket.
    float lo = cand_[0].logit, hi = cand_[0].logit;
    for (int64_t i = 1; i < n_cand; ++i) {
        lo = std::min(lo, cand_[size_t(i)].logit);
        hi = std::max(hi, cand_[size_t(i)].logit);
    }
    const float scale = hi > lo ? float(k_n_buckets - 1) / (hi - lo) : 0.0f;
    auto bucket_of = [&](float logit) {
        return std::min<int32_t>(k_n_buckets - 1, int32_t((logit - lo) * scale));
    };
    bucket_mass_.fill(0.0);
    for (int64_t i = 0; i < n_cand; ++i) bucket_mass_[size_t(bucket_of(cand_[size_t(i)].logit))] += cand_[size_t(i)].prob;
    int32_t cut = k_n_buckets - 1;  // the bucket where the cumulative mass reaches top_p
    double above = 0.0;             // mass of the buckets above `cut`
    for (; cut > 0; --cut) {
        if (above + bucket_mass_[size_t(cut)] >= top_p) break;
        above += bucket_mass_[size_t(cut)];
    }
    // Keep buckets above `cut` in place (id order); move the crossing bucket aside.
    int64_t n_keep = 0, n_cross = 0;
    for (int64_t i = 0; i < n_cand; ++i) {
        const candidate c = cand_[size_t(i)];
        const int32_t b = bucket_of(c.logit);
        if (b > cut) cand_[size_t(n_keep++)] = c;
        else if (b == cut) cross_[size_t(n_cross++)] = c;
    }
    // Sort the crossing bucket by probability (ties -> lower id) and take its prefix.
    std::sort(cross_.begin(), cross_.begin() + n_cross, [](const candidate& a, const candidate& b) {
        return a.prob > b.prob || (a.prob == b.prob && a.id < b.id);
    });
    double cum = above;
    for (int64_t i = 0; i < n_cross; ++i) {
        cand_[size_t(n_keep++)] = cross_[size_t(i)];
        cum += cross_[size_t(i)].prob;
        if (cum >= top_p) break;  // rounding may never reach top_p: then the whole bucket stays
    }
    return n_keep;
}

int64_t sampler::apply_min_p(int64_t n_cand) {
    const float min_p = params_.min_p;
    if (min_p <= 0.0f || n_cand <= 1) return n_cand;
    float p_max = 0.0f;
    for (int64_t i = 0; i < n_cand; ++i) p_max = std::max(p_max, cand_[size_t(i)].prob);
    const float threshold = min_p * p_max;
    // Order-preserving compaction (keeps a top-p prefix sorted).
    int64_t n_keep = 0;
    for (int64_t i = 0; i < n_cand; ++i)
        if (cand_[size_t(i)].prob >= threshold) cand_[size_t(n_keep++)] = cand_[size_t(i)];
    return n_keep;  // >= 1: p_max itself passes
}

// ---------------------------------------------------------------------------------------------
// logprobs

status sampler::logprobs(const float* logits, int64_t n_vocab, int32_t token, int32_t n_top,
                         token_logprobs* out) {
    if (!logits) return status::error("logprobs: logits must not be null");
    if (n_vocab <= 0 || n_vocab > std::numeric_limits<int32_t>::max())
        return status::error(strfmt("logprobs: n_vocab must be in [1, 2^31), got %lld",
                                    static_cast<long long>(n_vocab)));
    ensure_capacity(n_vocab);
    float* x = logits_.data();
    std::memcpy(x, logits, size_t(n_vocab) * sizeof(float));
    apply_penalties(x, n_vocab);
    return compute_logprobs(x, n_vocab, token, n_top, out);
}

}  // namespace kvs
