// libFuzzer target for the chat-template interpreter (lexer, parser, evaluator): arbitrary
// templates rendered with arbitrary message lists under small step, depth and output budgets.
// Input: the template source, optionally followed by a NUL byte and a JSON value used as the
// messages (anything that is not valid JSON, or no NUL, gives a fixed two-message chat). The
// template is rendered as transformers does (apply_chat_template: messages, tools,
// add_generation_prompt, bos/eos tokens) and also with the JSON as the whole context when it
// is an object. Checked: every failure carries a message; output never exceeds the budget.
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"

namespace {

using json = nlohmann::ordered_json;

kvs::chat_render_options budget() {
    kvs::chat_render_options o;
    o.max_output_bytes = 1 << 16;
    o.max_call_depth = 16;
    o.max_steps = 50'000;
    std::tm now{};
    now.tm_year = 124, now.tm_mon = 6, now.tm_mday = 26;  // fixed, so runs are reproducible
    o.now = now;
    return o;
}

void check(const kvs::result<std::string>& r, const kvs::chat_render_options& o) {
    if (r.is_ok() ? r.value().size() > o.max_output_bytes : r.message().empty()) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view in(reinterpret_cast<const char*>(data), size);
    const size_t nul = in.find('\0');
    const std::string_view source = in.substr(0, nul);

    auto t = kvs::chat_template::parse(source);
    if (!t.is_ok()) {
        if (t.message().empty()) __builtin_trap();  // every syntax error says what is wrong
        return 0;
    }
    json messages = json::array({{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Hi"}}});
    json extra = json::object();
    if (nul != std::string_view::npos) {
        json j = json::parse(in.substr(nul + 1), nullptr, /*allow_exceptions=*/false);
        if (!j.is_discarded()) {
            if (j.is_object()) extra = j;
            messages = std::move(j);
        }
    }
    const kvs::chat_render_options o = budget();
    const json tools = json::array({{{"type", "function"}, {"function", {{"name", "f"}, {"parameters", json::object()}}}}});
    check(kvs::apply_chat_template(t.value(), messages, true, "<s>", "</s>", tools, json::object(), o), o);
    if (!extra.empty()) check(t.value().render(extra, o), o);
    return 0;
}
