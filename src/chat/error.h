// Internal error type of the chat-template interpreter (namespace kvs::jinja).
//
// Contract: template_error is thrown only inside src/chat and never crosses the public API:
// chat_template::parse() and render() catch it and return a kvs::status whose message names
// the construct and its line/column. Exceptions keep the deeply recursive evaluator readable;
// the boundary keeps the project rule "errors are values".
#pragma once

#include <cstddef>
#include <string>
#include <utility>

namespace kvs::jinja {

constexpr size_t no_pos = static_cast<size_t>(-1);

struct template_error {
    std::string message;
    size_t pos = no_pos;  // byte offset in the normalized source; no_pos until an enclosing node fills it
    bool raised = false;  // from raise_exception(): the message is the template author's own text
};

[[noreturn]] inline void fail(std::string message, size_t pos = no_pos) {
    throw template_error{std::move(message), pos, false};
}

}  // namespace kvs::jinja
