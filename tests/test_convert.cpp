// The model-file tools: llama2.c import (`convert`), `quantize`, `synth` and `inspect`.
// Conversion of the real stories260K checkpoint must reproduce stories260K.gguf bit for bit;
// quantization round trips are checked by normalized error per dtype; synthetic models are
// read back and checked for llama.cpp's metadata keys, tensor names, shapes and dtypes.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "gguf/llama2c.h"
#include "model/llama.h"
#include "model/session.h"
#include "model/shapes.h"
#include "test_util.h"

namespace kvs {
namespace {

namespace fs = std::filesystem;

std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::unique_ptr<gguf_file> open_ok(const std::string& path) {
    auto f = gguf_file::open(path);
    EXPECT_TRUE(f.is_ok()) << f.message();
    return f.is_ok() ? std::move(f.value()) : nullptr;
}

// Runs `kvserve ARGS` with KVSERVE_SHARED pointing at the fixtures; returns the exit status.
int kvserve(const std::string& args, std::string* out = nullptr) {
    std::string output;
    int rc = test::run_command("KVSERVE_SHARED='" + test::shared_dir() + "' '" + test::kvserve_binary() + "' " + args, &output);
    if (out) *out = output;
    return rc;
}

// Dequantizes a whole tensor to f32.
std::vector<float> to_f32(const gguf_tensor_info& t) {
    std::vector<float> out(static_cast<size_t>(t.n_elements()));
    size_t row = dtype_row_bytes(t.type, t.ne[0]);
    for (int64_t r = 0; r < t.n_elements() / t.ne[0]; ++r)
        EXPECT_TRUE(dequantize_row(t.type, t.data + size_t(r) * row, out.data() + r * t.ne[0], t.ne[0]));
    return out;
}

// Serialized value of a metadata entry, for exact comparison of two files' metadata.
std::vector<uint8_t> encoded(const gguf_value& v) {
    gguf_writer w;
    w.set_value("k", v);
    std::string path = test::temp_dir() + "/encoded.gguf";
    EXPECT_TRUE(w.write(path).is_ok());
    return read_bytes(path);
}

// ---------------------------------------------------------------------------------------------
// llama2.c import

TEST(Llama2cConvert, Stories260KMatchesTheReferenceGguf) {
    KVS_SKIP_IF_MISSING(bin, "models/stories260K.bin");
    KVS_SKIP_IF_MISSING(tok, "models/tok512.bin");
    KVS_SKIP_IF_MISSING(ref_path, "models/stories260K.gguf");
    std::string out = test::temp_dir() + "/stories-converted.gguf";
    status s = llama2c_convert(bin, tok, out);
    ASSERT_TRUE(s.is_ok()) << s.message();
    auto got = open_ok(out);
    auto ref = open_ok(ref_path);
    ASSERT_TRUE(got && ref);

    // Every tensor bit-identical, same names, dtypes and shapes, in the same order.
    ASSERT_EQ(got->tensors().size(), ref->tensors().size());
    for (size_t k = 0; k < ref->tensors().size(); ++k) {
        const gguf_tensor_info& r = ref->tensors()[k];
        const gguf_tensor_info& g = got->tensors()[k];
        SCOPED_TRACE(std::string(r.name));
        EXPECT_EQ(g.name, r.name);
        EXPECT_EQ(g.type, r.type);
        EXPECT_EQ(g.shape_string(), r.shape_string());
        ASSERT_EQ(g.n_bytes, r.n_bytes);
        EXPECT_EQ(std::memcmp(g.data, r.data, size_t(r.n_bytes)), 0);
    }
    // Tokenizer: tokens, scores (bitwise) and types.
    EXPECT_EQ(*got->get_string_array("tokenizer.ggml.tokens").value(), *ref->get_string_array("tokenizer.ggml.tokens").value());
    auto gs = got->get_f32_array("tokenizer.ggml.scores").value(), rs = ref->get_f32_array("tokenizer.ggml.scores").value();
    ASSERT_EQ(gs.size(), rs.size());
    EXPECT_EQ(std::memcmp(gs.data(), rs.data(), gs.size() * 4), 0);
    EXPECT_EQ(got->get_int_array("tokenizer.ggml.token_type").value(), ref->get_int_array("tokenizer.ggml.token_type").value());
    // All other metadata identical too, except the context length: the checkpoint says 512.
    ASSERT_EQ(got->kvs().size(), ref->kvs().size());
    for (size_t k = 0; k < ref->kvs().size(); ++k) {
        const gguf_kv& r = ref->kvs()[k];
        SCOPED_TRACE(std::string(r.key));
        EXPECT_EQ(got->kvs()[k].key, r.key);
        if (r.key == "llama.context_length") continue;
        EXPECT_EQ(encoded(got->kvs()[k].value), encoded(r.value));
    }
    EXPECT_EQ(got->get_int("llama.context_length").value(), 512);

    // With the reference's context length the whole file is byte-identical.
    std::string out2 = test::temp_dir() + "/stories-converted-2048.gguf";
    llama2c_options opt;
    opt.context_length = 2048;
    ASSERT_TRUE(llama2c_convert(bin, tok, out2, opt).is_ok());
    EXPECT_TRUE(read_bytes(out2) == read_bytes(ref_path));
}

TEST(Llama2cConvert, CommandLine) {
    KVS_SKIP_IF_MISSING(bin, "models/stories260K.bin");
    KVS_SKIP_IF_MISSING(tok, "models/tok512.bin");
    std::string out = test::temp_dir() + "/cli-converted.gguf", text;
    ASSERT_EQ(kvserve("convert " + bin + " --tokenizer " + tok + " -o " + out, &text), 0) << text;
    EXPECT_NE(text.find("48 tensors"), std::string::npos) << text;
    EXPECT_TRUE(open_ok(out) != nullptr);
    EXPECT_EQ(kvserve("convert " + bin + " -o " + out, &text), 2) << text;  // --tokenizer missing
    EXPECT_EQ(kvserve("convert /no/such.bin --tokenizer " + tok + " -o " + out, &text), 2);
    EXPECT_NE(text.find("/no/such.bin"), std::string::npos) << text;
    EXPECT_EQ(kvserve("convert " + bin + " --tokenizer " + tok + " -o " + out + " --bogus", &text), 2);
    // A runtime error (the tokenizer is not a tokenizer) is exit 1, and leaves no output file.
    std::string out_bad = test::temp_dir() + "/cli-bad.gguf";
    EXPECT_EQ(kvserve("convert " + bin + " --tokenizer " + bin + " -o " + out_bad, &text), 1) << text;
    EXPECT_NE(text.find("llama2.c tokenizer"), std::string::npos) << text;
    EXPECT_FALSE(fs::exists(out_bad));
}

// A tiny hand-made checkpoint: dim 8, hidden 16, 1 layer, 2 heads, 1 KV head, 6 tokens,
// seq_len 4, optionally with an unshared classifier. Weight k of the file is float(k).
struct tiny_checkpoint {
    int32_t header[7] = {8, 16, 1, 2, 1, 6, 4};
    bool unshared = false;
    std::vector<uint8_t> bytes() const {
        int32_t h[7];
        std::memcpy(h, header, sizeof(h));
        if (unshared) h[5] = -h[5];
        const int64_t D = 8, H = 16, V = 6, KV = 4, S = 4, hs = 4;
        int64_t n = V * D + D + D * D + 2 * KV * D + D * D + D + 3 * H * D + D + 2 * S * hs / 2 + (unshared ? V * D : 0);
        std::vector<uint8_t> b(sizeof(h) + size_t(n) * 4);
        std::memcpy(b.data(), h, sizeof(h));
        for (int64_t k = 0; k < n; ++k) {
            float x = float(k);
            std::memcpy(b.data() + sizeof(h) + size_t(k) * 4, &x, 4);
        }
        return b;
    }
};

std::vector<uint8_t> tiny_tokenizer(const std::vector<std::string>& tokens, int32_t max_len = 8) {
    std::vector<uint8_t> b(4);
    std::memcpy(b.data(), &max_len, 4);
    for (size_t i = 0; i < tokens.size(); ++i) {
        float score = -float(i);
        int32_t len = int32_t(tokens[i].size());
        size_t at = b.size();
        b.resize(at + 8 + tokens[i].size());
        std::memcpy(b.data() + at, &score, 4);
        std::memcpy(b.data() + at + 4, &len, 4);
        if (len) std::memcpy(b.data() + at + 8, tokens[i].data(), tokens[i].size());
    }
    return b;
}

TEST(Llama2cConvert, UnsharedClassifierAndTokenTypes) {
    tiny_checkpoint c;
    c.unshared = true;
    std::string dir = test::temp_dir();
    write_bytes(dir + "/tiny.bin", c.bytes());
    write_bytes(dir + "/tiny-tok.bin", tiny_tokenizer({"<unk>", "\n<s>\n", "\n</s>\n", "<0x0A>", " the", ""}));
    ASSERT_TRUE(llama2c_convert(dir + "/tiny.bin", dir + "/tiny-tok.bin", dir + "/tiny.gguf").is_ok());
    auto f = open_ok(dir + "/tiny.gguf");
    ASSERT_TRUE(f);
    EXPECT_EQ(f->get_int("llama.attention.head_count_kv").value(), 1);
    EXPECT_EQ(f->get_int("llama.rope.dimension_count").value(), 4);
    EXPECT_EQ(f->get_int("llama.context_length").value(), 4);
    // Token 1 is BOS whatever its text; byte pieces are type 6; spaces become U+2581.
    EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens").value(),
              (std::vector<std::string_view>{"<unk>", "<s>", "</s>", "<0x0A>", "\xe2\x96\x81the", ""}));
    EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type").value(), (std::vector<int64_t>{2, 3, 3, 6, 1, 3}));
    EXPECT_EQ(f->get_f32_array("tokenizer.ggml.scores").value(), (std::vector<float>{0, -1, -2, -3, -4, -5}));
    // The embedding is floats 0..47; the classifier is the last 48 floats of the file.
    const int64_t n_floats = int64_t(c.bytes().size() - 28) / 4;
    auto emb = to_f32(*f->find_tensor("token_embd.weight"));
    auto out = to_f32(*f->find_tensor("output.weight"));
    ASSERT_EQ(emb.size(), 48u);
    ASSERT_EQ(out.size(), 48u);
    for (int k = 0; k < 48; ++k) {
        EXPECT_EQ(emb[size_t(k)], float(k));
        EXPECT_EQ(out[size_t(k)], float(n_floats - 48 + k));
    }
    EXPECT_EQ(f->find_tensor("blk.0.attn_k.weight")->shape_string(), "[8, 4]");
    EXPECT_EQ(f->find_tensor("blk.0.ffn_down.weight")->shape_string(), "[16, 8]");
    // wq starts after the embedding (48) and rms_att (8).
    EXPECT_EQ(to_f32(*f->find_tensor("blk.0.attn_q.weight"))[0], 56.0f);
    EXPECT_EQ(to_f32(*f->find_tensor("output_norm.weight"))[0], float(48 + 8 + 64 + 32 + 32 + 64 + 8 + 3 * 128));
}

// Expects converting `ckpt` (with a valid 6-token tokenizer) to fail naming `needle`.
void expect_convert_error(const std::vector<uint8_t>& ckpt, const std::string& needle,
                          const std::vector<uint8_t>& tok = tiny_tokenizer({"a", "b", "c", "d", "e", "f"})) {
    std::string dir = test::temp_dir();
    write_bytes(dir + "/bad.bin", ckpt);
    write_bytes(dir + "/bad-tok.bin", tok);
    status s = llama2c_convert(dir + "/bad.bin", dir + "/bad-tok.bin", dir + "/bad.gguf");
    ASSERT_FALSE(s.is_ok()) << "expected an error mentioning " << needle;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
    EXPECT_FALSE(fs::exists(dir + "/bad.gguf"));
}

TEST(Llama2cConvert, MalformedCheckpoints) {
    tiny_checkpoint good;
    std::vector<uint8_t> b = good.bytes();
    auto truncated = b;
    truncated.resize(b.size() - 4);
    expect_convert_error(truncated, "truncated file?");
    auto longer = b;
    longer.resize(b.size() + 4);
    expect_convert_error(longer, "trailing bytes");
    expect_convert_error(std::vector<uint8_t>(b.begin(), b.begin() + 20), "shorter than its 28-byte header");
    expect_convert_error({}, "shorter than its 28-byte header");

    auto with = [&](int field, int32_t value) {
        tiny_checkpoint c;
        c.header[field] = value;
        return c.bytes();
    };
    expect_convert_error(with(0, 0), "dim is 0");
    expect_convert_error(with(0, -8), "dim is -8");
    expect_convert_error(with(2, 0), "n_layers is 0");
    expect_convert_error(with(3, 0), "n_heads is 0");
    expect_convert_error(with(3, 3), "n_heads 3 does not divide dim 8");
    expect_convert_error(with(4, 3), "n_kv_heads 3 does not divide n_heads 2");
    expect_convert_error(with(4, 4), "n_kv_heads 4 does not divide n_heads 2");
    expect_convert_error(with(3, 8), "head size 1");
    expect_convert_error(with(5, 0), "vocab_size is 0");
    expect_convert_error(with(5, INT32_MIN), "vocab_size is -2147483648");
    expect_convert_error(with(6, -1), "seq_len is -1");
    expect_convert_error(with(0, 1 << 30), "impossibly large");
    expect_convert_error(with(5, 7), "implies");  // header disagrees with the file size

    // The real checkpoint, truncated by one float and by half.
    std::string bin = test::shared_file("models/stories260K.bin");
    if (!bin.empty()) {
        auto real = read_bytes(bin);
        auto cut = real;
        cut.resize(real.size() - 4);
        auto f = llama2c_parse_config(cut.data(), cut.size());
        ASSERT_FALSE(f.is_ok());
        EXPECT_NE(f.message().find("1056536 bytes but its header"), std::string::npos) << f.message();
        EXPECT_NE(f.message().find("implies 1056540 bytes"), std::string::npos) << f.message();
        auto ok = llama2c_parse_config(real.data(), real.size());
        ASSERT_TRUE(ok.is_ok()) << ok.message();
        EXPECT_EQ(ok.value().kv_dim(), 32);
        EXPECT_TRUE(ok.value().shared_classifier);
    }
}

TEST(Llama2cConvert, MalformedTokenizers) {
    std::vector<uint8_t> ckpt = tiny_checkpoint().bytes();
    expect_convert_error(ckpt, "unexpected end of file in token 5 of 6", tiny_tokenizer({"a", "b", "c", "d", "e"}));
    expect_convert_error(ckpt, "bytes left after 6 tokens", tiny_tokenizer({"a", "b", "c", "d", "e", "f", "g"}));
    expect_convert_error(ckpt, "shorter than its 4-byte header", {1, 0});
    expect_convert_error(ckpt, "max_token_length is 0", tiny_tokenizer({"a", "b", "c", "d", "e", "f"}, 0));
    expect_convert_error(ckpt, "token 2 has length 9", tiny_tokenizer({"a", "b", "ninechars", "d", "e", "f"}));
    auto neg = tiny_tokenizer({"a", "b", "c", "d", "e", "f"});
    int32_t minus = -1;
    std::memcpy(neg.data() + 4 + 4, &minus, 4);  // length of token 0
    expect_convert_error(ckpt, "token 0 has length -1", neg);
    auto cut = tiny_tokenizer({"a", "b", "c", "d", "e", "ff"});
    cut.pop_back();
    expect_convert_error(ckpt, "unexpected end of file in token 5", cut);
}

// The vocabulary size comes from the checkpoint header; a tokenizer file far too short for it
// must fail by its bytes, not reserve memory for the claimed size first.
TEST(Llama2cConvert, HugeVocabularyClaimFailsWithoutAllocating) {
    const std::vector<uint8_t> tok = tiny_tokenizer({"a", "b"});
    auto v = llama2c_parse_tokenizer(tok.data(), tok.size(), INT32_MAX);
    ASSERT_FALSE(v.is_ok());
    EXPECT_NE(v.message().find("unexpected end of file in token 2 of 2147483647"), std::string::npos) << v.message();
    auto neg = llama2c_parse_tokenizer(tok.data(), tok.size(), -5);
    ASSERT_FALSE(neg.is_ok());
    EXPECT_NE(neg.message().find("negative"), std::string::npos) << neg.message();
}

// ---------------------------------------------------------------------------------------------
// quantize

struct quant_case {
    const char* type;
    dtype dt;
    int32_t ftype;
    double max_err;  // normalized error bound for the weight matrices
};

TEST(Quantize, Stories260KRoundTrips) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto ref = open_ok(path);
    ASSERT_TRUE(ref);
    // Bounds: about 1.5x the worst tensor's error measured when this test was written
    // (q8_0 0.0062, f16 0.0002, bf16 0.0020, q4_0 0.096, q4_1 0.088).
    const quant_case cases[] = {{"q8_0", dtype::q8_0, 7, 0.01},   {"f16", dtype::f16, 1, 5e-4},
                                {"bf16", dtype::bf16, 32, 0.004}, {"q4_0", dtype::q4_0, 2, 0.13},
                                {"q4_1", dtype::q4_1, 3, 0.12},   {"f32", dtype::f32, 0, 0.0}};
    for (const quant_case& qc : cases) {
        SCOPED_TRACE(qc.type);
        std::string out = test::temp_dir() + "/stories-" + qc.type + ".gguf", text;
        ASSERT_EQ(kvserve("quantize " + path + " " + out + " " + qc.type, &text), 0) << text;
        auto q = open_ok(out);
        ASSERT_TRUE(q);
        EXPECT_EQ(q->get_int("general.file_type").value(), qc.ftype);
        EXPECT_EQ(q->find("general.quantization_version") != nullptr, dtype_info(qc.dt).block_size > 1);
        // Metadata is otherwise copied.
        EXPECT_EQ(q->get_string_array("tokenizer.ggml.tokens").value()->size(), 512u);
        EXPECT_EQ(q->get_int("llama.block_count").value(), 5);
        ASSERT_EQ(q->tensors().size(), ref->tensors().size());
        for (const gguf_tensor_info& r : ref->tensors()) {
            SCOPED_TRACE(std::string(r.name));
            const gguf_tensor_info* t = q->find_tensor(r.name);
            ASSERT_NE(t, nullptr);
            EXPECT_EQ(t->shape_string(), r.shape_string());
            std::vector<float> a = to_f32(*t), b = to_f32(r);
            if (r.n_dims == 1) {
                EXPECT_EQ(t->type, dtype::f32);  // norms stay exact
                EXPECT_EQ(a, b);
                continue;
            }
            // Row length 172 (ffn_down) is no multiple of 32: those fall back to F16.
            dtype want = r.ne[0] % dtype_info(qc.dt).block_size == 0 ? qc.dt : dtype::f16;
            EXPECT_EQ(t->type, want);
            double err = test::nmse_norm(a.data(), b.data(), int64_t(a.size()));
            EXPECT_LE(err, want == dtype::f16 ? 5e-4 : qc.max_err);
            if (qc.dt == dtype::f32) {
                EXPECT_EQ(a, b);
            }
        }
    }
    // q8_0 -> f32 gives exactly the dequantized q8_0 values; re-quantizing to q8_0 copies bytes.
    std::string q8 = test::temp_dir() + "/stories-q8_0.gguf", back = test::temp_dir() + "/stories-q8-f32.gguf";
    std::string again = test::temp_dir() + "/stories-q8-q8.gguf", text;
    ASSERT_EQ(kvserve("quantize " + q8 + " " + back + " f32", &text), 0) << text;
    ASSERT_EQ(kvserve("quantize " + q8 + " " + again + " q8_0", &text), 0) << text;
    auto fq = open_ok(q8), fb = open_ok(back), fa = open_ok(again);
    ASSERT_TRUE(fq && fb && fa);
    for (const gguf_tensor_info& t : fq->tensors()) {
        EXPECT_EQ(to_f32(t), to_f32(*fb->find_tensor(t.name))) << t.name;
        const gguf_tensor_info* c = fa->find_tensor(t.name);
        ASSERT_EQ(c->n_bytes, t.n_bytes);
        EXPECT_EQ(std::memcmp(c->data, t.data, size_t(t.n_bytes)), 0) << t.name;
    }
}

