#include "chat/ast.h"

#include "chat/filters.h"

namespace kvs::jinja {

expr_ptr clone_expr(const expr& e) {
    auto c = std::make_unique<expr>();
    c->kind = e.kind;
    c->oper = e.oper;
    c->negated = e.negated;
    c->pos = e.pos;
    c->depth = e.depth;
    c->name = e.name;
    c->lit = e.lit;
    c->filter = e.filter;
    c->test = e.test;
    for (const auto& i : e.items) c->items.push_back(i ? clone_expr(*i) : nullptr);
    for (const auto& [k, v] : e.kwargs) c->kwargs.emplace_back(k, clone_expr(*v));
    return c;
}

namespace {

void check_expr(const expr& e, bool soft) {
    if (e.kind == expr_kind::cond) soft = true;
    if (!soft && e.kind == expr_kind::filter && !e.filter) {
        if (is_unsupported_jinja_filter(e.name)) fail("filter '" + e.name + "' is not supported", e.pos);
        fail("unknown filter '" + e.name + "'", e.pos);
    }
    if (!soft && e.kind == expr_kind::test && !e.test) fail("unknown test '" + e.name + "'", e.pos);
    for (const auto& c : e.items)
        if (c) check_expr(*c, soft);
    for (const auto& [k, v] : e.kwargs) check_expr(*v, soft);
}

void check_body(const body& b, bool soft) {
    for (const auto& s : b) {
        if (s->value) check_expr(*s->value, soft);
        if (s->cond) check_expr(*s->cond, false);
        for (const auto& br : s->branches) {
            if (br.cond) check_expr(*br.cond, true);
            check_body(br.then, true);
        }
        for (const auto& p : s->params)
            if (p.default_value) check_expr(*p.default_value, false);
        for (const auto& f : s->filters) check_expr(*f, false);
        for (const auto& v : s->values) check_expr(*v, soft);
        // {% generation %} (a block without a name) is transparent; other bodies start hard.
        const bool inner_soft = s->kind == stmt_kind::block && s->targets.empty() ? soft : false;
        check_body(s->body_, inner_soft);
        check_body(s->else_body, false);
    }
}

}  // namespace

void check_names(const body& root) { check_body(root, false); }

}  // namespace kvs::jinja
