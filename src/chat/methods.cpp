// Bound methods of str, dict and list values, as ImmutableSandboxedEnvironment allows them:
// non-mutating methods work; mutating ones (list.append, dict.update, ...) resolve to an
// undefined value whose use raises "access to attribute ... is unsafe" (get_attr in ops.cpp).
#include <algorithm>

#include "chat/evaluator.h"
#include "chat/ops.h"
#include "chat/pyformat.h"
#include "chat/unicode.h"

namespace kvs::jinja {

namespace {

const char* const str_methods[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "startswith", "endswith",
                                   "upper", "lower", "title", "capitalize", "replace", "find", "rfind", "count",
                                   "join", "splitlines", "isdigit", "isalpha", "isalnum", "isspace", "islower",
                                   "isupper", "center", "ljust", "rjust"};
const char* const dict_methods[] = {"get", "items", "keys", "values", "copy"};
const char* const dict_unsafe[] = {"pop", "popitem", "setdefault", "update", "clear"};
const char* const list_methods[] = {"index", "count", "copy"};
const char* const list_unsafe[] = {"append", "extend", "insert", "pop", "remove", "reverse", "sort", "clear"};

template <size_t N>
bool in(const char* const (&names)[N], const std::string& name) {
    return std::any_of(std::begin(names), std::end(names), [&](const char* n) { return name == n; });
}

[[noreturn]] void bad_args(const std::string& name) { fail("wrong arguments for method '" + name + "'"); }

const std::string& str_arg(const call_args& a, size_t i, const std::string& method) {
    if (i >= a.args.size() || !a.args[i].is_string()) bad_args(method);
    return a.args[i].str();
}

value split(const std::string& s, const value* sep, int64_t maxsplit, bool from_right) {
    std::vector<std::string> parts;
    if (!sep || sep->is_none()) {  // runs of whitespace; empty fields dropped
        std::u32string cps = utf8_decode(s);
        if (from_right) std::reverse(cps.begin(), cps.end());
        size_t i = 0;
        while (true) {
            while (i < cps.size() && py_isspace(cps[i])) ++i;
            if (i >= cps.size()) break;
            if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {  // the rest, as is
                std::u32string rest = cps.substr(i);
                if (from_right) std::reverse(rest.begin(), rest.end());
                parts.push_back(utf8_encode(rest));
                break;
            }
            size_t j = i;
            while (j < cps.size() && !py_isspace(cps[j])) ++j;
            std::u32string word = cps.substr(i, j - i);
            if (from_right) std::reverse(word.begin(), word.end());
            parts.push_back(utf8_encode(word));
            i = j;
        }
        if (from_right) std::reverse(parts.begin(), parts.end());
    } else {
        if (!sep->is_string()) fail("must be str or None, not " + std::string(py_type_name(*sep)));
        const std::string& d = sep->str();
        if (d.empty()) fail("empty separator");
        if (!from_right) {
            size_t start = 0;
            while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
                const size_t p = s.find(d, start);
                if (p == std::string::npos) break;
                parts.push_back(s.substr(start, p - start));
                start = p + d.size();
            }
            parts.push_back(s.substr(start));
        } else {
            size_t end = s.size();
            while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
                if (end < d.size()) break;
                const size_t p = s.rfind(d, end - d.size());
                if (p == std::string::npos) break;
                parts.push_back(s.substr(p + d.size(), end - p - d.size()));
                end = p;
            }
            parts.push_back(s.substr(0, end));
            std::reverse(parts.begin(), parts.end());
        }
    }
    value_list out;
    for (auto& p : parts) out.push_back(value::string(std::move(p)));
    return value::list(std::move(out));
}

bool affix_match(const std::string& s, const value& affix, bool prefix, const std::string& method) {
    auto one = [&](const value& a) {
        if (!a.is_string()) bad_args(method);
        const std::string& x = a.str();
        if (x.size() > s.size()) return false;
        return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
    };
    if (affix.is_tuple()) return std::any_of(affix.items().begin(), affix.items().end(), one);
    return one(affix);
}

std::string pad(const std::string& s, int64_t width, const std::string& fill, int where /*-1 left, 0 center, 1 right*/) {
    const auto n = static_cast<int64_t>(utf8_length(s));
    if (width <= n) return s;
    const int64_t marg = width - n;
    int64_t left = 0;
    if (where == 0) left = marg / 2 + (marg & width & 1);
    else if (where == 1) left = marg;
    std::string out;
    for (int64_t i = 0; i < left; ++i) out += fill;
    out += s;
    for (int64_t i = 0; i < marg - left; ++i) out += fill;
    return out;
}

