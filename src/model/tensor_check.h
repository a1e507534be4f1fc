// Binding GGUF tensors to a model's weights: presence, dims and dtype checked before use, with
// errors that name the tensor.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"
#include "kernels/cpu/ops.h"

namespace kvs {

// The tensor `name` with dims `ne` (GGUF order: ne[0] contiguous) of a supported weight type
// (f32 only when need_float), else an error naming it and what was expected.
result<const gguf_tensor_info*> want_tensor(const gguf_file& f, const std::string& name, std::vector<int64_t> ne, bool need_float);
// A 2-D tensor as a row-major weight matrix: ne[1] rows of ne[0] elements. A 3-D tensor gives
// its first matrix (ne[2] of them follow).
cpu::weight_view weight_view_of(const gguf_tensor_info* t);

// The ends every decoder has: token_embd.weight (n_vocab rows of n_embd; n_vocab taken from it
// when *n_vocab is 0), output_norm.weight, and the LM head — output.weight, or the embeddings
// when the file has none (tied).
struct lm_ends {
    const gguf_tensor_info* token_embd = nullptr;
    const float* output_norm = nullptr;
    cpu::weight_view output;
    bool tied = false;
};
result<lm_ends> bind_lm_ends(const gguf_file& f, int64_t n_embd, int64_t* n_vocab);

}  // namespace kvs
