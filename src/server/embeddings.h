// /v1/embeddings (OpenAI's shape): the request's inputs as token lists and the response body.
//
// Accepted: input (a string, a list of strings, a list of token ids, or a list of token-id
// lists; 1 to 2,048 inputs, none empty), model (string), encoding_format ("float", default, or
// "base64": the little-endian float32 bytes), dimensions (only the model's own width), user
// (ignored). Text is tokenized with BOS when the vocabulary asks for it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server/api_error.h"

namespace kvs {

class tokenizer;

struct embedding_request {
    std::vector<std::vector<int32_t>> inputs;
    bool base64 = false;
    std::string model;
};

std::optional<api_error> parse_embedding_request(const nlohmann::ordered_json& body, const tokenizer& tok, int64_t n_embd,
                                                 embedding_request* out);

// {"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...] | "base64"}],
//  "model": ..., "usage": {"prompt_tokens": n, "total_tokens": n}}
nlohmann::ordered_json embedding_response(const std::vector<std::vector<float>>& vectors, bool base64, const std::string& model,
                                          int64_t prompt_tokens);

// Standard base64 (RFC 4648, with padding) of bytes.
std::string base64_encode(const uint8_t* data, size_t n);

}  // namespace kvs
