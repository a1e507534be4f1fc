#include "server/chat_prompt.h"

#include "tokenizer/tokenizer.h"

namespace kvs {

using json = nlohmann::ordered_json;

std::string render_default_chat(const json& messages, bool add_generation_prompt) {
    std::string out;
    for (const json& m : messages) {
        out += "<|im_start|>";
        out += m.value("role", "");
        out += "\n";
        const auto c = m.find("content");
        if (c != m.end() && c->is_string()) out += c->get_ref<const std::string&>();
        out += "<|im_end|>\n";
    }
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
}

std::unique_ptr<chat_prompt> chat_prompt::create(const std::string& source, const tokenizer& tok) {
    std::unique_ptr<chat_prompt> p(new chat_prompt(tok));
    if (source.empty()) return p;
    auto t = chat_template::parse(source);
    if (t) p->tmpl_ = std::move(t.value());
    else p->parse_error_ = t.message();
    return p;
}

chat_prompt::~chat_prompt() = default;

result<std::string> chat_prompt::render(const json& messages, const json& tools, const json& extra) const {
    if (!parse_error_.empty()) return status::error("the model's chat template does not parse: " + parse_error_, 400);
    if (!tmpl_) return render_default_chat(messages, true);
    const std::string bos = tok_.bos() >= 0 ? tok_.text_of(tok_.bos()) : "";
    const std::string eos = tok_.eos() >= 0 ? tok_.text_of(tok_.eos()) : "";
    auto text = apply_chat_template(*tmpl_, messages, true, bos, eos, tools, extra.is_object() ? extra : json::object());
    if (!text) return status::error("chat template: " + text.message(), 400);
    return text;
}

result<std::vector<int32_t>> chat_prompt::tokenize(const json& messages, const json& tools, const json& extra) const {
    auto text = render(messages, tools, extra);
    if (!text) return text.error();
    const std::string& s = text.value();
    bool add_bos = tok_.add_bos() && tok_.bos() >= 0;
    if (add_bos) {
        const std::string& bos_text = tok_.text_of(tok_.bos());
        if (!bos_text.empty() && s.compare(0, bos_text.size(), bos_text) == 0) add_bos = false;
    }
    return tok_.encode(s, add_bos, true);
}

}  // namespace kvs
