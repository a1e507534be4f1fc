// The prompt of a chat request: messages rendered by the model's chat template (GGUF
// tokenizer.chat_template, or one given with server_config::chat_template) through the Jinja
// interpreter of src/chat (as transformers' apply_chat_template: messages, tools,
// add_generation_prompt = true, bos_token, eos_token, plus chat_template_kwargs), then tokenized.
//
// Models without a template get the built-in ChatML-like default, with every message as
//   <|im_start|>{role}\n{content}<|im_end|>\n
// followed by the generation prompt "<|im_start|>assistant\n" (content null or absent = "").
// Where the vocabulary has these markers as special tokens they are tokenized as such;
// otherwise they are plain text (a base model such as stories260K then simply continues).
//
// BOS: the prompt gets the vocabulary's BOS when tokenizer::add_bos() asks for it, unless the
// rendered text already starts with the BOS token's text (templates that write {{ bos_token }}).
// Errors have code 400 and name the problem: a template that does not parse (reported on every
// request, so completions keep working), or one that fails or raises while rendering.
// Contract: immutable after create(); render() and tokenize() are safe from many threads.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/status.h"

namespace kvs {

class tokenizer;

class chat_prompt {
public:
    // source: a Jinja chat template; "" selects the built-in default.
    static std::unique_ptr<chat_prompt> create(const std::string& source, const tokenizer& tok);
    ~chat_prompt();

    // The prompt text for `messages` (an array of {role, content, ...}), tools (null = none)
    // and extra template variables (an object, possibly empty).
    result<std::string> render(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                               const nlohmann::ordered_json& extra) const;
    // render() then tokenize (special tokens parsed, BOS as above).
    result<std::vector<int32_t>> tokenize(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                          const nlohmann::ordered_json& extra) const;
    bool is_default() const { return !tmpl_ && parse_error_.empty(); }

private:
    explicit chat_prompt(const tokenizer& tok) : tok_(tok) {}
    const tokenizer& tok_;
    std::optional<chat_template> tmpl_;  // unset: the default
    std::string parse_error_;            // non-empty: the given template did not parse
};

// The built-in default rendering (see above), exposed for tests.
std::string render_default_chat(const nlohmann::ordered_json& messages, bool add_generation_prompt);

}  // namespace kvs
