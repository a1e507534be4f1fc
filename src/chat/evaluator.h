// Tree-walking evaluator: renders a parsed template against a context of values.
//
// One evaluator per render() call; it owns all mutable render state (scopes, budgets), so a
// parsed template (const AST) can be rendered from many threads at once. Budgets turn runaway
// templates into errors: a step budget (statements + expressions evaluated), a recursion
// budget (nesting of evaluation, macro calls), and an output budget (bytes of any one string).
#pragma once

#include <cstdint>
#include <ctime>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat/ast.h"
#include "chat/value.h"

namespace kvs::jinja {

struct render_limits {
    size_t max_output_bytes = 16u << 20;  // any one rendered or computed string
    int max_call_depth = 64;              // nested macro calls
    uint64_t max_steps = 20'000'000;      // statements + expressions evaluated
    std::tm now{};                        // what strftime_now() formats
};

// Variables of one frame. Lookups walk `parent` links: loop iteration -> ... -> template -> none.
// Globals (the render context) and builtins are consulted after the chain.
struct scope {
    std::shared_ptr<scope> parent;
    std::vector<std::pair<std::string, value>> vars;  // few names per frame: linear search

    const value* find(const std::string& name) const;
    void set(const std::string& name, value v);
};
using scope_ptr = std::shared_ptr<scope>;

class evaluator {
public:
    evaluator(value globals, const render_limits& limits) : globals_(std::move(globals)), limits_(limits) {}
    ~evaluator();  // breaks reference cycles (macro <-> its scope, namespace <-> itself)
    evaluator(const evaluator&) = delete;
    evaluator& operator=(const evaluator&) = delete;

    std::string render(const body& root);

    value eval(const expr& e, const scope_ptr& sc);
    // Calls fn (a callable value) — used for calls and by filters such as map.
    value call(const value& fn, const call_args& args);
    // Calls a macro definition with `closure` as the enclosing scope.
    value call_macro(const stmt& def, const scope_ptr& closure, const call_args& args, const value* caller);

    // Budget checks, usable from filters and methods.
    void check_size(size_t n_bytes) const;
    void tick(uint64_t n = 1);
    const render_limits& limits() const { return limits_; }
    // Objects and scopes that may take part in reference cycles; cleared when the render ends.
    void track(std::shared_ptr<object> obj) { objects_.push_back(std::move(obj)); }

private:
    enum class flow { normal, break_, continue_ };
    flow exec_body(const body& b, const scope_ptr& sc, std::string& out);
    flow exec(const stmt& s, const scope_ptr& sc, std::string& out);
    flow exec_for(const stmt& s, const scope_ptr& sc, std::string& out);
    void exec_set(const stmt& s, const scope_ptr& sc);
    value lookup(const std::string& name, const scope_ptr& sc) const;
    value apply_filter(const expr& f, const value& input, const scope_ptr& sc);
    call_args eval_args(const expr& e, size_t first, const scope_ptr& sc);
    void append(std::string& out, std::string_view text) const;

    struct depth_guard {
        evaluator& ev;
        explicit depth_guard(evaluator& e);
        ~depth_guard() { --ev.depth_; }
    };

    std::vector<std::shared_ptr<object>> objects_;
    std::vector<scope_ptr> closure_scopes_;
    value globals_;
    render_limits limits_;
    uint64_t steps_ = 0;
    int depth_ = 0;       // nesting of eval/exec frames
    int call_depth_ = 0;  // nesting of macro calls
};

// Binds `v` to targets (one name, or tuple unpacking).
void bind_targets(scope& sc, const std::vector<std::string>& targets, const value& v);

}  // namespace kvs::jinja