TEST(Quantize, Errors) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    std::string out = test::temp_dir() + "/q-err.gguf", text;
    EXPECT_EQ(kvserve("quantize " + path + " " + out + " q3_k", &text), 2);
    EXPECT_NE(text.find("unsupported type 'q3_k'"), std::string::npos) << text;
    EXPECT_EQ(kvserve("quantize " + path + " " + out, &text), 2);
    EXPECT_EQ(kvserve("quantize /no/such.gguf " + out + " q8_0", &text), 2);
    std::string vocab = test::shared_file("vocab/ggml-vocab-gpt-2.gguf");
    if (!vocab.empty()) {
        EXPECT_EQ(kvserve("quantize " + vocab + " " + out + " q8_0", &text), 1);
        EXPECT_NE(text.find("no tensors"), std::string::npos) << text;
    }
    std::string garbage = test::temp_dir() + "/garbage.gguf";
    write_bytes(garbage, {'G', 'G', 'U', 'F', 3, 0, 0, 0});
    EXPECT_EQ(kvserve("quantize " + garbage + " " + out + " q8_0", &text), 1);
    EXPECT_NE(text.find("unexpected end of file"), std::string::npos) << text;
    EXPECT_FALSE(fs::exists(out));
}

// ---------------------------------------------------------------------------------------------
// synth

