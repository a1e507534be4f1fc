// Jinja2 filters and tests (the builtin set chat templates use, plus transformers' `tojson`).
// Names are resolved at parse time, so an unknown filter or test is a parse error naming it.
#pragma once

#include <string_view>

#include "chat/value.h"

namespace kvs::jinja {

using filter_fn = value (*)(evaluator& ev, const value& input, const call_args& args);
using test_fn = bool (*)(evaluator& ev, const value& v, const call_args& args);

struct filter_def {
    const char* name;
    filter_fn fn;
};
struct test_def {
    const char* name;
    test_fn fn;
};

const filter_def* find_filter(std::string_view name);  // nullptr if unknown
const test_def* find_test(std::string_view name);
// A filter Jinja2 has but this renderer does not implement (for a clearer error message).
bool is_unsupported_jinja_filter(std::string_view name);

}  // namespace kvs::jinja
