// Chat-template renderer: turns /v1/chat/completions messages into a prompt with the model's
// `tokenizer.chat_template` (a Jinja2 template from GGUF metadata), byte-identical to what
// Hugging Face transformers renders with Jinja2 itself:
//   ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
//   + globals raise_exception(msg), strftime_now(fmt)
//   + filter tojson = json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
//
// Contract:
//   - parse() does all syntax checking (including unknown tags, filters and tests) once.
//   - render() is const and keeps all state on its own stack: one chat_template may be rendered
//     from any number of threads at once.
//   - Every failure is a kvs::status: syntax errors and runtime errors carry "line L, column C";
//     raise_exception(msg) yields exactly msg. Runaway templates (recursion, huge output, endless
//     loops) fail against chat_render_options' budgets instead of crashing.
//   - Key order matters (tool schemas are printed in the order given). nlohmann::json sorts object
//     keys; pass nlohmann::ordered_json to keep a request's own order, as Python does.
//
// Supported: the Jinja2 subset real chat templates use — {{ }}, {% %}, {# #}, whitespace control,
// if/elif/else, for (else, `if` filter, tuple unpacking, loop.*), set (incl. namespace attributes
// and {% set x %}...{% endset %}), macro/call, filter blocks, with, break/continue, raw, the
// expression language with Python semantics, and the builtin filters/tests listed in filters.cpp
// and predicates.cpp. Not supported (clear errors): include/import/extends, recursive loops,
// printf-style `%` formatting, the `format`/`groupby`/... filters, non-ASCII case mapping
// (upper/lower/title leave non-ASCII letters unchanged).
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kvs {

namespace jinja {
struct program;
}

struct chat_render_options {
    size_t max_output_bytes = 16u << 20;  // bytes of the prompt (and of any intermediate string)
    int max_call_depth = 64;              // nested macro calls
    uint64_t max_steps = 20'000'000;      // statements + expressions evaluated
    // The date strftime_now() formats; unset = the current local time.
    std::optional<std::tm> now;
};

class chat_template {
public:
    static result<chat_template> parse(std::string_view source);

    // Renders with `context` (a JSON object) as the template's variables.
    result<std::string> render(const nlohmann::json& context, const chat_render_options& opt = {}) const;
    result<std::string> render(const nlohmann::ordered_json& context, const chat_render_options& opt = {}) const;

    const std::string& source() const;  // newlines normalized, one trailing newline dropped

private:
    std::shared_ptr<const jinja::program> program_;
};

// The variables transformers passes: messages, tools (none when absent), documents (none),
// add_generation_prompt, bos_token, eos_token, then every key of `extra` (overriding).
result<std::string> apply_chat_template(const chat_template& tmpl, const nlohmann::json& messages,
                                        bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                        const nlohmann::json& tools = nullptr, const nlohmann::json& extra = {},
                                        const chat_render_options& opt = {});
result<std::string> apply_chat_template(const chat_template& tmpl, const nlohmann::ordered_json& messages,
                                        bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                        const nlohmann::ordered_json& tools, const nlohmann::ordered_json& extra = {},
                                        const chat_render_options& opt = {});

}  // namespace kvs
