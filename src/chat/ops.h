// Python/Jinja2 semantics of operators, attribute and item access, slicing and iteration,
// including the sandbox rules of ImmutableSandboxedEnvironment (no mutating methods).
#pragma once

#include <string>

#include "chat/ast.h"
#include "chat/value.h"

namespace kvs::jinja {

value binary_op(evaluator& ev, op o, const value& a, const value& b);
value unary_op(op o, const value& a);
bool contains(const value& container, const value& item);  // `item in container`

// `obj.name` (attribute first, then item) and `obj[key]` (item first, then attribute).
value get_attr(const value& obj, const std::string& name);
value get_item(const value& obj, const value& key);
value get_slice(const value& obj, const value& start, const value& stop, const value& step);

// The items a for loop visits: list elements, dict keys, string characters; none for undefined.
value_list iterate(const value& v);

// Bound methods of str, dict and list (and callables for builtin globals).
value make_method(const value& self, const std::string& name);
bool has_safe_method(const value& self, const std::string& name);
bool has_unsafe_method(const value& self, const std::string& name);
// Builtin global functions: range, dict, namespace, raise_exception, strftime_now.
value builtin_global(const std::string& name);

// The `loop` variable of iteration `index` over `items`.
value make_loop(std::shared_ptr<const value_list> items, size_t index);

// Python str -> int / float conversions used by filters (false if not a number).
bool parse_py_int(const std::string& s, int64_t* out);
bool parse_py_float(const std::string& s, double* out);

// Python's `x in str` / `str.find`: byte offset of needle in hay, or npos.
size_t find_substring(const std::string& hay, const std::string& needle, size_t from = 0);

}  // namespace kvs::jinja
