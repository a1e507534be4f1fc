#include "server/openai_request.h"

#include <cmath>
#include <limits>
#include <random>

#include "core/utf8.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

using json = nlohmann::ordered_json;

namespace {

// A short rendering of a rejected value for messages ("got \"hot\""). The dump is valid UTF-8
// (invalid bytes replaced) and is cut on a character boundary, so the message stays valid
// UTF-8 and its JSON error body serializes.
std::string brief(const json& v) {
    std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
    if (s.size() > 48) s = s.substr(0, utf8_prefix_length(s, 45)) + "...";
    return s;
}

// The field, or null when it is absent or JSON null (both mean "default").
const json* field(const json& body, const char* key) {
    auto it = body.find(key);
    if (it == body.end() || it->is_null()) return nullptr;
    return &*it;
}

std::string fmt_num(double x) {
    if (x == std::numeric_limits<double>::infinity()) return "inf";
    return strfmt("%g", x);
}

// A number in [lo, hi] (or (lo, hi] with lo_open).
std::optional<api_error> get_float(const json& body, const char* key, double lo, double hi, bool lo_open, float* out) {
    const json* v = field(body, key);
    if (!v) return std::nullopt;
    const std::string range = std::string(lo_open ? "(" : "[") + fmt_num(lo) + ", " + fmt_num(hi) + "]";
    if (!v->is_number() || v->is_boolean())
        return api_error::invalid(strfmt("%s must be a number in %s, got %s", key, range.c_str(), brief(*v).c_str()), key);
    const double d = v->get<double>();
    if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo))
        return api_error::invalid(strfmt("%s must be a number in %s, got %s", key, range.c_str(), brief(*v).c_str()), key);
    *out = static_cast<float>(d);
    return std::nullopt;
}

// An integer in [lo, hi]; floats with an integral value (16.0) are accepted.
std::optional<api_error> get_int(const json& body, const char* key, int64_t lo, int64_t hi, int64_t* out) {
    const json* v = field(body, key);
    if (!v) return std::nullopt;
    auto bad = [&] {
        const std::string range = hi == std::numeric_limits<int64_t>::max() ? strfmt(">= %lld", (long long)lo)
                                                                             : strfmt("in [%lld, %lld]", (long long)lo, (long long)hi);
        return api_error::invalid(strfmt("%s must be an integer %s, got %s", key, range.c_str(), brief(*v).c_str()), key);
    };
    int64_t x = 0;
    if (v->is_number_unsigned()) {
        const uint64_t u = v->get<uint64_t>();
        if (u > uint64_t(std::numeric_limits<int64_t>::max())) return bad();
        x = int64_t(u);
    } else if (v->is_number_integer()) {
        x = v->get<int64_t>();
    } else if (v->is_number_float()) {
        const double d = v->get<double>();
        if (!std::isfinite(d) || d != std::floor(d) || std::fabs(d) > 9.0e15) return bad();
        x = int64_t(d);
    } else {
        return bad();
    }
    if (x < lo || x > hi) return bad();
    *out = x;
    return std::nullopt;
}

std::optional<api_error> get_bool(const json& body, const char* key, bool* out) {
    const json* v = field(body, key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) return api_error::invalid(strfmt("%s must be a boolean, got %s", key, brief(*v).c_str()), key);
    *out = v->get<bool>();
    return std::nullopt;
}

#define KVS_API_TRY(expr)                    \
    do {                                     \
        if (auto kvs_e_ = (expr)) return kvs_e_; \
    } while (0)

std::optional<api_error> parse_seed(const json& body, uint64_t* seed) {
    const json* v = field(body, "seed");
    if (!v) {
        std::random_device rd;
        *seed = (uint64_t(rd()) << 32) ^ rd();
        return std::nullopt;
    }
    if (v->is_number_unsigned()) *seed = v->get<uint64_t>();
    else if (v->is_number_integer()) *seed = uint64_t(v->get<int64_t>());
    else return api_error::invalid("seed must be an integer, got " + brief(*v), "seed");
    return std::nullopt;
}

