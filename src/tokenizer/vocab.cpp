#include "tokenizer/vocab.h"

#include <algorithm>
#include <cstring>

#include "gguf/gguf.h"
#include "tokenizer/unicode.h"

namespace kvs {

namespace {

// Texts llama.cpp users rely on to mark the end of a turn when the GGUF names no EOT token.
// Order is priority for picking eot(); all of them count as end of generation.
constexpr std::string_view eog_markers[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|eom_id|>", "<EOT>", "_<EOT>",
    "<|end_of_text|>", "<\xEF\xBD\x9C" "end\xE2\x96\x81" "of\xE2\x96\x81" "sentence\xEF\xBD\x9C>",
    "<|endoftext|>",
};

bool is_special_type(token_type t) {
    return t == token_type::control || t == token_type::unknown || t == token_type::user_defined;
}

// Parses "<0xXX>" into a byte value, or -1.
int parse_byte_token(std::string_view t) {
    if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; ++i) {
        const char c = t[size_t(i)];
        int d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

// SPM: U+2581 stands for a space.
std::string spm_unescape(std::string_view t) {
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
        if (t.substr(i, 3) == utf8::spm_space) {
            out += ' ';
            i += 3;
        } else {
            out += t[i++];
        }
    }
    return out;
}

// Byte-level BPE: each code point of the token text is the image of one byte. Code points that
// are not (never in real vocabularies) are kept as their UTF-8 text.
std::string bpe_unmap(std::string_view t) {
    const auto& m = byte_unicode_map::get();
    std::string out;
    out.reserve(t.size());
    for (size_t i = 0; i < t.size();) {
        const size_t n = utf8::char_len(t, i);
        uint32_t cp = 0;
        if (n == 1) cp = uint8_t(t[i]);
        else if (n == 2) cp = ((uint8_t(t[i]) & 0x1Fu) << 6) | (uint8_t(t[i + 1]) & 0x3Fu);
        else cp = 0x110000;  // 3/4-byte characters are never byte images
        const int b = (n == 1 && cp >= 0x80) ? -1 : m.cp_to_byte(cp);
        if (b >= 0) out += char(b);
        else out.append(t.substr(i, n));
        i += n;
    }
    return out;
}

status load_special_id(const gguf_file& f, const char* key, int32_t n_vocab, int32_t dflt,
                       int32_t& out) {
    auto v = f.get_int_opt(key);
    if (!v) return v.error();
    if (!v.value()) {
        out = dflt < n_vocab ? dflt : -1;
        return status::ok();
    }
    const int64_t id = *v.value();
    if (id == -1 || id == 0xFFFFFFFFLL) {  // "no such token" as writers store it
        out = -1;
        return status::ok();
    }
    if (id < 0 || id >= n_vocab)
        return status::error(strfmt("%s = %lld is out of range (the vocabulary has %d tokens)",
                                    key, (long long)id, n_vocab));
    out = int32_t(id);
    return status::ok();
}

status load_bool(const gguf_file& f, const char* key, bool dflt, bool& out) {
    auto v = f.get_bool_opt(key);
    if (!v) return v.error();
    out = v.value().value_or(dflt);
    return status::ok();
}

status load_arrays(const gguf_file& f, vocab& v) {
    auto tokens = f.get_string_array("tokenizer.ggml.tokens");
    if (!tokens) return tokens.error();
    const auto& toks = *tokens.value();
    if (toks.empty()) return status::error("tokenizer.ggml.tokens is empty");
    if (toks.size() > size_t(INT32_MAX))
        return status::error(strfmt("tokenizer.ggml.tokens has %zu entries (limit %d)", toks.size(),
                                    INT32_MAX));
    const size_t n = toks.size();
    v.text.assign(toks.begin(), toks.end());

    if (f.find("tokenizer.ggml.scores")) {
        auto scores = f.get_f32_array("tokenizer.ggml.scores");
        if (!scores) return scores.error();
        if (scores->size() != n)
            return status::error(strfmt("tokenizer.ggml.scores has %zu entries but tokenizer.ggml.tokens has %zu",
                                        scores->size(), n));
        v.score = std::move(scores.value());
    } else {
        v.score.assign(n, 0.0f);
    }

    v.type.assign(n, token_type::normal);
    if (f.find("tokenizer.ggml.token_type")) {
        auto types = f.get_int_array("tokenizer.ggml.token_type");
        if (!types) return types.error();
        if (types->size() != n)
            return status::error(strfmt("tokenizer.ggml.token_type has %zu entries but tokenizer.ggml.tokens has %zu",
                                        types->size(), n));
        for (size_t i = 0; i < n; ++i) {
            const int64_t t = types.value()[i];
            if (t < 0 || t > 6)
                return status::error(strfmt("tokenizer.ggml.token_type[%zu] = %lld is not a token type (0..6)",
                                            i, (long long)t));
            v.type[i] = token_type(t);
        }
    }
    return status::ok();
}

status build_pieces(vocab& v) {
    const size_t n = v.text.size();
    v.piece.assign(n, std::string());
    v.text_to_id.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        v.text_to_id.emplace(std::string_view(v.text[i]), int32_t(i));
        const std::string& t = v.text[i];
        switch (v.type[i]) {
            case token_type::normal:
            case token_type::undefined:
                v.piece[i] = v.kind == tokenizer_kind::spm ? spm_unescape(t) : bpe_unmap(t);
                break;
            case token_type::user_defined:
                v.piece[i] = t;
                break;
            case token_type::byte: {
                const int b = parse_byte_token(t);
                if (b >= 0) {
                    v.piece[i] = std::string(1, char(b));
                } else if (v.kind == tokenizer_kind::bpe) {
                    v.piece[i] = bpe_unmap(t);
                } else {
                    return status::error(strfmt("token %zu '%s': byte tokens must be written <0xXX>",
                                                i, t.c_str()));
                }
                break;
            }
            default:
                break;  // control, unknown, unused: no text of their own
        }
    }
    return status::ok();
}

void find_specials(vocab& v) {
    const int32_t n = v.n_vocab();
    for (int32_t i = 0; i < n; ++i)
        if (is_special_type(v.type[size_t(i)]) && !v.text[size_t(i)].empty()) v.special_ids.push_back(i);
    std::stable_sort(v.special_ids.begin(), v.special_ids.end(), [&](int32_t a, int32_t b) {
        return v.text[size_t(a)].size() > v.text[size_t(b)].size();
    });

    if (v.eot < 0) {
        for (std::string_view m : eog_markers) {
            const int32_t id = v.find(m);
            if (id >= 0 && is_special_type(v.type[size_t(id)])) {
                v.eot = id;
                break;
            }
        }
    }
    for (int32_t id : {v.eos, v.eot, v.eom})
        if (id >= 0) v.eog_ids.push_back(id);
    for (std::string_view m : eog_markers) {
        const int32_t id = v.find(m);
        if (id >= 0 && is_special_type(v.type[size_t(id)])) v.eog_ids.push_back(id);
    }
    std::sort(v.eog_ids.begin(), v.eog_ids.end());
    v.eog_ids.erase(std::unique(v.eog_ids.begin(), v.eog_ids.end()), v.eog_ids.end());
}

status load_all(const gguf_file& f, vocab& v) {
    auto model = f.get_string("tokenizer.ggml.model");
    if (!model) return model.error();
    if (model.value() == "llama") v.kind = tokenizer_kind::spm;
    else if (model.value() == "gpt2") v.kind = tokenizer_kind::bpe;
    else
        return status::error(strfmt("tokenizer.ggml.model '%s' is not supported (supported: 'llama' "
                                    "SentencePiece, 'gpt2' byte-level BPE)",
                                    model.value().c_str()));
    const bool spm = v.kind == tokenizer_kind::spm;
    auto pre = f.get_string_opt("tokenizer.ggml.pre");
    if (!pre) return pre.error();
    v.pre = spm ? std::string() : pre.value().value_or("default");

    KVS_TRY(load_arrays(f, v));
    const int32_t n = v.n_vocab();
    KVS_TRY(load_special_id(f, "tokenizer.ggml.bos_token_id", n, spm ? 1 : -1, v.bos));
    KVS_TRY(load_special_id(f, "tokenizer.ggml.eos_token_id", n, spm ? 2 : -1, v.eos));
    KVS_TRY(load_special_id(f, "tokenizer.ggml.eot_token_id", n, -1, v.eot));
    KVS_TRY(load_special_id(f, "tokenizer.ggml.eom_token_id", n, -1, v.eom));
    KVS_TRY(load_special_id(f, "tokenizer.ggml.unknown_token_id", n, spm ? 0 : -1, v.unk));
    KVS_TRY(load_special_id(f, "tokenizer.ggml.padding_token_id", n, -1, v.pad));
    KVS_TRY(load_bool(f, "tokenizer.ggml.add_bos_token", spm, v.add_bos));
    KVS_TRY(load_bool(f, "tokenizer.ggml.add_eos_token", false, v.add_eos));
    KVS_TRY(load_bool(f, "tokenizer.ggml.add_space_prefix", spm, v.add_space_prefix));
    KVS_TRY(build_pieces(v));
    find_specials(v);
    return status::ok();
}

}  // namespace

result<std::unique_ptr<vocab>> vocab_load(const gguf_file& file) {
    auto v = std::make_unique<vocab>();
    status s = load_all(file, *v);
    if (!s) return s.with_context("tokenizer");
    return v;
}

}  // namespace kvs
