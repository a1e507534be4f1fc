#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "gguf/gguf.h"
#include "tokenizer/special_split.h"
#include "tokenizer/token_model.h"
#include "tokenizer/vocab.h"

namespace kvs {

tokenizer::tokenizer() = default;
tokenizer::~tokenizer() = default;

result<std::unique_ptr<tokenizer>> tokenizer::from_gguf(const gguf_file& file) {
    auto v = vocab_load(file);
    if (!v) return v.error();
    std::unique_ptr<tokenizer> tok(new tokenizer());
    tok->vocab_ = std::move(v.value());
    if (tok->vocab_->kind == tokenizer_kind::spm) {
        tok->model_ = spm_model_create(*tok->vocab_);
    } else {
        auto m = bpe_model_create(*tok->vocab_, file);
        if (!m) return m.error().with_context("tokenizer");
        tok->model_ = std::move(m.value());
    }
    return tok;
}

std::vector<int32_t> tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 2);
    if (add_bos && vocab_->bos >= 0) out.push_back(vocab_->bos);
    bool after_special = true;
    for (const text_fragment& f : split_special(text, *vocab_, parse_special)) {
        if (f.token >= 0) {
            out.push_back(f.token);
            after_special = true;
        } else {
            model_->encode_fragment(text.substr(f.offset, f.length), after_special, out);
            after_special = false;
        }
    }
    return out;
}

void tokenizer::append_piece(int32_t id, bool render_special, bool& at_start, std::string& out) const {
    if (id < 0 || id >= vocab_->n_vocab()) return;
    const token_type t = vocab_->type[size_t(id)];
    const std::string* piece = &vocab_->piece[size_t(id)];
    if (t == token_type::control || t == token_type::unknown) {
        if (!render_special) return;  // invisible: the next piece is still "first"
        piece = &vocab_->text[size_t(id)];
    }
    if (piece->empty()) return;
    size_t skip = 0;
    if (at_start && vocab_->add_space_prefix && vocab_->kind == tokenizer_kind::spm && (*piece)[0] == ' ')
        skip = 1;
    at_start = false;
    out.append(*piece, skip, std::string::npos);
}

std::string tokenizer::token_to_piece(int32_t id, bool render_special) const {
    if (id < 0 || id >= vocab_->n_vocab()) return {};
    const token_type t = vocab_->type[size_t(id)];
    if (t == token_type::control || t == token_type::unknown)
        return render_special ? vocab_->text[size_t(id)] : std::string();
    return vocab_->piece[size_t(id)];
}

std::string tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
    std::string out;
    bool at_start = true;
    for (int32_t id : ids) append_piece(id, render_special, at_start, out);
    return out;
}

int32_t tokenizer::bos() const { return vocab_->bos; }
int32_t tokenizer::eos() const { return vocab_->eos; }
int32_t tokenizer::eot() const { return vocab_->eot; }
int32_t tokenizer::unk() const { return vocab_->unk; }
int32_t tokenizer::pad() const { return vocab_->pad; }
bool tokenizer::is_eog(int32_t id) const {
    return std::binary_search(vocab_->eog_ids.begin(), vocab_->eog_ids.end(), id);
}
bool tokenizer::add_bos() const { return vocab_->add_bos; }
bool tokenizer::add_eos() const { return vocab_->add_eos; }
bool tokenizer::add_space_prefix() const { return vocab_->add_space_prefix; }
int32_t tokenizer::n_vocab() const { return vocab_->n_vocab(); }
tokenizer_kind tokenizer::kind() const { return vocab_->kind; }
const std::string& tokenizer::pre() const { return vocab_->pre; }
token_type tokenizer::type_of(int32_t id) const {
    return id >= 0 && id < vocab_->n_vocab() ? vocab_->type[size_t(id)] : token_type::undefined;
}
const std::string& tokenizer::text_of(int32_t id) const {
    static const std::string empty;
    return id >= 0 && id < vocab_->n_vocab() ? vocab_->text[size_t(id)] : empty;
}
int32_t tokenizer::find_token(std::string_view text) const { return vocab_->find(text); }

}  // namespace kvs
