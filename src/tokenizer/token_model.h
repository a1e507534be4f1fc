// The per-fragment encoders behind `tokenizer`: text between special tokens goes to one of
// these. Implementations are immutable after creation and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace kvs {

class gguf_file;
struct vocab;

class token_model {
public:
    virtual ~token_model() = default;
    // Appends the ids of one raw-text fragment. `after_special` is true for the first fragment
    // of the text and for fragments that follow a special token (SPM adds its "▁" prefix there).
    virtual void encode_fragment(std::string_view text, bool after_special,
                                 std::vector<int32_t>& out) const = 0;
};

// spm.cpp. `v` must outlive the model.
std::unique_ptr<token_model> spm_model_create(const vocab& v);
// bpe.cpp: reads and validates tokenizer.ggml.merges; picks the pre-tokenizer for v.pre.
result<std::unique_ptr<token_model>> bpe_model_create(const vocab& v, const gguf_file& file);

}  // namespace kvs