template <class Pred>
bool all_cps(const std::string& s, Pred p) {
    if (s.empty()) return false;
    for (size_t i = 0; i < s.size();)
        if (!p(utf8_next(s, i))) return false;
    return true;
}

size_t cp_index(const std::string& s, size_t byte_pos) { return utf8_length(std::string_view(s).substr(0, byte_pos)); }

value call_str_method(evaluator& ev, const value& self, const std::string& m, const call_args& a) {
    const std::string& s = self.str();
    const size_t n = a.args.size();
    if (m == "strip" || m == "lstrip" || m == "rstrip") {
        const value* chars = a.get(0, "chars");
        if (chars && !chars->is_none() && !chars->is_string()) bad_args(m);
        const int side = m == "strip" ? strip_both : m == "lstrip" ? strip_left : strip_right;
        return value::string(py_strip(s, side, chars && chars->is_string() ? &chars->str() : nullptr), self.safe());
    }
    if (m == "split" || m == "rsplit") {
        const value* mx = a.get(1, "maxsplit");
        if (mx && !mx->is_integral()) bad_args(m);
        return split(s, a.get(0, "sep"), mx ? mx->as_int() : -1, m == "rsplit");
    }
    if (m == "startswith" || m == "endswith") {
        if (n != 1) bad_args(m);
        return value::boolean(affix_match(s, a.args[0], m == "startswith", m));
    }
    if (m == "upper") return value::string(py_upper(s), self.safe());
    if (m == "lower") return value::string(py_lower(s), self.safe());
    if (m == "title") return value::string(py_title(s), self.safe());
    if (m == "capitalize") return value::string(py_capitalize(s), self.safe());
    if (m == "replace") {
        const std::string& from = str_arg(a, 0, m);
        const std::string& to = str_arg(a, 1, m);
        const value* cnt = a.get(2, "count");
        int64_t limit = cnt && cnt->is_integral() ? cnt->as_int() : -1;
        std::string out;
        if (from.empty()) {  // Python inserts `to` around every code point
            size_t i = 0;
            while (i <= s.size()) {
                if (limit != 0) {
                    out += to;
                    --limit;
                }
                if (i == s.size()) break;
                const size_t start = i;
                utf8_next(s, i);
                out.append(s, start, i - start);
            }
        } else {
            size_t start = 0;
            for (size_t p = s.find(from); p != std::string::npos && limit != 0; p = s.find(from, start), --limit) {
                out.append(s, start, p - start);
                out += to;
                start = p + from.size();
                ev.check_size(out.size());
            }
            out.append(s, start);
        }
        ev.check_size(out.size());
        return value::string(std::move(out));
    }
    if (m == "find" || m == "rfind") {
        const std::string& sub = str_arg(a, 0, m);
        const size_t p = m == "find" ? s.find(sub) : s.rfind(sub);
        return value::integer(p == std::string::npos ? -1 : static_cast<int64_t>(cp_index(s, p)));
    }
    if (m == "count") {
        const std::string& sub = str_arg(a, 0, m);
        if (sub.empty()) return value::integer(static_cast<int64_t>(utf8_length(s) + 1));
        int64_t c = 0;
        for (size_t p = s.find(sub); p != std::string::npos; p = s.find(sub, p + sub.size())) ++c;
        return value::integer(c);
    }
    if (m == "join") {
        if (n != 1) bad_args(m);
        std::string out;
        size_t i = 0;
        for (const value& item : iterate(a.args[0])) {
            if (!item.is_string())
                fail("sequence item " + std::to_string(i) + ": expected str instance, " + py_type_name(item) + " found");
            if (i++ > 0) out += s;
            out += item.str();
            ev.check_size(out.size());
        }
        return value::string(std::move(out));
    }
    if (m == "splitlines") {
        const value* keep = a.get(0, "keepends");
        const bool keepends = keep && truthy(*keep);
        value_list out;
        std::string line;
        for (size_t i = 0; i < s.size();) {
            const size_t start = i;
            const char32_t c = utf8_next(s, i);
            if (!py_is_line_break(c)) {
                line.append(s, start, i - start);
                continue;
            }
            if (c == '\r' && i < s.size() && s[i] == '\n') ++i;
            if (keepends) line.append(s, start, i - start);
            out.push_back(value::string(std::move(line)));
            line.clear();
        }
        if (!line.empty()) out.push_back(value::string(std::move(line)));
        return value::list(std::move(out));
    }
    if (m == "isdigit") return value::boolean(all_cps(s, [](char32_t c) { return c >= '0' && c <= '9'; }));
    if (m == "isalpha") return value::boolean(all_cps(s, [](char32_t c) { return cp_is_cased(c) || c >= 0x500; }));
    if (m == "isalnum")
        return value::boolean(all_cps(s, [](char32_t c) { return cp_is_cased(c) || (c >= '0' && c <= '9') || c >= 0x500; }));
    if (m == "isspace") return value::boolean(all_cps(s, py_isspace));
    if (m == "islower" || m == "isupper") {
        bool any_cased = false;
        for (size_t i = 0; i < s.size();) {
            const char32_t c = utf8_next(s, i);
            if (m == "islower" && cp_lower(c) != c) return value::boolean(false);
            if (m == "isupper" && cp_upper(c) != c) return value::boolean(false);
            any_cased = any_cased || cp_is_cased(c);
        }
        return value::boolean(any_cased);
    }
    if (m == "center" || m == "ljust" || m == "rjust") {
        if (n < 1 || !a.args[0].is_integral()) bad_args(m);
        const std::string fill = n > 1 ? str_arg(a, 1, m) : " ";
        ev.check_size(static_cast<size_t>(std::max<int64_t>(a.args[0].as_int(), 0)) * fill.size());
        return value::string(pad(s, a.args[0].as_int(), fill, m == "center" ? 0 : m == "ljust" ? -1 : 1));
    }
    bad_args(m);
}

