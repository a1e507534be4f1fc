#include "chat/pyformat.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "chat/unicode.h"

namespace kvs::jinja {

namespace {

constexpr int max_repr_depth = 512;

void append_hex(std::string& out, const char* prefix, unsigned v, int digits) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%s%0*x", prefix, digits, v);
    out += buf;
}

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
    out += '"';
    for (size_t i = 0; i < s.size();) {
        const size_t start = i;
        const char32_t c = utf8_next(s, i);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            default:
                if (c < 0x20) {
                    append_hex(out, "\\u", c, 4);
                } else if (c < 0x80 || !ensure_ascii) {
                    out.append(s.substr(start, i - start));
                } else if (c < 0x10000) {
                    append_hex(out, "\\u", c, 4);
                } else {
                    const char32_t v = c - 0x10000;
                    append_hex(out, "\\u", 0xD800 + (v >> 10), 4);
                    append_hex(out, "\\u", 0xDC00 + (v & 0x3FF), 4);
                }
        }
    }
    out += '"';
}

std::string json_key(const value& k, const json_format& f) {
    std::string out;
    if (k.is_string()) {
        json_string(out, k.str(), f.ensure_ascii);
        return out;
    }
    std::string text;
    if (k.is_bool()) text = k.as_bool() ? "true" : "false";
    else if (k.is_none()) text = "null";
    else if (k.is_int()) text = std::to_string(k.as_int());
    else if (k.is_float()) text = py_float_repr(k.as_double());
    else fail(std::string("keys must be str, int, float, bool or None, not ") + py_type_name(k));
    json_string(out, text, f.ensure_ascii);
    return out;
}

void json_dump(std::string& out, const value& v, const json_format& f, int level) {
    if (level > max_repr_depth) fail("tojson: value nested too deeply");
    switch (v.type()) {
        case kind::none: out += "null"; return;
        case kind::boolean: out += v.as_bool() ? "true" : "false"; return;
        case kind::integer: out += std::to_string(v.as_int()); return;
        case kind::floating: {
            const double d = v.as_double();
            if (std::isnan(d)) out += "NaN";
            else if (std::isinf(d)) out += d > 0 ? "Infinity" : "-Infinity";
            else out += py_float_repr(d);
            return;
        }
        case kind::string: json_string(out, v.str(), f.ensure_ascii); return;
        default: break;
    }
    std::string inner_nl, outer_nl;
    if (f.pretty) {
        inner_nl = "\n";
        for (int i = 0; i <= level; ++i) inner_nl += f.indent;
        outer_nl = "\n";
        for (int i = 0; i < level; ++i) outer_nl += f.indent;
    }
    if (v.is_sequence()) {
        if (v.items().empty()) {
            out += "[]";
            return;
        }
        out += '[';
        out += inner_nl;
        bool first = true;
        for (const auto& e : v.items()) {
            if (!first) out += f.item_sep + inner_nl;
            first = false;
            json_dump(out, e, f, level + 1);
        }
        out += outer_nl;
        out += ']';
        return;
    }
    if (v.is_dict()) {
        if (v.entries().empty()) {
            out += "{}";
            return;
        }
        std::vector<const std::pair<value, value>*> order;
        for (const auto& e : v.entries()) order.push_back(&e);
        if (f.sort_keys) {
            std::stable_sort(order.begin(), order.end(),
                             [](const auto* a, const auto* b) { return py_less(a->first, b->first); });
        }
        out += '{';
        out += inner_nl;
        bool first = true;
        for (const auto* e : order) {
            if (!first) out += f.item_sep + inner_nl;
            first = false;
            out += json_key(e->first, f);
            out += f.key_sep;
            json_dump(out, e->second, f, level + 1);
        }
        out += outer_nl;
        out += '}';
        return;
    }
    fail(std::string("Object of type ") + py_type_name(v) + " is not JSON serializable");
}

}  // namespace

