#include "chat/parser.h"

#include <initializer_list>

#include "chat/error.h"
#include "chat/filters.h"

namespace kvs::jinja {

namespace {

constexpr int max_nesting = 200;     // recursion of the parser itself
constexpr int max_expr_depth = 256;  // height of an expression tree (bounds evaluator recursion)

class parser {
public:
    explicit parser(const std::vector<token>& t) : t_(t) {}

    body parse_root() {
        std::string end;
        body b = parse_body({}, &end, 0, "");
        check_names(b);
        return b;
    }

private:
    // ---- token helpers -------------------------------------------------------------------
    const token& cur() const { return t_[i_]; }
    const token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
    void advance() {
        if (i_ + 1 < t_.size()) ++i_;
    }
    bool at_op(const char* o) const { return cur().kind == tok::op && cur().text == o; }
    bool at_name(const char* n) const { return cur().kind == tok::name && cur().text == n; }
    static std::string describe(const token& t) {
        switch (t.kind) {
            case tok::eof: return "end of template";
            case tok::block_end: return "end of block tag";
            case tok::var_end: return "end of expression '}}'";
            case tok::text: return "template text";
            case tok::string: return "string literal";
            case tok::integer:
            case tok::floating: return "number " + t.text;
            default: return "'" + t.text + "'";
        }
    }
    [[noreturn]] void unexpected(const char* expected) const {
        fail("expected " + std::string(expected) + ", got " + describe(cur()), cur().pos);
    }
    void expect_op(const char* o) {
        if (!at_op(o)) unexpected((std::string("'") + o + "'").c_str());
        advance();
    }
    std::string expect_name() {
        if (cur().kind != tok::name) unexpected("a name");
        std::string n = cur().text;
        advance();
        return n;
    }
    void expect_block_end() {
        if (cur().kind != tok::block_end) unexpected("end of block tag '%}'");
        advance();
    }

    struct nest_guard {
        parser& p;
        nest_guard(parser& pr, size_t pos) : p(pr) {
            if (++p.nesting_ > max_nesting) fail("template is nested too deeply", pos);
        }
        ~nest_guard() { --p.nesting_; }
    };

    expr_ptr node(expr_kind k, size_t pos) {
        auto e = std::make_unique<expr>();
        e->kind = k;
        e->pos = pos;
        return e;
    }
    // Adds a child and keeps `depth` = tree height, refusing trees the evaluator could not walk.
    static void add(expr& parent, expr_ptr child) {
        if (child) {
            parent.depth = std::max(parent.depth, child->depth + 1);
            if (parent.depth > max_expr_depth) fail("expression is nested too deeply", parent.pos);
        }
        parent.items.push_back(std::move(child));
    }
    expr_ptr binary(op o, expr_ptr a, expr_ptr b, size_t pos) {
        auto e = node(expr_kind::binary, pos);
        e->oper = o;
        add(*e, std::move(a));
        add(*e, std::move(b));
        return e;
    }

    // ---- statements -----------------------------------------------------------------------
    // Parses until a block tag named in `ends` (consumed up to its name) or the end of input.
    body parse_body(std::initializer_list<const char*> ends, std::string* which, size_t open_pos,
                    const char* construct) {
        body out;
        while (true) {
            const token& t = cur();
            if (t.kind == tok::eof) {
                if (ends.size() == 0) return out;
                std::string expected;
                for (const char* e : ends) expected += (expected.empty() ? "'" : " or '") + std::string(e) + "'";
                fail(std::string("unterminated '") + construct + "' block: expected " + expected +
                         " before the end of the template",
                     open_pos);
            }
            if (t.kind == tok::text) {
                auto s = std::make_unique<stmt>();
                s->kind = stmt_kind::text;
                s->pos = t.pos;
                s->text = t.text;
                out.push_back(std::move(s));
                advance();
            } else if (t.kind == tok::var_begin) {
                auto s = std::make_unique<stmt>();
                s->kind = stmt_kind::output;
                s->pos = t.pos;
                advance();
                s->value = parse_tuple(true, false, {});
                if (cur().kind != tok::var_end) unexpected("end of expression '}}'");
                advance();
                out.push_back(std::move(s));
            } else if (t.kind == tok::block_begin) {
                const token& name = peek();
                if (name.kind == tok::name) {
                    for (const char* e : ends) {
                        if (name.text == e) {
                            advance();
                            advance();
                            *which = e;
                            return out;
                        }
                    }
                }
                advance();
                out.push_back(parse_statement(t.pos));
            } else {
                unexpected("template text or a tag");
            }
        }
    }

