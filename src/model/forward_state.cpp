// The forward pass's activation arena (see forward_state.h).
#include "model/forward_state.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>

namespace kvs {

void forward_state::arena_free::operator()(uint8_t* p) const { std::free(p); }

forward_state::forward_state(const language_model& model, int64_t max_tokens, int64_t max_logits, layout arena)
    : max_tokens_(std::max<int64_t>(1, max_tokens)), max_logits_(std::max<int64_t>(1, max_logits)) {
    buffers_ = model.activation_buffers(max_tokens_, max_logits_);
    arena_plan_ = arena == layout::planned ? plan_activations(buffers_) : plan_disjoint(buffers_);
    const size_t bytes = std::max(arena_plan_.arena_bytes, activation_alignment);
    arena_.reset(static_cast<uint8_t*>(std::aligned_alloc(activation_alignment, bytes)));
    if (!arena_) throw std::bad_alloc();
    std::memset(arena_.get(), 0, bytes);
    const struct {
        const char* name;
        float** ptr;
    } named[] = {{"x", &x},       {"xb", &xb},     {"xb2", &xb2},           {"q", &q},
                 {"attn", &attn}, {"k", &k},       {"v", &v},               {"lse", &lse},
                 {"gate", &gate}, {"ffn_out", &ffn_out}, {"rope_cos", &rope_cos}, {"rope_sin", &rope_sin}, {"out_rows", &out_rows},
                 {"logits", &logits_}};
    buffer_ptr_.resize(buffers_.size());
    for (size_t i = 0; i < buffers_.size(); ++i) {
        buffer_ptr_[i] = reinterpret_cast<float*>(arena_.get() + arena_plan_.offsets[i]);
        for (const auto& n : named)
            if (std::string_view(buffers_[i].name) == n.name) *n.ptr = buffer_ptr_[i];
    }
}

}  // namespace kvs
