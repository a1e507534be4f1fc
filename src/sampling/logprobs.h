// OpenAI-style logprobs: the log-softmax of the chosen token and the top-N (token, logprob)
// pairs of one step's distribution.
//
// compute_logprobs() works on whatever logits it is given. sampler::logprobs() feeds it the
// logits after penalties and before temperature / truncation (see sampler.h); pass raw model
// logits directly to get vLLM's "raw_logprobs" instead.
//
// Cost: two passes over the vocabulary (max, sum of exp) plus a size-n_top heap scan;
// no allocation beyond out->top growing to n_top the first time.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "core/status.h"

namespace kvs {

struct token_logprob {
    int32_t token = -1;
    float logprob = 0.0f;  // natural log; -inf for masked tokens
};

struct token_logprobs {
    token_logprob chosen;            // the sampled token and its logprob
    std::vector<token_logprob> top;  // (min(n_top, n_vocab),) most likely first; ties -> lower id
};

// Fills *out with the log-softmax of `token` and the n_top most likely tokens of
// logits[0, n_vocab). NaN logits are treated as -inf. If every logit is -inf, all logprobs
// are -inf. Errors: null logits/out, n_vocab <= 0, token outside [0, n_vocab), n_top < 0.
status compute_logprobs(const float* logits, int64_t n_vocab, int32_t token, int32_t n_top,
                        token_logprobs* out);

}  // namespace kvs