// Checks the llama.cpp metadata and tensor table of a synthetic model of `shape` in `dt`.
void check_synth(const gguf_file& f, const model_shape& s, dtype dt) {
    const std::string a = std::string(s.arch) + ".";
    EXPECT_EQ(f.get_string("general.architecture").value(), s.arch);
    EXPECT_EQ(f.get_int("general.file_type").value(), llama_ftype_of(dt));
    EXPECT_EQ(f.get_int(a + "vocab_size").value(), s.n_vocab);
    EXPECT_EQ(f.get_int(a + "context_length").value(), s.n_ctx_train);
    EXPECT_EQ(f.get_int(a + "embedding_length").value(), s.n_embd);
    EXPECT_EQ(f.get_int(a + "block_count").value(), s.n_layer);
    EXPECT_EQ(f.get_int(a + "feed_forward_length").value(), s.n_ff);
    EXPECT_EQ(f.get_int(a + "attention.head_count").value(), s.n_head);
    EXPECT_EQ(f.get_int(a + "attention.head_count_kv").value(), s.n_head_kv);
    EXPECT_EQ(f.get_int(a + "rope.dimension_count").value(), s.head_dim());
    EXPECT_FLOAT_EQ(float(f.get_float(a + "rope.freq_base").value()), s.rope_freq_base);
    EXPECT_FLOAT_EQ(float(f.get_float(a + "attention.layer_norm_rms_epsilon").value()), s.rms_eps);
    EXPECT_EQ(int64_t(f.get_string_array("tokenizer.ggml.tokens").value()->size()), s.n_vocab);
    EXPECT_EQ(int64_t(f.get_int_array("tokenizer.ggml.token_type").value().size()), s.n_vocab);
    EXPECT_TRUE(f.get_string("tokenizer.ggml.model").is_ok());

    const int64_t E = s.n_embd, KV = s.n_embd_kv(), F = s.n_ff;
    auto expect_tensor = [&](const std::string& name, std::vector<int64_t> ne, dtype want) {
        const gguf_tensor_info* t = f.find_tensor(name);
        ASSERT_NE(t, nullptr) << name;
        ASSERT_EQ(t->n_dims, int(ne.size())) << name;
        for (size_t d = 0; d < ne.size(); ++d) EXPECT_EQ(t->ne[d], ne[d]) << name << " dim " << d;
        EXPECT_EQ(t->type, want) << name;
    };
    auto wt = [&](int64_t row) { return row % dtype_info(dt).block_size == 0 ? dt : dtype::f16; };
    size_t n_expected = 2 + size_t(s.n_layer) * (9 + (s.qkv_bias ? 3 : 0)) + (s.tied_output ? 0 : 1);
    EXPECT_EQ(f.tensors().size(), n_expected);
    expect_tensor("token_embd.weight", {E, s.n_vocab}, wt(E));
    expect_tensor("output_norm.weight", {E}, dtype::f32);
    if (s.tied_output) {
        EXPECT_EQ(f.find_tensor("output.weight"), nullptr);
    } else {
        expect_tensor("output.weight", {E, s.n_vocab}, wt(E));
    }
    for (int64_t l = 0; l < s.n_layer; ++l) {
        std::string p = "blk." + std::to_string(l) + ".";
        expect_tensor(p + "attn_norm.weight", {E}, dtype::f32);
        expect_tensor(p + "ffn_norm.weight", {E}, dtype::f32);
        expect_tensor(p + "attn_q.weight", {E, E}, wt(E));
        expect_tensor(p + "attn_k.weight", {E, KV}, wt(E));
        expect_tensor(p + "attn_v.weight", {E, KV}, wt(E));
        expect_tensor(p + "attn_output.weight", {E, E}, wt(E));
        expect_tensor(p + "ffn_gate.weight", {E, F}, wt(E));
        expect_tensor(p + "ffn_up.weight", {E, F}, wt(E));
        expect_tensor(p + "ffn_down.weight", {F, E}, wt(F));
        if (s.qkv_bias) {
            expect_tensor(p + "attn_q.bias", {E}, dtype::f32);
            expect_tensor(p + "attn_k.bias", {KV}, dtype::f32);
            expect_tensor(p + "attn_v.bias", {KV}, dtype::f32);
        }
    }
}

