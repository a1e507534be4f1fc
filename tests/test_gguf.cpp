// GGUF reader and writer: round trips of every metadata type and several tensor dtypes, the
// real fixtures, and a malformed-file suite where every structural error must come back as an
// error naming the problem (never a crash, never a read outside the buffer).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "test_util.h"

namespace kvs {
namespace {

std::vector<uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// ---------------------------------------------------------------------------------------------
// Round trip through the writer.

TEST(GgufWriter, RoundTripEveryMetadataType) {
    gguf_writer w;
    w.set_u32("t.u32", 4000000000u);
    w.set_i32("t.i32", -123456);
    w.set_u64("t.u64", 0xfedcba9876543210ull);
    w.set_f32("t.f32", 1.5f);
    w.set_bool("t.bool_true", true);
    w.set_bool("t.bool_false", false);
    w.set_string("t.string", "hello gguf");
    w.set_string("t.empty_string", "");
    w.set_string_array("t.str_arr", {"a", "", "ccc", "\xe2\x96\x81x"});
    w.set_f32_array("t.f32_arr", {0.5f, -2.0f, 3.25f});
    w.set_i32_array("t.i32_arr", {-1, 0, 7});
    w.set_string_array("t.empty_arr", {});

    // The types without a dedicated setter go through set_value.
    auto scalar = [&](const char* key, gguf_type t, uint64_t u, int64_t i, double f) {
        gguf_value v;
        v.type = t;
        v.u = u;
        v.i = i;
        v.f = f;
        w.set_value(key, v);
    };
    scalar("t.u8", gguf_type::u8, 250, 250, 0);
    scalar("t.i8", gguf_type::i8, uint64_t(int64_t(-100)), -100, 0);
    scalar("t.u16", gguf_type::u16, 65000, 65000, 0);
    scalar("t.i16", gguf_type::i16, uint64_t(int64_t(-30000)), -30000, 0);
    scalar("t.i64", gguf_type::i64, uint64_t(int64_t(-5000000000)), -5000000000, 0);
    scalar("t.f64", gguf_type::f64, 0, 0, 3.141592653589793);
    const uint16_t u16s[] = {1, 2, 65535};
    const int64_t i64s[] = {-1, std::numeric_limits<int64_t>::min(), 42};
    const double f64s[] = {0.25, -1e300};
    const uint8_t bools[] = {1, 0, 1, 1};
    auto array = [&](const char* key, gguf_type et, const void* data, uint64_t n) {
        gguf_value v;
        v.type = gguf_type::array;
        v.elem_type = et;
        v.n_elem = n;
        v.elem_data = static_cast<const uint8_t*>(data);
        w.set_value(key, v);
    };
    array("t.u16_arr", gguf_type::u16, u16s, 3);
    array("t.i64_arr", gguf_type::i64, i64s, 3);
    array("t.f64_arr", gguf_type::f64, f64s, 2);
    array("t.bool_arr", gguf_type::boolean, bools, 4);
    EXPECT_TRUE(w.has_key("t.u8"));
    EXPECT_FALSE(w.has_key("t.nope"));

    std::string path = test::temp_dir() + "/meta.gguf";
    ASSERT_TRUE(w.write(path).is_ok());
    auto f = gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.message();
    const gguf_file& g = *f.value();
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.tensors().size(), 0u);
    EXPECT_EQ(g.kvs().size(), 22u);
    // Insertion order is kept.
    EXPECT_EQ(g.kvs()[0].key, "t.u32");
    EXPECT_EQ(g.kvs().back().key, "t.bool_arr");