    stmt_ptr make_stmt(stmt_kind k, size_t pos) {
        auto s = std::make_unique<stmt>();
        s->kind = k;
        s->pos = pos;
        return s;
    }

    stmt_ptr parse_statement(size_t pos) {
        nest_guard g(*this, pos);
        if (cur().kind != tok::name) unexpected("a tag name");
        const std::string tag = cur().text;
        const size_t tag_pos = cur().pos;
        advance();
        if (tag == "if") return parse_if(pos);
        if (tag == "for") return parse_for(pos);
        if (tag == "set") return parse_set(pos);
        if (tag == "macro") return parse_macro(pos);
        if (tag == "call") return parse_call_block(pos);
        if (tag == "filter") return parse_filter_block(pos);
        if (tag == "with") return parse_with(pos);
        if (tag == "break" || tag == "continue") {
            if (loop_depth_ == 0) fail("'" + tag + "' outside of a for loop", tag_pos);
            expect_block_end();
            return make_stmt(tag == "break" ? stmt_kind::break_ : stmt_kind::continue_, pos);
        }
        if (tag == "generation" || tag == "block") {  // transformers' {% generation %}; inline blocks
            auto s = make_stmt(stmt_kind::block, pos);
            if (tag == "block") s->targets.push_back(expect_name());
            expect_block_end();
            std::string end;
            s->body_ = parse_body({tag == "block" ? "endblock" : "endgeneration"}, &end, pos, tag.c_str());
            if (cur().kind == tok::name) advance();
            expect_block_end();
            return s;
        }
        if (tag == "include" || tag == "import" || tag == "from" || tag == "extends")
            fail("'" + tag + "' is not supported in chat templates (no template loader)", tag_pos);
        if (tag.rfind("end", 0) == 0 || tag == "elif" || tag == "else")
            fail("unexpected '" + tag + "' (no open block it could close)", tag_pos);
        fail("unknown tag '" + tag + "'", tag_pos);
    }

    stmt_ptr parse_if(size_t pos) {
        auto s = make_stmt(stmt_kind::if_, pos);
        expr_ptr cond = parse_tuple(false, false, {});
        while (true) {
            expect_block_end();
            std::string end;
            body b = parse_body({"elif", "else", "endif"}, &end, pos, "if");
            s->branches.push_back({std::move(cond), std::move(b)});
            if (end == "elif") {
                cond = parse_tuple(false, false, {});
            } else if (end == "else") {
                expect_block_end();
                body eb = parse_body({"endif"}, &end, pos, "if");
                s->branches.push_back({nullptr, std::move(eb)});
                expect_block_end();
                return s;
            } else {
                expect_block_end();
                return s;
            }
        }
    }

    // Assignment targets: `a`, `a, b`, `(a, b)`.
    std::vector<std::string> parse_targets() {
        std::vector<std::string> names;
        const bool paren = at_op("(");
        if (paren) advance();
        do {
            if (!names.empty()) advance();  // the comma
            if (paren && at_op(")")) break;
            names.push_back(expect_name());
        } while (at_op(","));
        if (paren) expect_op(")");
        return names;
    }

    stmt_ptr parse_for(size_t pos) {
        auto s = make_stmt(stmt_kind::for_, pos);
        s->targets = parse_targets();
        if (!at_name("in")) unexpected("'in'");
        advance();
        s->value = parse_tuple(false, false, {"recursive"});
        if (at_name("if")) {
            advance();
            s->cond = parse_expression(true);
        }
        if (at_name("recursive")) fail("recursive for loops are not supported", cur().pos);
        expect_block_end();
        ++loop_depth_;
        std::string end;
        s->body_ = parse_body({"else", "endfor"}, &end, pos, "for");
        --loop_depth_;
        if (end == "else") {
            expect_block_end();
            s->else_body = parse_body({"endfor"}, &end, pos, "for");
        }
        expect_block_end();
        return s;
    }