TEST(Synth, Stories260KShapeQ8) {
    KVS_SKIP_IF_MISSING(vocab, "models/stories260K.gguf");
    const model_shape* s = find_model_shape("stories260k");
    ASSERT_NE(s, nullptr);
    std::string out = test::temp_dir() + "/synth-stories.gguf", text;
    ASSERT_EQ(kvserve("synth --shape stories260k --dtype q8_0 --seed 7 -o " + out, &text), 0) << text;
    auto f = open_ok(out);
    ASSERT_TRUE(f);
    check_synth(*f, *s, dtype::q8_0);
    // The vocabulary is the real one, every tokenizer key copied.
    auto ref = open_ok(vocab);
    EXPECT_EQ(*f->get_string_array("tokenizer.ggml.tokens").value(), *ref->get_string_array("tokenizer.ggml.tokens").value());
    EXPECT_EQ(f->get_f32_array("tokenizer.ggml.scores").value(), ref->get_f32_array("tokenizer.ggml.scores").value());
    EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id").value(), 1);
    // Same geometry as the real model's file.
    for (const gguf_tensor_info& r : ref->tensors()) {
        const gguf_tensor_info* t = f->find_tensor(r.name);
        ASSERT_NE(t, nullptr) << r.name;
        EXPECT_EQ(t->shape_string(), r.shape_string()) << r.name;
    }
    EXPECT_EQ(f->tensors().size(), ref->tensors().size());
    // Values: norms are 1, weights ~ N(0, 0.02).
    for (float x : to_f32(*f->find_tensor("blk.2.ffn_norm.weight"))) ASSERT_EQ(x, 1.0f);
    auto w = to_f32(*f->find_tensor("token_embd.weight"));
    double sum = 0, sum2 = 0;
    for (float x : w) sum += x, sum2 += double(x) * x;
    double mean = sum / double(w.size()), sd = std::sqrt(sum2 / double(w.size()) - mean * mean);
    EXPECT_NEAR(mean, 0.0, 0.002);
    EXPECT_NEAR(sd, 0.02, 0.002);

    // Deterministic in the seed (and independent of the thread count); another seed differs.
    std::string same = test::temp_dir() + "/synth-stories-same.gguf", other = test::temp_dir() + "/synth-stories-other.gguf";
    ASSERT_EQ(kvserve("synth --shape stories260k --dtype q8_0 --seed 7 --threads 1 -o " + same, &text), 0) << text;
    ASSERT_EQ(kvserve("synth --shape stories260k --dtype q8_0 --seed 8 -o " + other, &text), 0) << text;
    EXPECT_TRUE(read_bytes(out) == read_bytes(same));
    auto fo = open_ok(other);
    EXPECT_NE(to_f32(*fo->find_tensor("blk.0.attn_q.weight")), to_f32(*f->find_tensor("blk.0.attn_q.weight")));
}

