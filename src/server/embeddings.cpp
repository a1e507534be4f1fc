#include "server/embeddings.h"

#include <cstring>

#include "core/status.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

namespace {

constexpr size_t k_max_inputs = 2048;

std::string brief_type(const nlohmann::ordered_json& v) {
    if (v.is_string()) return "a string";
    if (v.is_array()) return "an array";
    if (v.is_object()) return "an object";
    if (v.is_boolean()) return "a boolean";
    if (v.is_null()) return "null";
    return "a number";
}

std::optional<api_error> token_list(const nlohmann::ordered_json& v, const tokenizer& tok, std::vector<int32_t>* out) {
    out->clear();
    for (const auto& t : v) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.n_vocab())
            return api_error::invalid(strfmt("input token ids must be integers in [0, %d)", tok.n_vocab()), "input");
        out->push_back(int32_t(t.get<int64_t>()));
    }
    if (out->empty()) return api_error::invalid("input must not contain an empty token list", "input");
    return std::nullopt;
}

}  // namespace

std::optional<api_error> parse_embedding_request(const nlohmann::ordered_json& body, const tokenizer& tok, int64_t n_embd,
                                                 embedding_request* out) {
    if (!body.is_object()) return api_error::invalid("the body must be a JSON object", "");
    if (auto m = body.find("model"); m != body.end() && !m->is_null()) {
        if (!m->is_string()) return api_error::invalid("model must be a string, got " + brief_type(*m), "model");
        out->model = m->get<std::string>();
    }
    if (auto f = body.find("encoding_format"); f != body.end() && !f->is_null()) {
        if (!f->is_string() || (*f != "float" && *f != "base64"))
            return api_error::invalid("encoding_format must be \"float\" or \"base64\"", "encoding_format");
        out->base64 = *f == "base64";
    }
    if (auto d = body.find("dimensions"); d != body.end() && !d->is_null()) {
        if (!d->is_number_integer() || d->get<int64_t>() != n_embd)
            return api_error::invalid(strfmt("dimensions must be the model's width, %lld (no truncated embeddings)", (long long)n_embd),
                                      "dimensions");
    }
    auto in = body.find("input");
    if (in == body.end() || in->is_null()) return api_error::invalid("input is required", "input");
    auto text = [&](const std::string& s) -> std::optional<api_error> {
        if (s.empty()) return api_error::invalid("input must not contain an empty string", "input");
        out->inputs.push_back(tok.encode(s, tok.add_bos(), false));
        if (out->inputs.back().empty()) return api_error::invalid("input tokenizes to nothing", "input");
        return std::nullopt;
    };
    if (in->is_string()) return text(in->get<std::string>());
    if (!in->is_array() || in->empty())
        return api_error::invalid("input must be a string, a non-empty array of strings, of token ids, or of token-id arrays, got " +
                                      brief_type(*in),
                                  "input");
    if (in->size() > k_max_inputs) return api_error::invalid(strfmt("input has more than %zu items", k_max_inputs), "input");
    if ((*in)[0].is_number_integer()) {
        std::vector<int32_t> ids;
        if (auto e = token_list(*in, tok, &ids)) return e;
        out->inputs.push_back(std::move(ids));
        return std::nullopt;
    }
    for (const auto& item : *in) {
        if (item.is_string()) {
            if (auto e = text(item.get<std::string>())) return e;
        } else if (item.is_array()) {
            std::vector<int32_t> ids;
            if (auto e = token_list(item, tok, &ids)) return e;
            out->inputs.push_back(std::move(ids));
        } else {
            return api_error::invalid("input items must be strings or token-id arrays, got " + brief_type(item), "input");
        }
    }
    return std::nullopt;
}

std::string base64_encode(const uint8_t* data, size_t n) {
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    for (size_t i = 0; i < n; i += 3) {
        const uint32_t b = uint32_t(data[i]) << 16 | (i + 1 < n ? uint32_t(data[i + 1]) << 8 : 0) | (i + 2 < n ? uint32_t(data[i + 2]) : 0);
        out += digits[(b >> 18) & 63];
        out += digits[(b >> 12) & 63];
        out += i + 1 < n ? digits[(b >> 6) & 63] : '=';
        out += i + 2 < n ? digits[b & 63] : '=';
    }
    return out;
}

nlohmann::ordered_json embedding_response(const std::vector<std::vector<float>>& vectors, bool base64, const std::string& model,
                                          int64_t prompt_tokens) {
    nlohmann::ordered_json data = nlohmann::ordered_json::array();
    for (size_t i = 0; i < vectors.size(); ++i) {
        nlohmann::ordered_json e;
        e["object"] = "embedding";
        e["index"] = i;
        if (base64) {
            std::vector<uint8_t> bytes(vectors[i].size() * sizeof(float));
            std::memcpy(bytes.data(), vectors[i].data(), bytes.size());  // x86-64: little-endian
            e["embedding"] = base64_encode(bytes.data(), bytes.size());
        } else {
            e["embedding"] = vectors[i];
        }
        data.push_back(std::move(e));
    }
    nlohmann::ordered_json r;
    r["object"] = "list";
    r["data"] = std::move(data);
    r["model"] = model;
    r["usage"] = {{"prompt_tokens", prompt_tokens}, {"total_tokens", prompt_tokens}};
    return r;
}

}  // namespace kvs
