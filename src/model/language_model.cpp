// Loading a GGUF file as the family its general.architecture names (language_model.h).
#include "model/language_model.h"

#include "model/deepseek2.h"
#include "model/llama.h"

namespace kvs {

result<std::unique_ptr<language_model>> language_model::load(const std::string& path, const load_options& opts) {
    auto f = gguf_file::open(path);
    if (!f) return f.error();
    auto arch = f.value()->get_string_opt("general.architecture");
    if (!arch) return arch.error().with_context(path);
    if (arch.value() && *arch.value() == "deepseek2") {
        auto m = deepseek2_model::from_gguf(std::move(f.value()), opts);
        if (!m) return m.error().with_context(path);
        return std::unique_ptr<language_model>(std::move(m.value()));
    }
    // Every other architecture goes to the Llama family, whose loader names what it does not
    // support.
    auto m = llama_model::from_gguf(std::move(f.value()), opts);
    if (!m) return m.error().with_context(path);
    return std::unique_ptr<language_model>(std::move(m.value()));
}

}  // namespace kvs