TEST(Synth, SmolLM135MShapeQ8) {
    KVS_SKIP_IF_MISSING(vocab, "vocab/ggml-vocab-starcoder.gguf");
    const model_shape* s = find_model_shape("smollm-135m");
    ASSERT_NE(s, nullptr);
    std::string out = test::temp_dir() + "/synth-smollm.gguf", text;
    ASSERT_EQ(kvserve("synth --shape smollm-135m --dtype q8_0 -o " + out, &text), 0) << text;
    auto f = open_ok(out);
    ASSERT_TRUE(f);
    check_synth(*f, *s, dtype::q8_0);
    auto ref = open_ok(vocab);
    EXPECT_EQ(f->get_string("tokenizer.ggml.pre").value(), "starcoder");
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.merges").value()->size(), ref->get_string_array("tokenizer.ggml.merges").value()->size());
    EXPECT_EQ(f->find_tensor("output.weight"), nullptr);  // tied embeddings
    int64_t n = 0;
    for (auto& t : f->tensors()) n += t.n_elements();
    EXPECT_EQ(n, s->n_params());
    EXPECT_NEAR(double(n), 134.5e6, 1e6);
    fs::remove(out);
}

TEST(Synth, PadsASmallVocabularyAndRejectsALargeOne) {
    // A 300-token SentencePiece-like vocabulary for the 512-token stories260k shape.
    gguf_writer v;
    std::vector<std::string> toks;
    std::vector<float> scores;
    std::vector<int32_t> types;
    for (int i = 0; i < 300; ++i) toks.push_back("tok" + std::to_string(i)), scores.push_back(-float(i)), types.push_back(1);
    v.set_string("general.architecture", "llama");
    v.set_string("tokenizer.ggml.model", "llama");
    v.set_string_array("tokenizer.ggml.tokens", toks);
    v.set_f32_array("tokenizer.ggml.scores", scores);
    v.set_i32_array("tokenizer.ggml.token_type", types);
    v.set_u32("tokenizer.ggml.bos_token_id", 1);
    std::string vocab = test::temp_dir() + "/small-vocab.gguf", out = test::temp_dir() + "/synth-padded.gguf", text;
    ASSERT_TRUE(v.write(vocab).is_ok());
    ASSERT_EQ(kvserve("synth --shape stories260k --dtype f16 --vocab " + vocab + " -o " + out, &text), 0) << text;
    auto f = open_ok(out);
    ASSERT_TRUE(f);
    check_synth(*f, *find_model_shape("stories260k"), dtype::f16);
    auto got = *f->get_string_array("tokenizer.ggml.tokens").value();
    ASSERT_EQ(got.size(), 512u);
    EXPECT_EQ(got[299], "tok299");
    EXPECT_EQ(got[300], "<|synth_pad_300|>");
    EXPECT_EQ(got[511], "<|synth_pad_511|>");
    auto t = f->get_int_array("tokenizer.ggml.token_type").value();
    auto sc = f->get_f32_array("tokenizer.ggml.scores").value();
    EXPECT_EQ(t[299], 1);
    EXPECT_EQ(t[300], 3);
    EXPECT_EQ(sc[299], -299.0f);
    EXPECT_EQ(sc[400], 0.0f);
    EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id").value(), 1);

    // The 32000-token Llama vocabulary does not fit a 512-token shape.
    std::string big = test::shared_file("vocab/ggml-vocab-llama-spm.gguf");
    if (!big.empty()) {
        EXPECT_EQ(kvserve("synth --shape stories260k --dtype f16 --vocab " + big + " -o " + out + ".big", &text), 1);
        EXPECT_NE(text.find("32000 tokens, more than the shape's n_vocab 512"), std::string::npos) << text;
        EXPECT_FALSE(fs::exists(out + ".big"));
    }
}