value call_dict_method(const value& self, const std::string& m, const call_args& a) {
    if (m == "get") {
        if (a.args.empty() || a.args.size() > 2) bad_args(m);
        if (const value* v = self.find(a.args[0])) return *v;
        return a.args.size() > 1 ? a.args[1] : value::none();
    }
    value_list out;
    for (const auto& [k, v] : self.entries()) {
        if (m == "items") out.push_back(value::tuple({k, v}));
        else if (m == "keys") out.push_back(k);
        else if (m == "values") out.push_back(v);
    }
    if (m == "copy") return value::dict(self.entries());
    return value::view(std::move(out), m == "items" ? list_flavor::dict_items
                                       : m == "keys" ? list_flavor::dict_keys : list_flavor::dict_values);
}

value call_list_method(const value& self, const std::string& m, const call_args& a) {
    if (m == "copy") return value::list(self.items());
    if (a.args.size() != 1) bad_args(m);
    int64_t count = 0;
    for (size_t i = 0; i < self.items().size(); ++i) {
        if (!py_equal(self.items()[i], a.args[0])) continue;
        if (m == "index") return value::integer(static_cast<int64_t>(i));
        ++count;
    }
    if (m == "index") fail(py_repr(a.args[0]) + " is not in list");
    return value::integer(count);
}

class bound_method final : public callable {
public:
    bound_method(value self, std::string name) : self_(std::move(self)), name_(std::move(name)) {}
    value call(evaluator& ev, const call_args& a) const override {
        if (self_.is_string()) return call_str_method(ev, self_, name_, a);
        if (self_.is_dict()) return call_dict_method(self_, name_, a);
        return call_list_method(self_, name_, a);
    }
    std::string repr() const override {
        return "<built-in method " + name_ + " of " + py_type_name(self_) + " object>";
    }

private:
    value self_;
    std::string name_;
};

}  // namespace

bool has_safe_method(const value& self, const std::string& name) {
    if (self.is_string()) return in(str_methods, name);
    if (self.is_dict()) return in(dict_methods, name);
    if (self.is_sequence()) return in(list_methods, name) && !(self.is_tuple() && name == "copy");
    return false;
}

bool has_unsafe_method(const value& self, const std::string& name) {
    if (self.is_dict()) return in(dict_unsafe, name);
    if (self.is_plain_list()) return in(list_unsafe, name);
    return false;
}

value make_method(const value& self, const std::string& name) {
    return value::function(std::make_shared<bound_method>(self, name));
}

}  // namespace kvs::jinja
