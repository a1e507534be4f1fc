// Syntax tree of a parsed template. Built once by the parser, then only read: render() walks it
// from several threads at once, so nothing here may be mutated after parse().
//
// Ownership: each node owns its children through unique_ptr; the root body is owned by the
// chat_template (via its shared program). Macro values created during a render point at their
// `stmt` by raw pointer, valid because the program outlives every render.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/value.h"

namespace kvs::jinja {

enum class expr_kind : uint8_t {
    literal,  // lit
    name,     // name
    list,     // items
    tuple,    // items
    dict,     // items: key0, value0, key1, value1, ...
    attr,     // items[0] . name
    item,     // items[0] [ items[1] ]
    slice,    // items[0] [ items[1] : items[2] : items[3] ]   (null child = omitted)
    call,     // items[0] ( items[1..], kwargs )
    filter,   // items[0] | name ( items[1..], kwargs )        (items[0] null in filter chains)
    test,     // items[0] is [not] name ( items[1..], kwargs )
    unary,    // op items[0]
    binary,   // items[0] op items[1]
    cond,     // items[0] if items[1] else items[2]            (items[2] null: no else)
};

enum class op : uint8_t {
    none, add, sub, mul, div, floordiv, mod, pow, concat, and_, or_, not_, neg, pos,
    in, not_in, eq, ne, lt, le, gt, ge,
};

struct filter_def;
struct test_def;

struct expr {
    expr_kind kind = expr_kind::literal;
    op oper = op::none;
    bool negated = false;           // test: `is not`
    size_t pos = 0;                 // byte offset in the normalized source
    int depth = 1;                  // height of this subtree (bounded by the parser)
    std::string name;               // name, attribute, filter or test name
    value lit;                      // literal
    const filter_def* filter = nullptr;  // resolved at parse time
    const test_def* test = nullptr;
    std::vector<std::unique_ptr<expr>> items;
    std::vector<std::pair<std::string, std::unique_ptr<expr>>> kwargs;
};
using expr_ptr = std::unique_ptr<expr>;

enum class stmt_kind : uint8_t {
    text, output, if_, for_, set, set_block, macro, call_block, filter_block, with, break_, continue_, block,
};

struct stmt;
using stmt_ptr = std::unique_ptr<stmt>;
using body = std::vector<stmt_ptr>;

struct macro_param {
    std::string name;
    expr_ptr default_value;  // may be null
};

struct if_branch {
    expr_ptr cond;  // null for the else branch
    body then;
};

struct stmt {
    stmt_kind kind = stmt_kind::text;
    size_t pos = 0;
    std::string text;                  // text: the data; macro / with-less names
    expr_ptr value;                    // output, set, for (iterable), call_block (the call)
    expr_ptr cond;                     // for: the `if` filter
    std::vector<std::string> targets;  // set / for / macro name (targets[0]) / with names
    std::string attr;                  // set ns.attr: the attribute (targets[0] is the namespace)
    std::vector<if_branch> branches;   // if / elif / else
    std::vector<macro_param> params;   // macro / call_block (caller's parameters)
    std::vector<expr_ptr> filters;     // set_block / filter_block: filter chain, items[0] null
    std::vector<expr_ptr> values;      // with: one per target
    body body_;
    body else_body;
};

// A deep copy of an expression tree.
expr_ptr clone_expr(const expr& e);

// Rejects unknown filters and tests the way Jinja2 3.x compiles: an error, except inside an
// {% if %} (condition and branches) or an inline `a if b else c`, where the node is kept and
// fails only if evaluated. Loop, macro and block bodies are not "soft". Throws template_error.
void check_names(const body& root);

}  // namespace kvs::jinja
