// Continuous batching with chunked prefill over a shared pool of KV pages.
//
// Each step fills a token budget (max_batch_tokens): first every running decode (1 token
// each), then running prompt chunks oldest first (up to prefill_chunk per sequence), then
// waiting sequences are admitted (FIFO) while the budget, max_seqs and free pages allow. While
// requests wait, admission_reserve tokens of the budget are kept from the running chunks for
// them, and what admission leaves goes back to the running chunks. The
// scheduler only counts tokens (architecture.md, invariant 2): a sequence has tokens (prompt +
// generated) and n_computed (tokens whose KV is cached); each step computes
// min(tokens - n_computed, share of budget) of it. Prefill, chunked prefill, decode and
// recompute after preemption are one path.
//
// When pages run out, the newest running sequence is preempted by recompute: its pages are
// freed, n_computed returns to 0, it goes back to the front of the waiting queue, and it later
// recomputes its prompt and the tokens it already generated — its output continues where it
// stopped, with nothing lost or repeated. n > 1 completions prefill once and then fork the
// prompt's pages (copy-on-write).
//
// With the prefix cache on, a sequence starts from the longest cached prefix of its tokens
// (whole pages; at least its last token is computed), and every page it fills is registered in
// the tree, so later requests — and the sequence itself after a preemption — reuse it. Cached
// pages nobody uses are evicted (LRU) before any running sequence is preempted. Among waiting
// requests the one with the longest cached prefix goes first (longest-prefix-match), but a
// request passed over lpm_max_skips times is admitted next.
//
// KV policies (request_params::policy, kv/kv_policy.h) are per sequence and live in its KV
// table: after every step a window or StreamingLLM sequence gives back the pages no later row
// reads (so it holds at most kv_cache::policy_page_bound pages between steps, and may run past
// the context length); a recompute sequence computes each token by prefilling its last W
// tokens afresh at slots and positions 0..W-1, then empties its table. Only pages within a
// policy's dense prefix (kv_policy::dense_prefix_tokens) enter or come from the prefix cache, and
// recompute windows never do. Preemption frees everything; the recomputed sequence goes
// through the same policy again, so its output is unchanged.
//
// Speculative decoding (request_params::speculative, sched/speculative.h): while at most
// spec_max_running sequences run, a decode row of a speculating sequence becomes a cycle — the
// drafter (the target's first E layers with early exit, or a draft model) proposes up to D
// tokens one pass at a time, one verification pass scores them all as D + 1 rows of the
// sequence, the accepted prefix and the target's own next token are emitted (stop strings and
// EOS cut inside them), and the rejected rows are rolled back (kv_cache::seq_rollback): pages
// only they used return to the pool, nothing of theirs reaches the prefix cache (pages are
// registered only up to the accepted tokens), so the cache is as if they never existed. The
// draft model's cache follows the target's accepted tokens (caught up at each cycle). Greedy
// output is the target's token for token; sampled output has the target's distribution.
//
// Beam search (request_params::beam_width = K, sched/beam_search.h): the prompt is computed as one
// sequence; from its logits on, a beam group holds one KV sequence per live beam. Each step
// every live beam computes its last token (the group's rows come first in the step's budget,
// and a group counts K against max_seqs); the search picks the next K beams and each new beam's
// KV sequence is a fork of its parent's — beams share every page of their common history by
// reference, a partially filled last page is copied only when written (copy-on-write), and a
// dropped beam frees only what it alone held. Beams are not preempted (other sequences are, for
// their pages); a group that cannot get a page for its next step ends with the hypotheses it
// has. The completions arrive when the search is done, the n best, as whole texts (stop strings
// cut them afterwards).
//
// Embeddings (request_params::embed): a sequence that computes its prompt — in chunks like any
// other, never from the prefix cache (every token's hidden state is needed), its pages
// registered for others — and pools the final-normed hidden states of its rows as they are
// computed (sched/pooling.h); the last chunk ends it with the L2-normalized vector.
//
// Contract: not thread-safe; one thread calls submit/step (the engine's loop). validate() is
// const and safe from any thread. Events reach clients through each request's request_stream.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "kv/prefix_cache.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "sched/beam_search.h"
#include "sched/request.h"
#include "sched/speculative.h"
#include "sched/stop_matcher.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

