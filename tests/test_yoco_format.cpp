// YOCO's file format (docs/yoco.md): hyper-parameters, the weights the loader binds, the errors
// it gives on malformed files, `kvserve synth` / `inspect` on yoco shapes, the shapes' parameter
// counts, and sanity checks of the float64 reference (tests/reference_model.h).
#include <gtest/gtest.h>

#include <limits>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "kernels/cpu/interleave.h"
#include "model/llama.h"
#include "model/shapes.h"
#include "reference_model.h"
#include "test_util.h"

namespace kvs {
namespace {

// Runs `kvserve ARGS` with KVSERVE_SHARED pointing at the fixtures; returns the exit status.
int kvserve(const std::string& args, std::string* out = nullptr) {
    std::string output;
    int rc = test::run_command("KVSERVE_SHARED='" + test::shared_dir() + "' '" + test::kvserve_binary() + "' " + args, &output);
    if (out) *out = output;
    return rc;
}

// A small yoco model: 4 layers split 2/2, window 8, GQA 4/2 heads of 16.
test::synth_spec small_yoco(int64_t window = 8) {
    test::synth_spec s;
    s.n_layer = 4;
    s.n_layer_self = 2;
    s.window = window;
    return s;
}

// Edits applied while copying a GGUF: keys and tensors dropped, u32 keys set (replacing or
// adding), then `extra` adds whatever else (tensors, keys).
struct file_edit {
    std::set<std::string> drop_keys, drop_tensors;
    std::vector<std::pair<std::string, uint32_t>> set_u32;
    std::function<void(gguf_writer&)> extra;
};

std::string rewrite(const std::string& src, const std::string& name, const file_edit& e) {
    auto f = gguf_file::open(src);
    EXPECT_TRUE(f.is_ok()) << f.message();
    if (!f) return "";
    gguf_writer w;
    std::set<std::string> replaced;
    for (const auto& [k, v] : e.set_u32) replaced.insert(k);
    for (const gguf_kv& kv : f.value()->kvs()) {
        const std::string key(kv.key);
        if (key == "general.alignment" || e.drop_keys.count(key) || replaced.count(key)) continue;
        w.set_value(key, kv.value);
    }
    for (const auto& [k, v] : e.set_u32) w.set_u32(k, v);
    for (const gguf_tensor_info& t : f.value()->tensors()) {
        const std::string tn(t.name);
        if (e.drop_tensors.count(tn)) continue;
        std::vector<int64_t> ne(t.ne, t.ne + t.n_dims);
        EXPECT_TRUE(w.add_tensor_data(tn, t.type, ne, t.data, size_t(t.n_bytes)).is_ok()) << tn;
    }
    if (e.extra) e.extra(w);
    const std::string path = test::temp_dir() + "/" + name + ".gguf";
    EXPECT_TRUE(w.write(path).is_ok()) << path;
    return path;
}

// An f32 tensor of `ne` (GGUF order) filled with small values.
void add_f32(gguf_writer& w, const std::string& name, std::vector<int64_t> ne, dtype type = dtype::f32) {
    int64_t n = 1;
    for (int64_t x : ne) n *= x;
    auto v = test::random_floats(n, 99, 0.1f);
    std::vector<uint8_t> bytes(dtype_row_bytes(type, ne[0]) * size_t(n / ne[0]));
    for (int64_t r = 0; r < n / ne[0]; ++r)
        ASSERT_TRUE(quantize_row(type, v.data() + r * ne[0], bytes.data() + size_t(r) * dtype_row_bytes(type, ne[0]), ne[0]));
    ASSERT_TRUE(w.add_tensor_data(name, type, ne, bytes.data(), bytes.size()).is_ok()) << name;
}

// The load error of `path` (fails the test if it loads).
std::string load_error(const std::string& path) {
    auto m = llama_model::load(path);
    EXPECT_FALSE(m.is_ok()) << path << " loaded";
    return m.is_ok() ? std::string() : m.message();
}

#define EXPECT_HAS(text, part) EXPECT_NE(std::string(text).find(part), std::string::npos) << (text)

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i]));
    return d;
}

