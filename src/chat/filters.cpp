// Jinja2's builtin filters, with the semantics of jinja2/filters.py (3.1) in a non-autoescape
// environment, and transformers' `tojson` override (json.dumps, ensure_ascii=False, keys in
// insertion order). Filters Jinja2 implements as generators (select, map, unique, items,
// reverse, batch) return generator values: iterable, but without len() or JSON form.
#include "chat/filters.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <functional>

#include "chat/evaluator.h"
#include "chat/ops.h"
#include "chat/pyformat.h"
#include "chat/unicode.h"

namespace kvs::jinja {

namespace {

// str(x) keeping Markup (Jinja2's soft_str).
value soft_str(const value& v) { return v.is_string() ? v : value::string(py_str(v)); }

int64_t int_arg(const call_args& a, size_t i, const char* name, int64_t dflt) {
    const value* v = a.get(i, name);
    if (!v || v->is_none()) return dflt;
    if (!v->is_integral()) fail(std::string("argument '") + name + "' must be an integer");
    return v->as_int();
}

bool bool_arg(const call_args& a, size_t i, const char* name, bool dflt) {
    const value* v = a.get(i, name);
    return v ? truthy(*v) : dflt;
}

value lower_if_string(const value& v) { return v.is_string() ? value::string(py_lower(v.str())) : v; }

// make_attrgetter: "a.b.0" walks items (then attributes) of each element.
value get_path(const value& item, const value& attribute) {
    if (attribute.is_integral()) return get_item(item, attribute);
    if (!attribute.is_string()) return get_item(item, attribute);
    value cur = item;
    const std::string& path = attribute.str();
    size_t start = 0;
    while (true) {
        const size_t dot = path.find('.', start);
        const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        int64_t idx = 0;
        if (!part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
            parse_py_int(part, &idx))
            cur = get_item(cur, value::integer(idx));
        else
            cur = get_item(cur, value::string(part));
        if (dot == std::string::npos) return cur;
        start = dot + 1;
    }
}

std::size_t length_of(const value& v) {
    switch (v.type()) {
        case kind::undefined: return 0;
        case kind::string: return utf8_length(v.str());
        case kind::list:
            if (v.is_generator()) fail("object of type 'generator' has no len()");
            return v.items().size();
        case kind::dict: return v.entries().size();
        default: fail(std::string("object of type '") + py_type_name(v) + "' has no len()");
    }
}

value f_length(evaluator&, const value& in, const call_args&) {
    return value::integer(static_cast<int64_t>(length_of(in)));
}

value f_abs(evaluator&, const value& in, const call_args&) {
    if (in.is_float()) return value::floating(std::fabs(in.as_double()));
    if (in.is_integral()) {
        if (in.as_int() == INT64_MIN) fail("integer overflow in abs()");
        return value::integer(in.as_int() < 0 ? -in.as_int() : in.as_int());
    }
    if (in.is_undefined()) fail_undefined(in);
    fail(std::string("bad operand type for abs(): '") + py_type_name(in) + "'");
}

value f_attr(evaluator&, const value& in, const call_args& a) {
    const value* name = a.get(0, "name");
    if (!name || !name->is_string()) fail("attr() expects an attribute name");
    if (in.is_undefined()) fail_undefined(in);
    if (in.is_object()) return in.obj().get_attr(name->str());
    if (has_safe_method(in, name->str())) return make_method(in, name->str());
    return value::undefined(std::string("'") + py_type_name(in) + " object' has no attribute '" + name->str() + "'");
}

value f_batch(evaluator&, const value& in, const call_args& a) {
    const int64_t n = int_arg(a, 0, "linecount", 0);
    if (n <= 0) fail("batch() needs a positive line count");
    const value* fill = a.get(1, "fill_with");
    value_list out, cur;
    for (const value& v : iterate(in)) {
        cur.push_back(v);
        if (static_cast<int64_t>(cur.size()) == n) {
            out.push_back(value::list(std::move(cur)));
            cur.clear();
        }
    }
    if (!cur.empty()) {
        if (fill && !fill->is_none())
            while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
        out.push_back(value::list(std::move(cur)));
    }
    return value::generator(std::move(out));
}

value f_capitalize(evaluator&, const value& in, const call_args&) {
    const value s = soft_str(in);
    return value::string(py_capitalize(s.str()), s.safe());
}

value f_center(evaluator& ev, const value& in, const call_args& a) {
    call_args m;
    m.args.push_back(value::integer(int_arg(a, 0, "width", 80)));
    return ev.call(make_method(value::string(py_str(in)), "center"), m);
}

value f_default(evaluator&, const value& in, const call_args& a) {
    const value* dflt = a.get(0, "default_value");
    if (in.is_undefined() || (bool_arg(a, 1, "boolean", false) && !truthy(in)))
        return dflt ? *dflt : value::string("");
    return in;
}

// Stable sort by key; reverse keeps equal items in input order, as Python's sorted() does.
void sort_by(std::vector<std::pair<value, value>>& keyed, bool reverse) {
    std::stable_sort(keyed.begin(), keyed.end(), [reverse](const auto& x, const auto& y) {
        return reverse ? py_less(y.first, x.first) : py_less(x.first, y.first);
    });
}

value f_dictsort(evaluator&, const value& in, const call_args& a) {
    if (!in.is_dict()) fail("dictsort() expects a mapping");
    const bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
    const value* by = a.get(1, "by");
    int pos = 0;
    if (by && by->is_string() && by->str() == "value") pos = 1;
    else if (by && !(by->is_string() && by->str() == "key")) fail("dictsort(): you can only sort by either 'key' or 'value'");
    std::vector<std::pair<value, value>> keyed;
    for (const auto& [k, v] : in.entries()) {
        const value& key = pos == 0 ? k : v;
        keyed.emplace_back(case_sensitive ? key : lower_if_string(key), value::tuple({k, v}));
    }
    sort_by(keyed, bool_arg(a, 2, "reverse", false));
    value_list out;
    for (auto& kv : keyed) out.push_back(std::move(kv.second));
    return value::list(std::move(out));
}

value f_escape(evaluator&, const value& in, const call_args&) {
    if (in.safe()) return in;
    return value::string(html_escape(py_str(in)), true);
}

value f_forceescape(evaluator&, const value& in, const call_args&) {
    return value::string(html_escape(py_str(in)), true);
}

value f_first(evaluator&, const value& in, const call_args&) {
    const value_list items = iterate(in);
    if (items.empty()) return value::undefined("No first item, sequence was empty.");
    return items.front();
}

value f_last(evaluator&, const value& in, const call_args&) {
    const value_list items = iterate(in);
    if (items.empty()) return value::undefined("No last item, sequence was empty.");
    return items.back();
}

value f_float(evaluator&, const value& in, const call_args& a) {
    const value* dflt = a.get(0, "default");
    double d = 0;
    if (in.is_number()) return value::floating(in.as_double());
    if (in.is_string() && parse_py_float(in.str(), &d)) return value::floating(d);
    return dflt ? *dflt : value::floating(0.0);
}

value f_int(evaluator&, const value& in, const call_args& a) {
    const value* dflt = a.get(0, "default");
    const int64_t base = int_arg(a, 1, "base", 10);
    int64_t i = 0;
    double d = 0;
    if (in.is_integral()) return value::integer(in.as_int());
    if (in.is_string()) {
        if (base == 10 && parse_py_int(in.str(), &i)) return value::integer(i);
        if (base != 10) {  // int(s, base): optional sign and 0x/0o/0b prefix (base 0: prefix decides)
            std::string s = py_strip(in.str(), strip_both);
            const bool neg = !s.empty() && s[0] == '-';
            if (!s.empty() && (s[0] == '-' || s[0] == '+')) s.erase(0, 1);
            int b = static_cast<int>(base);
            if (s.size() > 2 && s[0] == '0') {
                const char p = static_cast<char>(s[1] | 0x20);
                const int pb = p == 'x' ? 16 : p == 'o' ? 8 : p == 'b' ? 2 : 0;
                if (pb != 0 && (b == 0 || b == pb)) {
                    b = pb;
                    s.erase(0, 2);
                }
            }
            if (b == 0) b = 10;
            const auto r = b >= 2 && b <= 36 ? std::from_chars(s.data(), s.data() + s.size(), i, b)
                                             : std::from_chars_result{s.data(), std::errc::invalid_argument};
            if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty()) return value::integer(neg ? -i : i);
        }
        if (parse_py_float(in.str(), &d) && std::isfinite(d) && std::fabs(d) < 9.2e18)
            return value::integer(static_cast<int64_t>(d));
    }
    if (in.is_float() && std::isfinite(in.as_double()) && std::fabs(in.as_double()) < 9.2e18)
        return value::integer(static_cast<int64_t>(in.as_double()));
    return dflt ? *dflt : value::integer(0);
}

value f_indent(evaluator& ev, const value& in, const call_args& a) {
    if (in.is_undefined()) fail_undefined(in);
    if (!in.is_string()) fail(std::string("indent() expects a string, got '") + py_type_name(in) + "'");
    const value* width = a.get(0, "width");
    std::string ind;
    if (width && width->is_string()) ind = width->str();
    else ind = std::string(static_cast<size_t>(std::max<int64_t>(int_arg(a, 0, "width", 4), 0)), ' ');
    const bool first = bool_arg(a, 1, "first", false), blank = bool_arg(a, 2, "blank", false);
    const value lines_v = ev.call(make_method(value::string(in.str() + "\n"), "splitlines"), call_args{});
    const value_list& lines = lines_v.items();
    std::string rv;
    for (size_t i = 0; i < lines.size(); ++i) {
        const std::string& line = lines[i].str();
        if (i > 0) rv += "\n";
        if (i > 0 && (blank || !line.empty())) rv += ind;
        rv += line;
        ev.check_size(rv.size());
    }
    if (first) rv = ind + rv;
    return value::string(std::move(rv), in.safe());
}

value f_items(evaluator&, const value& in, const call_args&) {
    if (in.is_undefined()) return value::generator({});
    if (!in.is_dict()) fail("Can only get item pairs from a mapping.");
    value_list out;
    for (const auto& [k, v] : in.entries()) out.push_back(value::tuple({k, v}));
    return value::generator(std::move(out));
}

value f_join(evaluator& ev, const value& in, const call_args& a) {
    const value* d = a.get(0, "d");
    const value* attribute = a.get(1, "attribute");
    const std::string sep = d ? py_str(*d) : "";
    std::string out;
    bool first = true;
    for (const value& v : iterate(in)) {
        if (!first) out += sep;
        first = false;
        out += py_str(attribute && !attribute->is_none() ? get_path(v, *attribute) : v);
        ev.check_size(out.size());
    }
    return value::string(std::move(out));
}

value f_list(evaluator&, const value& in, const call_args&) { return value::list(iterate(in)); }

value f_lower(evaluator&, const value& in, const call_args&) {
    const value s = soft_str(in);
    return value::string(py_lower(s.str()), s.safe());
}

value f_upper(evaluator&, const value& in, const call_args&) {
    const value s = soft_str(in);
    return value::string(py_upper(s.str()), s.safe());
}

value f_map(evaluator& ev, const value& in, const call_args& a) {
    value_list out;
    if (!truthy(in)) return value::generator({});
    const value* attribute = nullptr;
    for (const auto& [k, v] : a.kwargs)
        if (k == "attribute") attribute = &v;
    if (a.args.empty() && attribute) {
        const value* dflt = nullptr;
        for (const auto& [k, v] : a.kwargs)
            if (k == "default") dflt = &v;
        for (const value& item : iterate(in)) {
            value r = get_path(item, *attribute);
            if (r.is_undefined() && dflt && !dflt->is_none()) r = *dflt;
            out.push_back(std::move(r));
        }
        return value::generator(std::move(out));
    }
    if (a.args.empty() || !a.args[0].is_string()) fail("map() expects a filter name or attribute=");
    const filter_def* f = find_filter(a.args[0].str());
    if (!f) fail("no filter named '" + a.args[0].str() + "'");
    call_args rest;
    rest.args.assign(a.args.begin() + 1, a.args.end());
    rest.kwargs = a.kwargs;
    for (const value& item : iterate(in)) out.push_back(f->fn(ev, item, rest));
    return value::generator(std::move(out));
}

value min_or_max(const value& in, const call_args& a, bool want_max) {
    const value_list items = iterate(in);
    if (items.empty()) return value::undefined("No aggregated item, sequence was empty.");
    const bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
    const value* attribute = a.get(1, "attribute");
    auto key = [&](const value& v) {
        value k = attribute && !attribute->is_none() ? get_path(v, *attribute) : v;
        return case_sensitive ? k : lower_if_string(k);
    };
    size_t best = 0;
    value best_key = key(items[0]);
    for (size_t i = 1; i < items.size(); ++i) {
        value k = key(items[i]);
        if (want_max ? py_less(best_key, k) : py_less(k, best_key)) {
            best = i;
            best_key = std::move(k);
        }
    }
    return items[best];
}

value f_max(evaluator&, const value& in, const call_args& a) { return min_or_max(in, a, true); }
value f_min(evaluator&, const value& in, const call_args& a) { return min_or_max(in, a, false); }

// select / reject / selectattr / rejectattr.
value select_impl(evaluator& ev, const value& in, const call_args& a, bool keep_when, bool by_attr) {
    if (!truthy(in)) return value::generator({});  // Jinja2 checks `if value:` before anything else
    size_t off = 0;
    const value* attribute = nullptr;
    if (by_attr) {
        if (a.args.empty()) fail("Missing parameter for attribute name");
        attribute = &a.args[0];
        off = 1;
    }
    const test_def* test = nullptr;
    call_args rest;
    if (a.args.size() > off) {
        if (!a.args[off].is_string()) fail("select: test name must be a string");
        test = find_test(a.args[off].str());
        if (!test) fail("no test named '" + a.args[off].str() + "'");
        rest.args.assign(a.args.begin() + static_cast<std::ptrdiff_t>(off + 1), a.args.end());
        rest.kwargs = a.kwargs;
    }
    value_list out;
    for (const value& item : iterate(in)) {
        const value probe = attribute ? get_path(item, *attribute) : item;
        const bool r = test ? test->fn(ev, probe, rest) : truthy(probe);
        if (r == keep_when) out.push_back(item);
    }
    return value::generator(std::move(out));
}

value f_select(evaluator& ev, const value& in, const call_args& a) { return select_impl(ev, in, a, true, false); }
value f_reject(evaluator& ev, const value& in, const call_args& a) { return select_impl(ev, in, a, false, false); }
value f_selectattr(evaluator& ev, const value& in, const call_args& a) { return select_impl(ev, in, a, true, true); }
value f_rejectattr(evaluator& ev, const value& in, const call_args& a) { return select_impl(ev, in, a, false, true); }

value f_replace(evaluator& ev, const value& in, const call_args& a) {
    const value* from = a.get(0, "old");
    const value* to = a.get(1, "new");
    if (!from || !to) fail("replace() expects old and new strings");
    call_args m;
    m.args = {value::string(py_str(*from)), value::string(py_str(*to))};
    if (const value* count = a.get(2, "count"); count && !count->is_none()) m.args.push_back(*count);
    return ev.call(make_method(value::string(py_str(in)), "replace"), m);
}

value f_reverse(evaluator&, const value& in, const call_args&) {
    if (in.is_string()) {
        std::u32string cps = utf8_decode(in.str());
        std::reverse(cps.begin(), cps.end());
        return value::string(utf8_encode(cps), in.safe());
    }
    if (in.is_undefined()) fail_undefined(in);
    value_list items = iterate(in);
    std::reverse(items.begin(), items.end());
    return value::generator(std::move(items));
}

value f_round(evaluator&, const value& in, const call_args& a) {
    const int64_t precision = int_arg(a, 0, "precision", 0);
    const value* method = a.get(1, "method");
    const std::string m = method && method->is_string() ? method->str() : "common";
    if (m != "common" && m != "ceil" && m != "floor") fail("round(): method must be common, ceil or floor");
    if (!in.is_number()) {
        if (in.is_undefined()) fail_undefined(in);
        fail(std::string("type ") + py_type_name(in) + " doesn't define __round__ method");
    }
    const double scale = std::pow(10.0, static_cast<double>(precision));
    if (m != "common") {
        const double x = in.as_double() * scale;
        return value::floating((m == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
    }
    if (in.is_integral() && precision >= 0) return value::integer(in.as_int());
    const double x = in.as_double();
    double r = 0;
    if (precision == 0) {
        r = std::nearbyint(x);  // ties to even, as Python's round()
    } else if (precision > 0 && precision < 300) {
        char buf[512];
        std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);  // correctly rounded
        r = std::strtod(buf, nullptr);
    } else {
        r = std::nearbyint(x * scale) / scale;
    }
    if (in.is_integral()) return value::integer(static_cast<int64_t>(r));
    return value::floating(r);
}

value f_safe(evaluator&, const value& in, const call_args&) { return value::string(py_str(in), true); }

value f_sort(evaluator&, const value& in, const call_args& a) {
    const bool reverse = bool_arg(a, 0, "reverse", false);
    const bool case_sensitive = bool_arg(a, 1, "case_sensitive", false);
    const value* attribute = a.get(2, "attribute");
    std::vector<std::pair<value, value>> keyed;
    for (const value& v : iterate(in)) {
        value k = attribute && !attribute->is_none() ? get_path(v, *attribute) : v;
        keyed.emplace_back(case_sensitive ? k : lower_if_string(k), v);
    }
    sort_by(keyed, reverse);
    value_list out;
    for (auto& kv : keyed) out.push_back(std::move(kv.second));
    return value::list(std::move(out));
}

value f_string(evaluator&, const value& in, const call_args&) { return soft_str(in); }

value f_sum(evaluator& ev, const value& in, const call_args& a) {
    const value* attribute = a.get(0, "attribute");
    const value* start = a.get(1, "start");
    value total = start ? *start : value::integer(0);
    for (const value& v : iterate(in))
        total = binary_op(ev, op::add, total, attribute && !attribute->is_none() ? get_path(v, *attribute) : v);
    return total;
}

value f_title(evaluator&, const value& in, const call_args&) {
    const value s = soft_str(in);
    std::string out;
    bool at_start = true;
    const std::string& t = s.str();
    for (size_t i = 0; i < t.size();) {
        const size_t begin = i;
        const char32_t c = utf8_next(t, i);
        const bool sep = c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || py_isspace(c);
        std::string ch = t.substr(begin, i - begin);
        if (!sep) ch = at_start ? py_upper(ch) : py_lower(ch);
        out += ch;
        at_start = sep;
    }
    return value::string(std::move(out), s.safe());
}

value f_tojson(evaluator& ev, const value& in, const call_args& a) {
    json_format f;
    f.ensure_ascii = bool_arg(a, 0, "ensure_ascii", false);
    const value* indent = a.get(1, "indent");
    if (indent && !indent->is_none()) {
        f.pretty = true;
        if (indent->is_string()) f.indent = indent->str();
        else if (indent->is_integral()) f.indent = std::string(static_cast<size_t>(std::max<int64_t>(indent->as_int(), 0)), ' ');
        else fail("tojson(): indent must be an integer or a string");
        f.item_sep.assign(1, ',');  // (not = ",": GCC 12 -Wrestrict false positive)
    }
    const value* seps = a.get(2, "separators");
    if (seps && !seps->is_none()) {
        if (!seps->is_list() || seps->items().size() != 2 || !seps->items()[0].is_string() ||
            !seps->items()[1].is_string())
            fail("tojson(): separators must be a pair of strings");
        f.item_sep = seps->items()[0].str();
        f.key_sep = seps->items()[1].str();
    }
    f.sort_keys = bool_arg(a, 3, "sort_keys", false);
    std::string out = py_json_dumps(in, f);
    ev.check_size(out.size());
    return value::string(std::move(out));
}

value f_trim(evaluator&, const value& in, const call_args& a) {
    const value s = soft_str(in);
    const value* chars = a.get(0, "chars");
    const std::string* set = chars && chars->is_string() ? &chars->str() : nullptr;
    return value::string(py_strip(s.str(), strip_both, set), s.safe());
}

value f_truncate(evaluator&, const value& in, const call_args& a) {
    const value s = soft_str(in);
    const int64_t length = int_arg(a, 0, "length", 255);
    const bool killwords = bool_arg(a, 1, "killwords", false);
    const value* end_v = a.get(2, "end");
    const std::string end = end_v ? py_str(*end_v) : "...";
    const int64_t leeway = int_arg(a, 3, "leeway", 5);
    const std::u32string cps = utf8_decode(s.str());
    const auto n = static_cast<int64_t>(cps.size());
    if (n <= length + leeway) return s;
    const int64_t keep = std::max<int64_t>(0, length - static_cast<int64_t>(utf8_length(end)));
    std::string head = utf8_encode(cps.substr(0, static_cast<size_t>(std::min(keep, n))));
    if (!killwords) {
        const size_t sp = head.rfind(' ');
        if (sp != std::string::npos) head = head.substr(0, sp);
    }
    return value::string(head + end);
}

value f_unique(evaluator&, const value& in, const call_args& a) {
    const bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
    const value* attribute = a.get(1, "attribute");
    value_list out, seen;
    for (const value& v : iterate(in)) {
        value k = attribute && !attribute->is_none() ? get_path(v, *attribute) : v;
        if (!case_sensitive) k = lower_if_string(k);
        if (std::none_of(seen.begin(), seen.end(), [&](const value& s) { return py_equal(s, k); })) {
            seen.push_back(std::move(k));
            out.push_back(v);
        }
    }
    return value::generator(std::move(out));
}

value f_wordcount(evaluator&, const value& in, const call_args&) {
    const std::string s = py_str(in);
    int64_t n = 0;
    bool in_word = false;
    for (size_t i = 0; i < s.size();) {
        const bool w = py_is_word_char(utf8_next(s, i));
        if (w && !in_word) ++n;
        in_word = w;
    }
    return value::integer(n);
}

const filter_def filters[] = {
    {"abs", f_abs},           {"attr", f_attr},         {"batch", f_batch},
    {"capitalize", f_capitalize}, {"center", f_center}, {"count", f_length},
    {"d", f_default},         {"default", f_default},   {"dictsort", f_dictsort},
    {"e", f_escape},          {"escape", f_escape},     {"first", f_first},
    {"float", f_float},       {"forceescape", f_forceescape}, {"indent", f_indent},
    {"int", f_int},           {"items", f_items},       {"join", f_join},
    {"last", f_last},         {"length", f_length},     {"list", f_list},
    {"lower", f_lower},       {"map", f_map},           {"max", f_max},
    {"min", f_min},           {"reject", f_reject},     {"rejectattr", f_rejectattr},
    {"replace", f_replace},   {"reverse", f_reverse},   {"round", f_round},
    {"safe", f_safe},         {"select", f_select},     {"selectattr", f_selectattr},
    {"sort", f_sort},         {"string", f_string},     {"sum", f_sum},
    {"title", f_title},       {"tojson", f_tojson},     {"trim", f_trim},
    {"truncate", f_truncate}, {"unique", f_unique},     {"upper", f_upper},
    {"wordcount", f_wordcount},
};

}  // namespace

const filter_def* find_filter(std::string_view name) {
    for (const auto& f : filters)
        if (name == f.name) return &f;
    return nullptr;
}

bool is_unsupported_jinja_filter(std::string_view name) {
    static const char* const names[] = {"filesizeformat", "format", "groupby", "pprint", "random", "slice",
                                        "striptags", "urlencode", "urlize", "wordwrap", "xmlattr"};
    for (const char* n : names)
        if (name == n) return true;
    return false;
}

}  // namespace kvs::jinja
