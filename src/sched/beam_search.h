// Beam search: the bookkeeping of one request's beams, independent of the KV cache (the
// scheduler maps beams to KV sequences that share their common history through copy-on-write
// pages — FasterTransformer's cache indirection, done with page tables).
//
// The search (Hugging Face's and vLLM's beam search, early_stopping = false):
//  - It starts from one beam (the prompt) with cumulative log-probability 0. Beams are kept in
//    order of cumulative log-probability, best first.
//  - Each step every live beam b is extended by every token t, scored cum(b) + log p_b(t), with
//    p_b the softmax of b's logits (computed in double). End-of-generation tokens (EOS, the
//    request's stop tokens) have probability 0 before min_tokens and never end a beam with
//    ignore_eos. The candidates are ordered by score (ties: the earlier beam, then the lower
//    token id) and the first 2·K are walked: an end-of-generation candidate among the first K
//    becomes a finished hypothesis (later ones are skipped); the others become the next live
//    beams until there are K of them.
//  - A hypothesis's score is cum / len^length_penalty, len the tokens it generated (the ending
//    token included).
//  - After the step that generates max_tokens, every live beam becomes a hypothesis.
//  - The search is done when no beam lives, or when it holds K hypotheses and the best live
//    beam's cum / cur_len^length_penalty is no better than the K-th best hypothesis's score.
//  - The result is the n best hypotheses by score (ties: the one finished first).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace kvs {

struct beam_hypothesis {
    std::vector<int32_t> tokens;  // generated tokens, the ending token included
    double cum_logprob = 0;
    double score = 0;             // cum_logprob / len^length_penalty
    bool ended = false;           // ended on an end-of-generation token (else: max_tokens)
};

class beam_search {
public:
    struct beam {
        std::vector<int32_t> tokens;  // generated tokens
        double cum_logprob = 0;
    };
    // The next live beam i is beam `parent` of the step's input extended by `token`.
    struct extension {
        int32_t parent;
        int32_t token;
    };

    // width K >= 1; is_end(t): t ends a beam (end-of-generation or a stop token id).
    beam_search(int32_t width, float length_penalty, int64_t max_tokens, int64_t min_tokens, bool ignore_eos,
                std::function<bool(int32_t)> is_end);

    // The live beams, best first (the first step has one, with no tokens).
    const std::vector<beam>& live() const { return live_; }
    // One step: logits[i] (n_vocab floats) is live beam i's next-token distribution. Returns the
    // new live beams' origins (also in live() afterwards). Beams that end become hypotheses.
    std::vector<extension> step(const std::vector<const float*>& logits, int64_t n_vocab);
    bool done() const;
    // The n best hypotheses, best first (fewer if fewer finished).
    std::vector<beam_hypothesis> best(int32_t n) const;
    int32_t width() const { return width_; }

private:
    double score_of(double cum, int64_t len) const;
    void add_hypothesis(std::vector<int32_t> tokens, double cum, bool ended);

    int32_t width_;
    float length_penalty_;
    int64_t max_tokens_, min_tokens_;
    bool ignore_eos_;
    std::function<bool(int32_t)> is_end_;
    std::vector<beam> live_;
    std::vector<beam_hypothesis> hyps_;  // in the order they finished
};

}  // namespace kvs
