#include "chat/value.h"

#include "chat/pyformat.h"

namespace kvs::jinja {

namespace {
const std::string& empty_string() {
    static const std::string s;
    return s;
}
}  // namespace

const value* call_args::get(size_t index, std::string_view name) const {
    if (index < args.size()) return &args[index];
    for (const auto& [k, v] : kwargs)
        if (k == name) return &v;
    return nullptr;
}

bool object::set_attr(const std::string&, const value&) { return false; }

value value::undefined(std::string hint) {
    value v;
    if (!hint.empty()) v.ptr_ = std::make_shared<std::string>(std::move(hint));
    return v;
}
value value::none() {
    value v;
    v.kind_ = kind::none;
    return v;
}
value value::boolean(bool b) {
    value v;
    v.kind_ = kind::boolean;
    v.b_ = b;
    return v;
}
value value::integer(int64_t i) {
    value v;
    v.kind_ = kind::integer;
    v.i_ = i;
    return v;
}
value value::floating(double f) {
    value v;
    v.kind_ = kind::floating;
    v.f_ = f;
    return v;
}
value value::string(std::string s, bool safe) {
    value v;
    v.kind_ = kind::string;
    v.flag_ = safe ? 1 : 0;
    v.ptr_ = std::make_shared<std::string>(std::move(s));
    return v;
}
value value::list(value_list items) {
    value v;
    v.kind_ = kind::list;
    v.ptr_ = std::make_shared<value_list>(std::move(items));
    return v;
}
value value::tuple(value_list items) {
    value v = list(std::move(items));
    v.flag_ = 1;
    return v;
}
value value::generator(value_list items) {
    value v = list(std::move(items));
    v.flag_ = 2;
    return v;
}
value value::view(value_list items, list_flavor flavor) {
    value v = list(std::move(items));
    v.flag_ = static_cast<uint8_t>(flavor);
    return v;
}
value value::dict(value_dict items) {
    value v;
    v.kind_ = kind::dict;
    v.ptr_ = std::make_shared<value_dict>(std::move(items));
    return v;
}
value value::function(std::shared_ptr<const callable> fn) {
    value v;
    v.kind_ = kind::callable;
    v.ptr_ = std::const_pointer_cast<callable>(std::move(fn));
    return v;
}
value value::make_object(std::shared_ptr<object> obj) {
    value v;
    v.kind_ = kind::object;
    v.ptr_ = std::move(obj);
    return v;
}

const std::string& value::str() const {
    if (!ptr_ || (kind_ != kind::string && kind_ != kind::undefined)) return empty_string();
    return *static_cast<const std::string*>(ptr_.get());
}
const value_list& value::items() const { return *static_cast<const value_list*>(ptr_.get()); }
const value_dict& value::entries() const { return *static_cast<const value_dict*>(ptr_.get()); }
const callable& value::fn() const { return *static_cast<const callable*>(ptr_.get()); }
object& value::obj() const { return *static_cast<object*>(ptr_.get()); }

const value* value::find(std::string_view key) const {
    for (const auto& [k, v] : entries())
        if (k.is_string() && k.str() == key) return &v;
    return nullptr;
}

const value* value::find(const value& key) const {
    if (key.is_string()) return find(std::string_view(key.str()));
    for (const auto& [k, v] : entries())
        if (py_equal(k, key)) return &v;
    return nullptr;
}

bool truthy(const value& v) {
    switch (v.type()) {
        case kind::undefined:
        case kind::none: return false;
        case kind::boolean: return v.as_bool();
        case kind::integer: return v.as_int() != 0;
        case kind::floating: return v.as_double() != 0.0;
        case kind::string: return !v.str().empty();
        case kind::list: return v.is_generator() || !v.items().empty();
        case kind::dict: return !v.entries().empty();
        case kind::callable:
        case kind::object: return true;
    }
    return false;
}

bool py_equal(const value& a, const value& b) {
    if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
    if (a.is_number() && b.is_number()) {
        if (a.is_integral() && b.is_integral()) return a.as_int() == b.as_int();
        return a.as_double() == b.as_double();
    }
    if (a.type() != b.type()) return false;
    switch (a.type()) {
        case kind::none: return true;
        case kind::string: return a.str() == b.str();
        case kind::list: {
            if (a.is_generator() || b.is_generator()) return a.identity() == b.identity();
            if (a.flavor() != b.flavor() || a.items().size() != b.items().size()) return false;
            for (size_t i = 0; i < a.items().size(); ++i)
                if (!py_equal(a.items()[i], b.items()[i])) return false;
            return true;
        }
        case kind::dict: {
            if (a.entries().size() != b.entries().size()) return false;
            for (const auto& [k, v] : a.entries()) {
                const value* other = b.find(k);
                if (!other || !py_equal(v, *other)) return false;
            }
            return true;
        }
        default: return a.identity() == b.identity();
    }
}

bool py_less(const value& a, const value& b) {
    if (a.is_undefined()) fail_undefined(a);
    if (b.is_undefined()) fail_undefined(b);
    if (a.is_number() && b.is_number()) {
        if (a.is_integral() && b.is_integral()) return a.as_int() < b.as_int();
        return a.as_double() < b.as_double();
    }
    if (a.is_string() && b.is_string()) return a.str() < b.str();  // UTF-8 keeps code point order
    if (a.is_sequence() && b.is_sequence() && a.is_tuple() == b.is_tuple()) {
        const auto& x = a.items();
        const auto& y = b.items();
        for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
            if (!py_equal(x[i], y[i])) return py_less(x[i], y[i]);
        }
        return x.size() < y.size();
    }
    fail(std::string("'<' not supported between instances of '") + py_type_name(a) + "' and '" + py_type_name(b) +
         "'");
}

const char* py_type_name(const value& v) {
    switch (v.type()) {
        case kind::undefined: return "Undefined";
        case kind::none: return "NoneType";
        case kind::boolean: return "bool";
        case kind::integer: return "int";
        case kind::floating: return "float";
        case kind::string: return v.safe() ? "Markup" : "str";
        case kind::list: {
            static const char* const names[] = {"list", "tuple", "generator", "dict_items", "dict_keys", "dict_values"};
            return names[static_cast<int>(v.flavor())];
        }
        case kind::dict: return "dict";
        case kind::callable: return "function";
        case kind::object: return "object";
    }
    return "object";
}

void dict_set(value_dict& d, value key, value v) {
    for (auto& [k, old] : d) {
        if (py_equal(k, key)) {
            old = std::move(v);
            return;
        }
    }
    d.emplace_back(std::move(key), std::move(v));
}

void fail_undefined(const value& v) {
    fail(v.str().empty() ? std::string("value is undefined") : v.str());
}

}  // namespace kvs::jinja