// ---------------------------------------------------------------------------------------------
// hyper-parameters and weights

TEST(YocoFormat, HparamsAndWeightsOfASynthFile) {
    const std::string path = test::write_synth(small_yoco(), "yoco-hp");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m.is_ok()) << m.message();
    const model_hparams& hp = m.value()->hparams();
    EXPECT_EQ(hp.arch, "yoco");
    EXPECT_TRUE(llama_family_arch("yoco"));
    EXPECT_TRUE(hp.yoco());
    EXPECT_EQ(hp.n_layer, 4);
    EXPECT_EQ(hp.n_layer_self, 2);
    EXPECT_EQ(hp.sliding_window, 8);
    EXPECT_EQ(hp.n_head, 4);
    EXPECT_EQ(hp.n_head_kv, 2);
    EXPECT_EQ(hp.head_dim, 16);
    EXPECT_EQ(hp.rope, cpu::rope_layout::normal);
    EXPECT_FALSE(hp.qkv_bias);
    const llama_weights& w = m.value()->weights();
    ASSERT_EQ(w.layers.size(), 4u);
    const int64_t nkv = hp.n_head_kv * hp.head_dim;
    for (int64_t l = 0; l < 4; ++l) {
        const llama_layer& L = w.layers[size_t(l)];
        EXPECT_NE(L.wq.data, nullptr) << l;
        EXPECT_NE(L.wo.data, nullptr) << l;
        EXPECT_NE(L.w_down.data, nullptr) << l;
        if (l < 2) {  // self-decoder: its own K/V
            EXPECT_NE(L.wk.data, nullptr) << l;
            EXPECT_NE(L.wv.data, nullptr) << l;
            EXPECT_EQ(L.wk.n_out, nkv);
        } else {  // cross-decoder: queries only
            EXPECT_EQ(L.wk.data, nullptr) << l;
            EXPECT_EQ(L.wv.data, nullptr) << l;
        }
    }
    ASSERT_NE(w.global_norm, nullptr);
    EXPECT_EQ(w.global_norm, reinterpret_cast<const float*>(m.value()->file().find_tensor("global_norm.weight")->data));
    EXPECT_NE(w.global_k.data, nullptr);
    EXPECT_NE(w.global_v.data, nullptr);
    EXPECT_EQ(w.global_k.n_in, hp.n_embd);
    EXPECT_EQ(w.global_k.n_out, nkv);
    EXPECT_EQ(w.global_v.n_in, hp.n_embd);
    EXPECT_EQ(w.global_v.n_out, nkv);

    // Other architectures leave the YOCO fields at 0.
    auto llama = llama_model::load(test::write_synth(test::synth_spec{}, "yoco-hp-llama"));
    ASSERT_TRUE(llama.is_ok()) << llama.message();
    EXPECT_FALSE(llama.value()->hparams().yoco());
    EXPECT_EQ(llama.value()->hparams().n_layer_self, 0);
    EXPECT_EQ(llama.value()->hparams().sliding_window, 0);
    EXPECT_EQ(llama.value()->weights().global_norm, nullptr);
    EXPECT_EQ(llama.value()->weights().global_k.data, nullptr);
}

