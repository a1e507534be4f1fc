// One sequence over a model with its own paged KV cache: prefill in chunks, then decode token
// by token, under a KV policy (kv/kv_policy.h). This is what `kvserve run` and `kvserve
// perplexity` use; the server schedules many sequences through the same language_model::forward
// instead.
//
// Policies: dense keeps every token (the context length bounds the sequence). Window and
// StreamingLLM slide: after every forward pass the pages no later query reads go back to the
// pool, so the sequence holds a bounded number of pages and may run past the context length.
// Recompute keeps no cache between tokens: each new token is computed by prefilling the last
// W tokens afresh at positions 0..W-1. H2O keeps a fixed region of heavy + recent slots per
// layer and KV head (kv/h2o.h), cut back after every pass (chunk = n_batch while prefilling).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/forward_state.h"
#include "model/language_model.h"

namespace kvs {

struct session_params {
    int64_t n_ctx = 0;        // context length (tokens); 0 = the model's training context
    int64_t n_batch = 512;    // tokens per forward pass while prefilling (chunked prefill)
    int32_t page_size = 16;   // KV tokens per page
    std::optional<dtype> kv_type;  // KV storage format (f32, f16, bf16, q8_0, q4_0, q4_1); unset: the model's (language_model::auto_kv_type)
    std::optional<dtype> kv_v_type;  // V's format when it differs from K's (unset: kv_type's)
    kivi_config kivi;  // KIVI pages (bits 0: off); its group is the page size, kv_type the residual's format
    int64_t max_logit_rows = 1;  // logit rows one forward pass may return (eval with all_logits)
    kv_policy policy;            // which tokens the cache keeps and reads (dense by default)
};

class session {
public:
    static result<std::unique_ptr<session>> create(const language_model& model, thread_pool& pool, const session_params& params);

    int64_t n_ctx() const { return n_ctx_; }
    // False when the policy lets the sequence grow past n_ctx (window, streaming, recompute).
    bool bounded_by_ctx() const { return bounded_; }
    int64_t n_past() const { return n_past_; }
    const kv_policy& policy() const { return policy_; }
    // KV bytes the sequence holds now (its pages, every KV group).
    size_t kv_bytes() const {
        size_t n = 0;
        for (size_t g = 0; g < groups_->size(); ++g) n += groups_->group(g).seq_bytes(seq_);
        return n;
    }
    // Most pages the sequence has held at once, and most bytes (KIVI: packed pages are smaller).
    int32_t peak_pages() const { return peak_pages_; }
    size_t peak_bytes() const { return peak_bytes_; }
    const language_model& model() const { return model_; }
    const kv_cache& kv() const { return *kv_; }  // the primary KV group
    const kv_groups& kv_group_set() const { return *groups_; }
    int32_t kv_seq() const { return seq_; }  // the sequence in kv()
    const forward_state& state() const { return *st_; }
    // Tests: record every Quest selection of the following passes (forward_state::set_quest_trace).
    void set_quest_trace(std::vector<forward_state::quest_choice>* trace) { st_->set_quest_trace(trace); }
    void set_quest_mass(bool on) { st_->set_quest_mass(on); }
    void set_h2o_mass(bool on) { st_->set_h2o_mass(on); }

    // Appends tokens; afterwards logits() is the distribution after the last one.
    // Fails without side effects beyond n_past if the context would overflow.
    status prefill(const std::vector<int32_t>& tokens) { return eval(tokens.data(), int64_t(tokens.size()), -1, nullptr); }
    status decode(int32_t token) { return eval(&token, 1, -1, nullptr); }
    // Appends n tokens; if all_logits != nullptr, fills it with the logits of rows
    // [first_row, n) ((n - first_row), n_vocab); logits() is the last row's either way.
    status eval(const int32_t* tokens, int64_t n, int64_t first_row, std::vector<float>* all_logits);
    const float* logits() const { return last_logits_.data(); }  // (n_vocab)
    // Forgets all tokens (pages go back to the pool).
    void reset();

private:
    session(const language_model& model, thread_pool& pool) : model_(model), pool_(pool) {}
    // One forward pass over tokens [0, m) appended at n_past_ (logits of the rows flagged).
    status forward_chunk(const int32_t* tokens, int64_t m, const uint8_t* want_logits);
    status eval_recompute(const int32_t* tokens, int64_t n, int64_t first_row, std::vector<float>* all_logits);
    const language_model& model_;
    thread_pool& pool_;
    int64_t n_ctx_ = 0, n_batch_ = 0, n_past_ = 0;
    bool bounded_ = true;
    kv_policy policy_;
    int32_t peak_pages_ = 0;
    size_t peak_bytes_ = 0;
    std::vector<int32_t> history_;  // recompute: every token so far
    std::vector<uint8_t> want_;     // (n_batch) rows of a pass whose logits are returned
    int32_t seq_ = -1;
    std::unique_ptr<kv_cache> own_kv_;  // Llama family: the one group's cache
    std::unique_ptr<kv_groups> groups_;  // the model's KV groups
    kv_cache* kv_ = nullptr;             // groups_->primary()
    std::unique_ptr<forward_state> st_;
    batch batch_;
    std::vector<float> last_logits_;  // (n_vocab)
};

}  // namespace kvs
