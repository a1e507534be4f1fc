// Cutting special tokens out of text before the model-specific tokenizer sees it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace kvs {

struct vocab;

struct text_fragment {
    int32_t token = -1;  // >= 0: this fragment is that special token; -1: raw text
    size_t offset = 0;   // bytes into the text
    size_t length = 0;   // bytes
};

// Splits `text` into raw-text fragments and special tokens, llama.cpp's way: special tokens are
// tried longest first, each cutting every occurrence out of the raw fragments left by the
// longer ones. User-defined tokens are always cut; control and unknown ones only when
// `parse_special`. Empty raw fragments are dropped.
std::vector<text_fragment> split_special(std::string_view text, const vocab& v, bool parse_special);

}  // namespace kvs
