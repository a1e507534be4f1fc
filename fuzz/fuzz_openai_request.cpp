// libFuzzer target for the OpenAI request mapper (server/openai_request.h) and the chat prompt
// built from what it accepts (server/chat_prompt.h, the built-in template and the model's
// vocabulary). Input: byte 0 picks the route (even: /v1/completions, odd: /v1/chat/completions),
// the rest is the request body, parsed as the server does (nlohmann::ordered_json; a body that
// is not JSON never reaches the mapper). Checked: a rejection has a message and the error body
// serializes (valid UTF-8, as api_error_body needs); an accepted request has sane parameters,
// and a chat request renders and tokenizes or fails with a message. The vocabulary is
// stories260K's (shared/models/stories260K.gguf), loaded once.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/utf8.h"
#include "fuzz_shared.h"
#include "gguf/gguf.h"
#include "server/chat_prompt.h"
#include "server/openai_request.h"
#include "tokenizer/tokenizer.h"

namespace {

using json = nlohmann::ordered_json;

std::unique_ptr<kvs::tokenizer> g_tok;
std::unique_ptr<kvs::chat_prompt> g_chat;

void check_error(const kvs::api_error& e) {
    if (e.message.empty() || !kvs::utf8_is_valid(e.message) || !kvs::utf8_is_valid(e.param)) __builtin_trap();
    try {
        // What api_error_body does: a strict dump throws on invalid UTF-8.
        (void)json({{"error", {{"message", e.message}, {"param", e.param}}}}).dump();
    } catch (const json::exception&) {
        __builtin_trap();
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    const std::string path = kvs::fuzz::shared_dir() + "/models/stories260K.gguf";
    auto f = kvs::gguf_file::open(path);
    if (!f) {
        std::fprintf(stderr, "fuzz_openai_request: %s (set KVSERVE_SHARED)\n", f.message().c_str());
        std::abort();
    }
    auto t = kvs::tokenizer::from_gguf(*f.value());
    if (!t) std::abort();
    g_tok = std::move(t.value());
    g_chat = kvs::chat_prompt::create("", *g_tok);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    const bool chat = data[0] & 1;
    json body = json::parse(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1), nullptr,
                            /*allow_exceptions=*/false);
    if (body.is_discarded()) return 0;

    kvs::openai_request r;
    auto e = chat ? kvs::parse_chat_request(body, &r) : kvs::parse_completion_request(body, *g_tok, &r);
    if (e) {
        check_error(*e);
        return 0;
    }
    const kvs::request_params& p = r.params;
    if (p.n < 1 || p.n > 1024 || p.n_logprobs > 20 || p.stop.size() > 16) __builtin_trap();
    if (chat) {
        if (!r.messages.is_array() || r.messages.empty()) __builtin_trap();
        auto tokens = g_chat->tokenize(r.messages, r.tools, r.template_kwargs);
        if (!tokens.is_ok() && tokens.message().empty()) __builtin_trap();
        if (tokens.is_ok())
            for (int32_t id : tokens.value())
                if (id < 0 || id >= g_tok->n_vocab()) __builtin_trap();
    } else {
        if (p.max_tokens < 1) __builtin_trap();
    }
    return 0;
}
