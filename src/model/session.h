// One sequence over a model with its own dense paged KV cache: prefill in chunks, then
// decode token by token. This is what `kvserve run` and `kvserve perplexity` use; the server
// schedules many sequences through the same llama_model::forward instead.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "model/llama.h"

namespace kvs {

struct session_params {
    int64_t n_ctx = 0;        // context length (tokens); 0 = the model's training context
    int64_t n_batch = 512;    // tokens per forward pass while prefilling (chunked prefill)
    int32_t page_size = 16;   // KV tokens per page
    dtype kv_type = kv_default_type;  // KV storage format (f32, f16, bf16)
    int64_t max_logit_rows = 1;  // logit rows one forward pass may return (eval with all_logits)
};

class session {
public:
    static result<std::unique_ptr<session>> create(const llama_model& model, thread_pool& pool, const session_params& params);

    int64_t n_ctx() const { return n_ctx_; }
    int64_t n_past() const { return n_past_; }
    const llama_model& model() const { return model_; }
    const kv_cache& kv() const { return *kv_; }

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
    session(const llama_model& model, thread_pool& pool) : model_(model), pool_(pool) {}
    const llama_model& model_;
    thread_pool& pool_;
    int64_t n_ctx_ = 0, n_batch_ = 0, n_past_ = 0;
    int32_t seq_ = -1;
    std::unique_ptr<kv_cache> kv_;
    std::unique_ptr<forward_state> st_;
    batch batch_;
    std::vector<float> last_logits_;  // (n_vocab)
};

}  // namespace kvs