TEST(Synth, UsageErrors) {
    std::string out = test::temp_dir() + "/synth-err.gguf", text;
    EXPECT_EQ(kvserve("synth --shape gpt-5 --dtype q8_0 -o " + out, &text), 2);
    EXPECT_NE(text.find("unknown shape 'gpt-5'"), std::string::npos) << text;
    EXPECT_NE(text.find("llama-3-8b"), std::string::npos) << text;
    EXPECT_EQ(kvserve("synth --shape stories260k --dtype q3_k -o " + out, &text), 2);
    EXPECT_EQ(kvserve("synth --shape stories260k -o " + out, &text), 2);
    EXPECT_EQ(kvserve("synth --shape stories260k --dtype f32 --vocab /no/vocab.gguf -o " + out, &text), 2);
    EXPECT_NE(text.find("/no/vocab.gguf"), std::string::npos) << text;
    EXPECT_FALSE(fs::exists(out));
}

TEST(Shapes, TableMatchesThePublishedModels) {
    const model_shape* l3 = find_model_shape("llama-3-8b");
    ASSERT_NE(l3, nullptr);
    EXPECT_NEAR(double(l3->n_params()), 8.03e9, 0.01e9);
    EXPECT_NEAR(double(find_model_shape("llama-2-7b")->n_params()), 6.74e9, 0.01e9);
    EXPECT_NEAR(double(find_model_shape("tinyllama-1.1b")->n_params()), 1.10e9, 0.01e9);
    const model_shape* q = find_model_shape("qwen2-0.5b");
    ASSERT_NE(q, nullptr);
    EXPECT_NEAR(double(q->n_params()), 0.494e9, 0.002e9);
    EXPECT_TRUE(q->rope_neox && q->qkv_bias && q->tied_output);
    EXPECT_STREQ(q->arch, "qwen2");
    EXPECT_EQ(q->head_dim(), 64);
    // DeepSeek-V2-Lite: 15.7B parameters, of which 2.4B are active per token (the 6 routed
    // experts of 64 in each MoE layer; the input embeddings not counted).
    const model_shape* ds = find_model_shape("deepseek-v2-lite");
    ASSERT_NE(ds, nullptr);
    EXPECT_STREQ(ds->arch, "deepseek2");
    EXPECT_TRUE(ds->deepseek2());
    EXPECT_EQ(ds->n_layer, 27);
    EXPECT_EQ(ds->n_embd, 2048);
    EXPECT_EQ(ds->n_head, 16);
    EXPECT_EQ(ds->n_head_kv, 16);
    EXPECT_EQ(ds->q_lora, 0);
    EXPECT_EQ(ds->kv_lora, 512);
    EXPECT_EQ(ds->qk_nope + ds->qk_rope, 192);
    EXPECT_EQ(ds->qk_rope, 64);
    EXPECT_EQ(ds->v_head, 128);
    EXPECT_EQ(ds->n_expert, 64);
    EXPECT_EQ(ds->n_expert_used, 6);
    EXPECT_EQ(ds->n_expert_shared, 2);
    EXPECT_EQ(ds->n_ff_exp, 1408);
    EXPECT_EQ(ds->n_layer_dense_lead, 1);
    EXPECT_EQ(ds->n_ff, 10944);
    EXPECT_EQ(ds->n_vocab, 102400);
    EXPECT_EQ(ds->n_ctx_train, 163840);
    EXPECT_FLOAT_EQ(ds->yarn_factor, 40.0f);
    EXPECT_EQ(ds->yarn_orig_ctx, 4096);
    EXPECT_FLOAT_EQ(ds->yarn_log_mul, 0.0707f);
    EXPECT_STREQ(ds->default_vocab, "vocab/ggml-vocab-deepseek-coder.gguf");
    EXPECT_NEAR(double(ds->n_params()), 15.7e9, 0.1e9);
    const int64_t idle_experts = (ds->n_layer - ds->n_layer_dense_lead) * (ds->n_expert - ds->n_expert_used) * 3 *
                                 ds->n_embd * ds->n_ff_exp;
    EXPECT_NEAR(double(ds->n_params() - idle_experts - ds->n_vocab * ds->n_embd), 2.4e9, 0.1e9);
    EXPECT_FALSE(l3->deepseek2());
    EXPECT_EQ(find_model_shape("nope"), nullptr);
    for (const model_shape& s : model_shapes()) {
        EXPECT_EQ(s.n_embd % s.n_head, 0) << s.name;
        EXPECT_EQ(s.n_head % s.n_head_kv, 0) << s.name;
    }
    EXPECT_EQ(llama_ftype_of(dtype::q8_0), 7);
    EXPECT_EQ(llama_ftype_of(dtype::bf16), 32);
    EXPECT_EQ(llama_ftype_of(dtype::q3_k), -1);
    EXPECT_EQ(llama_ftype_of(dtype::q4_k), 14);
    EXPECT_EQ(llama_ftype_of(dtype::q6_k), 18);
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down.weight", 2, 5632, dtype::q4_k), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down.weight", 2, 172, dtype::q4_k), dtype::f16);
    EXPECT_EQ(weight_dtype_for("blk.0.attn_q.weight", 2, 64, dtype::q6_k), dtype::q8_0);  // rows of 64: fallback
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down.weight", 2, 172, dtype::q4_0), dtype::f16);
    EXPECT_EQ(weight_dtype_for("blk.0.attn_q.bias", 1, 64, dtype::q4_0), dtype::f32);
    EXPECT_EQ(weight_dtype_for("token_embd.weight", 2, 64, dtype::q4_0), dtype::q4_0);
    // MoE: the 3-D expert stacks take the target (rows of ne[0], same fallbacks), the router stays F32.
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_gate_exps.weight", 3, 2048, dtype::q4_k), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_down_exps.weight", 3, 1408, dtype::q4_k), dtype::q8_0);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_down_exps.weight", 3, 1408, dtype::q8_0), dtype::q8_0);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_up_exps.weight", 3, 100, dtype::q8_0), dtype::f16);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_gate_inp.weight", 2, 2048, dtype::q8_0), dtype::f32);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_gate_shexp.weight", 2, 2048, dtype::q8_0), dtype::q8_0);
    EXPECT_EQ(weight_dtype_for("blk.1.some_stack.weight", 3, 2048, dtype::q8_0), dtype::f32);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_up_exps.weight", 2, 2048, dtype::q8_0), dtype::q8_0);
    EXPECT_EQ(weight_dtype_for("blk.1.ffn_up_exps.weight", 4, 2048, dtype::q8_0), dtype::f32);
}

