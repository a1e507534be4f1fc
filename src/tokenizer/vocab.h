// The vocabulary part of a tokenizer: token texts, scores, types and special ids, copied out of
// GGUF metadata and validated. Immutable after vocab_load(); `text_to_id` holds views into
// `text`, so a vocab is never copied or moved (it lives behind a unique_ptr).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

struct vocab {
    tokenizer_kind kind = tokenizer_kind::spm;
    std::string pre;                    // tokenizer.ggml.pre ("default" when absent)
    std::vector<std::string> text;      // (n_vocab) raw token text as stored in the GGUF
    std::vector<float> score;           // (n_vocab) SPM merge priority (0 when absent)
    std::vector<token_type> type;       // (n_vocab)
    std::vector<std::string> piece;     // (n_vocab) decoded bytes of normal / byte /
                                        // user-defined tokens; "" for the others
    std::unordered_map<std::string_view, int32_t> text_to_id;  // first id with that text
    // Tokens cut out of the text before tokenization (control, unknown, user-defined with
    // non-empty text), longest text first, ties by id.
    std::vector<int32_t> special_ids;
    std::vector<int32_t> eog_ids;       // sorted
    int32_t bos = -1, eos = -1, eot = -1, eom = -1, unk = -1, pad = -1;  // -1: none
    bool add_bos = false, add_eos = false, add_space_prefix = false;

    vocab() = default;
    vocab(const vocab&) = delete;
    vocab& operator=(const vocab&) = delete;

    int32_t n_vocab() const { return int32_t(text.size()); }
    int32_t find(std::string_view t) const {
        auto it = text_to_id.find(t);
        return it == text_to_id.end() ? -1 : it->second;
    }
};

result<std::unique_ptr<vocab>> vocab_load(const gguf_file& file);

}  // namespace kvs