std::optional<api_error> parse_stop(const json& body, std::vector<std::string>* stop) {
    const json* v = field(body, "stop");
    if (!v) return std::nullopt;
    const char* what = "stop must be a string or an array of up to 16 non-empty strings";
    if (v->is_string()) {
        if (v->get_ref<const std::string&>().empty()) return api_error::invalid(std::string(what) + ", got an empty string", "stop");
        stop->push_back(v->get<std::string>());
        return std::nullopt;
    }
    if (!v->is_array() || v->size() > 16) return api_error::invalid(std::string(what) + ", got " + brief(*v), "stop");
    for (const json& s : *v) {
        if (!s.is_string() || s.get_ref<const std::string&>().empty())
            return api_error::invalid(std::string(what) + ", got an element " + brief(s), "stop");
        stop->push_back(s.get<std::string>());
    }
    return std::nullopt;
}

// The fields both endpoints share: model, sampling, lengths, stop, n, streaming.
std::optional<api_error> parse_common(const json& body, openai_request* out) {
    if (!body.is_object()) return api_error::invalid("the request body must be a JSON object, got " + brief(body));
    if (const json* m = field(body, "model")) {
        if (!m->is_string()) return api_error::invalid("model must be a string, got " + brief(*m), "model");
        out->model = m->get<std::string>();
    }
    request_params& p = out->params;
    sampling_params& sp = p.sampling;
    KVS_API_TRY(get_float(body, "temperature", 0.0, 2.0, false, &sp.temperature));
    KVS_API_TRY(get_float(body, "top_p", 0.0, 1.0, true, &sp.top_p));
    KVS_API_TRY(get_float(body, "min_p", 0.0, 1.0, false, &sp.min_p));
    KVS_API_TRY(get_float(body, "presence_penalty", -2.0, 2.0, false, &sp.presence_penalty));
    KVS_API_TRY(get_float(body, "frequency_penalty", -2.0, 2.0, false, &sp.frequency_penalty));
    if (field(body, "repetition_penalty")) {
        KVS_API_TRY(get_float(body, "repetition_penalty", 0.0, 100.0, true, &sp.repeat_penalty));
        sp.repeat_last_n = -1;  // vLLM semantics: every generated token counts
    }
    int64_t v = 0;
    if (field(body, "top_k")) {
        KVS_API_TRY(get_int(body, "top_k", -1, std::numeric_limits<int32_t>::max(), &v));
        sp.top_k = int32_t(v);
    }
    KVS_API_TRY(parse_seed(body, &sp.seed));
    const int64_t big = std::numeric_limits<int64_t>::max();
    KVS_API_TRY(get_int(body, "max_tokens", 1, big, &p.max_tokens));
    KVS_API_TRY(get_int(body, "max_completion_tokens", 1, big, &p.max_tokens));
    KVS_API_TRY(get_int(body, "min_tokens", 0, big, &p.min_tokens));
    if (field(body, "n")) {
        KVS_API_TRY(get_int(body, "n", 1, 1024, &v));
        p.n = int32_t(v);
    }
    KVS_API_TRY(parse_stop(body, &p.stop));
    KVS_API_TRY(get_bool(body, "ignore_eos", &p.ignore_eos));
    if (const json* salt = field(body, "cache_salt")) {
        // vLLM's extension: requests share cached prefix pages only within one salt.
        if (!salt->is_string()) return api_error::invalid("cache_salt must be a string, got " + brief(*salt), "cache_salt");
        p.cache_salt = salt->get<std::string>();
    }
    if (const json* pol = field(body, "kv_policy")) {
        // kvserve's extension: the sequence's KV policy (kv/kv_policy.h); absent = the server's.
        if (!pol->is_string()) return api_error::invalid("kv_policy must be a string such as \"streaming:sinks=4,size=508\", got " + brief(*pol), "kv_policy");
        auto parsed = kv_policy::parse(pol->get_ref<const std::string&>());
        if (!parsed) return api_error::invalid("kv_policy: " + parsed.message(), "kv_policy");
        p.policy = parsed.value();
    }
    if (const json* sp = field(body, "speculative")) {
        // kvserve's extension: speculative decoding (sched/speculative.h); absent = the server's.
        if (sp->is_boolean() && !sp->get<bool>()) {
            p.speculative = speculative_params{};
        } else if (!sp->is_object()) {
            return api_error::invalid("speculative must be an object such as {\"exit_layer\": 4, \"draft_tokens\": 4} or false, got " + brief(*sp),
                                      "speculative");
        } else {
            speculative_params s;
            auto sub = [&](std::optional<api_error> e) {
                if (e) e->param = "speculative";
                return e;
            };
            KVS_API_TRY(sub(get_int(*sp, "draft_tokens", 0, k_max_draft_tokens, &v)));
            s.draft_tokens = field(*sp, "draft_tokens") ? int32_t(v) : 0;
            if (!field(*sp, "draft_tokens")) return api_error::invalid("speculative needs draft_tokens", "speculative");
            if (field(*sp, "exit_layer")) {
                KVS_API_TRY(sub(get_int(*sp, "exit_layer", 0, std::numeric_limits<int32_t>::max(), &v)));
                s.exit_layer = int32_t(v);
            }
            if (const json* mp = field(*sp, "min_draft_p")) {
                if (!mp->is_number() || !(mp->get<double>() >= 0.0 && mp->get<double>() < 1.0))
                    return api_error::invalid("speculative.min_draft_p must be a number in [0, 1), got " + brief(*mp), "speculative");
                s.min_draft_p = float(mp->get<double>());
            }
            if (s.draft_tokens == 0) s = speculative_params{};
            p.speculative = s;
        }
    }
    KVS_API_TRY(get_bool(body, "stream", &out->stream));
    if (const json* so = field(body, "stream_options")) {
        if (!so->is_object()) return api_error::invalid("stream_options must be an object, got " + brief(*so), "stream_options");
        if (auto e = get_bool(*so, "include_usage", &out->include_usage)) {
            e->param = "stream_options";
            return e;
        }
        if (!out->stream) out->include_usage = false;
    }
    return std::nullopt;
}