    EXPECT_EQ(g.get_int("t.u32").value(), 4000000000ll);
    EXPECT_EQ(g.find("t.u32")->type, gguf_type::u32);
    EXPECT_EQ(g.get_int("t.i32").value(), -123456);
    EXPECT_EQ(g.find("t.u64")->u, 0xfedcba9876543210ull);
    EXPECT_FALSE(g.get_int("t.u64").is_ok());  // does not fit an int64
    EXPECT_EQ(g.get_float("t.f32").value(), 1.5);
    EXPECT_EQ(g.get_bool("t.bool_true").value(), true);
    EXPECT_EQ(g.get_bool("t.bool_false").value(), false);
    EXPECT_EQ(g.get_string("t.string").value(), "hello gguf");
    EXPECT_EQ(g.get_string("t.empty_string").value(), "");
    EXPECT_EQ(g.get_int("t.u8").value(), 250);
    EXPECT_EQ(g.find("t.u8")->type, gguf_type::u8);
    EXPECT_EQ(g.get_int("t.i8").value(), -100);
    EXPECT_EQ(g.get_int("t.u16").value(), 65000);
    EXPECT_EQ(g.get_int("t.i16").value(), -30000);
    EXPECT_EQ(g.get_int("t.i64").value(), -5000000000ll);
    EXPECT_EQ(g.get_float("t.f64").value(), 3.141592653589793);
    EXPECT_EQ(g.get_float("t.i32").value(), -123456.0);  // integers widen to floats

    auto sa = g.get_string_array("t.str_arr");
    ASSERT_TRUE(sa.is_ok());
    ASSERT_EQ(sa.value()->size(), 4u);
    EXPECT_EQ((*sa.value())[2], "ccc");
    EXPECT_EQ((*sa.value())[3], "\xe2\x96\x81x");
    EXPECT_EQ(g.get_string_array("t.empty_arr").value()->size(), 0u);
    EXPECT_EQ(g.get_f32_array("t.f32_arr").value(), (std::vector<float>{0.5f, -2.0f, 3.25f}));
    EXPECT_EQ(g.get_int_array("t.i32_arr").value(), (std::vector<int64_t>{-1, 0, 7}));
    EXPECT_EQ(g.get_int_array("t.u16_arr").value(), (std::vector<int64_t>{1, 2, 65535}));
    EXPECT_EQ(g.get_int_array("t.i64_arr").value(), (std::vector<int64_t>{-1, std::numeric_limits<int64_t>::min(), 42}));
    EXPECT_EQ(g.get_f32_array("t.f64_arr").value(), (std::vector<float>{0.25f, float(-1e300)}));
    EXPECT_EQ(g.get_int_array("t.bool_arr").value(), (std::vector<int64_t>{1, 0, 1, 1}));
    EXPECT_EQ(g.find("t.bool_arr")->elem_type, gguf_type::boolean);

    // Typed getters name the key on a type mismatch or absence.
    auto bad = g.get_string("t.u32");
    ASSERT_FALSE(bad.is_ok());
    EXPECT_NE(bad.message().find("t.u32"), std::string::npos);
    EXPECT_NE(bad.message().find("expected a string"), std::string::npos);
    auto absent = g.get_int("t.absent");
    ASSERT_FALSE(absent.is_ok());
    EXPECT_NE(absent.message().find("missing metadata key t.absent"), std::string::npos);
    EXPECT_FALSE(g.get_int_opt("t.absent").value().has_value());
    EXPECT_FALSE(g.get_f32_array("t.str_arr").is_ok());
    EXPECT_FALSE(g.get_int_array("t.f32_arr").is_ok());
    EXPECT_FALSE(g.get_string_array("t.i32_arr").is_ok());
    EXPECT_FALSE(g.get_bool("t.u8").is_ok());

