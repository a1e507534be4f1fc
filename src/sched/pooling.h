// Sentence embeddings from a decoder's hidden states: how the final-normed hidden states of a
// sequence's tokens become one vector (llama.cpp's pooling types; the GGUF key
// {arch}.pooling_type), L2-normalized as llama-server and the OpenAI API return them.
#pragma once

#include <cstdint>
#include <string_view>

#include "gguf/gguf.h"

namespace kvs {

enum class pooling_type {
    mean,  // the mean over every token
    cls,   // the first token's
    last,  // the last token's (decoder-only models: the one that has seen the whole text)
};

// "mean", "cls" or "last"; false for anything else.
bool pooling_from_name(std::string_view name, pooling_type* out);
const char* pooling_name(pooling_type p);
// The model's own pooling from `{arch}.pooling_type` (llama.cpp: 1 mean, 2 cls, 3 last); last
// when the key is absent or names none of these (what vLLM does for decoder-only models).
pooling_type pooling_of_model(const gguf_file& f, std::string_view arch);

}  // namespace kvs