// A token-id array; false when some element is not an integer token id.
bool to_token_ids(const json& arr, std::vector<int32_t>* ids) {
    for (const json& t : arr) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > std::numeric_limits<int32_t>::max()) return false;
        ids->push_back(int32_t(t.get<int64_t>()));
    }
    return true;
}

std::optional<api_error> parse_prompt(const json& body, const tokenizer& tok, openai_request* out) {
    const json* v = field(body, "prompt");
    if (!v) return api_error::invalid("prompt is required", "prompt");
    const char* shape = "prompt must be a string, an array of token ids, or an array holding one string or one token-id array";
    const json* one = v;
    if (v->is_array() && !v->empty() && (v->at(0).is_string() || v->at(0).is_array())) {
        if (v->size() != 1)
            return api_error::invalid(strfmt("batched prompts are not supported (got %zu prompts): send one prompt per request, "
                                             "or use n for several completions", v->size()),
                                      "prompt");
        one = &v->at(0);
    }
    if (one->is_string()) {
        out->prompt_text = one->get<std::string>();
        out->params.prompt = tok.encode(out->prompt_text, tok.add_bos(), true);
        return std::nullopt;
    }
    if (one->is_array() && !one->empty()) {
        if (!to_token_ids(*one, &out->params.prompt))
            return api_error::invalid("prompt token ids must be non-negative integers", "prompt");
        out->prompt_text = tok.decode(out->params.prompt);
        return std::nullopt;
    }
    if (one->is_array()) return api_error::invalid("prompt must not be empty", "prompt");
    return api_error::invalid(std::string(shape) + ", got " + brief(*v), "prompt");
}

// Chat content as one string: a string, null ("") or text parts concatenated.
std::optional<api_error> content_text(const json& content, size_t i, std::string* text) {
    if (content.is_null()) return std::nullopt;
    if (content.is_string()) {
        *text = content.get<std::string>();
        return std::nullopt;
    }
    if (content.is_array()) {
        for (const json& part : content) {
            auto type = part.is_object() ? part.find("type") : part.end();
            if (!part.is_object() || type == part.end() || *type != "text" || !part.contains("text") || !part["text"].is_string())
                return api_error::invalid(strfmt("messages[%zu].content: only parts of type \"text\" with a string \"text\" are supported, got %s",
                                                 i, brief(part).c_str()),
                                          "messages");
            *text += part["text"].get<std::string>();
        }
        return std::nullopt;
    }
    return api_error::invalid(strfmt("messages[%zu].content must be a string, null or an array of text parts, got %s", i, brief(content).c_str()),
                              "messages");
}

