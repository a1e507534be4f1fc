// The per-fragment encoders behind `tokenizer`: text between special tokens goes to one of
// these. Implementations are immutable after creation and safe to share between threads.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <utility>
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

// Per-call memo of word -> ids: natural text repeats words, and merging is the costly part.
// Keys are views into the text being encoded, so a memo lives for one encode call.
class word_memo {
public:
    // Appends the ids of `word` to `out`, computing them with encode(word, ids) once per call.
    template <class encode_fn>
    void append(std::string_view word, std::vector<int32_t>& out, encode_fn&& encode) {
        auto it = spans_.find(word);
        if (it == spans_.end()) {
            scratch_.clear();
            encode(word, scratch_);
            const size_t begin = ids_.size();
            ids_.insert(ids_.end(), scratch_.begin(), scratch_.end());
            it = spans_.emplace(word, std::make_pair(begin, ids_.size())).first;
        }
        out.insert(out.end(), ids_.begin() + long(it->second.first), ids_.begin() + long(it->second.second));
    }

private:
    std::unordered_map<std::string_view, std::pair<size_t, size_t>> spans_;  // word -> [begin, end) in ids_
    std::vector<int32_t> ids_, scratch_;
};

// spm.cpp. `v` must outlive the model.
std::unique_ptr<token_model> spm_model_create(const vocab& v);
// bpe.cpp: reads and validates tokenizer.ggml.merges; picks the pre-tokenizer for v.pre.
result<std::unique_ptr<token_model>> bpe_model_create(const vocab& v, const gguf_file& file);

}  // namespace kvs
