#include "gguf/llama2c.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>

#include "core/mapped_file.h"
#include "gguf/gguf_writer.h"

namespace kvs {

namespace {

// Product of positive factors, or 0 when it does not fit in 63 bits.
uint64_t checked_product(std::initializer_list<uint64_t> factors) {
    uint64_t p = 1;
    for (uint64_t f : factors)
        if (__builtin_mul_overflow(p, f, &p) || p > (uint64_t(1) << 62)) return 0;
    return p;
}

// Floats per section of the checkpoint, in file order.
struct section {
    const char* name;
    uint64_t n_floats;
};

std::vector<section> layout(const llama2c_config& c) {
    uint64_t L = uint64_t(c.n_layers), D = uint64_t(c.dim), H = uint64_t(c.hidden_dim), V = uint64_t(c.vocab_size);
    uint64_t KV = uint64_t(c.kv_dim()), S = uint64_t(c.seq_len), hs = uint64_t(c.head_size());
    std::vector<section> s = {
        {"token_embedding", checked_product({V, D})}, {"rms_att", checked_product({L, D})},
        {"wq", checked_product({L, D, D})},           {"wk", checked_product({L, KV, D})},
        {"wv", checked_product({L, KV, D})},          {"wo", checked_product({L, D, D})},
        {"rms_ffn", checked_product({L, D})},         {"w1", checked_product({L, H, D})},
        {"w2", checked_product({L, D, H})},           {"w3", checked_product({L, H, D})},
        {"rms_final", D},                             {"freq_cis_real", checked_product({S, hs / 2})},
        {"freq_cis_imag", checked_product({S, hs / 2})},
    };
    if (!c.shared_classifier) s.push_back({"wcls", checked_product({V, D})});
    return s;
}

// "<0xAB>": SentencePiece's byte-fallback pieces.
bool is_byte_token(const std::string& t) {
    auto hex = [](char ch) { return (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'F') || (ch >= 'a' && ch <= 'f'); };
    return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && hex(t[3]) && hex(t[4]) && t[5] == '>';
}

constexpr size_t header_bytes = 7 * sizeof(int32_t);

}  // namespace

uint64_t llama2c_config::expected_file_size() const {
    uint64_t n = 0;
    for (const section& s : layout(*this)) {
        if (s.n_floats == 0 || __builtin_add_overflow(n, s.n_floats, &n)) return 0;
    }
    return n > (uint64_t(1) << 61) ? 0 : header_bytes + 4 * n;
}

result<llama2c_config> llama2c_parse_config(const uint8_t* data, size_t size) {
    if (size < header_bytes)
        return status::error(strfmt("not a llama2.c checkpoint: %zu bytes, shorter than its 28-byte header", size));
    int32_t h[7];
    std::memcpy(h, data, sizeof(h));
    llama2c_config c;
    c.dim = h[0];
    c.hidden_dim = h[1];
    c.n_layers = h[2];
    c.n_heads = h[3];
    c.n_kv_heads = h[4];
    c.shared_classifier = h[5] > 0;
    c.vocab_size = h[5] == INT32_MIN ? 0 : (h[5] < 0 ? -h[5] : h[5]);
    c.seq_len = h[6];
    const char* names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    for (int k = 0; k < 7; ++k)
        if ((k == 5 ? c.vocab_size : h[k]) <= 0)
            return status::error(strfmt("llama2.c header: %s is %d (must be positive); not a llama2.c checkpoint?", names[k], h[k]));
    if (c.dim % c.n_heads != 0)
        return status::error(strfmt("llama2.c header: n_heads %d does not divide dim %d", c.n_heads, c.dim));
    if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
        return status::error(strfmt("llama2.c header: n_kv_heads %d does not divide n_heads %d", c.n_kv_heads, c.n_heads));
    if (c.head_size() % 2 != 0)
        return status::error(strfmt("llama2.c header: head size %d (dim %d / n_heads %d) is odd; RoPE needs pairs",
                                    c.head_size(), c.dim, c.n_heads));
    uint64_t want = c.expected_file_size();
    if (want == 0) return status::error("llama2.c header: the dimensions imply an impossibly large file");
    if (uint64_t(size) != want)
        return status::error(strfmt("llama2.c checkpoint is %zu bytes but its header (dim %d, hidden %d, %d layers, %d heads, "
                                    "%d kv heads, vocab %d%s, seq_len %d) implies %llu bytes (%s)",
                                    size, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size,
                                    c.shared_classifier ? "" : " unshared", c.seq_len, (unsigned long long)want,
                                    uint64_t(size) < want ? "truncated file?" : "trailing bytes or a wrong header?"));
    return c;
}

result<llama2c_vocab> llama2c_parse_tokenizer(const uint8_t* data, size_t size, int32_t n_vocab) {
    size_t pos = 0;
    auto need = [&](size_t n, int32_t id) -> status {
        if (size - pos < n)
            return status::error(strfmt("llama2.c tokenizer: unexpected end of file in token %d of %d at byte %zu", id, n_vocab, pos));
        return status::ok();
    };
    if (size < 4) return status::error("llama2.c tokenizer: shorter than its 4-byte header");
    int32_t max_len = 0;
    std::memcpy(&max_len, data, 4);
    pos = 4;
    if (max_len <= 0) return status::error(strfmt("llama2.c tokenizer: max_token_length is %d", max_len));
    if (n_vocab < 0) return status::error(strfmt("llama2.c tokenizer: vocabulary size %d is negative", n_vocab));
    // Every token takes at least 8 bytes (score, length), so the file bounds how many it can
    // hold: reserve no more than that, whatever n_vocab claims (a short file then fails below
    // with "unexpected end of file" instead of allocating for billions of tokens).
    const size_t n_reserve = std::min(size_t(n_vocab), (size - pos) / 8);
    llama2c_vocab v;
    v.tokens.reserve(n_reserve);
    v.scores.reserve(n_reserve);
    v.types.reserve(n_reserve);
    for (int32_t id = 0; id < n_vocab; ++id) {
        KVS_TRY(need(8, id));
        float score = 0;
        int32_t len = 0;
        std::memcpy(&score, data + pos, 4);
        std::memcpy(&len, data + pos + 4, 4);
        pos += 8;
        if (len < 0 || len > max_len)
            return status::error(strfmt("llama2.c tokenizer: token %d has length %d (max_token_length %d)", id, len, max_len));
        KVS_TRY(need(size_t(len), id));
        std::string text(reinterpret_cast<const char*>(data + pos), size_t(len));
        pos += size_t(len);
        // llama.cpp's convention for SentencePiece vocabularies.
        int32_t type = 1;  // normal
        if (id == 0) {
            text = "<unk>", type = 2;
        } else if (id == 1) {
            text = "<s>", type = 3;
        } else if (id == 2) {
            text = "</s>", type = 3;
        } else if (text.empty()) {
            type = 3;
        } else if (is_byte_token(text)) {
            type = 6;  // byte fallback token
        }
        std::string escaped;
        escaped.reserve(text.size());
        for (char ch : text) {
            if (ch == ' ') escaped += "\xe2\x96\x81";  // U+2581, SentencePiece's space
            else escaped += ch;
        }
        v.tokens.push_back(std::move(escaped));
        v.scores.push_back(score);
        v.types.push_back(type);
    }
    if (pos != size)
        return status::error(strfmt("llama2.c tokenizer: %zu bytes left after %d tokens (vocabulary size mismatch?)", size - pos, n_vocab));
    return v;
}

status llama2c_convert(const std::string& checkpoint, const std::string& tokenizer, const std::string& out,
                       const llama2c_options& options) {
    auto ckpt_map = mapped_file::open(checkpoint);
    if (!ckpt_map) return ckpt_map.error();
    // The writer's fill callbacks read from the mapping while writing: keep it alive with them.
    auto ckpt = std::make_shared<mapped_file>(std::move(ckpt_map.value()));
    auto cfg = llama2c_parse_config(ckpt->data(), ckpt->size());
    if (!cfg) return cfg.error().with_context(checkpoint);
    const llama2c_config& c = cfg.value();

    auto tok_map = mapped_file::open(tokenizer);
    if (!tok_map) return tok_map.error();
    auto vocab = llama2c_parse_tokenizer(tok_map.value().data(), tok_map.value().size(), c.vocab_size);
    if (!vocab) return vocab.error().with_context(tokenizer);

    gguf_writer w;
    // Same keys, types and order as llama.cpp's convert-llama2c-to-ggml.
    w.set_string_array("tokenizer.ggml.tokens", vocab.value().tokens);
    w.set_f32_array("tokenizer.ggml.scores", vocab.value().scores);
    w.set_i32_array("tokenizer.ggml.token_type", vocab.value().types);
    w.set_string("tokenizer.ggml.model", "llama");
    w.set_string("general.architecture", "llama");
    w.set_string("general.name", options.name);
    w.set_u32("tokenizer.ggml.unknown_token_id", 0);
    w.set_u32("tokenizer.ggml.bos_token_id", 1);
    w.set_u32("tokenizer.ggml.eos_token_id", 2);
    w.set_u32("tokenizer.ggml.seperator_token_id", 0xffffffffu);  // sic: llama.cpp's key spelling
    w.set_u32("tokenizer.ggml.padding_token_id", 0xffffffffu);
    w.set_u32("llama.context_length", uint32_t(options.context_length > 0 ? options.context_length : c.seq_len));
    w.set_u32("llama.embedding_length", uint32_t(c.dim));
    w.set_u32("llama.feed_forward_length", uint32_t(c.hidden_dim));
    w.set_u32("llama.attention.head_count", uint32_t(c.n_heads));
    w.set_u32("llama.attention.head_count_kv", uint32_t(c.n_kv_heads));
    w.set_u32("llama.block_count", uint32_t(c.n_layers));
    w.set_u32("llama.rope.dimension_count", uint32_t(c.head_size()));
    w.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);

