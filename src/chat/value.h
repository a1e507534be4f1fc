// The interpreter's data model: values as a Jinja2 template sees them (Python objects).
//
// A value is small (kind tag + scalar + one shared pointer) and cheap to copy: strings, lists
// and dicts are shared and immutable once built (the sandbox forbids mutating them); only
// namespace() objects are mutable, through object::set_attr. Values live for one render;
// nothing here is shared between threads.
//
// Distinctions kept from Python/Jinja2 because templates observe them:
//   undefined vs none (`is defined`, printing "" vs "None"), int vs float vs bool (1 vs 1.0 vs
//   True), list vs tuple (repr), Markup strings (`|safe`: `+` escapes the other operand),
//   generators (results of select/map/...: no len()), dict views (d.items(): no indexing).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/error.h"

namespace kvs::jinja {

class value;
class evaluator;
using value_list = std::vector<value>;
using value_dict = std::vector<std::pair<value, value>>;  // insertion order; keys unique under Python ==

// Arguments of a call, filter or test: positional then keyword, already evaluated.
struct call_args {
    std::vector<value> args;
    std::vector<std::pair<std::string, value>> kwargs;
    // The argument at position `index`, else the keyword `name`; nullptr if neither was given.
    const value* get(size_t index, std::string_view name) const;
};

// Something a template can call: a macro, a builtin function, a bound method.
class callable {
public:
    virtual ~callable() = default;
    virtual value call(evaluator& ev, const call_args& args) const = 0;
    virtual std::string repr() const = 0;
};

// An object with attributes: namespace() and the `loop` variable.
class object {
public:
    virtual ~object() = default;
    virtual value get_attr(const std::string& name) const = 0;  // undefined if absent
    virtual bool set_attr(const std::string& name, const value& v);  // false: not assignable
    virtual std::string repr(int depth) const = 0;
    virtual bool is_iterable() const { return false; }
    virtual void clear_refs() {}  // drop held values (end of render: breaks reference cycles)
};

enum class kind : uint8_t { undefined, none, boolean, integer, floating, string, list, dict, callable, object };

// What Python type a kind::list value stands for. Only list and tuple index, slice and serialize.
enum class list_flavor : uint8_t { list, tuple, generator, dict_items, dict_keys, dict_values };

class value {
public:
    value() = default;  // undefined without a hint
    static value undefined(std::string hint);
    static value none();
    static value boolean(bool b);
    static value integer(int64_t i);
    static value floating(double f);
    static value string(std::string s, bool safe = false);
    static value list(value_list items);
    static value tuple(value_list items);
    static value generator(value_list items);
    static value view(value_list items, list_flavor flavor);
    static value dict(value_dict items);
    static value function(std::shared_ptr<const callable> fn);
    static value make_object(std::shared_ptr<object> obj);

    kind type() const { return kind_; }
    bool is_undefined() const { return kind_ == kind::undefined; }
    bool is_none() const { return kind_ == kind::none; }
    bool is_bool() const { return kind_ == kind::boolean; }
    bool is_int() const { return kind_ == kind::integer; }
    bool is_float() const { return kind_ == kind::floating; }
    bool is_number() const { return is_int() || is_float() || is_bool(); }
    bool is_integral() const { return is_int() || is_bool(); }  // Python int (bool is an int)
    bool is_string() const { return kind_ == kind::string; }
    bool is_list() const { return kind_ == kind::list; }  // list, tuple or generator
    bool is_dict() const { return kind_ == kind::dict; }
    bool is_callable() const { return kind_ == kind::callable; }
    bool is_object() const { return kind_ == kind::object; }

    bool as_bool() const { return b_; }
    int64_t as_int() const { return is_bool() ? (b_ ? 1 : 0) : i_; }  // integer or boolean
    double as_double() const { return is_float() ? f_ : static_cast<double>(as_int()); }  // any number
    const std::string& str() const;  // string; the hint for undefined
    bool safe() const { return is_string() && flag_ == 1; }
    list_flavor flavor() const { return static_cast<list_flavor>(flag_); }  // for lists
    bool is_tuple() const { return is_list() && flavor() == list_flavor::tuple; }
    bool is_generator() const { return is_list() && flavor() == list_flavor::generator; }
    bool is_plain_list() const { return is_list() && flavor() == list_flavor::list; }
    bool is_sequence() const { return is_list() && flag_ <= 1; }  // list or tuple
    const value_list& items() const;   // list
    const value_dict& entries() const; // dict
    const callable& fn() const;
    object& obj() const;
    const void* identity() const { return ptr_.get(); }

    // Dict lookup: nullptr if absent.
    const value* find(std::string_view key) const;
    const value* find(const value& key) const;

private:
    kind kind_ = kind::undefined;
    uint8_t flag_ = 0;  // string: 1 = Markup; list: a list_flavor
    union {
        bool b_;
        int64_t i_ = 0;
        double f_;
    };
    std::shared_ptr<void> ptr_;  // std::string, value_list, value_dict, callable or object by kind
};

// Python semantics.
bool truthy(const value& v);
bool py_equal(const value& a, const value& b);
bool py_less(const value& a, const value& b);  // throws TypeError-like template_error
const char* py_type_name(const value& v);
// Adds or replaces key (keeping the first position, as a Python dict does).
void dict_set(value_dict& d, value key, value v);
// A value for the error raised by using an undefined (its hint, or a generic message).
[[noreturn]] void fail_undefined(const value& v);

constexpr int max_json_depth = 512;

template <class Json>
value value_from_json(const Json& j, int depth = 0) {
    if (depth > max_json_depth) fail("input JSON is nested deeper than 512 levels");
    if (j.is_null()) return value::none();
    if (j.is_boolean()) return value::boolean(j.template get<bool>());
    if (j.is_number_unsigned()) {
        const auto u = j.template get<uint64_t>();
        if (u > static_cast<uint64_t>(INT64_MAX)) return value::floating(static_cast<double>(u));
        return value::integer(static_cast<int64_t>(u));
    }
    if (j.is_number_integer()) return value::integer(j.template get<int64_t>());
    if (j.is_number_float()) return value::floating(j.template get<double>());
    if (j.is_string()) return value::string(j.template get_ref<const std::string&>());
    if (j.is_array()) {
        value_list items;
        items.reserve(j.size());
        for (const auto& e : j) items.push_back(value_from_json(e, depth + 1));
        return value::list(std::move(items));
    }
    if (j.is_object()) {
        value_dict d;
        d.reserve(j.size());
        for (auto it = j.begin(); it != j.end(); ++it)
            d.emplace_back(value::string(it.key()), value_from_json(it.value(), depth + 1));
        return value::dict(std::move(d));
    }
    fail("unsupported JSON value (binary) in the template context");
}

}  // namespace kvs::jinja