    // A copy of every entry through copy_metadata/set_value is byte-identical.
    gguf_writer w2;
    w2.copy_metadata(g);
    std::string path2 = test::temp_dir() + "/meta2.gguf";
    ASSERT_TRUE(w2.write(path2).is_ok());
    EXPECT_EQ(read_bytes(path), read_bytes(path2));
}

TEST(GgufWriter, RoundTripTensorsOfSeveralDtypes) {
    const int64_t n_cols = 64, n_rows = 3;
    std::vector<float> src = test::random_floats(n_cols * n_rows, 7);
    gguf_writer w;
    w.set_string("general.architecture", "test");
    struct spec {
        const char* name;
        dtype type;
    };
    const spec specs[] = {{"t.f32", dtype::f32}, {"t.f16", dtype::f16}, {"t.bf16", dtype::bf16},
                          {"t.q8_0", dtype::q8_0}, {"t.q4_0", dtype::q4_0}, {"t.q4_1", dtype::q4_1}};
    std::vector<std::vector<uint8_t>> expect;
    for (const spec& s : specs) {
        std::vector<uint8_t> bytes(dtype_row_bytes(s.type, n_cols) * n_rows);
        for (int64_t r = 0; r < n_rows; ++r)
            ASSERT_TRUE(quantize_row(s.type, src.data() + r * n_cols, bytes.data() + r * dtype_row_bytes(s.type, n_cols), n_cols));
        ASSERT_TRUE(w.add_tensor_data(s.name, s.type, {n_cols, n_rows}, bytes.data(), bytes.size()).is_ok());
        expect.push_back(bytes);
    }
    // 1-D, 3-D and 4-D shapes, and a tensor whose size is not a multiple of the alignment.
    std::vector<float> odd(5, 2.5f);
    ASSERT_TRUE(w.add_tensor_data("t.odd", dtype::f32, {5}, odd.data(), odd.size() * 4).is_ok());
    std::vector<float> cube(2 * 3 * 4, 1.0f);
    ASSERT_TRUE(w.add_tensor_data("t.cube", dtype::f32, {2, 3, 4}, cube.data(), cube.size() * 4).is_ok());
    std::vector<float> hyper(2 * 2 * 2 * 2, -1.0f);
    ASSERT_TRUE(w.add_tensor_data("t.hyper", dtype::f32, {2, 2, 2, 2}, hyper.data(), hyper.size() * 4).is_ok());

    // The writer refuses bad shapes and duplicates.
    EXPECT_FALSE(w.add_tensor_data("t.f32", dtype::f32, {1}, odd.data(), 4).is_ok());
    EXPECT_FALSE(w.add_tensor("t.badrow", dtype::q8_0, {33}, nullptr).is_ok());
    EXPECT_FALSE(w.add_tensor("t.zero", dtype::f32, {0}, nullptr).is_ok());
    EXPECT_FALSE(w.add_tensor("t.dims5", dtype::f32, {1, 1, 1, 1, 1}, nullptr).is_ok());
    EXPECT_FALSE(w.add_tensor_data("t.wrongsize", dtype::f32, {4}, odd.data(), 12).is_ok());

    std::string path = test::temp_dir() + "/tensors.gguf";
    ASSERT_TRUE(w.write(path).is_ok());
    auto f = gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.message();
    const gguf_file& g = *f.value();
    ASSERT_EQ(g.tensors().size(), 9u);
    for (size_t k = 0; k < std::size(specs); ++k) {
        const gguf_tensor_info* t = g.find_tensor(specs[k].name);
        ASSERT_NE(t, nullptr) << specs[k].name;
        EXPECT_EQ(t->type, specs[k].type);
        EXPECT_EQ(t->n_dims, 2);
        EXPECT_EQ(t->ne[0], n_cols);
        EXPECT_EQ(t->ne[1], n_rows);
        EXPECT_EQ(t->shape_string(), "[64, 3]");
        EXPECT_EQ(t->n_bytes, expect[k].size());
        EXPECT_EQ(t->offset % g.alignment(), 0u);
        EXPECT_EQ((g.data_offset() + t->offset) % g.alignment(), 0u);
        EXPECT_EQ(std::memcmp(t->data, expect[k].data(), expect[k].size()), 0) << specs[k].name;
        // And the data decodes back close to the source.
        std::vector<float> back(size_t(n_cols * n_rows));
        for (int64_t r = 0; r < n_rows; ++r)
            ASSERT_TRUE(dequantize_row(t->type, t->data + r * dtype_row_bytes(t->type, n_cols), back.data() + r * n_cols, n_cols));
        EXPECT_LT(test::nmse_norm(back.data(), src.data(), n_cols * n_rows), 0.2) << specs[k].name;
    }
    const gguf_tensor_info* odd_t = g.find_tensor("t.odd");
    ASSERT_NE(odd_t, nullptr);
    EXPECT_EQ(odd_t->n_bytes, 20u);
    EXPECT_EQ(std::memcmp(odd_t->data, odd.data(), 20), 0);
    const gguf_tensor_info* cube_t = g.find_tensor("t.cube");
    ASSERT_NE(cube_t, nullptr);
    EXPECT_EQ(cube_t->n_dims, 3);
    EXPECT_EQ(cube_t->shape_string(), "[2, 3, 4]");
    EXPECT_EQ(cube_t->n_elements(), 24);
    EXPECT_EQ(g.find_tensor("t.hyper")->n_dims, 4);
    EXPECT_EQ(g.find_tensor("t.missing"), nullptr);
}

TEST(GgufWriter, FillErrorLeavesNoFile) {
    gguf_writer w;
    ASSERT_TRUE(w.add_tensor("x", dtype::f32, {4}, [](uint8_t*) { return status::error("source vanished"); }).is_ok());
    std::string path = test::temp_dir() + "/fail.gguf";
    status s = w.write(path);
    ASSERT_FALSE(s.is_ok());
    EXPECT_NE(s.message().find("source vanished"), std::string::npos);
    EXPECT_FALSE(std::filesystem::exists(path));
    EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
}

// ---------------------------------------------------------------------------------------------
// Real files.

TEST(GgufReader, Stories260K) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto f = gguf_file::open(path);
    ASSERT_TRUE(f.is_ok()) << f.message();
    const gguf_file& g = *f.value();
    EXPECT_EQ(g.version(), 3u);
    EXPECT_EQ(g.get_string("general.architecture").value(), "llama");
    EXPECT_EQ(g.get_int("llama.embedding_length").value(), 64);
    EXPECT_EQ(g.get_int("llama.block_count").value(), 5);
    EXPECT_EQ(g.get_int("llama.attention.head_count").value(), 8);
    EXPECT_EQ(g.get_int("llama.attention.head_count_kv").value(), 4);
    EXPECT_EQ(g.get_int("llama.feed_forward_length").value(), 172);
    EXPECT_NEAR(g.get_float("llama.attention.layer_norm_rms_epsilon").value(), 1e-5, 1e-9);
    EXPECT_EQ(g.get_int("tokenizer.ggml.bos_token_id").value(), 1);
    EXPECT_EQ(g.get_int("tokenizer.ggml.eos_token_id").value(), 2);
    auto tokens = g.get_string_array("tokenizer.ggml.tokens");
    ASSERT_TRUE(tokens.is_ok());
    EXPECT_EQ(tokens.value()->size(), 512u);
    EXPECT_EQ((*tokens.value())[1], "<s>");
    EXPECT_EQ(g.get_f32_array("tokenizer.ggml.scores").value().size(), 512u);
    EXPECT_EQ(g.get_int_array("tokenizer.ggml.token_type").value().size(), 512u);

