// Jinja2's builtin tests (`x is defined`, `x is divisibleby 3`, ...), with Python's type model:
// bool counts as a number, Undefined is iterable and callable, str/list/dict are sequences.
#include "chat/evaluator.h"
#include "chat/filters.h"
#include "chat/ops.h"
#include "chat/unicode.h"

namespace kvs::jinja {

namespace {

const value& arg0(const call_args& a, const char* test) {
    if (a.args.empty() && a.kwargs.empty()) fail(std::string("test '") + test + "' needs an argument");
    return a.args.empty() ? a.kwargs[0].second : a.args[0];
}

bool t_defined(evaluator&, const value& v, const call_args&) { return !v.is_undefined(); }
bool t_undefined(evaluator&, const value& v, const call_args&) { return v.is_undefined(); }
bool t_none(evaluator&, const value& v, const call_args&) { return v.is_none(); }
bool t_boolean(evaluator&, const value& v, const call_args&) { return v.is_bool(); }
bool t_true(evaluator&, const value& v, const call_args&) { return v.is_bool() && v.as_bool(); }
bool t_false(evaluator&, const value& v, const call_args&) { return v.is_bool() && !v.as_bool(); }
bool t_integer(evaluator&, const value& v, const call_args&) { return v.is_int(); }
bool t_float(evaluator&, const value& v, const call_args&) { return v.is_float(); }
bool t_number(evaluator&, const value& v, const call_args&) { return v.is_number(); }
bool t_string(evaluator&, const value& v, const call_args&) { return v.is_string(); }
bool t_mapping(evaluator&, const value& v, const call_args&) { return v.is_dict(); }
bool t_iterable(evaluator&, const value& v, const call_args&) {
    return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict() || (v.is_object() && v.obj().is_iterable());
}
bool t_sequence(evaluator&, const value& v, const call_args&) {
    return v.is_string() || v.is_sequence() || v.is_dict();
}
bool t_callable(evaluator&, const value& v, const call_args&) { return v.is_callable() || v.is_undefined(); }
bool t_escaped(evaluator&, const value& v, const call_args&) { return v.safe(); }

bool t_lower(evaluator& ev, const value& v, const call_args&) {
    if (!v.is_string()) return false;
    return truthy(ev.call(make_method(v, "islower"), call_args{}));
}
bool t_upper(evaluator& ev, const value& v, const call_args&) {
    if (!v.is_string()) return false;
    return truthy(ev.call(make_method(v, "isupper"), call_args{}));
}

bool t_even(evaluator& ev, const value& v, const call_args&) {
    return py_equal(binary_op(ev, op::mod, v, value::integer(2)), value::integer(0));
}
bool t_odd(evaluator& ev, const value& v, const call_args&) {
    return py_equal(binary_op(ev, op::mod, v, value::integer(2)), value::integer(1));
}
bool t_divisibleby(evaluator& ev, const value& v, const call_args& a) {
    return py_equal(binary_op(ev, op::mod, v, arg0(a, "divisibleby")), value::integer(0));
}

bool t_eq(evaluator&, const value& v, const call_args& a) { return py_equal(v, arg0(a, "eq")); }
bool t_ne(evaluator&, const value& v, const call_args& a) { return !py_equal(v, arg0(a, "ne")); }
bool t_lt(evaluator&, const value& v, const call_args& a) { return py_less(v, arg0(a, "lt")); }
bool t_gt(evaluator&, const value& v, const call_args& a) { return py_less(arg0(a, "gt"), v); }
bool t_le(evaluator&, const value& v, const call_args& a) {
    const value& o = arg0(a, "le");
    return py_equal(v, o) || py_less(v, o);
}
bool t_ge(evaluator&, const value& v, const call_args& a) {
    const value& o = arg0(a, "ge");
    return py_equal(v, o) || py_less(o, v);
}
bool t_in(evaluator&, const value& v, const call_args& a) { return contains(arg0(a, "in"), v); }

// `is sameas`: Python identity; scalars compare by value (None/True/False are singletons).
bool t_sameas(evaluator&, const value& v, const call_args& a) {
    const value& o = arg0(a, "sameas");
    if (v.type() != o.type()) return false;
    switch (v.type()) {
        case kind::undefined:
        case kind::none: return true;
        case kind::boolean:
        case kind::integer:
        case kind::floating: return py_equal(v, o);
        default: return v.identity() == o.identity();
    }
}

bool t_filter(evaluator&, const value& v, const call_args&) { return v.is_string() && find_filter(v.str()); }
bool t_test(evaluator&, const value& v, const call_args&) { return v.is_string() && find_test(v.str()); }

const test_def tests[] = {
    {"defined", t_defined},   {"undefined", t_undefined}, {"none", t_none},
    {"boolean", t_boolean},   {"true", t_true},           {"false", t_false},
    {"integer", t_integer},   {"float", t_float},         {"number", t_number},
    {"string", t_string},     {"mapping", t_mapping},     {"iterable", t_iterable},
    {"sequence", t_sequence}, {"callable", t_callable},   {"escaped", t_escaped},
    {"lower", t_lower},       {"upper", t_upper},         {"even", t_even},
    {"odd", t_odd},           {"divisibleby", t_divisibleby}, {"eq", t_eq},
    {"equalto", t_eq},        {"==", t_eq},               {"ne", t_ne},
    {"!=", t_ne},             {"lt", t_lt},               {"lessthan", t_lt},
    {"<", t_lt},              {"le", t_le},               {"<=", t_le},
    {"gt", t_gt},             {"greaterthan", t_gt},      {">", t_gt},
    {"ge", t_ge},             {">=", t_ge},               {"in", t_in},
    {"sameas", t_sameas},     {"filter", t_filter},       {"test", t_test},
};

}  // namespace

const test_def* find_test(std::string_view name) {
    for (const auto& t : tests)
        if (name == t.name) return &t;
    return nullptr;
}

}  // namespace kvs::jinja
