// Speculative decoding: a cheap drafter proposes D tokens, the target model scores them all in
// one pass, and the longest prefix the target accepts is kept plus the target's own next token.
//
// Two drafters share one mechanism (scheduler.h):
//  - self-speculation (LayerSkip, Elhoushi et al., 2024): the target's own first E layers and
//    its final norm + LM head draft (early exit); their layer-[0, E) KV is the verifier's, and
//    the verifier runs layers [E, L) from the saved exit hidden states;
//  - a draft model with the target's vocabulary and its own KV cache, kept in step with the
//    target's accepted tokens.
//
// Acceptance (Leviathan et al., 2023; Chen et al., 2023). Greedy: a draft is kept while it equals
// the target's argmax, so the output is token for token the target's alone. Sampling: draft x,
// drawn from the draft distribution q, is kept with probability min(1, p(x) / q(x)); on
// rejection the token is drawn from norm(max(0, p − q)); when every draft is kept, one more token
// is drawn from the target's next distribution. The output distribution is the target's.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace kvs {

// Speculation settings of one request (0 draft tokens: off).
struct speculative_params {
    int32_t draft_tokens = 0;  // D: tokens drafted per cycle
    int32_t exit_layer = 0;    // E > 0: self-speculation with layers [0, E); 0: the engine's draft model
    float min_draft_p = 0.0f;  // adaptive length: stop drafting once the draft's top probability is below this (0: never)
    bool on() const { return draft_tokens > 0; }
    bool operator==(const speculative_params&) const = default;
};

// Parses "exit=E,draft=D[,min_p=P]" (self-speculation) or "draft=D[,min_p=P]" (draft model);
// "off" or "" gives D = 0. The message names the bad part.
result<speculative_params> parse_speculative(std::string_view spec);

// The verdict at one draft position.
struct spec_verdict {
    int32_t token;  // the draft when accepted, else the token drawn from the residual
    bool accepted;
};

// One position of speculative sampling over n tokens: draft x was drawn from q; target p.
// u_accept and u_resample are independent uniforms in [0, 1): x is kept iff
// u_accept · q(x) < p(x); otherwise the token is drawn by inverse CDF from max(0, p − q)
// (normalized; if that is all zero — p equals q up to rounding — from p).
spec_verdict speculative_accept(const float* p, const float* q, int64_t n, int32_t x, double u_accept, double u_resample);

// Draws from a probability vector by inverse CDF (the last token with mass if rounding leaves u
// past the total).
int32_t sample_from_probs(const float* probs, int64_t n, double u);

// Most tokens one cycle may draft.
inline constexpr int32_t k_max_draft_tokens = 16;

}  // namespace kvs
