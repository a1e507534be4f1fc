#include "chat/chat_template.h"

#include "chat/evaluator.h"
#include "chat/lexer.h"
#include "chat/parser.h"

namespace kvs {

namespace jinja {

// The parsed template: immutable after parse(), shared by every render.
struct program {
    std::string source;  // normalized
    body root;
};

}  // namespace jinja

namespace {

std::string position(const std::string& src, size_t pos) {
    if (pos == jinja::no_pos || pos > src.size()) return "";
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; ++i) {
        if (src[i] == '\n') {
            ++line;
            col = 1;
        } else if ((static_cast<unsigned char>(src[i]) & 0xC0) != 0x80) {
            ++col;
        }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col) + ": ";
}

status to_status(const jinja::template_error& e, const std::string& src, const char* stage) {
    if (e.raised) return status::error(e.message);
    return status::error(std::string("chat template ") + stage + " error: " + position(src, e.pos) + e.message);
}

std::tm local_now() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    return tm;
}

template <class Json>
result<std::string> render_json(const std::shared_ptr<const jinja::program>& prog, const Json& context,
                                const chat_render_options& opt) {
    if (!prog) return status::error("chat template: render() on a template that was never parsed");
    if (!context.is_object() && !context.is_null())
        return status::error("chat template: the render context must be a JSON object");
    try {
        jinja::render_limits limits;
        limits.max_output_bytes = opt.max_output_bytes;
        limits.max_call_depth = opt.max_call_depth;
        limits.max_steps = opt.max_steps;
        limits.now = opt.now ? *opt.now : local_now();
        jinja::value globals = context.is_null() ? jinja::value::dict({}) : jinja::value_from_json(context);
        jinja::evaluator ev(std::move(globals), limits);
        return ev.render(prog->root);
    } catch (const jinja::template_error& e) {
        return to_status(e, prog->source, "render");
    } catch (const std::bad_alloc&) {
        return status::error("chat template render error: out of memory");
    }
}

template <class Json>
result<std::string> apply_impl(const chat_template& tmpl, const Json& messages, bool add_generation_prompt,
                               const std::string& bos, const std::string& eos, const Json& tools, const Json& extra,
                               const chat_render_options& opt) {
    Json ctx = Json::object();
    ctx["messages"] = messages;
    ctx["tools"] = tools;
    ctx["documents"] = nullptr;
    ctx["add_generation_prompt"] = add_generation_prompt;
    ctx["bos_token"] = bos;
    ctx["eos_token"] = eos;
    if (extra.is_object()) {
        for (auto it = extra.begin(); it != extra.end(); ++it) ctx[it.key()] = it.value();
    } else if (!extra.is_null()) {
        return status::error("apply_chat_template: `extra` must be a JSON object");
    }
    return tmpl.render(ctx, opt);
}

}  // namespace

result<chat_template> chat_template::parse(std::string_view source) {
    auto prog = std::make_shared<jinja::program>();
    prog->source = jinja::normalize_source(source);
    try {
        const std::vector<jinja::token> tokens = jinja::lex(prog->source);
        prog->root = jinja::parse_tokens(tokens);
    } catch (const jinja::template_error& e) {
        return to_status(e, prog->source, "syntax");
    } catch (const std::bad_alloc&) {
        return status::error("chat template syntax error: out of memory");
    }
    chat_template t;
    t.program_ = std::move(prog);
    return t;
}

result<std::string> chat_template::render(const nlohmann::json& context, const chat_render_options& opt) const {
    return render_json(program_, context, opt);
}

result<std::string> chat_template::render(const nlohmann::ordered_json& context,
                                          const chat_render_options& opt) const {
    return render_json(program_, context, opt);
}

const std::string& chat_template::source() const {
    static const std::string empty;
    return program_ ? program_->source : empty;
}

result<std::string> apply_chat_template(const chat_template& tmpl, const nlohmann::json& messages,
                                        bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                        const nlohmann::json& tools, const nlohmann::json& extra,
                                        const chat_render_options& opt) {
    return apply_impl(tmpl, messages, add_generation_prompt, bos, eos, tools, extra, opt);
}

result<std::string> apply_chat_template(const chat_template& tmpl, const nlohmann::ordered_json& messages,
                                        bool add_generation_prompt, const std::string& bos, const std::string& eos,
                                        const nlohmann::ordered_json& tools, const nlohmann::ordered_json& extra,
                                        const chat_render_options& opt) {
    return apply_impl(tmpl, messages, add_generation_prompt, bos, eos, tools, extra, opt);
}

}  // namespace kvs