struct scheduler_config {
    int64_t max_batch_tokens = 512;   // tokens per forward pass (the step's budget; bounds every step's time)
    int64_t prefill_chunk = 512;      // most prompt tokens one sequence computes per step
    // H2O evicts after every pass, so its output depends on where the passes cut: an H2O prompt
    // is computed in chunks of exactly h2o_chunk tokens from its start (the last one shorter),
    // then one token per step — a function of the request alone, whatever runs beside it, and
    // replayed the same way after preemption. At most max_batch_tokens / 2.
    int64_t h2o_chunk = 32;
    int32_t max_seqs = 64;            // running sequences at most
    int64_t n_ctx = 0;                // per-sequence context limit; 0 = the model's training context
    int32_t max_n = 16;               // most completions per request
    bool prefix_cache = true;         // reuse KV pages of cached prompt prefixes (RadixAttention)
    bool cascade = true;              // shared-prefix attention once for all decode rows sharing pages
    int32_t lpm_window = 32;          // waiting requests considered for longest-prefix-match first
    int32_t lpm_max_skips = 8;        // a request passed over this often is admitted next
    int64_t admission_reserve = 128;  // budget held back from running prompt chunks while requests
                                      // wait (at most half of max_batch_tokens)
    // Speculation runs only while at most this many sequences run (0: never): batched decode
    // already reads each weight once for many tokens, where verifying drafts costs more than it
    // saves (docs/speculative.md has the measurements).
    int32_t spec_max_running = 2;
};

// A draft model for speculative decoding: the target's vocabulary, its own KV cache (a pool
// with as many pages as the target's, so a sequence the target holds fits it too).
struct draft_model_ref {
    const language_model* model = nullptr;
    kv_cache* kv = nullptr;
};

struct scheduler_metrics {
    int64_t steps = 0;
    int64_t prompt_tokens = 0;      // prompt tokens computed (recompute included)
    int64_t generated_tokens = 0;   // tokens sampled
    int64_t preemptions = 0;
    int64_t requests_finished = 0;
    int64_t requests_cancelled = 0;
    // prefix cache
    int64_t prefix_queried_tokens = 0;  // prompt tokens looked up at admission
    int64_t prefix_hit_tokens = 0;      // of which reused from the cache
    int64_t prefix_evicted_pages = 0;
    int64_t prefix_cached_pages = 0;    // pages in the tree now
    // cascade attention
    int64_t cascade_steps = 0;          // forward passes that used at least one shared-prefix group
    int64_t cascade_rows = 0;           // decode rows served through a group
    // KV policies: pages in the tables of running sequences, by policy kind (a page shared by
    // several tables counts once per table).
    std::array<int64_t, n_kv_policy_kinds> kv_pages_by_policy{};
    // speculative decoding
    int64_t spec_cycles = 0;          // draft-and-verify cycles
    int64_t spec_drafted = 0;         // draft tokens proposed
    int64_t spec_accepted = 0;        // of which the target accepted
    int64_t spec_emitted = 0;         // tokens the cycles emitted (accepted drafts and the target's own)
    double spec_draft_seconds = 0;    // time in draft passes (and the draft model's catch-up)
    double spec_verify_seconds = 0;   // time in verification passes
};

class scheduler {
public:
    // Over the model's KV groups (language_model::kv_group_layout; kv_groups.h), or over the one
    // cache of a Llama-family model.
    scheduler(const language_model& model, const tokenizer& tok, kv_groups& kv, thread_pool& pool, const scheduler_config& config,
              draft_model_ref draft = {});
    scheduler(const language_model& model, const tokenizer& tok, kv_cache& kv, thread_pool& pool, const scheduler_config& config,
              draft_model_ref draft = {});
    ~scheduler();
    scheduler(const scheduler&) = delete;
    scheduler& operator=(const scheduler&) = delete;

    const scheduler_config& config() const { return cfg_; }
    int64_t n_ctx() const { return n_ctx_; }
    // Checks a request without queuing it: parameters, token ids, context and pool capacity.
    // The message names the problem ("the prompt has 5000 tokens, more than the context length 4096").
    status validate(const request_params& params) const;
    // Queues a validated request; its events go to `out`.
    status submit(request_params params, std::shared_ptr<request_stream> out);
    // One scheduling step and forward pass. Returns false when there was nothing to run.
    result<bool> step();
    // Pages only the prefix cache holds (evictable).
    int64_t n_cached_only_pages() const { return cache_ ? cache_->n_cached_only() : 0; }
    // Evicts every cached page that no sequence uses.
    void drop_prefix_cache();
    // Ends every unfinished completion with finish_reason::cancelled and frees its pages.
    void cancel_all();
    bool idle() const { return running_.empty() && waiting_.empty() && beams_.empty(); }
    int32_t n_running() const { return int32_t(running_.size()); }
    int32_t n_waiting() const { return int32_t(waiting_.size()); }
    const scheduler_metrics& metrics() const { return metrics_; }
    const kv_cache& kv() const { return kv_; }  // the primary KV group
    const kv_groups& kv_group_set() const { return groups_; }
    bool has_draft_model() const { return draft_.model != nullptr; }
    // KV integrity plus: every running sequence holds exactly the pages its computed tokens need.
    status check_integrity() const;

private:
    struct request_state;
    struct sequence;
    struct beam_group;
    struct planned {
        sequence* seq;
        int64_t n_tokens;   // tokens computed this step
        bool wants_logits;  // the chunk reaches the sequence's last token
    };