    EXPECT_EQ(g.tensors().size(), 48u);  // embd, output norm, output, 5 x 9 per layer
    const gguf_tensor_info* emb = g.find_tensor("token_embd.weight");
    ASSERT_NE(emb, nullptr);
    EXPECT_EQ(emb->type, dtype::f32);
    EXPECT_EQ(emb->shape_string(), "[64, 512]");
    EXPECT_EQ(emb->n_bytes, 64u * 512 * 4);
    EXPECT_EQ(g.find_tensor("blk.4.attn_k.weight")->shape_string(), "[64, 32]");
    EXPECT_EQ(g.find_tensor("blk.0.ffn_down.weight")->shape_string(), "[172, 64]");
    EXPECT_EQ(g.find_tensor("output_norm.weight")->shape_string(), "[64]");
    uint64_t total = 0;
    for (auto& t : g.tensors()) {
        EXPECT_EQ(t.offset % g.alignment(), 0u) << t.name;
        EXPECT_LE(g.data_offset() + t.offset + t.n_bytes, g.file_size()) << t.name;
        total += t.n_bytes;
    }
    EXPECT_EQ(total, 292800u * 4);  // the "260K" parameters, with the classifier stored separately
}

TEST(GgufReader, EveryVocabFile) {
    std::string dir = test::shared_dir() + "/vocab";
    if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "fixture folder vocab/ not found under " << test::shared_dir();
    int n_files = 0;
    for (auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().extension() != ".gguf") continue;
        ++n_files;
        SCOPED_TRACE(e.path().string());
        auto f = gguf_file::open(e.path().string());
        ASSERT_TRUE(f.is_ok()) << f.message();
        const gguf_file& g = *f.value();
        EXPECT_EQ(g.tensors().size(), 0u);
        EXPECT_TRUE(g.get_string("general.architecture").is_ok());
        auto model = g.get_string("tokenizer.ggml.model");
        ASSERT_TRUE(model.is_ok());
        auto tokens = g.get_string_array("tokenizer.ggml.tokens");
        ASSERT_TRUE(tokens.is_ok());
        EXPECT_GT(tokens.value()->size(), 30000u);
        auto types = g.get_int_array("tokenizer.ggml.token_type");
        ASSERT_TRUE(types.is_ok());
        EXPECT_EQ(types.value().size(), tokens.value()->size());
        if (model.value() == "gpt2") {
            auto merges = g.get_string_array("tokenizer.ggml.merges");
            ASSERT_TRUE(merges.is_ok());
            EXPECT_GT(merges.value()->size(), 30000u);
        } else {
            EXPECT_EQ(g.get_f32_array("tokenizer.ggml.scores").value().size(), tokens.value()->size());
        }
        auto bos = g.get_int("tokenizer.ggml.bos_token_id");
        ASSERT_TRUE(bos.is_ok());
        EXPECT_LT(size_t(bos.value()), tokens.value()->size());
    }
    EXPECT_GE(n_files, 7);
}