// llama.cpp's q4_k_m / q5_k_m mixtures (llama_tensor_get_type): LM head and attn_v / ffn_down of
// the use_more_bits layers in q6_k, everything else in the base k-quant.
TEST(Shapes, KQuantMixturesFollowLlamaCpp) {
    weight_format f;
    ASSERT_TRUE(weight_format_from_name("Q4_K_M", &f));
    EXPECT_EQ(f.base, dtype::q4_k);
    EXPECT_TRUE(f.k_mix);
    EXPECT_EQ(weight_format_name(f), "q4_k_m");
    EXPECT_EQ(llama_ftype_of(f), 15);
    weight_format f5;
    ASSERT_TRUE(weight_format_from_name("q5_k_m", &f5));
    EXPECT_EQ(llama_ftype_of(f5), 17);
    weight_format plain;
    ASSERT_TRUE(weight_format_from_name("q6_k", &plain));
    EXPECT_FALSE(plain.k_mix);
    EXPECT_EQ(llama_ftype_of(plain), 18);
    EXPECT_FALSE(weight_format_from_name("q4_k_s", nullptr));
    EXPECT_FALSE(weight_format_from_name("q3_k", nullptr));
    EXPECT_FALSE(weight_format_from_name("q8_0_m", nullptr));

    // TinyLlama: 22 layers, so n/8 = 2 and 7n/8 = 19: layers 0, 1, 4, 7, 10, 13, 16, 19, 20, 21.
    std::vector<int64_t> more;
    for (int64_t i = 0; i < 22; ++i)
        if (kquant_use_more_bits(i, 22)) more.push_back(i);
    EXPECT_EQ(more, (std::vector<int64_t>{0, 1, 4, 7, 10, 13, 16, 19, 20, 21}));
    for (int64_t i = 0; i < 22; ++i) {
        const std::string p = "blk." + std::to_string(i) + ".";
        const dtype more_bits = kquant_use_more_bits(i, 22) ? dtype::q6_k : dtype::q4_k;
        EXPECT_EQ(weight_dtype_for(p + "attn_v.weight", 2, 2048, f, 22, true), more_bits) << i;
        EXPECT_EQ(weight_dtype_for(p + "ffn_down.weight", 2, 5632, f, 22, true), more_bits) << i;
        EXPECT_EQ(weight_dtype_for(p + "attn_k.weight", 2, 2048, f, 22, true), dtype::q4_k) << i;
        EXPECT_EQ(weight_dtype_for(p + "ffn_up.weight", 2, 2048, f, 22, true), dtype::q4_k) << i;
        EXPECT_EQ(weight_dtype_for(p + "attn_norm.weight", 1, 2048, f, 22, true), dtype::f32) << i;
    }
    EXPECT_EQ(weight_dtype_for("output.weight", 2, 2048, f, 22, true), dtype::q6_k);
    EXPECT_EQ(weight_dtype_for("token_embd.weight", 2, 2048, f, 22, true), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("token_embd.weight", 2, 2048, f, 22, false), dtype::q6_k);  // tied head
    EXPECT_EQ(weight_dtype_for("blk.0.attn_v.weight", 2, 2048, f5, 22, true), dtype::q6_k);
    EXPECT_EQ(weight_dtype_for("blk.2.attn_v.weight", 2, 2048, f5, 22, true), dtype::q5_k);
    // Rows that are no multiple of 256 fall back (q8_0 for multiples of 32, else f16).
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down.weight", 2, 864, f, 22, true), dtype::q8_0);
    EXPECT_EQ(weight_dtype_for("blk.2.ffn_down.weight", 2, 172, f, 22, true), dtype::f16);
    // MoE layers: every "ffn_down" tensor of the layer (routed stack, shared experts) as ffn_down.
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down_exps.weight", 3, 2816, f, 22, true), dtype::q6_k);
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down_shexp.weight", 2, 2816, f, 22, true), dtype::q6_k);
    EXPECT_EQ(weight_dtype_for("blk.2.ffn_down_exps.weight", 3, 2816, f, 22, true), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_up_exps.weight", 3, 2048, f, 22, true), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("blk.0.ffn_down_exps.weight", 3, 1408, f, 22, true), dtype::q8_0);  // fallback
    // Names that only look like layer tensors are not in the mixture.
    EXPECT_EQ(weight_dtype_for("blk.x.attn_v.weight", 2, 2048, f, 22, true), dtype::q4_k);
    EXPECT_EQ(weight_dtype_for("blk.0attn_v.weight", 2, 2048, f, 22, true), dtype::q4_k);
}

// ---------------------------------------------------------------------------------------------
// inspect

TEST(Inspect, ModelAndVocabulary) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    std::string text;
    ASSERT_EQ(kvserve("inspect " + path, &text), 0) << text;
    for (const char* needle : {"GGUF v3", "general.architecture", "\"llama\"", "tokenizer.ggml.tokens", "string[512]",
                               "[\"<unk>\", \"<s>\", \"</s>\"", "f32[512]", "llama.block_count", "u32", "token_embd.weight",
                               "[64, 512]", "131072", "blk.4.ffn_norm.weight", "totals: 48 tensors", "292800 elements"})
        EXPECT_NE(text.find(needle), std::string::npos) << needle << "\n" << text;
    std::string vocab = test::shared_file("vocab/ggml-vocab-gpt-2.gguf");
    if (!vocab.empty()) {
        ASSERT_EQ(kvserve("inspect " + vocab, &text), 0) << text;
        EXPECT_NE(text.find("string[50000]"), std::string::npos) << text;
        EXPECT_NE(text.find("totals: 0 tensors"), std::string::npos) << text;
    }
    EXPECT_EQ(kvserve("inspect /no/such.gguf", &text), 2);
    EXPECT_EQ(kvserve("inspect", &text), 2);
    std::string bin = test::shared_file("models/tok512.bin");
    if (!bin.empty()) {
        EXPECT_EQ(kvserve("inspect " + bin, &text), 1);
        EXPECT_NE(text.find("not a GGUF file"), std::string::npos) << text;
    }
}

