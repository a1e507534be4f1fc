#include "chat/evaluator.h"

#include "chat/filters.h"
#include "chat/ops.h"
#include "chat/pyformat.h"

namespace kvs::jinja {

namespace {

constexpr int max_eval_nesting = 1000;  // eval/exec frames on the C++ stack

// A macro (or the body of a {% call %} block) closed over the scope it was defined in.
class macro_fn final : public callable {
public:
    macro_fn(const stmt* def, scope_ptr closure) : def_(def), closure_(std::move(closure)) {}
    value call(evaluator& ev, const call_args& args) const override {
        return ev.call_macro(*def_, closure_, args, nullptr);
    }
    std::string repr() const override {
        return "<Macro '" + (def_->targets.empty() ? std::string("caller") : def_->targets[0]) + "'>";
    }

private:
    const stmt* def_;
    scope_ptr closure_;
};

}  // namespace

const value* scope::find(const std::string& name) const {
    for (const auto& [k, v] : vars)
        if (k == name) return &v;
    return nullptr;
}

void scope::set(const std::string& name, value v) {
    for (auto& [k, old] : vars) {
        if (k == name) {
            old = std::move(v);
            return;
        }
    }
    vars.emplace_back(name, std::move(v));
}

void bind_targets(scope& sc, const std::vector<std::string>& targets, const value& v) {
    if (targets.size() == 1) {
        sc.set(targets[0], v);
        return;
    }
    if (!v.is_list() && !v.is_dict() && !v.is_string())
        fail(std::string("cannot unpack non-iterable ") + py_type_name(v) + " object");
    const value_list items = iterate(v);
    if (items.size() != targets.size()) {
        fail(items.size() > targets.size()
                 ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
                 : "not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " +
                       std::to_string(items.size()) + ")");
    }
    for (size_t i = 0; i < targets.size(); ++i) sc.set(targets[i], items[i]);
}

evaluator::depth_guard::depth_guard(evaluator& e) : ev(e) {
    if (++ev.depth_ > max_eval_nesting) {
        --ev.depth_;
        fail("template evaluation nested too deeply");
    }
}

evaluator::~evaluator() {
    for (auto& s : closure_scopes_) s->vars.clear();
    for (auto& o : objects_) o->clear_refs();
}

std::string evaluator::render(const body& root) {
    auto top = std::make_shared<scope>();
    closure_scopes_.push_back(top);
    std::string out;
    exec_body(root, top, out);
    return out;
}

void evaluator::check_size(size_t n_bytes) const {
    if (n_bytes > limits_.max_output_bytes)
        fail("output exceeds the limit of " + std::to_string(limits_.max_output_bytes) + " bytes");
}

void evaluator::tick(uint64_t n) {
    steps_ += n;
    if (steps_ > limits_.max_steps)
        fail("template exceeded its budget of " + std::to_string(limits_.max_steps) + " evaluation steps");
}

void evaluator::append(std::string& out, std::string_view text) const {
    check_size(out.size() + text.size());
    out.append(text);
}

value evaluator::lookup(const std::string& name, const scope_ptr& sc) const {
    for (const scope* s = sc.get(); s; s = s->parent.get()) {
        if (const value* v = s->find(name)) return *v;
    }
    if (const value* v = globals_.find(std::string_view(name))) return *v;
    value b = builtin_global(name);
    if (!b.is_undefined()) return b;
    return value::undefined("'" + name + "' is undefined");
}

evaluator::flow evaluator::exec_body(const body& b, const scope_ptr& sc, std::string& out) {
    for (const auto& s : b) {
        const flow f = exec(*s, sc, out);
        if (f != flow::normal) return f;
    }
    return flow::normal;
}

evaluator::flow evaluator::exec(const stmt& s, const scope_ptr& sc, std::string& out) {
    depth_guard g(*this);
    tick();
    try {
        switch (s.kind) {
            case stmt_kind::text: append(out, s.text); break;
            case stmt_kind::output: {
                const value v = eval(*s.value, sc);
                if (v.is_string()) append(out, v.str());
                else append(out, py_str(v));
                break;
            }
            case stmt_kind::if_:
                for (const auto& br : s.branches) {
                    if (!br.cond || truthy(eval(*br.cond, sc))) return exec_body(br.then, sc, out);
                }
                break;
            case stmt_kind::for_: return exec_for(s, sc, out);
            case stmt_kind::set: exec_set(s, sc); break;
            case stmt_kind::set_block:
            case stmt_kind::filter_block: {
                std::string buf;
                const flow f = exec_body(s.body_, sc, buf);
                value v = value::string(std::move(buf));
                for (const auto& fe : s.filters) v = apply_filter(*fe, v, sc);
                if (s.kind == stmt_kind::set_block) sc->set(s.targets[0], v);
                else append(out, py_str(v));
                return f;
            }
            case stmt_kind::macro:
                closure_scopes_.push_back(sc);
                sc->set(s.targets[0], value::function(std::make_shared<macro_fn>(&s, sc)));
                break;
            case stmt_kind::call_block: {
                const expr& c = *s.value;
                const value fn = eval(*c.items[0], sc);
                call_args a = eval_args(c, 1, sc);
                closure_scopes_.push_back(sc);
                a.kwargs.emplace_back("caller", value::function(std::make_shared<macro_fn>(&s, sc)));
                const value r = call(fn, a);
                append(out, py_str(r));
                break;
            }
            case stmt_kind::with: {
                auto inner = std::make_shared<scope>();
                inner->parent = sc;
                for (size_t i = 0; i < s.targets.size(); ++i) inner->set(s.targets[i], eval(*s.values[i], sc));
                return exec_body(s.body_, inner, out);
            }
            case stmt_kind::block: return exec_body(s.body_, sc, out);
            case stmt_kind::break_: return flow::break_;
            case stmt_kind::continue_: return flow::continue_;
        }
    } catch (template_error& err) {
        if (err.pos == no_pos) err.pos = s.pos;
        throw;
    }
    return flow::normal;
}

evaluator::flow evaluator::exec_for(const stmt& s, const scope_ptr& sc, std::string& out) {
    const value seq = eval(*s.value, sc);
    value_list items = iterate(seq);
    if (s.cond) {  // `for x in xs if cond`: loop.index/length/last count the kept items only
        value_list kept;
        for (auto& item : items) {
            tick();
            auto probe = std::make_shared<scope>();
            probe->parent = sc;
            bind_targets(*probe, s.targets, item);
            if (truthy(eval(*s.cond, probe))) kept.push_back(std::move(item));
        }
        items = std::move(kept);
    }
    if (items.empty()) {
        if (s.else_body.empty()) return flow::normal;
        auto inner = std::make_shared<scope>();
        inner->parent = sc;
        return exec_body(s.else_body, inner, out);
    }
    auto shared = std::make_shared<const value_list>(std::move(items));
    for (size_t i = 0; i < shared->size(); ++i) {
        tick();
        auto inner = std::make_shared<scope>();  // a fresh frame per iteration, as in Jinja2
        inner->parent = sc;
        bind_targets(*inner, s.targets, (*shared)[i]);
        inner->set("loop", make_loop(shared, i));
        if (exec_body(s.body_, inner, out) == flow::break_) break;
    }
    return flow::normal;
}

void evaluator::exec_set(const stmt& s, const scope_ptr& sc) {
    const value v = eval(*s.value, sc);
    if (!s.attr.empty()) {
        const value target = lookup(s.targets[0], sc);
        if (target.is_undefined()) fail_undefined(target);
        if (!target.is_object() || !target.obj().set_attr(s.attr, v))
            fail("cannot assign attribute '" + s.attr + "' on '" + s.targets[0] + "': not a namespace object");
        return;
    }
    bind_targets(*sc, s.targets, v);
}

value evaluator::call_macro(const stmt& def, const scope_ptr& closure, const call_args& a, const value* caller) {
    if (call_depth_ >= limits_.max_call_depth)
        fail("macro calls nested deeper than " + std::to_string(limits_.max_call_depth) + " (runaway recursion?)");
    ++call_depth_;
    struct restore {
        int& d;
        ~restore() { --d; }
    } r{call_depth_};
    auto sc = std::make_shared<scope>();
    sc->parent = closure;
    const size_t n = def.params.size();
    value_list varargs;
    for (size_t i = 0; i < a.args.size(); ++i) {
        if (i < n) sc->set(def.params[i].name, a.args[i]);
        else varargs.push_back(a.args[i]);
    }
    value_dict kwargs;
    for (const auto& [k, v] : a.kwargs) {
        bool matched = false;
        for (size_t i = 0; i < n && !matched; ++i) {
            if (def.params[i].name != k) continue;
            if (i < a.args.size()) fail("macro got multiple values for argument '" + k + "'");
            sc->set(k, v);
            matched = true;
        }
        if (!matched) {
            if (k == "caller") sc->set("caller", v);
            else dict_set(kwargs, value::string(k), v);
        }
    }
    for (size_t i = a.args.size(); i < n; ++i) {
        const macro_param& p = def.params[i];
        if (sc->find(p.name)) continue;
        sc->set(p.name, p.default_value ? eval(*p.default_value, sc)
                                        : value::undefined("parameter '" + p.name + "' was not provided"));
    }
    sc->set("varargs", value::tuple(std::move(varargs)));
    sc->set("kwargs", value::dict(std::move(kwargs)));
    if (caller) sc->set("caller", *caller);
    std::string out;
    exec_body(def.body_, sc, out);
    return value::string(std::move(out));
}

call_args evaluator::eval_args(const expr& e, size_t first, const scope_ptr& sc) {
    call_args a;
    for (size_t i = first; i < e.items.size(); ++i) a.args.push_back(eval(*e.items[i], sc));
    for (const auto& [k, v] : e.kwargs) a.kwargs.emplace_back(k, eval(*v, sc));
    return a;
}

value evaluator::apply_filter(const expr& f, const value& input, const scope_ptr& sc) {
    if (!f.filter) fail("no filter named '" + f.name + "'");  // allowed to parse inside an if (see parser)
    const call_args a = eval_args(f, 1, sc);
    return f.filter->fn(*this, input, a);
}

value evaluator::call(const value& fn, const call_args& args) {
    if (fn.is_callable()) return fn.fn().call(*this, args);
    if (fn.is_undefined()) fail_undefined(fn);
    fail(std::string("'") + py_type_name(fn) + "' object is not callable");
}

value evaluator::eval(const expr& e, const scope_ptr& sc) {
    depth_guard g(*this);
    tick();
    try {
        switch (e.kind) {
            case expr_kind::literal: return e.lit;
            case expr_kind::name: return lookup(e.name, sc);
            case expr_kind::list:
            case expr_kind::tuple: {
                value_list items;
                items.reserve(e.items.size());
                for (const auto& i : e.items) items.push_back(eval(*i, sc));
                return e.kind == expr_kind::list ? value::list(std::move(items)) : value::tuple(std::move(items));
            }
            case expr_kind::dict: {
                value_dict d;
                for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
                    value k = eval(*e.items[i], sc);
                    if ((k.is_list() && !k.is_tuple()) || k.is_dict() || k.is_undefined())
                        fail(std::string("unhashable type: '") + py_type_name(k) + "'");
                    dict_set(d, std::move(k), eval(*e.items[i + 1], sc));
                }
                return value::dict(std::move(d));
            }
            case expr_kind::attr: return get_attr(eval(*e.items[0], sc), e.name);
            case expr_kind::item: {
                const value obj = eval(*e.items[0], sc);
                return get_item(obj, eval(*e.items[1], sc));
            }
            case expr_kind::slice: {
                const value obj = eval(*e.items[0], sc);
                const value start = e.items[1] ? eval(*e.items[1], sc) : value::none();
                const value stop = e.items[2] ? eval(*e.items[2], sc) : value::none();
                const value step = e.items[3] ? eval(*e.items[3], sc) : value::none();
                return get_slice(obj, start, stop, step);
            }
            case expr_kind::call: {
                const value fn = eval(*e.items[0], sc);
                return call(fn, eval_args(e, 1, sc));
            }
            case expr_kind::filter: return apply_filter(e, eval(*e.items[0], sc), sc);
            case expr_kind::test: {
                if (!e.test) fail("no test named '" + e.name + "'");
                const value v = eval(*e.items[0], sc);
                const call_args a = eval_args(e, 1, sc);
                return value::boolean(e.test->fn(*this, v, a) != e.negated);
            }
            case expr_kind::unary: return unary_op(e.oper, eval(*e.items[0], sc));
            case expr_kind::binary: {
                value left = eval(*e.items[0], sc);
                if (e.oper == op::and_) return truthy(left) ? eval(*e.items[1], sc) : left;
                if (e.oper == op::or_) return truthy(left) ? left : eval(*e.items[1], sc);
                return binary_op(*this, e.oper, left, eval(*e.items[1], sc));
            }
            case expr_kind::cond:
                if (truthy(eval(*e.items[1], sc))) return eval(*e.items[0], sc);
                if (e.items[2]) return eval(*e.items[2], sc);
                return value::undefined("the inline if-expression evaluated to false and has no else section");
        }
    } catch (template_error& err) {
        if (err.pos == no_pos) err.pos = e.pos;
        throw;
    }
    return value();
}

}  // namespace kvs::jinja
