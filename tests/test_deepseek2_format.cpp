// DeepSeek-V2's file format (arch "deepseek2", llama.cpp's keys and tensor names) as `kvserve
// synth` writes it: every key and tensor with its dims and dtype (3-D expert stacks quantized,
// the router F32), the --q-lora-rank and --yarn variants, `inspect` and `quantize` on such files;
// and checks of the float64 reference (tests/reference_deepseek2.h) that can fail: routing is the
// softmax top-k, causality, YaRN at factor 1 is no YaRN, and invariances of the weight layouts
// (experts and heads permuted consistently, the rotated key taken from its rows of kv_a).
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "model/shapes.h"
#include "reference_deepseek2.h"
#include "reference_model.h"
#include "test_util.h"

namespace kvs {
namespace {

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

// Runs `kvserve ARGS` with KVSERVE_SHARED pointing at the fixtures; returns the exit status.
int kvserve(const std::string& args, std::string* out = nullptr) {
    std::string output;
    int rc = test::run_command("KVSERVE_SHARED='" + test::shared_dir() + "' '" + test::kvserve_binary() + "' " + args, &output);
    if (out) *out = output;
    return rc;
}

const model_shape& tiny() {
    const model_shape* s = find_model_shape("deepseek-v2-tiny");
    EXPECT_NE(s, nullptr);
    return *s;
}

// Writes deepseek-v2-tiny in `dtype` with extra synth arguments to temp_dir()/NAME.gguf ("" on
// failure, with the test failed).
std::string synth_tiny(const std::string& name, const std::string& dtype, const std::string& extra = "") {
    const std::string vocab = test::shared_file("models/stories260K.gguf");
    const std::string out = test::temp_dir() + "/" + name + ".gguf";
    std::string text;
    const int rc = kvserve("synth --shape deepseek-v2-tiny --dtype " + dtype + " --vocab '" + vocab + "' " + extra + " -o " + out, &text);
    EXPECT_EQ(rc, 0) << text;
    return rc == 0 ? out : std::string();
}

std::unique_ptr<gguf_file> open_ok(const std::string& path) {
    auto f = gguf_file::open(path);
    EXPECT_TRUE(f.is_ok()) << f.message();
    return f ? std::move(f.value()) : nullptr;
}

#define SKIP_WITHOUT_VOCAB()                                                      \
    KVS_SKIP_IF_MISSING(vocab_fixture_, "models/stories260K.gguf");               \
    (void)vocab_fixture_

// Every tensor of a deepseek2 file of shape `s`: name -> dims (GGUF order).
std::map<std::string, std::vector<int64_t>> expected_tensors(const model_shape& s) {
    const int64_t E = s.n_embd, H = s.n_head, QK = s.qk_nope + s.qk_rope, FX = s.n_ff_exp, FS = FX * s.n_expert_shared;
    std::map<std::string, std::vector<int64_t>> t = {
        {"token_embd.weight", {E, s.n_vocab}}, {"output_norm.weight", {E}}, {"output.weight", {E, s.n_vocab}}};
    for (int64_t l = 0; l < s.n_layer; ++l) {
        const std::string p = "blk." + std::to_string(l) + ".";
        t[p + "attn_norm.weight"] = {E};
        if (s.q_lora > 0) {
            t[p + "attn_q_a.weight"] = {E, s.q_lora};
            t[p + "attn_q_a_norm.weight"] = {s.q_lora};
            t[p + "attn_q_b.weight"] = {s.q_lora, H * QK};
        } else {
            t[p + "attn_q.weight"] = {E, H * QK};
        }
        t[p + "attn_kv_a_mqa.weight"] = {E, s.kv_lora + s.qk_rope};
        t[p + "attn_kv_a_norm.weight"] = {s.kv_lora};
        t[p + "attn_kv_b.weight"] = {s.kv_lora, H * (s.qk_nope + s.v_head)};
        t[p + "attn_output.weight"] = {H * s.v_head, E};
        t[p + "ffn_norm.weight"] = {E};
        if (l < s.n_layer_dense_lead) {
            t[p + "ffn_gate.weight"] = {E, s.n_ff};
            t[p + "ffn_up.weight"] = {E, s.n_ff};
            t[p + "ffn_down.weight"] = {s.n_ff, E};
        } else {
            t[p + "ffn_gate_inp.weight"] = {E, s.n_expert};
            t[p + "ffn_gate_exps.weight"] = {E, FX, s.n_expert};
            t[p + "ffn_up_exps.weight"] = {E, FX, s.n_expert};
            t[p + "ffn_down_exps.weight"] = {FX, E, s.n_expert};
            t[p + "ffn_gate_shexp.weight"] = {E, FS};
            t[p + "ffn_up_shexp.weight"] = {E, FS};
            t[p + "ffn_down_shexp.weight"] = {FS, E};
        }
    }
    return t;
}

// Checks the keys and the tensor table of a synth file of shape `s` written in `dt` (every
// matrix row of the tiny shape is a multiple of 32, so q8_0 applies to all of them).
void check_file(const gguf_file& f, const model_shape& s, dtype dt) {
    const std::string a = "deepseek2.";
    EXPECT_EQ(f.get_string("general.architecture").value(), "deepseek2");
    EXPECT_EQ(f.get_int("general.file_type").value(), llama_ftype_of(dt));
    EXPECT_EQ(f.get_int(a + "context_length").value(), s.n_ctx_train);
    EXPECT_EQ(f.get_int(a + "embedding_length").value(), s.n_embd);
    EXPECT_EQ(f.get_int(a + "block_count").value(), s.n_layer);
    EXPECT_EQ(f.get_int(a + "feed_forward_length").value(), s.n_ff);
    EXPECT_EQ(f.get_int(a + "attention.head_count").value(), s.n_head);
    EXPECT_EQ(f.get_int(a + "attention.head_count_kv").value(), s.n_head);
    EXPECT_FLOAT_EQ(float(f.get_float(a + "rope.freq_base").value()), s.rope_freq_base);
    EXPECT_FLOAT_EQ(float(f.get_float(a + "attention.layer_norm_rms_epsilon").value()), s.rms_eps);
    EXPECT_EQ(f.get_int(a + "leading_dense_block_count").value(), s.n_layer_dense_lead);
    EXPECT_EQ(f.get_int(a + "attention.q_lora_rank").value(), s.q_lora);  // written also when 0
    EXPECT_EQ(f.get_int(a + "attention.kv_lora_rank").value(), s.kv_lora);
    EXPECT_EQ(f.get_int(a + "attention.key_length").value(), s.qk_nope + s.qk_rope);
    EXPECT_EQ(f.get_int(a + "attention.value_length").value(), s.v_head);
    EXPECT_EQ(f.get_int(a + "rope.dimension_count").value(), s.qk_rope);
    EXPECT_EQ(f.get_int(a + "expert_feed_forward_length").value(), s.n_ff_exp);
    EXPECT_EQ(f.get_int(a + "expert_count").value(), s.n_expert);
    EXPECT_EQ(f.get_int(a + "expert_shared_count").value(), s.n_expert_shared);
    EXPECT_EQ(f.get_int(a + "expert_used_count").value(), s.n_expert_used);
    ASSERT_NE(f.find(a + "expert_weights_scale"), nullptr);
    EXPECT_EQ(f.find(a + "expert_weights_scale")->type, gguf_type::f32);
    EXPECT_FLOAT_EQ(float(f.get_float(a + "expert_weights_scale").value()), s.expert_weights_scale);
    ASSERT_NE(f.find(a + "expert_weights_norm"), nullptr);
    EXPECT_EQ(f.find(a + "expert_weights_norm")->type, gguf_type::boolean);
    EXPECT_FALSE(f.get_bool(a + "expert_weights_norm").value());
    ASSERT_NE(f.find(a + "expert_gating_func"), nullptr);
    EXPECT_EQ(f.find(a + "expert_gating_func")->type, gguf_type::u32);
    EXPECT_EQ(f.get_int(a + "expert_gating_func").value(), 1);  // softmax
    EXPECT_EQ(int64_t(f.get_string_array("tokenizer.ggml.tokens").value()->size()), s.n_vocab);
    EXPECT_TRUE(f.get_string("tokenizer.ggml.model").is_ok());
    if (s.yarn_factor > 0) {
        EXPECT_EQ(f.get_string(a + "rope.scaling.type").value(), "yarn");
        EXPECT_FLOAT_EQ(float(f.get_float(a + "rope.scaling.factor").value()), s.yarn_factor);
        EXPECT_EQ(f.get_int(a + "rope.scaling.original_context_length").value(), s.yarn_orig_ctx);
        EXPECT_FLOAT_EQ(float(f.get_float(a + "rope.scaling.yarn_log_multiplier").value()), s.yarn_log_mul);
    } else {
        EXPECT_EQ(f.find(a + "rope.scaling.type"), nullptr);
        EXPECT_EQ(f.find(a + "rope.scaling.factor"), nullptr);
    }

    const auto want = expected_tensors(s);
    EXPECT_EQ(f.tensors().size(), want.size());
    int64_t n_elements = 0;
    for (const auto& [name, ne] : want) {
        const gguf_tensor_info* t = f.find_tensor(name);
        ASSERT_NE(t, nullptr) << name;
        ASSERT_EQ(t->n_dims, int(ne.size())) << name;
        for (size_t d = 0; d < ne.size(); ++d) EXPECT_EQ(t->ne[d], ne[d]) << name << " dim " << d;
        const bool router = name.find("ffn_gate_inp") != std::string::npos;
        EXPECT_EQ(t->type, ne.size() == 1 || router ? dtype::f32 : dt) << name;
        n_elements += t->n_elements();
    }
    EXPECT_EQ(n_elements, s.n_params());
}

// f32 values of a tensor.
std::vector<float> to_f32(const gguf_tensor_info& t) {
    std::vector<float> v(size_t(t.n_elements()));
    const size_t row = dtype_row_bytes(t.type, t.ne[0]);
    for (int64_t r = 0; r < t.n_elements() / t.ne[0]; ++r)
        EXPECT_TRUE(dequantize_row(t.type, t.data + size_t(r) * row, v.data() + r * t.ne[0], t.ne[0]));
    return v;
}

// Copies an f32 file, letting `edit` change any tensor's values (and keep its dims) and `keys`
// set metadata, to temp_dir()/NAME.gguf.
std::string rewrite(const std::string& src, const std::string& name,
                    const std::function<void(const std::string& tensor, std::vector<float>& values)>& edit,
                    const std::function<void(gguf_writer&)>& keys = nullptr) {
    auto f = open_ok(src);
    if (!f) return "";
    gguf_writer w;
    w.copy_metadata(*f);
    if (keys) keys(w);
    for (const gguf_tensor_info& t : f->tensors()) {
        EXPECT_EQ(t.type, dtype::f32) << t.name;
        std::vector<float> v(size_t(t.n_elements()));
        std::memcpy(v.data(), t.data, v.size() * sizeof(float));
        if (edit) edit(std::string(t.name), v);
        std::vector<int64_t> ne(t.ne, t.ne + t.n_dims);
        EXPECT_TRUE(w.add_tensor_data(std::string(t.name), dtype::f32, ne, v.data(), v.size() * sizeof(float)).is_ok());
    }
    const std::string path = test::temp_dir() + "/" + name + ".gguf";
    EXPECT_TRUE(w.write(path).is_ok()) << path;
    return path;
}

using logits_t = std::vector<std::vector<double>>;

logits_t reference(const std::string& path, const std::vector<int32_t>& tokens,
                   std::vector<test::reference_deepseek2_route>* routes = nullptr) {
    auto f = open_ok(path);
    return f ? test::reference_deepseek2_logits(*f, tokens, routes) : logits_t{};
}

// max |a - b| / max |b| over a row.
double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
    double d = 0, m = 1e-300;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i])), m = std::max(m, std::abs(b[i]));
    return d / m;
}