TEST(YocoFormat, QuantizedWeightsLoadWithAndWithoutRepacking) {
    test::synth_spec s = small_yoco();
    s.wtype = dtype::q8_0;
    const std::string path = test::write_synth(s, "yoco-q8");
    for (weight_repack r : {weight_repack::never, weight_repack::always}) {
        load_options o;
        o.repack = r;
        auto m = llama_model::load(path, o);
        ASSERT_TRUE(m.is_ok()) << m.message();
        const llama_weights& w = m.value()->weights();
        EXPECT_EQ(w.layers[3].wk.data, nullptr);  // no view appears from nowhere
        EXPECT_NE(w.global_k.data, nullptr);
        EXPECT_EQ(w.global_k.type, dtype::q8_0);
        if (r == weight_repack::always && cpu::can_interleave(w.global_k)) {
            EXPECT_EQ(w.global_k.layout, cpu::weight_layout::interleaved16);
            EXPECT_EQ(w.global_v.layout, cpu::weight_layout::interleaved16);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// malformed files

TEST(YocoFormat, SplitOutOfRange) {
    const std::string good = test::write_synth(small_yoco(), "yoco-split-good");
    std::string e = load_error(rewrite(good, "yoco-split-4", {{}, {}, {{"yoco.self_decoder_block_count", 4}}, {}}));
    EXPECT_HAS(e, "yoco.self_decoder_block_count 4 must be in [1, 3] (block_count 4)");
    e = load_error(rewrite(good, "yoco-split-9", {{}, {}, {{"yoco.self_decoder_block_count", 9}}, {}}));
    EXPECT_HAS(e, "yoco.self_decoder_block_count 9 must be in [1, 3] (block_count 4)");
    e = load_error(rewrite(good, "yoco-split-0", {{}, {}, {{"yoco.self_decoder_block_count", 0}}, {}}));
    EXPECT_HAS(e, "yoco.self_decoder_block_count 0 must be in [1, 3] (block_count 4)");
    e = load_error(rewrite(good, "yoco-split-missing", {{"yoco.self_decoder_block_count"}, {}, {}, {}}));
    EXPECT_HAS(e, "missing metadata key yoco.self_decoder_block_count");
}

TEST(YocoFormat, SlidingWindowRequired) {
    const std::string good = test::write_synth(small_yoco(), "yoco-window-good");
    std::string e = load_error(rewrite(good, "yoco-window-missing", {{"yoco.sliding_window"}, {}, {}, {}}));
    EXPECT_HAS(e, "missing metadata key yoco.sliding_window");
    e = load_error(rewrite(good, "yoco-window-0", {{}, {}, {{"yoco.sliding_window", 0}}, {}}));
    EXPECT_HAS(e, "yoco.sliding_window = 0 is out of range");
}

TEST(YocoFormat, RopeParametersOutOfRange) {
    // Found by fuzzing the hyper-parameters: a scaling factor of 1e-30 or an infinite base
    // would load and turn every RoPE angle into infinity.
    const std::string good = test::write_synth(small_yoco(), "yoco-rope-good");
    file_edit tiny_factor;
    tiny_factor.drop_keys = {"yoco.rope.scaling.factor", "yoco.rope.scaling.type"};
    tiny_factor.extra = [](gguf_writer& w) {
        w.set_string("yoco.rope.scaling.type", "linear");
        w.set_f32("yoco.rope.scaling.factor", 1e-30f);
    };
    EXPECT_HAS(load_error(rewrite(good, "yoco-rope-factor", tiny_factor)), "RoPE scaling factor 1e-30 is out of range");
    file_edit inf_base;
    inf_base.drop_keys = {"yoco.rope.freq_base"};
    inf_base.extra = [](gguf_writer& w) { w.set_f32("yoco.rope.freq_base", std::numeric_limits<float>::infinity()); };
    EXPECT_HAS(load_error(rewrite(good, "yoco-rope-base", inf_base)), "rope.freq_base inf must be finite and > 1");
}

TEST(YocoFormat, GlobalTensorsRequired) {
    const std::string good = test::write_synth(small_yoco(), "yoco-global-good");
    for (const char* name : {"global_k.weight", "global_v.weight", "global_norm.weight"}) {
        const std::string e = load_error(rewrite(good, std::string("yoco-no-") + name, {{}, {name}, {}, {}}));
        EXPECT_HAS(e, std::string("missing tensor ") + name);
    }
    // Wrong shapes and types give the loader's usual messages.
    std::string e = load_error(rewrite(good, "yoco-global-k-shape", {{}, {"global_k.weight"}, {}, [](gguf_writer& w) {
                                           add_f32(w, "global_k.weight", {64, 48});
                                       }}));
    EXPECT_HAS(e, "tensor global_k.weight: expected shape [64, 32], got [64, 48]");
    e = load_error(rewrite(good, "yoco-global-v-shape", {{}, {"global_v.weight"}, {}, [](gguf_writer& w) {
                               add_f32(w, "global_v.weight", {32, 64});
                           }}));
    EXPECT_HAS(e, "tensor global_v.weight: expected shape [64, 32], got [32, 64]");
    e = load_error(rewrite(good, "yoco-global-norm-f16", {{}, {"global_norm.weight"}, {}, [](gguf_writer& w) {
                               add_f32(w, "global_norm.weight", {64}, dtype::f16);
                           }}));
    EXPECT_HAS(e, "tensor global_norm.weight: expected f32, got f16");
}

TEST(YocoFormat, CrossLayersHaveNoKV) {
    const std::string good = test::write_synth(small_yoco(), "yoco-cross-good");
    for (const char* name : {"blk.2.attn_k.weight", "blk.3.attn_v.weight"}) {
        const std::string t = name;
        const std::string e = load_error(rewrite(good, "yoco-cross-" + t, {{}, {}, {}, [t](gguf_writer& w) {
                                                     add_f32(w, t, {64, 32});
                                                 }}));
        EXPECT_HAS(e, "tensor " + t + ": cross-decoder layers have no K/V projections");
    }
    // The self-decoder's layers need theirs.
    std::string e = load_error(rewrite(good, "yoco-self-no-v", {{}, {"blk.1.attn_v.weight"}, {}, {}}));
    EXPECT_HAS(e, "missing tensor blk.1.attn_v.weight");
    // A smaller split makes layer 1 a cross-decoder layer: its K/V are then an error.
    e = load_error(rewrite(good, "yoco-split-1", {{}, {}, {{"yoco.self_decoder_block_count", 1}}, {}}));
    EXPECT_HAS(e, "tensor blk.1.attn_k.weight: cross-decoder layers have no K/V projections");
}

TEST(YocoFormat, UnsupportedArchitectureListsYoco) {
    const std::string good = test::write_synth(test::synth_spec{}, "yoco-arch-good");
    const std::string path = rewrite(good, "yoco-arch-gpt", {{"general.architecture"}, {}, {}, [](gguf_writer& w) {
                                         w.set_string("general.architecture", "gptx");
                                     }});
    EXPECT_HAS(load_error(path), "unsupported model architecture 'gptx' (supported: llama, qwen2, mistral, yoco, deepseek2)");
}

// ---------------------------------------------------------------------------------------------
// shapes, synth and inspect

TEST(YocoShapes, ParamCounts) {
    const model_shape* y = find_model_shape("yoco-1.1b");
    const model_shape* t = find_model_shape("tinyllama-1.1b");
    ASSERT_NE(y, nullptr);
    ASSERT_NE(t, nullptr);
    EXPECT_STREQ(y->arch, "yoco");
    EXPECT_TRUE(y->yoco());
    EXPECT_FALSE(t->yoco());
    EXPECT_EQ(y->n_layer, 22);
    EXPECT_EQ(y->n_layer_self, 11);
    EXPECT_EQ(y->sliding_window, 1024);
    EXPECT_EQ(y->n_ctx_train, 32768);
    EXPECT_STREQ(y->default_vocab, t->default_vocab);
    EXPECT_EQ(y->n_embd_kv(), 256);
    // The 11 cross-decoder layers drop their K and V (2048 x 256 each); the global K/V and norm come in.
    EXPECT_EQ(y->n_params(), t->n_params() - 11 * 2 * 2048 * 256 + 2 * 2048 * 256 + 2048);

    const model_shape* tiny = find_model_shape("yoco-tiny");
    const model_shape* s260 = find_model_shape("stories260k");
    ASSERT_NE(tiny, nullptr);
    EXPECT_EQ(tiny->n_layer, 6);
    EXPECT_EQ(tiny->n_layer_self, 3);
    EXPECT_EQ(tiny->sliding_window, 32);
    EXPECT_EQ(tiny->n_vocab, s260->n_vocab);
    EXPECT_EQ(tiny->n_embd, s260->n_embd);
    EXPECT_STREQ(tiny->default_vocab, "models/stories260K.gguf");
    // One layer more than stories260K (5 layers), three of the six without K/V, plus the global tensors.
    const int64_t layer = 2 * 64 + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 172;
    EXPECT_EQ(tiny->n_params(), s260->n_params() + layer - 3 * 2 * 64 * 32 + 2 * 64 * 32 + 64);
    EXPECT_NE(model_shape_names().find("yoco-tiny"), std::string::npos);
}

TEST(YocoShapes, SynthWritesAFileThatLoads) {
    KVS_SKIP_IF_MISSING(vocab, "models/stories260K.gguf");
    const std::string out = test::temp_dir() + "/synth-yoco-tiny.gguf";
    std::string text;
    ASSERT_EQ(kvserve("synth --shape yoco-tiny --dtype q8_0 -o " + out, &text), 0) << text;
    auto m = llama_model::load(out);
    ASSERT_TRUE(m.is_ok()) << m.message();
    const model_hparams& hp = m.value()->hparams();
    EXPECT_EQ(hp.arch, "yoco");
    EXPECT_EQ(hp.n_layer, 6);
    EXPECT_EQ(hp.n_layer_self, 3);
    EXPECT_EQ(hp.sliding_window, 32);
    EXPECT_EQ(hp.n_vocab, 512);
    EXPECT_EQ(hp.n_head_kv, 4);
    const gguf_file& f = m.value()->file();
    // The tensor table: no K/V in layers 3..5, the global tensors, every element counted by n_params.
    int64_t n = 0;
    for (const gguf_tensor_info& t : f.tensors()) n += t.n_elements();
    EXPECT_EQ(n, find_model_shape("yoco-tiny")->n_params());
    EXPECT_EQ(f.tensors().size(), size_t(2 + 1 + 6 * 7 + 3 * 2 + 3));
    EXPECT_NE(f.find_tensor("blk.2.attn_k.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.3.attn_k.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("blk.5.attn_v.weight"), nullptr);
    ASSERT_NE(f.find_tensor("global_k.weight"), nullptr);
    EXPECT_EQ(f.find_tensor("global_k.weight")->shape_string(), "[64, 32]");
    EXPECT_EQ(f.find_tensor("global_norm.weight")->type, dtype::f32);
    EXPECT_EQ(f.get_string("kvserve.synth.shape").value(), "yoco-tiny");
    // The reference runs on it and gives finite logits.
    auto logits = test::reference_yoco_logits(*m.value(), test::some_tokens(5, 512, 3));
    ASSERT_EQ(logits.size(), 5u);
    for (const auto& row : logits)
        for (double x : row) ASSERT_TRUE(std::isfinite(x));

    // inspect shows the split.
    ASSERT_EQ(kvserve("inspect --no-tensors " + out, &text), 0) << text;
    EXPECT_HAS(text, "yoco: self-decoder layers 0-2 (sliding window 32 tokens, own K/V), cross-decoder layers 3-5");

    // --layers keeps the self-decoder whole: 4 layers is 3 + 1, identical tensors.
    const std::string cut = test::temp_dir() + "/synth-yoco-tiny-4.gguf";
    ASSERT_EQ(kvserve("synth --shape yoco-tiny --dtype q8_0 --layers 4 -o " + cut, &text), 0) << text;
    auto mc = llama_model::load(cut);
    ASSERT_TRUE(mc.is_ok()) << mc.message();
    EXPECT_EQ(mc.value()->hparams().n_layer, 4);
    EXPECT_EQ(mc.value()->hparams().n_layer_self, 3);
    for (const char* name : {"blk.3.attn_q.weight", "global_v.weight", "blk.0.attn_k.weight"}) {
        const gguf_tensor_info* a = f.find_tensor(name);
        const gguf_tensor_info* b = mc.value()->file().find_tensor(name);
        ASSERT_TRUE(a && b) << name;
        ASSERT_EQ(a->n_bytes, b->n_bytes);
        EXPECT_EQ(std::memcmp(a->data, b->data, size_t(a->n_bytes)), 0) << name;
    }
    // ... and refuses to cut into it; --agree-after is refused for yoco.
    EXPECT_EQ(kvserve("synth --shape yoco-tiny --dtype q8_0 --layers 3 -o " + cut + ".3", &text), 2);
    EXPECT_HAS(text, "the self-decoder of shape yoco-tiny has 3 layers");
    EXPECT_EQ(kvserve("synth --shape yoco-tiny --dtype q8_0 --agree-after 4 -o " + cut + ".a", &text), 2);
    EXPECT_HAS(text, "--agree-after is not supported for yoco shapes");
}

// ---------------------------------------------------------------------------------------------
// the float64 reference

TEST(YocoReference, SlidingWindowMatters) {
    // Two files identical but for W: the window changes the self-decoder's attention from
    // token W on; tokens before it see their whole past either way.
    const auto tokens = test::some_tokens(40, 96, 11);
    auto narrow = llama_model::load(test::write_synth(small_yoco(4), "yoco-ref-w4"));
    auto wide = llama_model::load(test::write_synth(small_yoco(64), "yoco-ref-w64"));
    ASSERT_TRUE(narrow.is_ok()) << narrow.message();
    ASSERT_TRUE(wide.is_ok()) << wide.message();
    const auto a = test::reference_yoco_logits(*narrow.value(), tokens);
    const auto b = test::reference_yoco_logits(*wide.value(), tokens);
    ASSERT_EQ(a.size(), 40u);
    ASSERT_EQ(a[0].size(), 96u);
    for (size_t t = 0; t < 4; ++t) EXPECT_EQ(a[t], b[t]) << "token " << t;
    double changed = 0;
    for (size_t t = 4; t < 40; ++t) {
        EXPECT_GT(max_abs_diff(a[t], b[t]), 1e-6) << "token " << t;
        changed = std::max(changed, max_abs_diff(a[t], b[t]));
    }
    EXPECT_GT(changed, 1e-2);
    for (const auto& row : a)
        for (double x : row) ASSERT_TRUE(std::isfinite(x));
}

TEST(YocoReference, WindowAtLeastTheSequenceIsPlainCausalAttention) {
    // W >= 40 on a 40-token sequence: every token sees its whole past, whatever W is.
    const auto tokens = test::some_tokens(40, 96, 12);
    auto w40 = llama_model::load(test::write_synth(small_yoco(40), "yoco-ref-w40"));
    auto w64 = llama_model::load(test::write_synth(small_yoco(64), "yoco-ref-w64b"));
    auto w39 = llama_model::load(test::write_synth(small_yoco(39), "yoco-ref-w39"));
    ASSERT_TRUE(w40.is_ok() && w64.is_ok() && w39.is_ok());
    const auto a = test::reference_yoco_logits(*w40.value(), tokens);
    const auto b = test::reference_yoco_logits(*w64.value(), tokens);
    const auto c = test::reference_yoco_logits(*w39.value(), tokens);
    for (size_t t = 0; t < 40; ++t) EXPECT_EQ(a[t], b[t]) << "token " << t;
    // W = 39 drops token 0 for the last token only.
    for (size_t t = 0; t < 39; ++t) EXPECT_EQ(a[t], c[t]) << "token " << t;
    EXPECT_GT(max_abs_diff(a[39], c[39]), 1e-9);
}

TEST(YocoReference, CrossDecoderReadsTheGlobalKV) {
    // Another global_k changes the logits of every token with a past (the cross-decoder's
    // scores over K^), but not token 0's: it attends to itself alone, probability 1 whatever K^.
    const std::string good = test::write_synth(small_yoco(), "yoco-ref-global");
    const auto tokens = test::some_tokens(12, 96, 13);
    auto base = llama_model::load(good);
    ASSERT_TRUE(base.is_ok()) << base.message();
    const auto a = test::reference_yoco_logits(*base.value(), tokens);
    auto other = llama_model::load(rewrite(good, "yoco-ref-global-k", {{}, {"global_k.weight"}, {}, [](gguf_writer& w) {
                                               add_f32(w, "global_k.weight", {64, 32});
                                           }}));
    ASSERT_TRUE(other.is_ok()) << other.message();
    const auto b = test::reference_yoco_logits(*other.value(), tokens);
    EXPECT_LT(max_abs_diff(a[0], b[0]), 1e-12);
    for (size_t t = 1; t < tokens.size(); ++t) EXPECT_GT(max_abs_diff(a[t], b[t]), 1e-6) << "token " << t;
}

}  // namespace
}  // namespace kvs
