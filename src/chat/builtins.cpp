// Global functions every chat template can call (Jinja2's range/dict/namespace plus the
// transformers additions raise_exception and strftime_now) and the two attribute objects:
// namespace() and the for-loop's `loop`.
#include <algorithm>
#include <cmath>
#include <ctime>

#include "chat/evaluator.h"
#include "chat/ops.h"
#include "chat/pyformat.h"

namespace kvs::jinja {

namespace {

constexpr int64_t max_range = 100000;  // ImmutableSandboxedEnvironment's MAX_RANGE

// namespace(...): the one mutable object templates have (`{% set ns.x = ... %}`).
class namespace_object final : public object {
public:
    value get_attr(const std::string& name) const override {
        for (const auto& [k, v] : attrs_)
            if (k.str() == name) return v;
        return value::undefined("'Namespace' object has no attribute '" + name + "'");
    }
    bool set_attr(const std::string& name, const value& v) override {
        dict_set(attrs_, value::string(name), v);
        return true;
    }
    std::string repr(int depth) const override { return "<Namespace " + py_repr(value::dict(attrs_), depth) + ">"; }
    void clear_refs() override { attrs_.clear(); }

private:
    value_dict attrs_;
};

class loop_object final : public object {
public:
    loop_object(std::shared_ptr<const value_list> items, size_t index) : items_(std::move(items)), i_(index) {}
    value get_attr(const std::string& name) const override {
        const auto n = static_cast<int64_t>(items_->size());
        const auto i = static_cast<int64_t>(i_);
        if (name == "index") return value::integer(i + 1);
        if (name == "index0") return value::integer(i);
        if (name == "revindex") return value::integer(n - i);
        if (name == "revindex0") return value::integer(n - i - 1);
        if (name == "first") return value::boolean(i == 0);
        if (name == "last") return value::boolean(i == n - 1);
        if (name == "length") return value::integer(n);
        if (name == "depth") return value::integer(1);
        if (name == "depth0") return value::integer(0);
        if (name == "previtem") return i > 0 ? (*items_)[i_ - 1] : value::undefined("there is no previous item");
        if (name == "nextitem") return i + 1 < n ? (*items_)[i_ + 1] : value::undefined("there is no next item");
        if (name == "cycle") return value::function(std::make_shared<cycle_fn>(i_));
        return value::undefined("'LoopContext' object has no attribute '" + name + "'");
    }
    std::string repr(int) const override {
        return "<LoopContext " + std::to_string(i_ + 1) + "/" + std::to_string(items_->size()) + ">";
    }
    bool is_iterable() const override { return true; }

private:
    class cycle_fn final : public callable {
    public:
        explicit cycle_fn(size_t i) : i_(i) {}
        value call(evaluator&, const call_args& a) const override {
            if (a.args.empty()) fail("no items for cycling given");
            return a.args[i_ % a.args.size()];
        }
        std::string repr() const override { return "<bound method LoopContext.cycle>"; }

