#include "sched/beam_search.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvs {

beam_search::beam_search(int32_t width, float length_penalty, int64_t max_tokens, int64_t min_tokens, bool ignore_eos,
                         std::function<bool(int32_t)> is_end)
    : width_(std::max(1, width)), length_penalty_(length_penalty), max_tokens_(max_tokens), min_tokens_(min_tokens),
      ignore_eos_(ignore_eos), is_end_(std::move(is_end)) {
    live_.push_back(beam{});
}

double beam_search::score_of(double cum, int64_t len) const {
    return cum / std::pow(double(std::max<int64_t>(1, len)), double(length_penalty_));
}

void beam_search::add_hypothesis(std::vector<int32_t> tokens, double cum, bool ended) {
    const int64_t len = int64_t(tokens.size());
    hyps_.push_back({std::move(tokens), cum, score_of(cum, len), ended});
}

std::vector<beam_search::extension> beam_search::step(const std::vector<const float*>& logits, int64_t n_vocab) {
    struct candidate {
        double score;
        int32_t beam, token;
    };
    const int64_t generated = live_.empty() ? 0 : int64_t(live_.front().tokens.size());  // all live beams have this length
    const bool ends_allowed = !ignore_eos_ && generated + 1 > min_tokens_;
    const size_t keep = size_t(2 * width_);
    // The 2K best candidates over all beams: a bounded selection per beam is enough (no beam
    // contributes more than 2K), then one sort.
    std::vector<candidate> cand;
    std::vector<double> lp(static_cast<size_t>(n_vocab));
    for (size_t b = 0; b < live_.size() && b < logits.size(); ++b) {
        const float* l = logits[b];
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t t = 0; t < n_vocab; ++t) {
            const bool masked = is_end_(int32_t(t)) && !ends_allowed && !ignore_eos_;
            lp[size_t(t)] = masked ? -std::numeric_limits<double>::infinity() : double(l[t]);
            mx = std::max(mx, lp[size_t(t)]);
        }
        double sum = 0;
        for (int64_t t = 0; t < n_vocab; ++t) sum += std::exp(lp[size_t(t)] - mx);
        const double log_z = mx + std::log(sum);
        std::vector<candidate> mine;
        mine.reserve(size_t(n_vocab));
        for (int64_t t = 0; t < n_vocab; ++t)
            if (std::isfinite(lp[size_t(t)])) mine.push_back({live_[b].cum_logprob + lp[size_t(t)] - log_z, int32_t(b), int32_t(t)});
        auto better = [](const candidate& a, const candidate& c) {
            if (a.score != c.score) return a.score > c.score;
            if (a.beam != c.beam) return a.beam < c.beam;
            return a.token < c.token;
        };
        const size_t k = std::min(keep, mine.size());
        std::partial_sort(mine.begin(), mine.begin() + long(k), mine.end(), better);
        cand.insert(cand.end(), mine.begin(), mine.begin() + long(k));
    }
    std::sort(cand.begin(), cand.end(), [](const candidate& a, const candidate& c) {
        if (a.score != c.score) return a.score > c.score;
        if (a.beam != c.beam) return a.beam < c.beam;
        return a.token < c.token;
    });
    if (cand.size() > keep) cand.resize(keep);

    std::vector<beam> next;
    std::vector<extension> ext;
    for (size_t rank = 0; rank < cand.size() && int32_t(next.size()) < width_; ++rank) {
        const candidate& c = cand[rank];
        std::vector<int32_t> toks = live_[size_t(c.beam)].tokens;
        toks.push_back(c.token);
        if (!ignore_eos_ && is_end_(c.token)) {
            if (rank < size_t(width_)) add_hypothesis(std::move(toks), c.score, true);
            continue;
        }
        next.push_back({std::move(toks), c.score});
        ext.push_back({c.beam, c.token});
    }
    live_ = std::move(next);
    if (max_tokens_ > 0 && generated + 1 >= max_tokens_) {
        for (beam& b : live_) add_hypothesis(std::move(b.tokens), b.cum_logprob, false);
        live_.clear();
        ext.clear();
    }
    return ext;
}

bool beam_search::done() const {
    if (live_.empty()) return true;
    if (int32_t(hyps_.size()) < width_) return false;
    std::vector<double> scores;
    for (const auto& h : hyps_) scores.push_back(h.score);
    std::sort(scores.begin(), scores.end(), std::greater<double>());
    const double worst_kept = scores[size_t(width_ - 1)];
    const beam& best = live_.front();  // live beams are best first
    return worst_kept >= score_of(best.cum_logprob, int64_t(best.tokens.size()));
}

std::vector<beam_hypothesis> beam_search::best(int32_t n) const {
    std::vector<size_t> order(hyps_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return hyps_[a].score > hyps_[b].score; });
    std::vector<beam_hypothesis> out;
    for (size_t i = 0; i < order.size() && int32_t(out.size()) < n; ++i) out.push_back(hyps_[order[i]]);
    return out;
}

}  // namespace kvs