double max_rel_diff(const logits_t& a, const logits_t& b) {
    EXPECT_EQ(a.size(), b.size());
    double d = 0;
    for (size_t t = 0; t < std::min(a.size(), b.size()); ++t) d = std::max(d, rel_diff(a[t], b[t]));
    return d;
}

// ---------------------------------------------------------------------------------------------
// shapes

TEST(DeepSeek2Shapes, TinyShape) {
    const model_shape& s = tiny();
    EXPECT_STREQ(s.arch, "deepseek2");
    EXPECT_TRUE(s.deepseek2());
    EXPECT_FALSE(s.yoco());
    EXPECT_FALSE(find_model_shape("stories260k")->deepseek2());
    EXPECT_EQ(s.n_vocab, 512);
    EXPECT_STREQ(s.default_vocab, "models/stories260K.gguf");
    EXPECT_GT(s.q_lora, 0);  // the query bottleneck is exercised
    EXPECT_EQ(s.n_head_kv, s.n_head);
    EXPECT_GT(s.n_layer, s.n_layer_dense_lead);
    EXPECT_GT(s.n_layer_dense_lead, 0);
    EXPECT_EQ(s.yarn_factor, 0.0f);
    EXPECT_NE(s.expert_weights_scale, 1.0f);  // the scale is exercised
    // By hand: embeddings and head 2·512·64 + 64; per layer norms 2·64, q 64·32 + 32 + 32·4·24,
    // kv_a 64·40 + 32, kv_b 32·4·32, output 64·64; dense 3·64·96; MoE router 64·8, experts
    // 3·64·32·8, shared 3·64·32.
    const int64_t attn = 2 * 64 + (64 * 32 + 32 + 32 * 4 * 24) + (64 * 40 + 32) + 32 * 4 * 32 + 64 * 64;
    EXPECT_EQ(s.n_params(), 2 * 512 * 64 + 64 + 3 * attn + 3 * 64 * 96 + 2 * (64 * 8 + 3 * 64 * 32 * 8 + 3 * 64 * 32));
    model_shape no_q = s;
    no_q.q_lora = 0;
    EXPECT_EQ(s.n_params() - no_q.n_params(), 3 * ((64 * 32 + 32 + 32 * 4 * 24) - 64 * 4 * 24));
    EXPECT_NE(model_shape_names().find("deepseek-v2-tiny"), std::string::npos);
    EXPECT_NE(model_shape_names().find("deepseek-v2-lite"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// synth, inspect, quantize

TEST(DeepSeek2Format, SynthWritesEveryKeyAndTensor) {
    SKIP_WITHOUT_VOCAB();
    for (const char* dt_name : {"f32", "q8_0"}) {
        SCOPED_TRACE(dt_name);
        const std::string path = synth_tiny(std::string("ds2-") + dt_name, dt_name);
        ASSERT_FALSE(path.empty());
        auto f = open_ok(path);
        ASSERT_TRUE(f);
        dtype dt = dtype::f32;
        ASSERT_TRUE(dtype_from_name(dt_name, &dt));
        check_file(*f, tiny(), dt);
        EXPECT_EQ(f->get_string("kvserve.synth.shape").value(), "deepseek-v2-tiny");
        // Norms are 1; the experts of a stack are different random matrices of std ~0.02.
        for (float x : to_f32(*f->find_tensor("blk.1.attn_kv_a_norm.weight"))) ASSERT_EQ(x, 1.0f);
        for (float x : to_f32(*f->find_tensor("blk.2.attn_q_a_norm.weight"))) ASSERT_EQ(x, 1.0f);
        const auto up = to_f32(*f->find_tensor("blk.2.ffn_up_exps.weight"));
        const size_t per_expert = size_t(64 * 32);
        EXPECT_FALSE(std::equal(up.begin(), up.begin() + per_expert, up.begin() + per_expert));
        double sum2 = 0;
        for (float x : up) sum2 += double(x) * x;
        EXPECT_NEAR(std::sqrt(sum2 / double(up.size())), 0.02, 0.002);
    }
}

TEST(DeepSeek2Format, QLoraRankAndYarnOptions) {
    SKIP_WITHOUT_VOCAB();
    const std::string base = synth_tiny("ds2-opt-base", "q8_0");
    const std::string no_q = synth_tiny("ds2-opt-noq", "q8_0", "--q-lora-rank 0");
    const std::string yarn = synth_tiny("ds2-opt-yarn", "q8_0", "--yarn 4");
    ASSERT_FALSE(base.empty() || no_q.empty() || yarn.empty());

    model_shape s = tiny();
    s.q_lora = 0;
    auto fq = open_ok(no_q);
    ASSERT_TRUE(fq);
    check_file(*fq, s, dtype::q8_0);
    EXPECT_EQ(fq->find_tensor("blk.0.attn_q_a.weight"), nullptr);
    EXPECT_EQ(fq->find_tensor("blk.0.attn_q.weight")->shape_string(), "[64, 96]");
    // With the same seed every tensor the two files share is identical.
    auto fb = open_ok(base);
    ASSERT_TRUE(fb);
    for (const char* name : {"blk.0.attn_kv_b.weight", "blk.2.ffn_down_exps.weight", "output.weight"}) {
        const gguf_tensor_info *a = fb->find_tensor(name), *b = fq->find_tensor(name);
        ASSERT_TRUE(a && b) << name;
        ASSERT_EQ(a->n_bytes, b->n_bytes) << name;
        EXPECT_EQ(std::memcmp(a->data, b->data, size_t(a->n_bytes)), 0) << name;
    }

    // --yarn FACTOR over a shape without YaRN: its context / FACTOR is the original one.
    s = tiny();
    s.yarn_factor = 4.0f;
    s.yarn_orig_ctx = 512 / 4;
    s.yarn_log_mul = 0.0707f;
    auto fy = open_ok(yarn);
    ASSERT_TRUE(fy);
    check_file(*fy, s, dtype::q8_0);

    // --layers keeps the leading dense layers within the layer count.
    const std::string one = synth_tiny("ds2-opt-one", "f32", "--layers 1");
    ASSERT_FALSE(one.empty());
    auto f1 = open_ok(one);
    s = tiny();
    s.n_layer = 1;
    check_file(*f1, s, dtype::f32);

    std::string text;
    const std::string out = test::temp_dir() + "/ds2-opt-bad.gguf";
    EXPECT_EQ(kvserve("synth --shape stories260k --dtype f32 --yarn 4 -o " + out, &text), 2);
    EXPECT_HAS(text, "apply to deepseek2 shapes only");
    EXPECT_EQ(kvserve("synth --shape stories260k --dtype f32 --q-lora-rank 8 -o " + out, &text), 2);
    EXPECT_EQ(kvserve("synth --shape deepseek-v2-tiny --dtype f32 --yarn 0.5 -o " + out, &text), 2);
    EXPECT_HAS(text, "at least 1");
    EXPECT_EQ(kvserve("synth --shape deepseek-v2-tiny --dtype f32 --q-lora-rank -1 -o " + out, &text), 2);
}

TEST(DeepSeek2Format, InspectPrintsIt) {
    SKIP_WITHOUT_VOCAB();
    const std::string path = synth_tiny("ds2-inspect", "q8_0", "--yarn 2");
    ASSERT_FALSE(path.empty());
    std::string text;
    ASSERT_EQ(kvserve("inspect " + path, &text), 0) << text;
    for (const char* needle : {"\"deepseek2\"", "deepseek2.attention.kv_lora_rank", "deepseek2.expert_gating_func",
                               "deepseek2.rope.scaling.type", "blk.1.ffn_gate_exps.weight", "[64, 32, 8]", "blk.2.ffn_gate_inp.weight"})
        EXPECT_HAS(text, needle);
}

TEST(DeepSeek2Format, QuantizeEncodesTheExpertStacks) {
    SKIP_WITHOUT_VOCAB();
    const std::string f32 = synth_tiny("ds2-quant-f32", "f32"), q8 = synth_tiny("ds2-quant-q8", "q8_0");
    ASSERT_FALSE(f32.empty() || q8.empty());
    const std::string out = test::temp_dir() + "/ds2-quantized.gguf";
    std::string text;
    ASSERT_EQ(kvserve("quantize " + f32 + " " + out + " q8_0", &text), 0) << text;
    auto fq = open_ok(out), fs = open_ok(q8);
    ASSERT_TRUE(fq && fs);
    check_file(*fq, tiny(), dtype::q8_0);
    // The same bytes as synth writes in q8_0 (the same values, quantized the same way).
    for (const gguf_tensor_info& t : fs->tensors()) {
        const gguf_tensor_info* q = fq->find_tensor(t.name);
        ASSERT_NE(q, nullptr) << t.name;
        ASSERT_EQ(q->n_bytes, t.n_bytes) << t.name;
        EXPECT_EQ(std::memcmp(q->data, t.data, size_t(t.n_bytes)), 0) << t.name;
    }
}

// ---------------------------------------------------------------------------------------------
// the float64 reference

TEST(DeepSeek2Reference, FiniteLogitsOnEveryVariant) {
    SKIP_WITHOUT_VOCAB();
    const auto tokens = test::some_tokens(9, 512, 5);
    const std::string f32 = synth_tiny("ds2-ref-f32", "f32");
    const logits_t exact = reference(f32, tokens);
    ASSERT_EQ(exact.size(), tokens.size());
    for (const auto& [name, args, dt] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"ds2-ref-q8", "", "q8_0"}, {"ds2-ref-noq", "--q-lora-rank 0", "f32"}, {"ds2-ref-yarn", "--yarn 8", "f32"}, {"ds2-ref-f32b", "", "f32"}}) {
        SCOPED_TRACE(name);
        const logits_t l = reference(synth_tiny(name, dt, args), tokens);
        ASSERT_EQ(l.size(), tokens.size());
        for (const auto& row : l) {
            ASSERT_EQ(row.size(), 512u);
            for (double x : row) ASSERT_TRUE(std::isfinite(x));
            EXPECT_GT(*std::max_element(row.begin(), row.end()) - *std::min_element(row.begin(), row.end()), 1e-6);
        }
        if (name == "ds2-ref-q8") {
            // q8_0 weights move the logits little: the expert stacks are dequantized slice by slice.
            EXPECT_LT(max_rel_diff(l, exact), 0.05);
            EXPECT_GT(max_rel_diff(l, exact), 0.0);
        }
        if (name == "ds2-ref-f32b") {
            EXPECT_EQ(max_rel_diff(l, exact), 0.0);  // deterministic
        }
    }
    // A file that is not deepseek2 is a failure of the reference, not a crash.
    auto llama = open_ok(test::write_synth(test::synth_spec{}, "ds2-ref-llama"));
    ASSERT_TRUE(llama);
    std::vector<test::reference_deepseek2_route> routes;
    EXPECT_NONFATAL_FAILURE((void)test::reference_deepseek2_logits(*llama, {1, 2}, &routes), "deepseek2");
}

// The routing the reference reports is the top-k of a softmax over the router's logits,
// recomputed here from the file's F32 router and the reported router input.
TEST(DeepSeek2Reference, RoutingIsTheSoftmaxTopK) {
    SKIP_WITHOUT_VOCAB();
    const model_shape& s = tiny();
    const std::string path = synth_tiny("ds2-route", "q8_0");
    ASSERT_FALSE(path.empty());
    auto f = open_ok(path);
    ASSERT_TRUE(f);
    const auto tokens = test::some_tokens(10, 512, 11);
    std::vector<test::reference_deepseek2_route> routes;
    const logits_t logits = test::reference_deepseek2_logits(*f, tokens, &routes);
    ASSERT_EQ(logits.size(), tokens.size());
    ASSERT_EQ(routes.size(), size_t((s.n_layer - s.n_layer_dense_lead)) * tokens.size());
    std::set<std::vector<int32_t>> distinct;
    for (size_t i = 0; i < routes.size(); ++i) {
        const auto& r = routes[i];
        SCOPED_TRACE("layer " + std::to_string(r.layer) + " token " + std::to_string(r.token));
        EXPECT_EQ(r.layer, s.n_layer_dense_lead + int64_t(i / tokens.size()));  // by layer, then token
        EXPECT_EQ(r.token, int64_t(i % tokens.size()));
        const gguf_tensor_info* router = f->find_tensor("blk." + std::to_string(r.layer) + ".ffn_gate_inp.weight");
        ASSERT_NE(router, nullptr);
        ASSERT_EQ(router->type, dtype::f32);
        ASSERT_EQ(r.ffn_input.size(), size_t(s.n_embd));
        const float* w = reinterpret_cast<const float*>(router->data);
        std::vector<double> p(size_t(s.n_expert));
        for (int64_t e = 0; e < s.n_expert; ++e)
            for (int64_t d = 0; d < s.n_embd; ++d) p[size_t(e)] += double(w[e * s.n_embd + d]) * r.ffn_input[size_t(d)];
        double z = 0;
        for (double& v : p) z += (v = std::exp(v));
        for (double& v : p) v /= z;
        ASSERT_EQ(r.probs.size(), p.size());
        for (size_t e = 0; e < p.size(); ++e) EXPECT_NEAR(r.probs[e], p[e], 1e-12);
        // Top-k by probability: every chosen expert beats every other one.
        ASSERT_EQ(r.experts.size(), size_t(s.n_expert_used));
        ASSERT_EQ(r.weights.size(), size_t(s.n_expert_used));
        std::set<int32_t> chosen(r.experts.begin(), r.experts.end());
        EXPECT_EQ(chosen.size(), r.experts.size());
        double min_chosen = 1, max_other = 0, sum = 0;
        for (size_t k = 0; k < r.experts.size(); ++k) {
            ASSERT_GE(r.experts[k], 0);
            ASSERT_LT(r.experts[k], s.n_expert);
            min_chosen = std::min(min_chosen, p[size_t(r.experts[k])]);
            EXPECT_NEAR(r.weights[k], p[size_t(r.experts[k])] * double(s.expert_weights_scale), 1e-12);
            if (k > 0) {
                EXPECT_GE(r.weights[k - 1], r.weights[k]);  // rank order
            }
            sum += r.weights[k];
        }
        for (int32_t e = 0; e < s.n_expert; ++e)
            if (!chosen.count(e)) max_other = std::max(max_other, p[size_t(e)]);
        EXPECT_GT(min_chosen, max_other);
        EXPECT_LE(sum, double(s.expert_weights_scale));
        distinct.insert(std::vector<int32_t>(chosen.begin(), chosen.end()));
    }
    EXPECT_GT(distinct.size(), 1u);  // the tokens do not all go to the same experts

    // expert_weights_norm: the chosen weights are renormalized to sum to the scale.
    const std::string f32 = synth_tiny("ds2-route-f32", "f32");
    const std::string normed = rewrite(f32, "ds2-route-norm", nullptr, [](gguf_writer& w) { w.set_bool("deepseek2.expert_weights_norm", true); });
    std::vector<test::reference_deepseek2_route> nr;
    ASSERT_EQ(reference(normed, tokens, &nr).size(), tokens.size());
    for (const auto& r : nr) {
        double sum = 0;
        for (double x : r.weights) sum += x;
        EXPECT_NEAR(sum, double(s.expert_weights_scale), 1e-12);
        EXPECT_NEAR(r.weights[0] / r.weights[1], r.probs[size_t(r.experts[0])] / r.probs[size_t(r.experts[1])], 1e-12);
    }
}

TEST(DeepSeek2Reference, CausalLogitsDoNotSeeLaterTokens) {
    SKIP_WITHOUT_VOCAB();
    const std::string path = synth_tiny("ds2-causal", "q8_0", "--yarn 4");
    ASSERT_FALSE(path.empty());
    const auto a = test::some_tokens(12, 512, 21);
    auto b = a;
    for (size_t t = 7; t < b.size(); ++t) b[t] = (b[t] + 101) % 512;
    const logits_t la = reference(path, a), lb = reference(path, b);
    ASSERT_EQ(la.size(), a.size());
    ASSERT_EQ(lb.size(), b.size());
    for (size_t t = 0; t < 7; ++t) EXPECT_EQ(la[t], lb[t]) << t;
    for (size_t t = 7; t < a.size(); ++t) EXPECT_GT(rel_diff(la[t], lb[t]), 1e-6) << t;
    // A prefix alone gives the same rows.
    const logits_t lp = reference(path, std::vector<int32_t>(a.begin(), a.begin() + 5));
    ASSERT_EQ(lp.size(), 5u);
    for (size_t t = 0; t < 5; ++t) EXPECT_EQ(lp[t], la[t]) << t;
}

TEST(DeepSeek2Reference, YarnFactorOneIsNoYarn) {
    SKIP_WITHOUT_VOCAB();
    const auto tokens = test::some_tokens(10, 512, 31);
    const logits_t plain = reference(synth_tiny("ds2-yarn-none", "f32"), tokens);
    const logits_t one = reference(synth_tiny("ds2-yarn-1", "f32", "--yarn 1"), tokens);
    const logits_t four = reference(synth_tiny("ds2-yarn-4", "f32", "--yarn 4"), tokens);
    ASSERT_EQ(plain.size(), tokens.size());
    EXPECT_LT(max_rel_diff(one, plain), 1e-12);
    // Position 0 rotates nothing and attends one key: YaRN (frequencies and score scale) cannot
    // change it; later positions change.
    ASSERT_EQ(four.size(), tokens.size());
    EXPECT_LT(rel_diff(four[0], plain[0]), 1e-12);
    for (size_t t = 1; t < tokens.size(); ++t) EXPECT_GT(rel_diff(four[t], plain[t]), 1e-9) << t;
}

// Renumbering the experts (router rows and the slices of the three stacks alike) routes every
// token to the same experts under their new ids and leaves the logits unchanged.
TEST(DeepSeek2Reference, ExpertOrderDoesNotMatter) {
    SKIP_WITHOUT_VOCAB();
    const model_shape& s = tiny();
    const std::string src = synth_tiny("ds2-perm-src", "f32");
    ASSERT_FALSE(src.empty());
    const std::vector<int32_t> perm = {5, 2, 7, 0, 3, 6, 1, 4};  // new slot k holds old expert perm[k]
    ASSERT_EQ(int64_t(perm.size()), s.n_expert);
    const std::string permuted = rewrite(src, "ds2-perm", [&](const std::string& name, std::vector<float>& v) {
        const bool router = name.find("ffn_gate_inp") != std::string::npos, stack = name.find("_exps.") != std::string::npos;
        if (!router && !stack) return;
        const size_t slice = v.size() / perm.size();  // router: one row per expert; stacks: one matrix
        const std::vector<float> old = v;
        for (size_t k = 0; k < perm.size(); ++k)
            std::copy(old.begin() + perm[k] * slice, old.begin() + (perm[k] + 1) * slice, v.begin() + k * slice);
    });
    const auto tokens = test::some_tokens(8, 512, 41);
    std::vector<test::reference_deepseek2_route> ra, rb;
    const logits_t a = reference(src, tokens, &ra), b = reference(permuted, tokens, &rb);
    ASSERT_EQ(a.size(), tokens.size());
    EXPECT_LT(max_rel_diff(b, a), 1e-12);
    ASSERT_EQ(ra.size(), rb.size());
    for (size_t i = 0; i < ra.size(); ++i) {
        ASSERT_EQ(ra[i].experts.size(), rb[i].experts.size());
        for (size_t k = 0; k < ra[i].experts.size(); ++k) EXPECT_EQ(perm[size_t(rb[i].experts[k])], ra[i].experts[k]);
    }
    // A permutation of one stack only is a different model.
    const std::string broken = rewrite(src, "ds2-perm-broken", [&](const std::string& name, std::vector<float>& v) {
        if (name != "blk.1.ffn_down_exps.weight") return;
        const size_t slice = v.size() / perm.size();
        const std::vector<float> old = v;
        for (size_t k = 0; k < perm.size(); ++k)
            std::copy(old.begin() + perm[k] * slice, old.begin() + (perm[k] + 1) * slice, v.begin() + k * slice);
    });
    EXPECT_GT(max_rel_diff(reference(broken, tokens), a), 1e-6);
}

// Renumbering the heads (the query rows of attn_q_b, the [k_nope ; v] rows of attn_kv_b and the
// head blocks of attn_output's rows alike) leaves the logits unchanged: the head slices are read
// where the layouts put them.
TEST(DeepSeek2Reference, HeadOrderDoesNotMatter) {
    SKIP_WITHOUT_VOCAB();
    const model_shape& s = tiny();
    const int64_t H = s.n_head, QK = s.qk_nope + s.qk_rope, KVB = s.qk_nope + s.v_head, VH = s.v_head;
    const std::string src = synth_tiny("ds2-heads-src", "f32");
    ASSERT_FALSE(src.empty());
    const std::vector<int64_t> perm = {2, 0, 3, 1};  // new head k is old head perm[k]
    auto permute_rows = [&](std::vector<float>& v, int64_t row_len, int64_t rows_per_head) {
        const std::vector<float> old = v;
        const int64_t block = row_len * rows_per_head;
        for (int64_t k = 0; k < H; ++k)
            std::copy(old.begin() + perm[size_t(k)] * block, old.begin() + (perm[size_t(k)] + 1) * block, v.begin() + k * block);
    };
    const std::string permuted = rewrite(src, "ds2-heads", [&](const std::string& name, std::vector<float>& v) {
        if (name.ends_with("attn_q_b.weight")) permute_rows(v, s.q_lora, QK);
        if (name.ends_with("attn_kv_b.weight")) permute_rows(v, s.kv_lora, KVB);
        if (name.ends_with("attn_output.weight")) {  // (n_embd rows, H · VH columns): permute column blocks
            const std::vector<float> old = v;
            for (int64_t r = 0; r < s.n_embd; ++r)
                for (int64_t k = 0; k < H; ++k)
                    std::copy(old.begin() + r * H * VH + perm[size_t(k)] * VH, old.begin() + r * H * VH + (perm[size_t(k)] + 1) * VH,
                              v.begin() + r * H * VH + k * VH);
        }
    });
    const auto tokens = test::some_tokens(8, 512, 51);
    const logits_t a = reference(src, tokens), b = reference(permuted, tokens);
    ASSERT_EQ(a.size(), tokens.size());
    EXPECT_LT(max_rel_diff(b, a), 1e-10);
    // Permuting the queries' heads alone is a different model.
    const std::string broken = rewrite(src, "ds2-heads-broken", [&](const std::string& name, std::vector<float>& v) {
        if (name.ends_with("attn_q_b.weight")) permute_rows(v, s.q_lora, QK);
    });
    EXPECT_GT(max_rel_diff(reference(broken, tokens), a), 1e-6);
}

// The positions enter only through the rotated key rows kv_a[kv_lora:] and the queries' q_pe
// rows (the last qk_rope of each head's): with either zeroed, a one-layer model's last token
// depends neither on the order of the tokens before it nor on its own position (every token
// twice: each key's softmax weight is the same), with them it does. With each head's value rows
// of attn_kv_b (the last v_head of its block) zeroed, attention adds nothing at all.
TEST(DeepSeek2Reference, PositionsEnterThroughTheRotatedKeyRows) {
    SKIP_WITHOUT_VOCAB();
    const model_shape& s = tiny();
    const std::string src = synth_tiny("ds2-pos-src", "f32", "--layers 1");
    ASSERT_FALSE(src.empty());
    const std::string no_pe = rewrite(src, "ds2-pos-nope", [&](const std::string& name, std::vector<float>& v) {
        if (name == "blk.0.attn_kv_a_mqa.weight")  // rows kv_lora .. kv_lora + qk_rope: k_pe
            std::fill(v.begin() + s.kv_lora * s.n_embd, v.end(), 0.0f);
    });
    const std::string no_first = rewrite(src, "ds2-pos-nofirst", [&](const std::string& name, std::vector<float>& v) {
        if (name == "blk.0.attn_kv_a_mqa.weight")  // as many rows of the latent instead
            std::fill(v.begin(), v.begin() + s.qk_rope * s.n_embd, 0.0f);
    });
    const int64_t QK = s.qk_nope + s.qk_rope, KVB = s.qk_nope + s.v_head;
    const std::string no_q_pe = rewrite(src, "ds2-pos-noqpe", [&](const std::string& name, std::vector<float>& v) {
        if (name == "blk.0.attn_q_b.weight")  // rows of q_lora
            for (int64_t h = 0; h < s.n_head; ++h)
                std::fill(v.begin() + (h * QK + s.qk_nope) * s.q_lora, v.begin() + (h + 1) * QK * s.q_lora, 0.0f);
    });
    const std::string no_v = rewrite(src, "ds2-pos-nov", [&](const std::string& name, std::vector<float>& v) {
        if (name == "blk.0.attn_kv_b.weight")  // rows of kv_lora
            for (int64_t h = 0; h < s.n_head; ++h)
                std::fill(v.begin() + (h * KVB + s.qk_nope) * s.kv_lora, v.begin() + (h + 1) * KVB * s.kv_lora, 0.0f);
    });
    const std::vector<int32_t> a = {17, 300, 42, 99, 5, 260}, b = {42, 5, 300, 17, 99, 260};  // same set, same last token
    const std::vector<int32_t> c = {17, 17, 300, 300, 42, 42, 99, 99, 5, 5, 260, 260};          // a, every token twice
    for (const auto& [path, invariant] : std::vector<std::pair<std::string, bool>>{
             {no_pe, true}, {no_q_pe, true}, {no_v, true}, {src, false}, {no_first, false}}) {
        SCOPED_TRACE(path);
        const logits_t la = reference(path, a), lb = reference(path, b), lc = reference(path, c);
        ASSERT_EQ(la.size(), a.size());
        ASSERT_EQ(lb.size(), b.size());
        ASSERT_EQ(lc.size(), c.size());
        if (path == no_v) {  // every token on its own: the same logits wherever it stands
            EXPECT_LT(rel_diff(la[0], lb[3]), 1e-12);
            EXPECT_LT(rel_diff(la[2], lb[0]), 1e-12);
        }
        if (invariant) {
            EXPECT_LT(rel_diff(la.back(), lb.back()), 1e-12);
            EXPECT_LT(rel_diff(la.back(), lc.back()), 1e-12);
        } else {
            EXPECT_GT(rel_diff(la.back(), lb.back()), 1e-9);
            EXPECT_GT(rel_diff(la.back(), lc.back()), 1e-9);
        }
    }
}

}  // namespace
}  // namespace kvs