TEST(GgufReader, OpenErrorsNameThePath) {
    auto missing = gguf_file::open(test::temp_dir() + "/does-not-exist.gguf");
    ASSERT_FALSE(missing.is_ok());
    EXPECT_NE(missing.message().find("does-not-exist.gguf"), std::string::npos);
    std::string empty = test::temp_dir() + "/empty.gguf";
    std::ofstream(empty).close();
    auto e = gguf_file::open(empty);
    ASSERT_FALSE(e.is_ok());
    EXPECT_NE(e.message().find("empty.gguf"), std::string::npos);
    EXPECT_NE(e.message().find("not a GGUF file"), std::string::npos);
    auto dir = gguf_file::open(test::temp_dir());
    EXPECT_FALSE(dir.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Malformed files, built byte by byte so each field can be set to anything.

struct raw_gguf {
    std::vector<uint8_t> b;
    void bytes(const void* p, size_t n) {
        size_t at = b.size();
        b.resize(at + n);
        if (n) std::memcpy(b.data() + at, p, n);
    }
    void u8(uint8_t v) { bytes(&v, 1); }
    void u32(uint32_t v) { bytes(&v, 4); }
    void u64(uint64_t v) { bytes(&v, 8); }
    void f32(float v) { bytes(&v, 4); }
    void str(std::string_view s) {
        u64(s.size());
        bytes(s.data(), s.size());
    }
    void header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
        u32(gguf_magic);
        u32(version);
        u64(n_tensors);
        u64(n_kv);
    }
    void kv_u32(std::string_view key, uint32_t v) {
        str(key);
        u32(uint32_t(gguf_type::u32));
        u32(v);
    }
    void kv_str(std::string_view key, std::string_view v) {
        str(key);
        u32(uint32_t(gguf_type::string));
        str(v);
    }
    void tensor(std::string_view name, std::vector<uint64_t> ne, uint32_t type, uint64_t offset) {
        str(name);
        u32(uint32_t(ne.size()));
        for (uint64_t d : ne) u64(d);
        u32(type);
        u64(offset);
    }
    void pad_to(size_t alignment) { b.resize((b.size() + alignment - 1) / alignment * alignment, 0); }
    void zeros(size_t n) { b.resize(b.size() + n, 0); }
};

// A valid small file: 3 metadata entries, two F32 tensors of 8 and 16 elements (32 + 64 bytes,
// multiples of the alignment, so the file has no trailing padding: every strict prefix is invalid).
raw_gguf valid_small() {
    raw_gguf r;
    r.header(2, 3);
    r.kv_str("general.architecture", "llama");
    r.kv_u32("llama.block_count", 1);
    r.str("tokenizer.ggml.tokens");
    r.u32(uint32_t(gguf_type::array));
    r.u32(uint32_t(gguf_type::string));
    r.u64(2);
    r.str("a");
    r.str("bc");
    r.tensor("a.weight", {8}, 0, 0);
    r.tensor("b.weight", {4, 4}, 0, 32);
    r.pad_to(32);
    for (int k = 0; k < 24; ++k) r.f32(float(k));
    return r;
}

result<std::unique_ptr<gguf_file>> parse(const raw_gguf& r) { return gguf_file::parse(r.b.data(), r.b.size()); }

// Parses `r` and expects an error whose message contains `needle`.
void expect_error(const raw_gguf& r, const std::string& needle) {
    auto f = parse(r);
    ASSERT_FALSE(f.is_ok()) << "expected an error mentioning \"" << needle << "\"";
    EXPECT_NE(f.message().find(needle), std::string::npos) << "message: " << f.message();
}

TEST(GgufMalformed, ValidSmallFileParses) {
    raw_gguf r = valid_small();
    auto f = parse(r);
    ASSERT_TRUE(f.is_ok()) << f.message();
    EXPECT_EQ(f.value()->kvs().size(), 3u);
    ASSERT_EQ(f.value()->tensors().size(), 2u);
    EXPECT_EQ(f.value()->tensors()[1].n_bytes, 64u);
    float x = 0;
    std::memcpy(&x, f.value()->tensors()[1].data + 4, 4);
    EXPECT_EQ(x, 9.0f);
}

TEST(GgufMalformed, EveryPrefixIsAnError) {
    raw_gguf r = valid_small();
    // Copy each prefix into its own exactly-sized heap buffer so that AddressSanitizer builds
    // catch any read past the end.
    for (size_t n = 0; n < r.b.size(); ++n) {
        std::unique_ptr<uint8_t[]> buf(new uint8_t[n ? n : 1]);
        if (n) std::memcpy(buf.get(), r.b.data(), n);
        auto f = gguf_file::parse(buf.get(), n);
        ASSERT_FALSE(f.is_ok()) << "prefix of " << n << " bytes parsed";
        EXPECT_FALSE(f.message().empty());
    }
    raw_gguf cut = r;
    cut.b.resize(10);
    expect_error(cut, "unexpected end of file reading tensor count");
    cut = r;
    cut.b.resize(r.b.size() - 1);
    expect_error(cut, "past the end");
    cut.b.resize(2);
    expect_error(cut, "not a GGUF file");
}

TEST(GgufMalformed, WrongMagic) {
    raw_gguf r = valid_small();
    std::memcpy(r.b.data(), "GGML", 4);
    expect_error(r, "magic is \"GGML\"");
    r.b[0] = 0;
    expect_error(r, "not a GGUF file");
}

TEST(GgufMalformed, Versions) {
    raw_gguf r = valid_small();
    uint32_t v = 1;
    std::memcpy(r.b.data() + 4, &v, 4);
    expect_error(r, "version 1");
    v = 99;
    std::memcpy(r.b.data() + 4, &v, 4);
    expect_error(r, "unsupported GGUF version 99");
    v = 2;  // v2 has the same layout as v3
    std::memcpy(r.b.data() + 4, &v, 4);
    auto f = parse(r);
    ASSERT_TRUE(f.is_ok()) << f.message();
    EXPECT_EQ(f.value()->version(), 2u);
}

TEST(GgufMalformed, AbsurdCounts) {
    raw_gguf r = valid_small();
    uint64_t big = uint64_t(1) << 60;
    raw_gguf t = r;
    std::memcpy(t.b.data() + 8, &big, 8);
    expect_error(t, "tensor count 1152921504606846976");
    raw_gguf k = r;
    std::memcpy(k.b.data() + 16, &big, 8);
    expect_error(k, "metadata count 1152921504606846976");
    raw_gguf m = r;
    uint64_t max = std::numeric_limits<uint64_t>::max();
    std::memcpy(m.b.data() + 16, &max, 8);
    expect_error(m, "cannot fit");
    // One more metadata entry than the file holds: the reader runs into the tensor infos.
    raw_gguf one = r;
    uint64_t four = 4;
    std::memcpy(one.b.data() + 16, &four, 8);
    EXPECT_FALSE(parse(one).is_ok());

    raw_gguf arr;
    arr.header(0, 1);
    arr.str("big.array");
    arr.u32(uint32_t(gguf_type::array));
    arr.u32(uint32_t(gguf_type::u32));
    arr.u64(uint64_t(1) << 62);
    expect_error(arr, "array of 4611686018427387904 u32 elements exceeds");

    raw_gguf sarr;
    sarr.header(0, 1);
    sarr.str("big.strings");
    sarr.u32(uint32_t(gguf_type::array));
    sarr.u32(uint32_t(gguf_type::string));
    sarr.u64(max);
    expect_error(sarr, "string array of 18446744073709551615 elements cannot fit");
}

TEST(GgufMalformed, StringLengthPastEnd) {
    raw_gguf r;
    r.header(0, 1);
    r.u64(1000);  // key length
    r.bytes("abcdefghijkl", 12);
    expect_error(r, "string length 1000 exceeds");
    raw_gguf v;
    v.header(0, 1);
    v.str("k");
    v.u32(uint32_t(gguf_type::string));
    v.u64(std::numeric_limits<uint64_t>::max());
    expect_error(v, "metadata k: string value");
    raw_gguf t;
    t.header(1, 0);
    t.u64(uint64_t(1) << 40);
    t.zeros(24);
    expect_error(t, "tensor 0: tensor name");
}

TEST(GgufMalformed, InvalidValueTypes) {
    raw_gguf r;
    r.header(0, 1);
    r.str("bad.type");
    r.u32(13);
    r.u32(0);
    expect_error(r, "metadata bad.type: value type 13 is not a GGUF type");
    raw_gguf e;
    e.header(0, 1);
    e.str("bad.elem");
    e.u32(uint32_t(gguf_type::array));
    e.u32(0xffffffffu);
    e.u64(1);
    expect_error(e, "array element type 4294967295 is not a GGUF type");
}

TEST(GgufMalformed, NestedArray) {
    raw_gguf r;
    r.header(0, 1);
    r.str("nested");
    r.u32(uint32_t(gguf_type::array));
    r.u32(uint32_t(gguf_type::array));
    r.u64(1);
    r.u32(uint32_t(gguf_type::u8));
    r.u64(1);
    r.u8(0);
    expect_error(r, "nested arrays are not supported");
}

TEST(GgufMalformed, BoolValueTwo) {
    raw_gguf r;
    r.header(0, 1);
    r.str("flag");
    r.u32(uint32_t(gguf_type::boolean));
    r.u8(2);
    expect_error(r, "metadata flag: bool value 2");
}

// A file whose only tensor has the given dims/type/offset and enough data for a 4x4 F32.
raw_gguf one_tensor(std::vector<uint64_t> ne, uint32_t type = 0, uint64_t offset = 0, size_t data_bytes = 64) {
    raw_gguf r;
    r.header(1, 0);
    r.tensor("t.weight", std::move(ne), type, offset);
    r.pad_to(32);
    r.zeros(data_bytes);
    return r;
}

TEST(GgufMalformed, TensorDims) {
    ASSERT_TRUE(parse(one_tensor({4, 4})).is_ok());
    expect_error(one_tensor({}), "tensor t.weight: 0 dimensions (expected 1 to 4)");
    expect_error(one_tensor({1, 1, 1, 1, 1}), "tensor t.weight: 5 dimensions");
    expect_error(one_tensor({4, 0}), "tensor t.weight: dimension 1 is 0");
    expect_error(one_tensor({uint64_t(1) << 63}), "dimension 0 is 9223372036854775808");
    expect_error(one_tensor({uint64_t(1) << 32, uint64_t(1) << 32}), "element count overflows");
    expect_error(one_tensor({uint64_t(1) << 21, uint64_t(1) << 21, uint64_t(1) << 21}), "element count overflows");
    // Large but representable: rejected because its bytes lie past the end.
    expect_error(one_tensor({uint64_t(1) << 20, uint64_t(1) << 20}), "past the end");
    // An element count that fits int64 but whose byte size does not fit uint64.
    expect_error(one_tensor({uint64_t(1) << 62}), "tensor t.weight: byte size overflows");
}

TEST(GgufMalformed, TensorTypes) {
    expect_error(one_tensor({4, 4}, 4), "tensor t.weight: unknown tensor type 4");
    expect_error(one_tensor({4, 4}, 39), "unknown tensor type 39");
    expect_error(one_tensor({4, 4}, 40), "unknown tensor type 40");
    expect_error(one_tensor({4, 4}, 0xffffffffu), "unknown tensor type 4294967295");
    expect_error(one_tensor({48, 2}, uint32_t(dtype::q8_0), 0, 128), "row length 48 is not a multiple of the q8_0 block size 32");
    expect_error(one_tensor({100}, uint32_t(dtype::q4_k), 0, 128), "row length 100 is not a multiple of the q4_k block size 256");
    raw_gguf ok = one_tensor({32, 2}, uint32_t(dtype::q8_0), 0, 68);
    auto f = parse(ok);
    ASSERT_TRUE(f.is_ok()) << f.message();
    EXPECT_EQ(f.value()->tensors()[0].n_bytes, 68u);
}

TEST(GgufMalformed, TensorOffsets) {
    expect_error(one_tensor({4, 4}, 0, 8, 128), "tensor t.weight: offset 8 is not a multiple of the alignment 32");
    expect_error(one_tensor({4, 4}, 0, 32, 64), "tensor t.weight: data [32, 96) lies past the end");
    expect_error(one_tensor({4, 4}, 0, uint64_t(1) << 40, 64), "past the end");
    expect_error(one_tensor({4, 4}, 0, ~uint64_t(31), 64), "past the end");  // offset + size wraps
    expect_error(one_tensor({4, 4}, 0, 0, 60), "past the end");
    // Header ends but the data section never starts.
    raw_gguf r;
    r.header(1, 0);
    r.tensor("t.weight1", {1}, 0, 0);  // a 65-byte header: the data would start at 96
    expect_error(r, "before its tensor data section starts");
}

TEST(GgufMalformed, DuplicateKeyAndTensorName) {
    raw_gguf k;
    k.header(0, 2);
    k.kv_u32("dup.key", 1);
    k.kv_str("dup.key", "x");
    expect_error(k, "metadata key dup.key appears twice");
    raw_gguf t;
    t.header(2, 0);
    t.tensor("same", {8}, 0, 0);
    t.tensor("same", {8}, 0, 32);
    t.pad_to(32);
    t.zeros(64);
    expect_error(t, "tensor same appears twice");
}

TEST(GgufMalformed, BadAlignment) {
    auto with_alignment = [](auto set) {
        raw_gguf r;
        r.header(1, 1);
        set(r);
        r.tensor("t", {8}, 0, 0);
        r.pad_to(64);
        r.zeros(64);
        return r;
    };
    expect_error(with_alignment([](raw_gguf& r) { r.kv_u32("general.alignment", 0); }), "general.alignment 0 is not a power of two");
    expect_error(with_alignment([](raw_gguf& r) { r.kv_u32("general.alignment", 48); }), "general.alignment 48 is not a power of two");
    expect_error(with_alignment([](raw_gguf& r) { r.kv_str("general.alignment", "32"); }), "general.alignment must be a u32, got string");
    expect_error(with_alignment([](raw_gguf& r) {
                     r.str("general.alignment");
                     r.u32(uint32_t(gguf_type::u64));
                     r.u64(32);
                 }),
                 "general.alignment must be a u32, got u64");
    // A valid custom alignment is honoured.
    auto f = parse(with_alignment([](raw_gguf& r) { r.kv_u32("general.alignment", 64); }));
    ASSERT_TRUE(f.is_ok()) << f.message();
    EXPECT_EQ(f.value()->alignment(), 64u);
    EXPECT_EQ(f.value()->data_offset() % 64, 0u);
    // A huge alignment pushes the data section past the end.
    expect_error(with_alignment([](raw_gguf& r) { r.kv_u32("general.alignment", 1u << 31); }), "before its tensor data section starts");
}

TEST(GgufMalformed, RandomByteFlipsNeverCrash) {
    // A cheap in-test fuzz pass (the libFuzzer target in fuzz/ goes much further): flip one
    // byte of the valid file at every position to several values.
    raw_gguf r = valid_small();
    size_t n_ok = 0, n_err = 0;
    for (size_t pos = 0; pos < r.b.size(); ++pos) {
        for (uint8_t v : {uint8_t(0), uint8_t(1), uint8_t(0x7f), uint8_t(0x80), uint8_t(0xff)}) {
            std::vector<uint8_t> b = r.b;
            b[pos] = v;
            auto f = gguf_file::parse(b.data(), b.size());
            if (f.is_ok()) {
                ++n_ok;
                for (auto& t : f.value()->tensors()) ASSERT_LE(t.data + t.n_bytes, b.data() + b.size());
            } else {
                ++n_err;
                EXPECT_FALSE(f.message().empty());
            }
        }
    }
    EXPECT_GT(n_ok, 0u);
    EXPECT_GT(n_err, 0u);
}

}  // namespace
}  // namespace kvs