    private:
        size_t i_;
    };
    std::shared_ptr<const value_list> items_;
    size_t i_;
};

using builtin_impl = value (*)(evaluator& ev, const call_args& a);

class builtin_fn final : public callable {
public:
    builtin_fn(const char* name, builtin_impl fn) : name_(name), fn_(fn) {}
    value call(evaluator& ev, const call_args& a) const override { return fn_(ev, a); }
    std::string repr() const override { return std::string("<function ") + name_ + ">"; }

private:
    const char* name_;
    builtin_impl fn_;
};

value fn_range(evaluator&, const call_args& a) {
    if (!a.kwargs.empty() || a.args.empty() || a.args.size() > 3) fail("range expected 1 to 3 integer arguments");
    for (const auto& v : a.args)
        if (!v.is_integral()) fail(std::string("'") + py_type_name(v) + "' object cannot be interpreted as an integer");
    int64_t start = 0, stop = 0, step = 1;
    if (a.args.size() == 1) {
        stop = a.args[0].as_int();
    } else {
        start = a.args[0].as_int();
        stop = a.args[1].as_int();
        if (a.args.size() == 3) step = a.args[2].as_int();
    }
    if (step == 0) fail("range() arg 3 must not be zero");
    const double count = std::max(0.0, std::ceil((static_cast<double>(stop) - static_cast<double>(start)) /
                                                 static_cast<double>(step)));
    if (count > static_cast<double>(max_range))
        fail("range too big: the sandbox blocks ranges larger than " + std::to_string(max_range));
    value_list out;
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) out.push_back(value::integer(i));
    return value::list(std::move(out));
}

void merge_mapping(value_dict& d, const call_args& a, const char* fn) {
    if (a.args.size() > 1) fail(std::string(fn) + " expected at most 1 positional argument");
    if (a.args.size() == 1) {
        const value& m = a.args[0];
        if (m.is_dict()) {
            for (const auto& [k, v] : m.entries()) dict_set(d, k, v);
        } else if (m.is_list()) {
            for (const auto& pair : m.items()) {
                if (!pair.is_list() || pair.items().size() != 2)
                    fail(std::string(fn) + ": sequence elements must be key/value pairs");
                dict_set(d, pair.items()[0], pair.items()[1]);
            }
        } else if (m.is_undefined()) {
            fail_undefined(m);  // Python's dict() probes .keys(), which raises on Undefined
        } else {
            fail(std::string(fn) + ": '" + py_type_name(m) + "' object is not a mapping");
        }
    }
    for (const auto& [k, v] : a.kwargs) dict_set(d, value::string(k), v);
}

value fn_dict(evaluator&, const call_args& a) {
    value_dict d;
    merge_mapping(d, a, "dict");
    return value::dict(std::move(d));
}

value fn_namespace(evaluator& ev, const call_args& a) {
    value_dict d;
    merge_mapping(d, a, "namespace");
    auto ns = std::make_shared<namespace_object>();
    for (const auto& [k, v] : d) {
        if (!k.is_string()) fail("namespace attribute names must be strings");
        ns->set_attr(k.str(), v);
    }
    ev.track(ns);
    return value::make_object(std::move(ns));
}

value fn_raise_exception(evaluator&, const call_args& a) {
    const value* msg = a.get(0, "message");
    throw template_error{msg ? py_str(*msg) : std::string("raise_exception() called"), no_pos, true};
}

value fn_strftime_now(evaluator& ev, const call_args& a) {
    const value* fmt = a.get(0, "format");
    if (!fmt || !fmt->is_string()) fail("strftime_now() expects a format string");
    if (fmt->str().empty()) return value::string("");
    std::string buf(256, '\0');
    for (int attempt = 0; attempt < 6; ++attempt) {
        const size_t n = std::strftime(buf.data(), buf.size(), fmt->str().c_str(), &ev.limits().now);
        if (n > 0) return value::string(buf.substr(0, n));
        buf.resize(buf.size() * 4);
    }
    return value::string("");
}

}  // namespace

value make_loop(std::shared_ptr<const value_list> items, size_t index) {
    return value::make_object(std::make_shared<loop_object>(std::move(items), index));
}

value builtin_global(const std::string& name) {
    // Stateless callables, shared by all renders (copying a shared_ptr is thread-safe).
    static const std::pair<const char*, value> table[] = {
        {"range", value::function(std::make_shared<builtin_fn>("range", fn_range))},
        {"dict", value::function(std::make_shared<builtin_fn>("dict", fn_dict))},
        {"namespace", value::function(std::make_shared<builtin_fn>("namespace", fn_namespace))},
        {"raise_exception", value::function(std::make_shared<builtin_fn>("raise_exception", fn_raise_exception))},
        {"strftime_now", value::function(std::make_shared<builtin_fn>("strftime_now", fn_strftime_now))},
    };
    for (const auto& [n, v] : table)
        if (name == n) return v;
    return value();
}

}  // namespace kvs::jinja
