#include "chat/ops.h"

#include <charconv>
#include <cctype>
#include <cmath>

#include "chat/evaluator.h"
#include "chat/pyformat.h"
#include "chat/unicode.h"

namespace kvs::jinja {

namespace {

[[noreturn]] void fail_operands(const char* sym, const value& a, const value& b) {
    fail(std::string("unsupported operand type(s) for ") + sym + ": '" + py_type_name(a) + "' and '" +
         py_type_name(b) + "'");
}

void check_overflow(bool overflow) {
    if (overflow) fail("integer overflow in template arithmetic");
}

value int_pow(int64_t base, int64_t exp) {
    if (exp < 0) {
        if (base == 0) fail("0 cannot be raised to a negative power");
        return value::floating(std::pow(static_cast<double>(base), static_cast<double>(exp)));
    }
    int64_t r = 1;
    while (exp > 0) {
        if (exp & 1) check_overflow(__builtin_mul_overflow(r, base, &r));
        exp >>= 1;
        if (exp > 0) check_overflow(__builtin_mul_overflow(base, base, &base));
    }
    return value::integer(r);
}

value arith(op o, const value& a, const value& b) {
    const char* sym = o == op::add ? "+" : o == op::sub ? "-" : o == op::mul ? "*" : o == op::div ? "/"
                    : o == op::floordiv ? "//" : o == op::mod ? "%" : "**";
    if (!a.is_number() || !b.is_number()) fail_operands(sym, a, b);
    if (a.is_integral() && b.is_integral()) {
        const int64_t x = a.as_int(), y = b.as_int();
        int64_t r = 0;
        switch (o) {
            case op::add: check_overflow(__builtin_add_overflow(x, y, &r)); return value::integer(r);
            case op::sub: check_overflow(__builtin_sub_overflow(x, y, &r)); return value::integer(r);
            case op::mul: check_overflow(__builtin_mul_overflow(x, y, &r)); return value::integer(r);
            case op::div:
                if (y == 0) fail("division by zero");
                return value::floating(static_cast<double>(x) / static_cast<double>(y));
            case op::floordiv: {
                if (y == 0) fail("integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) fail("integer overflow in template arithmetic");
                int64_t q = x / y;
                if (x % y != 0 && ((x < 0) != (y < 0))) --q;
                return value::integer(q);
            }
            case op::mod: {
                if (y == 0) fail("integer division or modulo by zero");
                if (y == -1) return value::integer(0);
                int64_t m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) m += y;
                return value::integer(m);
            }
            case op::pow: return int_pow(x, y);
            default: break;
        }
    }
    const double x = a.as_double(), y = b.as_double();
    switch (o) {
        case op::add: return value::floating(x + y);
        case op::sub: return value::floating(x - y);
        case op::mul: return value::floating(x * y);
        case op::div:
            if (y == 0) fail("float division by zero");
            return value::floating(x / y);
        case op::floordiv:
            if (y == 0) fail("float floor division by zero");
            return value::floating(std::floor(x / y));
        case op::mod: {
            if (y == 0) fail("float modulo");
            double m = std::fmod(x, y);
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            if (m == 0) m = std::copysign(0.0, y);
            return value::floating(m);
        }
        case op::pow:
            if (x == 0 && y < 0) fail("0.0 cannot be raised to a negative power");
            if (x < 0 && y != std::floor(y)) fail("negative number cannot be raised to a fractional power");
            return value::floating(std::pow(x, y));
        default: break;
    }
    fail_operands(sym, a, b);
}

value repeat(evaluator& ev, const value& seq, int64_t n) {
    if (seq.is_string()) {
        std::string out;
        if (n > 0) {
            ev.check_size(seq.str().size() * static_cast<size_t>(n));
            out.reserve(seq.str().size() * static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) out += seq.str();
        }
        return value::string(std::move(out), seq.safe());
    }
    value_list items;
    if (n > 0) {
        ev.check_size(seq.items().size() * static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq.items().begin(), seq.items().end());
    }
    return seq.is_tuple() ? value::tuple(std::move(items)) : value::list(std::move(items));
}

// Python slice semantics: the indices of seq[start:stop:step] for a sequence of length n.
std::vector<size_t> slice_indices(int64_t n, const value& start, const value& stop, const value& step) {
    const int64_t st = step.is_none() ? 1 : step.as_int();
    if (st == 0) fail("slice step cannot be zero");
    const int64_t lower = st > 0 ? 0 : -1, upper = st > 0 ? n : n - 1;
    auto clamp = [&](const value& v, int64_t dflt) {
        if (v.is_none()) return dflt;
        int64_t i = v.as_int();
        if (i < 0) i += n;
        return std::min(std::max(i, lower), upper);
    };
    const int64_t b = clamp(start, st > 0 ? lower : upper);
    const int64_t e = clamp(stop, st > 0 ? upper : lower);
    std::vector<size_t> out;
    for (int64_t i = b; st > 0 ? i < e : i > e; i += st) out.push_back(static_cast<size_t>(i));
    return out;
}

}  // namespace

size_t find_substring(const std::string& hay, const std::string& needle, size_t from) {
    return hay.find(needle, from);
}

value binary_op(evaluator& ev, op o, const value& a, const value& b) {
    switch (o) {
        case op::eq: return value::boolean(py_equal(a, b));
        case op::ne: return value::boolean(!py_equal(a, b));
        case op::lt: return value::boolean(py_less(a, b));
        case op::gt: return value::boolean(py_less(b, a));
        case op::le: return value::boolean(py_equal(a, b) || py_less(a, b));
        case op::ge: return value::boolean(py_equal(a, b) || py_less(b, a));
        case op::in: return value::boolean(contains(b, a));
        case op::not_in: return value::boolean(!contains(b, a));
        case op::concat: {
            std::string s = py_str(a);
            const std::string t = py_str(b);
            ev.check_size(s.size() + t.size());
            return value::string(s + t);
        }
        default: break;
    }
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    if (o == op::add) {
        if (a.is_string() && b.is_string()) {
            ev.check_size(a.str().size() + b.str().size());
            if (a.safe() == b.safe()) return value::string(a.str() + b.str(), a.safe());
            // Markup + str escapes the plain operand (markupsafe); the result is Markup.
            return value::string((a.safe() ? a.str() : html_escape(a.str())) + (b.safe() ? b.str() : html_escape(b.str())),
                                 true);
        }
        if (a.is_sequence() && b.is_sequence() && a.is_tuple() == b.is_tuple()) {
            ev.check_size(a.items().size() + b.items().size());
            value_list items = a.items();
            items.insert(items.end(), b.items().begin(), b.items().end());
            return a.is_tuple() ? value::tuple(std::move(items)) : value::list(std::move(items));
        }
        if (a.is_string() || b.is_string()) {
            if (a.is_string())
                fail(std::string("can only concatenate str (not \"") + py_type_name(b) + "\") to str");
            fail_operands("+", a, b);
        }
    }
    if (o == op::mul) {
        const bool a_seq = a.is_string() || a.is_sequence();
        const bool b_seq = b.is_string() || b.is_sequence();
        if (a_seq && b.is_integral()) return repeat(ev, a, b.as_int());
        if (b_seq && a.is_integral()) return repeat(ev, b, a.as_int());
    }
    if (o == op::mod && a.is_string()) fail("printf-style string formatting ('%' on a string) is not supported");
    return arith(o, a, b);
}

value unary_op(op o, const value& a) {
    if (o == op::not_) return value::boolean(!truthy(a));
    if (a.is_undefined()) fail_undefined(a);
    if (!a.is_number())
        fail(std::string("bad operand type for unary ") + (o == op::neg ? "-" : "+") + ": '" + py_type_name(a) + "'");
    if (o == op::pos) return a.is_bool() ? value::integer(a.as_int()) : a;
    if (a.is_float()) return value::floating(-a.as_double());
    if (a.as_int() == INT64_MIN) fail("integer overflow in template arithmetic");
    return value::integer(-a.as_int());
}

bool contains(const value& container, const value& item) {
    switch (container.type()) {
        case kind::undefined: return false;
        case kind::string:
            if (!item.is_string())
                fail(std::string("'in <string>' requires string as left operand, not ") + py_type_name(item));
            return container.str().find(item.str()) != std::string::npos;
        case kind::list:
            for (const auto& e : container.items())
                if (py_equal(e, item)) return true;
            return false;
        case kind::dict: return container.find(item) != nullptr;
        default: fail(std::string("argument of type '") + py_type_name(container) + "' is not iterable");
    }
}

value get_attr(const value& obj, const std::string& name) {
    const char* type = py_type_name(obj);
    switch (obj.type()) {
        case kind::undefined: fail_undefined(obj);
        case kind::object: return obj.obj().get_attr(name);
        case kind::dict:
        case kind::string:
        case kind::list:
            if (has_safe_method(obj, name)) return make_method(obj, name);
            if (has_unsafe_method(obj, name))
                return value::undefined("access to attribute '" + name + "' of '" + type + "' object is unsafe.");
            if (obj.is_dict()) {
                if (const value* v = obj.find(std::string_view(name))) return *v;
            }
            break;
        default: break;
    }
    return value::undefined(std::string("'") + type + " object' has no attribute '" + name + "'");
}

value get_item(const value& obj, const value& key) {
    const char* type = py_type_name(obj);
    switch (obj.type()) {
        case kind::undefined: fail_undefined(obj);
        case kind::dict:
            if (const value* v = obj.find(key)) return *v;
            break;
        case kind::list:
            if (key.is_integral() && obj.is_sequence()) {
                const auto n = static_cast<int64_t>(obj.items().size());
                int64_t i = key.as_int();
                if (i < 0) i += n;
                if (i >= 0 && i < n) return obj.items()[static_cast<size_t>(i)];
                return value::undefined(std::string("'") + type + " object' has no element " + std::to_string(key.as_int()));
            }
            break;
        case kind::string:
            if (key.is_integral()) {
                const std::string& s = obj.str();
                int64_t i = key.as_int();
                if (is_ascii(s)) {
                    const auto n = static_cast<int64_t>(s.size());
                    if (i < 0) i += n;
                    if (i >= 0 && i < n) return value::string(std::string(1, s[static_cast<size_t>(i)]));
                } else {
                    const std::u32string cps = utf8_decode(s);
                    const auto n = static_cast<int64_t>(cps.size());
                    if (i < 0) i += n;
                    if (i >= 0 && i < n) return value::string(utf8_encode(cps.substr(static_cast<size_t>(i), 1)));
                }
                return value::undefined("'str object' has no element " + std::to_string(key.as_int()));
            }
            break;
        case kind::object:
            if (key.is_string()) return obj.obj().get_attr(key.str());
            break;
        default: break;
    }
    if (key.is_string() && !obj.is_object()) {  // item lookup failed: Jinja2 falls back to the attribute
        if (has_safe_method(obj, key.str())) return make_method(obj, key.str());
        if (has_unsafe_method(obj, key.str()))
            return value::undefined("access to attribute '" + key.str() + "' of '" + type + "' object is unsafe.");
        return value::undefined(std::string("'") + type + " object' has no attribute '" + key.str() + "'");
    }
    return value::undefined(std::string("'") + type + " object' has no element " + py_repr(key));
}

value get_slice(const value& obj, const value& start, const value& stop, const value& step) {
    if (obj.is_undefined()) fail_undefined(obj);
    for (const value* v : {&start, &stop, &step}) {
        if (!v->is_none() && !v->is_integral()) return value::undefined("slice indices must be integers or None");
    }
    if (obj.is_sequence()) {
        const auto idx = slice_indices(static_cast<int64_t>(obj.items().size()), start, stop, step);
        value_list out;
        out.reserve(idx.size());
        for (size_t i : idx) out.push_back(obj.items()[i]);
        return obj.is_tuple() ? value::tuple(std::move(out)) : value::list(std::move(out));
    }
    if (obj.is_string()) {
        const std::string& s = obj.str();
        std::string out;
        if (is_ascii(s)) {
            for (size_t i : slice_indices(static_cast<int64_t>(s.size()), start, stop, step)) out += s[i];
        } else {
            const std::u32string cps = utf8_decode(s);
            for (size_t i : slice_indices(static_cast<int64_t>(cps.size()), start, stop, step)) utf8_append(out, cps[i]);
        }
        return value::string(std::move(out), obj.safe());
    }
    return value::undefined(std::string("'") + py_type_name(obj) + " object' is not subscriptable");
}

value_list iterate(const value& v) {
    switch (v.type()) {
        case kind::undefined: return {};
        case kind::list: return v.items();
        case kind::dict: {
            value_list keys;
            keys.reserve(v.entries().size());
            for (const auto& kv : v.entries()) keys.push_back(kv.first);
            return keys;
        }
        case kind::string: {
            value_list chars;
            const std::string& s = v.str();
            for (size_t i = 0; i < s.size();) {
                const size_t start = i;
                utf8_next(s, i);
                chars.push_back(value::string(s.substr(start, i - start)));
            }
            return chars;
        }
        default: fail(std::string("'") + py_type_name(v) + "' object is not iterable");
    }
}

bool parse_py_int(const std::string& text, int64_t* out) {
    std::string s = py_strip(text, strip_both);
    std::string digits;
    size_t i = 0;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) digits += s[i++];
    if (i >= s.size()) return false;
    for (; i < s.size(); ++i) {
        if (s[i] >= '0' && s[i] <= '9') digits += s[i];
        else if (s[i] == '_' && i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
                 std::isdigit(static_cast<unsigned char>(s[i + 1])))
            continue;
        else return false;
    }
    if (digits[0] == '+') digits.erase(0, 1);
    const auto r = std::from_chars(digits.data(), digits.data() + digits.size(), *out);
    return r.ec == std::errc() && r.ptr == digits.data() + digits.size();
}

bool parse_py_float(const std::string& text, double* out) {
    std::string s = py_strip(text, strip_both);
    std::string clean;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '_' && i > 0 && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i - 1])) &&
            std::isdigit(static_cast<unsigned char>(s[i + 1])))
            continue;
        clean += s[i];
    }
    if (!clean.empty() && clean[0] == '+') clean.erase(0, 1);
    if (clean.empty()) return false;
    const auto r = std::from_chars(clean.data(), clean.data() + clean.size(), *out);
    return r.ec == std::errc() && r.ptr == clean.data() + clean.size();
}

}  // namespace kvs::jinja