std::optional<api_error> parse_messages(const json& body, openai_request* out) {
    const json* v = field(body, "messages");
    if (!v) return api_error::invalid("messages is required", "messages");
    if (!v->is_array() || v->empty())
        return api_error::invalid("messages must be a non-empty array of {role, content} objects, got " + brief(*v), "messages");
    out->messages = json::array();
    for (size_t i = 0; i < v->size(); ++i) {
        const json& m = v->at(i);
        if (!m.is_object()) return api_error::invalid(strfmt("messages[%zu] must be an object, got %s", i, brief(m).c_str()), "messages");
        auto role = m.find("role");
        if (role == m.end() || !role->is_string() || role->get_ref<const std::string&>().empty())
            return api_error::invalid(strfmt("messages[%zu].role must be a non-empty string", i), "messages");
        json msg = m;
        auto content = m.find("content");
        if (content != m.end() && !content->is_null()) {
            std::string text;
            KVS_API_TRY(content_text(*content, i, &text));
            msg["content"] = text;
        }
        out->messages.push_back(std::move(msg));
    }
    if (const json* tools = field(body, "tools")) {
        if (!tools->is_array()) return api_error::invalid("tools must be an array, got " + brief(*tools), "tools");
        out->tools = *tools;
    }
    out->template_kwargs = json::object();
    if (const json* kw = field(body, "chat_template_kwargs")) {
        if (!kw->is_object()) return api_error::invalid("chat_template_kwargs must be an object, got " + brief(*kw), "chat_template_kwargs");
        out->template_kwargs = *kw;
    }
    return std::nullopt;
}

}  // namespace

std::optional<api_error> parse_completion_request(const json& body, const tokenizer& tok, openai_request* out) {
    out->endpoint = api_endpoint::completions;
    out->params.max_tokens = 16;  // the OpenAI default for completions
    KVS_API_TRY(parse_common(body, out));
    if (field(body, "logprobs")) {
        int64_t k = 0;
        if (field(body, "logprobs")->is_boolean())
            return api_error::invalid("logprobs must be an integer in [0, 20] for completions (the number of top tokens), got a boolean", "logprobs");
        KVS_API_TRY(get_int(body, "logprobs", 0, 20, &k));
        out->params.n_logprobs = int32_t(k);
    }
    KVS_API_TRY(get_bool(body, "echo", &out->echo));
    // Beam search, with vLLM's spelling: best_of beams, the n best returned.
    bool beam = false;
    KVS_API_TRY(get_bool(body, "use_beam_search", &beam));
    int64_t best_of = out->params.n;
    KVS_API_TRY(get_int(body, "best_of", 1, 1024, &best_of));
    if (best_of < out->params.n) return api_error::invalid(strfmt("best_of (%lld) must be at least n (%d)", (long long)best_of, out->params.n), "best_of");
    if (!beam && best_of != out->params.n)
        return api_error::invalid("best_of larger than n needs use_beam_search: true (sampled best_of is not supported)", "best_of");
    if (field(body, "length_penalty")) {
        if (!beam) return api_error::invalid("length_penalty applies to beam search only (use_beam_search: true)", "length_penalty");
        KVS_API_TRY(get_float(body, "length_penalty", -10.0, 10.0, false, &out->params.length_penalty));
    }
    if (beam) {
        if (out->stream) return api_error::invalid("beam search does not stream: its completions exist once the search is done", "stream");
        out->params.beam_width = int32_t(best_of);
    }
    return parse_prompt(body, tok, out);
}

std::optional<api_error> parse_chat_request(const json& body, openai_request* out) {
    out->endpoint = api_endpoint::chat;
    out->params.max_tokens = -1;  // until the context is full, as OpenAI chat does
    KVS_API_TRY(parse_common(body, out));
    bool logprobs = false;
    KVS_API_TRY(get_bool(body, "logprobs", &logprobs));
    int64_t top = 0;
    KVS_API_TRY(get_int(body, "top_logprobs", 0, 20, &top));
    if (field(body, "top_logprobs") && !logprobs) return api_error::invalid("top_logprobs requires logprobs to be true", "top_logprobs");
    out->params.n_logprobs = logprobs ? int32_t(top) : -1;
    return parse_messages(body, out);
}

}  // namespace kvs