std::string py_float_repr(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
    std::string s(buf, r.ptr);  // shortest round-trip digits, e.g. "-1.2345e-05"
    const bool neg = s[0] == '-';
    if (neg) s.erase(0, 1);
    const size_t epos = s.find('e');
    const int exp = std::atoi(s.c_str() + epos + 1);
    std::string digits;
    for (size_t i = 0; i < epos; ++i)
        if (s[i] != '.') digits += s[i];
    while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
    std::string out;
    if (exp < -4 || exp >= 16) {  // Python repr switches to exponent notation here
        out = digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        char eb[16];
        std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
        out += eb;
    } else if (exp >= 0) {
        const auto int_digits = static_cast<size_t>(exp + 1);
        if (digits.size() <= int_digits) out = digits + std::string(int_digits - digits.size(), '0') + ".0";
        else out = digits.substr(0, int_digits) + "." + digits.substr(int_digits);
    } else {
        out = "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
    }
    return neg ? "-" + out : out;
}

std::string py_string_repr(std::string_view s) {
    const bool has_single = s.find('\'') != std::string_view::npos;
    const bool has_double = s.find('"') != std::string_view::npos;
    const char q = (has_single && !has_double) ? '"' : '\'';
    std::string out(1, q);
    for (size_t i = 0; i < s.size();) {
        const size_t start = i;
        const char32_t c = utf8_next(s, i);
        if (c == static_cast<char32_t>(q) || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\t') {
            out += "\\t";
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c < 0x20 || c == 0x7F) {
            append_hex(out, "\\x", c, 2);
        } else if (c < 0x7F) {
            out += static_cast<char>(c);
        } else if (py_isprintable(c)) {
            out.append(s.substr(start, i - start));
        } else if (c <= 0xFF) {
            append_hex(out, "\\x", c, 2);
        } else if (c <= 0xFFFF) {
            append_hex(out, "\\u", c, 4);
        } else {
            append_hex(out, "\\U", c, 8);
        }
    }
    out += q;
    return out;
}

std::string html_escape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '\'': out += "&#39;"; break;
            case '"': out += "&#34;"; break;
            default: out += c;
        }
    }
    return out;
}

std::string py_str(const value& v) {
    switch (v.type()) {
        case kind::undefined: return "";
        case kind::string: return v.str();
        default: return py_repr(v);
    }
}

std::string py_repr(const value& v, int depth) {
    if (depth > max_repr_depth) fail("value nested too deeply to print");
    switch (v.type()) {
        case kind::undefined: return "Undefined";
        case kind::none: return "None";
        case kind::boolean: return v.as_bool() ? "True" : "False";
        case kind::integer: return std::to_string(v.as_int());
        case kind::floating: return py_float_repr(v.as_double());
        case kind::string: return v.safe() ? "Markup(" + py_string_repr(v.str()) + ")" : py_string_repr(v.str());
        case kind::list: {
            if (v.is_generator()) return "<generator object>";
            if (!v.is_sequence()) return std::string(py_type_name(v)) + "(" + py_repr(value::list(v.items()), depth) + ")";
            std::string out = v.is_tuple() ? "(" : "[";
            bool first = true;
            for (const auto& e : v.items()) {
                if (!first) out += ", ";
                first = false;
                out += py_repr(e, depth + 1);
            }
            if (v.is_tuple() && v.items().size() == 1) out += ",";
            out += v.is_tuple() ? ")" : "]";
            return out;
        }
        case kind::dict: {
            std::string out = "{";
            bool first = true;
            for (const auto& [k, e] : v.entries()) {
                if (!first) out += ", ";
                first = false;
                out += py_repr(k, depth + 1) + ": " + py_repr(e, depth + 1);
            }
            return out + "}";
        }
        case kind::callable: return v.fn().repr();
        case kind::object: return v.obj().repr(depth + 1);
    }
    return "";
}

std::string py_json_dumps(const value& v, const json_format& f) {
    std::string out;
    json_dump(out, v, f, 0);
    return out;
}

}  // namespace kvs::jinja
