// The prompt of a chat request: messages rendered by the model's chat template (GGUF
// tokenizer.chat_template, or one given with server_config::chat_template), then tokenized.
//
// Models without a template get the built-in ChatML-like default, with every message as
//   <|im_start|>{role}\n{content}<|im_end|>\n
// followed by the generation prompt "<|im_start|>assistant\n". Where the vocabulary has these
// markers as special tokens they are tokenized as such; otherwise they are plain text (a base
// model such as stories260K then simply continues the text).
//
// BOS: the prompt gets the vocabulary's BOS when tokenizer::add_bos() asks for it, unless the
// rendered text already starts with the BOS token's text (templates that write {{ bos_token }}).
// Errors (a template that does not parse or raises while rendering) have code 400 and name
// the problem. Contract: immutable after create(); render() is safe from many threads.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace kvs {

class tokenizer;

class chat_prompt {
public:
    // source: a Jinja chat template; "" selects the built-in default. A template that fails to
    // parse is kept as an error that every render() reports.
    static std::unique_ptr<chat_prompt> create(const std::string& source, const tokenizer& tok);
    ~chat_prompt();

    // The prompt text for `messages` (an array of {role, content: string}) and optional tools.
    result<std::string> render(const nlohmann::json& messages, const nlohmann::json& tools) const;
    // render() then tokenize (special tokens parsed, BOS as above).
    result<std::vector<int32_t>> tokenize(const nlohmann::json& messages, const nlohmann::json& tools) const;
    bool is_default() const { return is_default_; }

private:
    chat_prompt(const tokenizer& tok) : tok_(tok) {}
    const tokenizer& tok_;
    bool is_default_ = true;
    std::string parse_error_;  // non-empty: the template did not parse
};

// The built-in default rendering (see above), exposed for tests.
std::string render_default_chat(const nlohmann::json& messages, bool add_generation_prompt);

}  // namespace kvs