    // Float offsets of each section.
    std::vector<section> secs = layout(c);
    std::vector<uint64_t> start(secs.size());
    uint64_t at = 0;
    for (size_t k = 0; k < secs.size(); ++k) start[k] = at, at += secs[k].n_floats;
    auto sec = [&](const char* name) {
        for (size_t k = 0; k < secs.size(); ++k)
            if (std::strcmp(secs[k].name, name) == 0) return start[k];
        return uint64_t(0);
    };
    const uint8_t* weights = ckpt->data() + header_bytes;
    // Adds the `index`-th (rows x cols) matrix (or vector when rows == 1) of a section.
    auto add = [&](const std::string& name, const char* section_name, uint64_t index, int64_t rows, int64_t cols) {
        uint64_t n = uint64_t(rows) * uint64_t(cols);
        const uint8_t* src = weights + 4 * (sec(section_name) + index * n);
        std::vector<int64_t> ne = rows == 1 ? std::vector<int64_t>{cols} : std::vector<int64_t>{cols, rows};
        return w.add_tensor(name, dtype::f32, ne, [ckpt, src, n](uint8_t* dst) {
            std::memcpy(dst, src, size_t(n) * 4);
            return status::ok();
        });
    };
    const int64_t D = c.dim, H = c.hidden_dim, V = c.vocab_size, KV = c.kv_dim();
    KVS_TRY(add("token_embd.weight", "token_embedding", 0, V, D));
    KVS_TRY(add("output_norm.weight", "rms_final", 0, 1, D));
    KVS_TRY(add("output.weight", c.shared_classifier ? "token_embedding" : "wcls", 0, V, D));
    for (int32_t l = 0; l < c.n_layers; ++l) {
        std::string p = "blk." + std::to_string(l) + ".";
        KVS_TRY(add(p + "attn_q.weight", "wq", l, D, D));
        KVS_TRY(add(p + "attn_k.weight", "wk", l, KV, D));
        KVS_TRY(add(p + "attn_v.weight", "wv", l, KV, D));
        KVS_TRY(add(p + "attn_output.weight", "wo", l, D, D));
        KVS_TRY(add(p + "attn_norm.weight", "rms_att", l, 1, D));
        KVS_TRY(add(p + "ffn_gate.weight", "w1", l, H, D));
        KVS_TRY(add(p + "ffn_down.weight", "w2", l, D, H));
        KVS_TRY(add(p + "ffn_up.weight", "w3", l, H, D));
        KVS_TRY(add(p + "ffn_norm.weight", "rms_ffn", l, 1, D));
    }
    return w.write(out);
}

}  // namespace kvs
