// Recursive-descent parser for the Jinja2 subset chat templates use. Operator precedence and
// tag grammar follow Jinja2's parser (conditional < or < and < not < comparisons < + - < ~ <
// * / // % < ** < unary < postfix/filters/tests).
#pragma once

#include <vector>

#include "chat/ast.h"
#include "chat/lexer.h"

namespace kvs::jinja {

// Throws template_error on syntax errors, unknown tags, unknown filters or tests, and on
// nesting deeper than the parser's limits.
body parse_tokens(const std::vector<token>& tokens);

}  // namespace kvs::jinja