    stmt_ptr parse_set(size_t pos) {
        auto s = make_stmt(stmt_kind::set, pos);
        std::string first = expect_name();
        if (at_op(".")) {
            advance();
            s->targets.push_back(first);
            s->attr = expect_name();
        } else {
            s->targets.push_back(first);
            while (at_op(",")) {
                advance();
                s->targets.push_back(expect_name());
            }
        }
        if (at_op("=")) {
            advance();
            s->value = parse_tuple(true, false, {});
            expect_block_end();
            return s;
        }
        if (!s->attr.empty() || s->targets.size() != 1) unexpected("'='");
        s->kind = stmt_kind::set_block;
        while (at_op("|")) {
            advance();
            s->filters.push_back(parse_filter(nullptr));
        }
        expect_block_end();
        std::string end;
        s->body_ = parse_body({"endset"}, &end, pos, "set");
        expect_block_end();
        return s;
    }

    void parse_params(std::vector<macro_param>& params) {
        expect_op("(");
        while (!at_op(")")) {
            if (!params.empty()) expect_op(",");
            if (at_op(")")) break;
            macro_param p;
            p.name = expect_name();
            if (at_op("=")) {
                advance();
                p.default_value = parse_expression(true);
            }
            params.push_back(std::move(p));
        }
        advance();
    }

    stmt_ptr parse_macro(size_t pos) {
        auto s = make_stmt(stmt_kind::macro, pos);
        s->targets.push_back(expect_name());
        parse_params(s->params);
        expect_block_end();
        const int saved_loops = loop_depth_;
        loop_depth_ = 0;  // break/continue cannot cross a macro boundary
        std::string end;
        s->body_ = parse_body({"endmacro"}, &end, pos, "macro");
        loop_depth_ = saved_loops;
        if (cur().kind == tok::name) advance();  // {% endmacro name %}
        expect_block_end();
        return s;
    }

    stmt_ptr parse_call_block(size_t pos) {
        auto s = make_stmt(stmt_kind::call_block, pos);
        if (at_op("(")) parse_params(s->params);
        s->value = parse_expression(true);
        if (s->value->kind != expr_kind::call) fail("'call' tag expects a macro call", s->value->pos);
        expect_block_end();
        std::string end;
        s->body_ = parse_body({"endcall"}, &end, pos, "call");
        expect_block_end();
        return s;
    }

    stmt_ptr parse_filter_block(size_t pos) {
        auto s = make_stmt(stmt_kind::filter_block, pos);
        s->filters.push_back(parse_filter(nullptr));
        while (at_op("|")) {
            advance();
            s->filters.push_back(parse_filter(nullptr));
        }
        expect_block_end();
        std::string end;
        s->body_ = parse_body({"endfilter"}, &end, pos, "filter");
        expect_block_end();
        return s;
    }

    stmt_ptr parse_with(size_t pos) {
        auto s = make_stmt(stmt_kind::with, pos);
        while (cur().kind != tok::block_end) {
            if (!s->targets.empty()) expect_op(",");
            s->targets.push_back(expect_name());
            expect_op("=");
            s->values.push_back(parse_expression(true));
        }
        expect_block_end();
        std::string end;
        s->body_ = parse_body({"endwith"}, &end, pos, "with");
        expect_block_end();
        return s;
    }

    // ---- expressions ----------------------------------------------------------------------
    bool at_tuple_end(std::initializer_list<const char*> extra_end) const {
        if (cur().kind == tok::var_end || cur().kind == tok::block_end || at_op(")")) return true;
        for (const char* n : extra_end)
            if (at_name(n)) return true;
        return false;
    }

    // `a`, or `a, b, ...` as a tuple (Jinja2's parse_tuple).
    expr_ptr parse_tuple(bool with_condexpr, bool explicit_parens, std::initializer_list<const char*> extra_end) {
        const size_t pos = cur().pos;
        std::vector<expr_ptr> items;
        bool is_tuple = false;
        while (true) {
            if (!items.empty()) expect_op(",");
            if (at_tuple_end(extra_end)) break;
            items.push_back(with_condexpr ? parse_expression(true) : parse_or());
            if (at_op(",")) is_tuple = true;
            else break;
        }
        if (!is_tuple) {
            if (!items.empty()) return std::move(items[0]);
            if (!explicit_parens) unexpected("an expression");
        }
        auto t = node(expr_kind::tuple, pos);
        for (auto& e : items) add(*t, std::move(e));
        return t;
    }

