// Jinja2 lexer with the settings Hugging Face transformers renders chat templates with:
// trim_blocks=True (drop the first newline after a block or comment tag), lstrip_blocks=True
// (drop spaces and tabs before a block or comment tag that starts a line), the `-` / `+`
// whitespace-control signs, {% raw %}, and keep_trailing_newline=False (one trailing newline
// of the template is dropped; all line endings become "\n").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kvs::jinja {

enum class tok : uint8_t { text, var_begin, var_end, block_begin, block_end, name, string, integer, floating, op, eof };

struct token {
    tok kind = tok::eof;
    size_t pos = 0;     // byte offset in the normalized source
    std::string text;   // text: the data; name: identifier; string: the decoded literal; op: the operator
    int64_t int_value = 0;
    double float_value = 0;
};

// What Jinja2 does to a source before lexing: "\r\n" and "\r" become "\n", one trailing newline goes.
std::string normalize_source(std::string_view source);

// Tokens of a normalized source, ending with tok::eof. Throws template_error on bad syntax
// (unterminated tag, comment or string; unexpected character; unbalanced brackets).
std::vector<token> lex(std::string_view src);

}  // namespace kvs::jinja
