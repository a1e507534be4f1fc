// Text forms of values exactly as Python prints them: str() (what {{ }} and `~` output),
// repr() (inside lists and dicts), json.dumps() (transformers' `tojson` filter), and
// markupsafe's HTML escape (what `Markup + str` applies to the plain operand).
#pragma once

#include <string>
#include <string_view>

#include "chat/value.h"

namespace kvs::jinja {

std::string py_str(const value& v);
std::string py_repr(const value& v, int depth = 0);
std::string py_float_repr(double d);
std::string py_string_repr(std::string_view s);
std::string html_escape(std::string_view s);

// json.dumps(x, ensure_ascii, indent, separators, sort_keys) with Python's defaults:
// separators (', ', ': ') without indent and (',', ': ') with one.
struct json_format {
    bool ensure_ascii = false;
    bool pretty = false;       // indent given (even 0 or "")
    std::string indent;        // the indent unit when pretty
    std::string item_sep = ", ";
    std::string key_sep = ": ";
    bool sort_keys = false;
};
std::string py_json_dumps(const value& v, const json_format& f);

}  // namespace kvs::jinja