    expr_ptr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

    expr_ptr parse_condexpr() {
        nest_guard g(*this, cur().pos);
        expr_ptr e = parse_or();
        while (at_name("if")) {
            const size_t pos = cur().pos;
            advance();
            expr_ptr cond = parse_or();
            expr_ptr other;
            if (at_name("else")) {
                advance();
                other = parse_condexpr();
            }
            auto c = node(expr_kind::cond, pos);
            add(*c, std::move(e));
            add(*c, std::move(cond));
            add(*c, std::move(other));
            e = std::move(c);
        }
        return e;
    }

    expr_ptr parse_or() {
        expr_ptr e = parse_and();
        while (at_name("or")) {
            const size_t pos = cur().pos;
            advance();
            e = binary(op::or_, std::move(e), parse_and(), pos);
        }
        return e;
    }

    expr_ptr parse_and() {
        expr_ptr e = parse_not();
        while (at_name("and")) {
            const size_t pos = cur().pos;
            advance();
            e = binary(op::and_, std::move(e), parse_not(), pos);
        }
        return e;
    }

    expr_ptr parse_not() {
        if (at_name("not")) {
            nest_guard g(*this, cur().pos);
            auto e = node(expr_kind::unary, cur().pos);
            e->oper = op::not_;
            advance();
            add(*e, parse_not());
            return e;
        }
        return parse_compare();
    }

    op compare_op() const {
        if (cur().kind == tok::op) {
            const std::string& o = cur().text;
            if (o == "==") return op::eq;
            if (o == "!=") return op::ne;
            if (o == "<") return op::lt;
            if (o == "<=") return op::le;
            if (o == ">") return op::gt;
            if (o == ">=") return op::ge;
        } else if (at_name("in")) {
            return op::in;
        } else if (at_name("not") && peek().kind == tok::name && peek().text == "in") {
            return op::not_in;
        }
        return op::none;
    }

    // Chained comparisons `a < b < c` become `a < b and b < c` (b is evaluated twice; it is pure).
    expr_ptr parse_compare() {
        expr_ptr e = parse_math1();
        expr_ptr chain;
        expr_ptr* last_right = nullptr;
        for (op o = compare_op(); o != op::none; o = compare_op()) {
            const size_t pos = cur().pos;
            advance();
            if (o == op::not_in) advance();
            expr_ptr right = parse_math1();
            expr_ptr left = last_right ? clone_expr(**last_right) : std::move(e);
            expr_ptr cmp = binary(o, std::move(left), std::move(right), pos);
            last_right = &cmp->items[1];
            if (!chain) {
                chain = std::move(cmp);
            } else {
                expr_ptr* keep = last_right;
                chain = binary(op::and_, std::move(chain), std::move(cmp), pos);
                last_right = keep;
            }
        }
        return chain ? std::move(chain) : std::move(e);
    }

    expr_ptr parse_math1() {
        expr_ptr e = parse_concat();
        while (at_op("+") || at_op("-")) {
            const op o = at_op("+") ? op::add : op::sub;
            const size_t pos = cur().pos;
            advance();
            e = binary(o, std::move(e), parse_concat(), pos);
        }
        return e;
    }

    expr_ptr parse_concat() {
        expr_ptr e = parse_math2();
        while (at_op("~")) {
            const size_t pos = cur().pos;
            advance();
            e = binary(op::concat, std::move(e), parse_math2(), pos);
        }
        return e;
    }

    expr_ptr parse_math2() {
        expr_ptr e = parse_pow();
        while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
            const op o = at_op("*") ? op::mul : at_op("/") ? op::div : at_op("//") ? op::floordiv : op::mod;
            const size_t pos = cur().pos;
            advance();
            e = binary(o, std::move(e), parse_pow(), pos);
        }
        return e;
    }

    expr_ptr parse_pow() {
        expr_ptr e = parse_unary(true);
        while (at_op("**")) {
            const size_t pos = cur().pos;
            advance();
            e = binary(op::pow, std::move(e), parse_unary(true), pos);
        }
        return e;
    }

