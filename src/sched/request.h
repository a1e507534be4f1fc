// A generation request as the scheduler sees it: a prompt (token ids), how to sample, when to
// stop, and how many completions. Results flow back as events through a request_stream.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kv/kv_policy.h"
#include "sampling/logprobs.h"
#include "sampling/sampler.h"
#include "sched/pooling.h"
#include "sched/speculative.h"

namespace kvs {

enum class finish_reason { none, stop, length, cancelled, error };
const char* finish_reason_name(finish_reason r);  // "stop", "length", "cancelled", "error"

struct request_params {
    std::vector<int32_t> prompt;        // token ids (BOS included if wanted)
    sampling_params sampling;           // seed of completion i is sampling.seed + i
    int64_t max_tokens = 16;            // new tokens per completion; < 0 = until the context is full
                                        // (window, streaming, recompute: a context's worth of new tokens)
    int64_t min_tokens = 0;             // EOS and stop strings are ignored before this many
    bool ignore_eos = false;
    std::vector<std::string> stop;      // stop strings (not included in the output)
    std::vector<int32_t> stop_token_ids;
    std::string cache_salt;             // prefix-cache namespace: requests share pages only within one salt
    int32_t n = 1;                      // completions sharing the prompt's KV pages
    int32_t n_logprobs = -1;            // -1: none; 0: the chosen token's; k: plus the top k
    kv_policy policy;                   // which tokens the sequence keeps and reads (kv/kv_policy.h).
                                        // Window, streaming and recompute are not bounded by the
                                        // context length: prompt and max_tokens may exceed it
    speculative_params speculative;     // speculative decoding (off by default; sched/speculative.h)
    int32_t beam_width = 0;             // > 0: beam search with this many beams (sched/beam_search.h); the n
                                        // best hypotheses are the completions (sampling settings unused)
    float length_penalty = 1.0f;        // beam search: hypotheses rank by cum_logprob / length^length_penalty
    bool embed = false;                 // an embedding: the prompt is computed (never from the prefix
                                        // cache), nothing generated; the one event carries the vector
    pooling_type pooling = pooling_type::last;  // embeddings: how token states become the vector
};

// One piece of output for one completion.
struct request_event {
    int32_t index = 0;                  // completion index in [0, n)
    std::string text;                   // new text (valid UTF-8; may be empty)
    std::vector<int32_t> tokens;        // tokens behind this text
    std::vector<token_logprobs> logprobs;  // one per token when logprobs were asked for
    finish_reason finish = finish_reason::none;  // set on the last event of a completion
    std::string error;                  // with finish_reason::error
    std::vector<float> embedding;       // embedding requests: (n_embd) the pooled, L2-normalized final-normed hidden state
};

struct request_usage {
    int64_t prompt_tokens = 0;
    int64_t completion_tokens = 0;      // over all completions
    int64_t cached_tokens = 0;          // prompt tokens whose KV was reused
};

// The channel between the engine (producer) and a client (consumer). Thread-safe.
// The consumer may cancel at any time; the engine then frees the request's pages at its
// next step and ends every unfinished completion with finish_reason::cancelled.
class request_stream {
public:
    void push(request_event ev);
    // Blocks until an event is available or every completion has finished and all events were
    // taken (returns nullopt). With a timeout, returns nullopt on timeout too (check done()).
    std::optional<request_event> pop(int timeout_ms = -1);
    void cancel() { cancelled_.store(true, std::memory_order_release); }
    bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
    // Producer side: declares how many completions will finish.
    void set_expected(int32_t n) { std::lock_guard<std::mutex> l(mu_); expected_ = n; }
    bool done() const;
    request_usage usage() const { std::lock_guard<std::mutex> l(mu_); return usage_; }
    void set_usage(const request_usage& u) { std::lock_guard<std::mutex> l(mu_); usage_ = u; }

private:
    mutable std::mutex mu_;
    std::condition_variable cv_;
    std::deque<request_event> events_;
    int32_t expected_ = 1, finished_ = 0;
    request_usage usage_;
    std::atomic<bool> cancelled_{false};
};

}  // namespace kvs
