#include "server/openai_response.h"

#include <chrono>
#include <cmath>
#include <mutex>
#include <random>

#include "server/api_error.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

using json = nlohmann::json;

std::string dump_json(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string api_error_body(const api_error& e) {
    json err = {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
    return dump_json(json{{"error", std::move(err)}});
}

std::string new_response_id(api_endpoint endpoint) {
    static std::mutex mu;
    static std::mt19937_64 rng{std::random_device{}()};
    uint64_t a, b;
    {
        std::lock_guard<std::mutex> l(mu);
        a = rng();
        b = rng();
    }
    return strfmt("%s%016llx%08llx", endpoint == api_endpoint::chat ? "chatcmpl-" : "cmpl-", (unsigned long long)a,
                  (unsigned long long)(b & 0xffffffffu));
}

response_meta make_response_meta(api_endpoint endpoint, const std::string& model) {
    response_meta m;
    m.endpoint = endpoint;
    m.id = new_response_id(endpoint);
    m.model = model;
    m.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    return m;
}

json finish_reason_json(finish_reason r) {
    if (r == finish_reason::none) return nullptr;
    return finish_reason_name(r);
}

json usage_json(const request_usage& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens},
            {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

namespace {

double lp_value(float lp) { return std::isfinite(lp) ? double(lp) : -9999.0; }

json bytes_json(const std::string& s) {
    json b = json::array();
    for (unsigned char c : s) b.push_back(int(c));
    return b;
}

// Chat shape: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}.
json chat_logprobs(const std::vector<token_logprobs>& lps, const tokenizer& tok) {
    json content = json::array();
    for (const token_logprobs& t : lps) {
        const std::string piece = tok.token_to_piece(t.chosen.token);
        json top = json::array();
        for (const token_logprob& o : t.top) {
            const std::string p = tok.token_to_piece(o.token);
            top.push_back({{"token", p}, {"logprob", lp_value(o.logprob)}, {"bytes", bytes_json(p)}});
        }
        content.push_back({{"token", piece}, {"logprob", lp_value(t.chosen.logprob)}, {"bytes", bytes_json(piece)}, {"top_logprobs", std::move(top)}});
    }
    return {{"content", std::move(content)}};
}

// Legacy completions shape; text_offset advances by each token's piece length.
json completion_logprobs(const std::vector<token_logprobs>& lps, const tokenizer& tok, int64_t* text_offset) {
    json tokens = json::array(), token_lps = json::array(), tops = json::array(), offsets = json::array();
    for (const token_logprobs& t : lps) {
        const std::string piece = tok.token_to_piece(t.chosen.token);
        tokens.push_back(piece);
        token_lps.push_back(lp_value(t.chosen.logprob));
        json top = json::object();
        for (const token_logprob& o : t.top) {
            const std::string p = dump_json(json(tok.token_to_piece(o.token)));  // key as serialized (valid UTF-8)
            const std::string key = json::parse(p).get<std::string>();
            if (!top.contains(key)) top[key] = lp_value(o.logprob);  // pieces may repeat; keep the likelier
        }
        tops.push_back(std::move(top));
        offsets.push_back(*text_offset);
        *text_offset += int64_t(piece.size());
    }
    return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(token_lps)}, {"top_logprobs", std::move(tops)}, {"text_offset", std::move(offsets)}};
}

json base_object(const response_meta& meta, bool chunk) {
    const char* object = meta.endpoint == api_endpoint::chat ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return {{"id", meta.id}, {"object", object}, {"created", meta.created}, {"model", meta.model}};
}

}  // namespace

json completion_response(const response_meta& meta, const std::vector<completion_choice>& choices, const request_usage& usage,
                         const tokenizer& tok, bool with_logprobs, const std::string& echo) {
    json out = base_object(meta, false);
    json arr = json::array();
    for (size_t i = 0; i < choices.size(); ++i) {
        const completion_choice& c = choices[i];
        json ch = {{"index", i}};
        json lp = nullptr;
        if (meta.endpoint == api_endpoint::chat) {
            ch["message"] = {{"role", "assistant"}, {"content", c.text}};
            if (with_logprobs) lp = chat_logprobs(c.logprobs, tok);
        } else {
            ch["text"] = echo + c.text;
            int64_t offset = int64_t(echo.size());
            if (with_logprobs) lp = completion_logprobs(c.logprobs, tok, &offset);
        }
        ch["logprobs"] = std::move(lp);
        ch["finish_reason"] = finish_reason_json(c.finish);
        arr.push_back(std::move(ch));
    }
    out["choices"] = std::move(arr);
    out["usage"] = usage_json(usage);
    return out;
}

json stream_open_chunk(const response_meta& meta, int32_t index, const std::string& echo, bool with_usage) {
    json ch = {{"index", index}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
    if (meta.endpoint == api_endpoint::chat) {
        ch["delta"] = {{"role", "assistant"}, {"content", ""}};
    } else {
        if (echo.empty()) return nullptr;
        ch["text"] = echo;
    }
    json out = base_object(meta, true);
    out["choices"] = json::array({std::move(ch)});
    if (with_usage) out["usage"] = nullptr;
    return out;
}

json stream_event_chunk(const response_meta& meta, const request_event& ev, const tokenizer& tok, bool with_logprobs,
                        bool with_usage, stream_choice_state* state) {
    const bool has_lp = with_logprobs && !ev.logprobs.empty();
    if (ev.text.empty() && !has_lp && ev.finish == finish_reason::none) return nullptr;
    json ch = {{"index", ev.index}};
    json lp = nullptr;
    if (meta.endpoint == api_endpoint::chat) {
        ch["delta"] = ev.text.empty() ? json::object() : json{{"content", ev.text}};
        if (has_lp) lp = chat_logprobs(ev.logprobs, tok);
    } else {
        ch["text"] = ev.text;
        if (has_lp) lp = completion_logprobs(ev.logprobs, tok, &state->text_offset);
    }
    ch["logprobs"] = std::move(lp);
    ch["finish_reason"] = finish_reason_json(ev.finish);
    json out = base_object(meta, true);
    out["choices"] = json::array({std::move(ch)});
    if (with_usage) out["usage"] = nullptr;
    return out;
}

json stream_usage_chunk(const response_meta& meta, const request_usage& usage) {
    json out = base_object(meta, true);
    out["choices"] = json::array();
    out["usage"] = usage_json(usage);
    return out;
}

std::string sse_data(const json& chunk) { return "data: " + dump_json(chunk) + "\n\n"; }

}  // namespace kvs