    expr_ptr parse_unary(bool with_filter) {
        nest_guard g(*this, cur().pos);
        expr_ptr e;
        if (at_op("-") || at_op("+")) {
            e = node(expr_kind::unary, cur().pos);
            e->oper = at_op("-") ? op::neg : op::pos;
            advance();
            add(*e, parse_unary(false));
        } else {
            e = parse_primary();
        }
        e = parse_postfix(std::move(e));
        if (with_filter) e = parse_filter_expr(std::move(e));
        return e;
    }

    expr_ptr parse_primary() {
        const token& t = cur();
        const size_t pos = t.pos;
        if (t.kind == tok::name) {
            auto e = node(expr_kind::literal, pos);
            if (t.text == "true" || t.text == "True") e->lit = value::boolean(true);
            else if (t.text == "false" || t.text == "False") e->lit = value::boolean(false);
            else if (t.text == "none" || t.text == "None") e->lit = value::none();
            else {
                e->kind = expr_kind::name;
                e->name = t.text;
            }
            advance();
            return e;
        }
        if (t.kind == tok::string) {
            std::string s;
            while (cur().kind == tok::string) {  // adjacent literals concatenate
                s += cur().text;
                advance();
            }
            auto e = node(expr_kind::literal, pos);
            e->lit = value::string(std::move(s));
            return e;
        }
        if (t.kind == tok::integer || t.kind == tok::floating) {
            auto e = node(expr_kind::literal, pos);
            e->lit = t.kind == tok::integer ? value::integer(t.int_value) : value::floating(t.float_value);
            advance();
            return e;
        }
        if (at_op("(")) {
            advance();
            expr_ptr e = parse_tuple(true, true, {});
            expect_op(")");
            return e;
        }
        if (at_op("[")) {
            advance();
            auto e = node(expr_kind::list, pos);
            while (!at_op("]")) {
                if (!e->items.empty()) expect_op(",");
                if (at_op("]")) break;
                add(*e, parse_expression(true));
            }
            advance();
            return e;
        }
        if (at_op("{")) {
            advance();
            auto e = node(expr_kind::dict, pos);
            while (!at_op("}")) {
                if (!e->items.empty()) expect_op(",");
                if (at_op("}")) break;
                add(*e, parse_expression(true));
                expect_op(":");
                add(*e, parse_expression(true));
            }
            advance();
            return e;
        }
        unexpected("an expression");
    }

    expr_ptr parse_postfix(expr_ptr e) {
        while (true) {
            const size_t pos = cur().pos;
            if (at_op(".")) {
                advance();
                if (cur().kind == tok::integer) {
                    auto lit = node(expr_kind::literal, cur().pos);
                    lit->lit = value::integer(cur().int_value);
                    advance();
                    auto it = node(expr_kind::item, pos);
                    add(*it, std::move(e));
                    add(*it, std::move(lit));
                    e = std::move(it);
                } else {
                    auto a = node(expr_kind::attr, pos);
                    a->name = expect_name();
                    add(*a, std::move(e));
                    e = std::move(a);
                }
            } else if (at_op("[")) {
                advance();
                e = parse_subscript(std::move(e), pos);
            } else if (at_op("(")) {
                e = parse_call(std::move(e));
            } else {
                return e;
            }
        }
    }

    struct subscribed {
        expr_ptr start, stop, step;
        bool is_slice = false;
    };

    // One item between brackets: `expr` or a slice `a:b:c` (each part optional).
    subscribed parse_subscribed() {
        subscribed r;
        if (!at_op(":")) {
            r.start = parse_expression(true);
            if (!at_op(":")) return r;
        }
        r.is_slice = true;
        advance();  // ':'
        if (!at_op("]") && !at_op(",") && !at_op(":")) r.stop = parse_expression(true);
        if (at_op(":")) {
            advance();
            if (!at_op("]") && !at_op(",")) r.step = parse_expression(true);
        }
        return r;
    }