    planned* plan_of(const sequence* s);
    // H2O: tokens of the sequence's next pass (scheduler_config::h2o_chunk).
    int64_t h2o_take(const sequence* s) const;
    // Quest: the most tokens the sequence's next pass may take. Its prompt is read densely in
    // chunks of any size, but every generated token past the budget is computed alone, as when
    // it was decoded — also when a preempted sequence recomputes them — so that it selects.
    int64_t quest_cap(const sequence* s) const;
    // Leading tokens of the sequence whose KV equals a dense cache's (shareable through the
    // prefix cache): the policy's dense prefix, and for Quest the whole prompt as well.
    int64_t dense_prefix_tokens(const sequence* s) const;
    void schedule_running(int64_t& budget, bool prefills);
    void admit_waiting(int64_t& budget);
    bool make_room(sequence* s, int64_t n_tokens);
    bool ensure_free_pages(int32_t n, int32_t n_packed = 0);  // full and packed (KIVI) pages
    void attach_cached_prefix(sequence* s);
    int64_t shareable_pages(const sequence* s) const;
    void start_kv_sequence(sequence* s);
    void restart_window(sequence* s);
    bool reached_context(const sequence* s) const;
    void register_full_pages(sequence* s);
    size_t pick_waiting();
    int32_t slots_in_use() const;
    bool waits_for_inflight_prefix(sequence* s);
    void preempt(sequence* s);
    void finish(sequence* s, finish_reason reason, request_event& ev);
    void release(sequence* s);
    void fork_siblings(sequence* parent);
    void sample_and_emit(sequence* s, const float* logits);
    // The token sample_and_emit draws (min_tokens masks end-of-generation tokens), and its
    // emission: logprobs, stop strings, finish. emit_token returns false once the sequence ended.
    const float* masked_logits(const sequence* s, const float* logits);
    bool emit_token(sequence* s, int32_t tok, const float* logits);
    // Speculation: whether the sequence's planned decode row becomes a cycle (pages for its
    // drafts reserved; false: it decodes plainly), and the cycles of sequences sharing a drafter.
    bool prepare_speculation(sequence* s);
    status speculate(const std::vector<sequence*>& group);
    status draft_catch_up(const std::vector<sequence*>& group);
    void accept_drafts(sequence* s, const float* logits, int64_t n_vocab);
    // Beam search: starts a group from the prompt's logits; makes room for a group's next rows
    // (false: none to be had); advances a group from its rows' logits; ends it with its best
    // hypotheses (or cancelled).
    void start_beams(sequence* s, const float* logits);
    bool beam_room(beam_group& g);
    void advance_beams(beam_group& g, const float* logits, int64_t n_vocab);
    void finish_beams(beam_group& g, bool cancelled);
    // Embeddings: pools the rows [row, row + n) of the pass's hidden states into the sequence;
    // ends it once its prompt is computed.
    void pool_embedding(sequence* s, int64_t row, int64_t n);
    void handle_cancellations();
    void forget_finished_requests();

    scheduler(const language_model& model, const tokenizer& tok, std::unique_ptr<kv_groups> owned, kv_groups* borrowed, thread_pool& pool,
              const scheduler_config& config, draft_model_ref draft);
    const language_model& model_;
    const tokenizer& tok_;
    std::unique_ptr<kv_groups> own_groups_;  // a single cache wrapped (the kv_cache constructor)
    kv_groups& groups_;                      // every KV group: sequences are added, reserved, forked, trimmed and removed here
    kv_cache& kv_;                           // groups_.primary(): policies, prefix cache, admission by context
    thread_pool& pool_;
    scheduler_config cfg_;
    int64_t n_ctx_;
    std::unique_ptr<forward_state> state_;
    draft_model_ref draft_;
    std::unique_ptr<forward_state> spec_state_;   // the target's speculation passes (early-exit drafts, verification)
    std::unique_ptr<forward_state> draft_state_;  // the draft model's passes
    batch spec_batch_;
    std::vector<float> spec_hidden_;              // (spec_max_running, k_max_draft_tokens + 1, n_embd) exit hidden states
    std::vector<float> spec_hidden_rows_;         // (rows, n_embd) a pass's hidden states in batch order
    std::vector<float> spec_q_;                   // (spec_max_running, k_max_draft_tokens, n_vocab) draft distributions
    std::vector<float> spec_p_;                   // (n_vocab) a target distribution
    std::vector<float> hidden_;                   // (max_batch_tokens, n_embd) the pass's last hidden states (embeddings)
    std::unique_ptr<prefix_cache> cache_;  // null with config.prefix_cache off
    batch batch_;
    std::vector<planned> plan_;
    std::vector<int32_t> page_scratch_;
    std::vector<std::unique_ptr<request_state>> requests_;
    std::vector<sequence*> running_;   // admission order (oldest first)
    std::vector<std::unique_ptr<beam_group>> beams_;  // running beam searches
    std::deque<sequence*> waiting_;    // FIFO; preempted sequences return to the front
    uint64_t next_arrival_ = 0;
    scheduler_metrics metrics_;
};

}  // namespace kvs