TEST(Llama2cConvert, ConvertedModelGivesTheSameLogitsAsTheGguf) {
    KVS_SKIP_IF_MISSING(bin, "models/stories260K.bin");
    KVS_SKIP_IF_MISSING(tok, "models/tok512.bin");
    KVS_SKIP_IF_MISSING(ref_path, "models/stories260K.gguf");
    std::string out = test::temp_dir() + "/stories-converted-logits.gguf";
    ASSERT_TRUE(llama2c_convert(bin, tok, out).is_ok());
    auto converted = llama_model::load(out);
    auto reference = llama_model::load(ref_path);
    ASSERT_TRUE(converted && reference);
    thread_pool pool(2);
    session_params sp;
    sp.n_ctx = 64;
    sp.max_logit_rows = 64;
    std::vector<int32_t> tokens = {1, 403, 407, 261, 378, 13, 90, 200, 511, 7, 3, 299};
    std::vector<float> a, b;
    auto sa = session::create(*converted.value(), pool, sp).value();
    auto sb = session::create(*reference.value(), pool, sp).value();
    ASSERT_TRUE(sa->eval(tokens.data(), int64_t(tokens.size()), 0, &a));
    ASSERT_TRUE(sb->eval(tokens.data(), int64_t(tokens.size()), 0, &b));
    ASSERT_EQ(a.size(), tokens.size() * 512);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << "logits differ";
}

}  // namespace
}  // namespace kvs