    // `target[...]`: an index, a slice, or (Jinja2 allows it) a tuple key such as x[] or x[a, b].
    expr_ptr parse_subscript(expr_ptr target, size_t pos) {
        std::vector<subscribed> keys;
        while (!at_op("]")) {
            if (!keys.empty()) expect_op(",");
            if (at_op("]")) break;
            keys.push_back(parse_subscribed());
        }
        advance();
        if (keys.size() == 1 && keys[0].is_slice) {
            auto sl = node(expr_kind::slice, pos);
            add(*sl, std::move(target));
            add(*sl, std::move(keys[0].start));
            add(*sl, std::move(keys[0].stop));
            add(*sl, std::move(keys[0].step));
            return sl;
        }
        auto it = node(expr_kind::item, pos);
        add(*it, std::move(target));
        if (keys.size() == 1) {
            add(*it, std::move(keys[0].start));
            return it;
        }
        auto key = node(expr_kind::tuple, pos);
        for (auto& k : keys) {
            if (k.is_slice) fail("slices inside a tuple subscript are not supported", pos);
            add(*key, std::move(k.start));
        }
        add(*it, std::move(key));
        return it;
    }

    // Parses `( args, kw=value )` into e's items (after any existing ones) and kwargs.
    void parse_args(expr& e) {
        expect_op("(");
        bool first = true;
        while (!at_op(")")) {
            if (!first) expect_op(",");
            first = false;
            if (at_op(")")) break;
            if (at_op("*") || at_op("**")) fail("*args / **kwargs in calls are not supported", cur().pos);
            if (cur().kind == tok::name && peek().kind == tok::op && peek().text == "=") {
                std::string key = cur().text;
                advance();
                advance();
                expr_ptr v = parse_expression(true);
                e.depth = std::max(e.depth, v->depth + 1);
                if (e.depth > max_expr_depth) fail("expression is nested too deeply", e.pos);
                e.kwargs.emplace_back(std::move(key), std::move(v));
            } else {
                if (!e.kwargs.empty()) fail("positional argument after keyword argument", cur().pos);
                add(e, parse_expression(true));
            }
        }
        advance();
    }

    expr_ptr parse_call(expr_ptr callee) {
        auto c = node(expr_kind::call, cur().pos);
        add(*c, std::move(callee));
        parse_args(*c);
        return c;
    }

    std::string parse_dotted_name() {
        std::string n = expect_name();
        while (at_op(".")) {
            advance();
            n += "." + expect_name();
        }
        return n;
    }

    // After '|': name [ (args) ]. `input` may be null (filter blocks, set blocks).
    expr_ptr parse_filter(expr_ptr input) {
        const size_t pos = cur().pos;
        auto f = node(expr_kind::filter, pos);
        f->name = parse_dotted_name();
        f->filter = find_filter(f->name);  // null: check_names() decides once the context is known
        add(*f, std::move(input));
        if (at_op("(")) parse_args(*f);
        return f;
    }

    expr_ptr parse_test(expr_ptr operand) {
        const size_t pos = cur().pos;
        auto t = node(expr_kind::test, pos);
        if (at_name("not")) {
            t->negated = true;
            advance();
        }
        t->name = parse_dotted_name();
        t->test = find_test(t->name);
        add(*t, std::move(operand));
        if (at_op("(")) {
            parse_args(*t);
        } else {
            const tok k = cur().kind;
            const bool arg_start = k == tok::name || k == tok::string || k == tok::integer || k == tok::floating ||
                                   at_op("(") || at_op("[") || at_op("{");
            if (arg_start && !at_name("else") && !at_name("or") && !at_name("and")) {
                if (at_name("is")) fail("you cannot chain multiple tests with 'is'", cur().pos);
                add(*t, parse_postfix(parse_primary()));
            }
        }
        return t;
    }

    expr_ptr parse_filter_expr(expr_ptr e) {
        while (true) {
            if (at_op("|")) {
                advance();
                e = parse_filter(std::move(e));
            } else if (at_name("is")) {
                advance();
                e = parse_test(std::move(e));
            } else if (at_op("(")) {
                e = parse_call(std::move(e));
            } else {
                return e;
            }
        }
    }

    const std::vector<token>& t_;
    size_t i_ = 0;
    int nesting_ = 0;
    int loop_depth_ = 0;
};

}  // namespace

body parse_tokens(const std::vector<token>& tokens) { return parser(tokens).parse_root(); }

}  // namespace kvs::jinja
