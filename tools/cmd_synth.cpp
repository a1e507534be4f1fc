// kvserve synth: a model with random weights in a real model's geometry (src/model/shapes.h),
// any weight dtype, with a real vocabulary copied from a vocabulary GGUF. Speed and memory do
// not depend on weight values, so this is how realistic-size models are made for benchmarks.
//
// Weights are deterministic in --seed: element i of tensor T is a function of (seed, T's name,
// i) only, so the output does not depend on the thread count. Values are approximately normal
// (Irwin-Hall sum of four uniforms, std 1, |x| < 3.47) scaled by 0.02; norm weights are 1.
// Tensors are generated one at a time, row by row, straight into the writer's buffer: peak
// memory is about the largest tensor in the target dtype.
// DeepSeek-V2 shapes (arch "deepseek2") are written with llama.cpp's keys and tensors: MLA
// projections, dense leading layers, 3-D expert stacks in the target dtype and an F32 router;
// --q-lora-rank and --yarn vary the query bottleneck and the RoPE scaling of such a shape;
// --mla-split writes attn_k_b / attn_v_b instead of attn_kv_b (llama.cpp's current layout).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>

#include "command.h"
#include "common.h"
#include "core/dtype.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "model/shapes.h"

namespace kvs::tools {

namespace {

uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t hash_name(const std::string& s) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
    for (char c : s) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
    return h;
}

// Approximately standard-normal value number `index` of the stream `key`.
float synth_normal(uint64_t key, uint64_t index) {
    uint64_t r = mix64(key + (index + 1) * 0x9e3779b97f4a7c15ull);
    float s = float(r & 0xffff) + float((r >> 16) & 0xffff) + float((r >> 32) & 0xffff) + float(r >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;  // sum of 4 U(0,1): mean 2, variance 1/3
}

struct tensor_plan {
    std::string name;
    std::vector<int64_t> ne;  // GGUF order: ne[0] is the row length
    enum { random, ones } init;
    float scale = 1.0f;  // multiplies the random values (--agree-after damps layers' outputs)
};

// Layers from `agree_after` on (-1: none) write their attention and FFN outputs scaled by this,
// so they change the residual stream negligibly: early exit there agrees with the full model.
constexpr float k_agree_scale = 1e-5f;

// rope.scaling.yarn_log_multiplier of `--yarn` on a shape without YaRN: DeepSeek-V2's
// (0.1 · mscale_all_dim 0.707).
constexpr float k_deepseek2_yarn_log_mul = 0.0707f;

// DeepSeek-V2 (llama.cpp's names and dims): MLA attention, dense FFNs in the leading layers,
// routed + shared experts in the others. The router (ffn_gate_inp) is random like any matrix.
std::vector<tensor_plan> plan_deepseek2(const model_shape& s, int64_t agree_after) {
    std::vector<tensor_plan> t;
    const int64_t E = s.n_embd, H = s.n_head, QK = s.qk_nope + s.qk_rope, FX = s.n_ff_exp;
    t.push_back({"token_embd.weight", {E, s.n_vocab}, tensor_plan::random});
    for (int64_t l = 0; l < s.n_layer; ++l) {
        std::string p = "blk." + std::to_string(l) + ".";
        const float damp = agree_after >= 0 && l >= agree_after ? k_agree_scale : 1.0f;
        t.push_back({p + "attn_norm.weight", {E}, tensor_plan::ones});
        if (s.q_lora > 0) {
            t.push_back({p + "attn_q_a.weight", {E, s.q_lora}, tensor_plan::random});
            t.push_back({p + "attn_q_a_norm.weight", {s.q_lora}, tensor_plan::ones});
            t.push_back({p + "attn_q_b.weight", {s.q_lora, H * QK}, tensor_plan::random});
        } else {
            t.push_back({p + "attn_q.weight", {E, H * QK}, tensor_plan::random});
        }
        t.push_back({p + "attn_kv_a_mqa.weight", {E, s.kv_lora + s.qk_rope}, tensor_plan::random});
        t.push_back({p + "attn_kv_a_norm.weight", {s.kv_lora}, tensor_plan::ones});
        if (s.mla_split) {
            t.push_back({p + "attn_k_b.weight", {s.qk_nope, s.kv_lora, H}, tensor_plan::random});
            t.push_back({p + "attn_v_b.weight", {s.kv_lora, s.v_head, H}, tensor_plan::random});
        } else {
            t.push_back({p + "attn_kv_b.weight", {s.kv_lora, H * (s.qk_nope + s.v_head)}, tensor_plan::random});
        }
        t.push_back({p + "attn_output.weight", {H * s.v_head, E}, tensor_plan::random, damp});
        t.push_back({p + "ffn_norm.weight", {E}, tensor_plan::ones});
        if (l < s.n_layer_dense_lead) {
            t.push_back({p + "ffn_gate.weight", {E, s.n_ff}, tensor_plan::random});
            t.push_back({p + "ffn_up.weight", {E, s.n_ff}, tensor_plan::random});
            t.push_back({p + "ffn_down.weight", {s.n_ff, E}, tensor_plan::random, damp});
            continue;
        }
        t.push_back({p + "ffn_gate_inp.weight", {E, s.n_expert}, tensor_plan::random});
        t.push_back({p + "ffn_gate_exps.weight", {E, FX, s.n_expert}, tensor_plan::random});
        t.push_back({p + "ffn_up_exps.weight", {E, FX, s.n_expert}, tensor_plan::random});
        t.push_back({p + "ffn_down_exps.weight", {FX, E, s.n_expert}, tensor_plan::random, damp});
        t.push_back({p + "ffn_gate_shexp.weight", {E, FX * s.n_expert_shared}, tensor_plan::random});
        t.push_back({p + "ffn_up_shexp.weight", {E, FX * s.n_expert_shared}, tensor_plan::random});
        t.push_back({p + "ffn_down_shexp.weight", {FX * s.n_expert_shared, E}, tensor_plan::random, damp});
    }
    t.push_back({"output_norm.weight", {E}, tensor_plan::ones});
    t.push_back({"output.weight", {E, s.n_vocab}, tensor_plan::random});
    return t;
}

std::vector<tensor_plan> plan_tensors(const model_shape& s, int64_t agree_after) {
    if (s.deepseek2()) return plan_deepseek2(s, agree_after);
    std::vector<tensor_plan> t;
    const int64_t E = s.n_embd, KV = s.n_embd_kv();
    t.push_back({"token_embd.weight", {E, s.n_vocab}, tensor_plan::random});
    for (int64_t l = 0; l < s.n_layer; ++l) {
        std::string p = "blk." + std::to_string(l) + ".";
        t.push_back({p + "attn_norm.weight", {E}, tensor_plan::ones});
        t.push_back({p + "attn_q.weight", {E, E}, tensor_plan::random});
        if (s.qkv_bias) t.push_back({p + "attn_q.bias", {E}, tensor_plan::random});
        if (!s.yoco() || l < s.n_layer_self) {  // YOCO's cross-decoder layers have no K/V projections
            t.push_back({p + "attn_k.weight", {E, KV}, tensor_plan::random});
            if (s.qkv_bias) t.push_back({p + "attn_k.bias", {KV}, tensor_plan::random});
            t.push_back({p + "attn_v.weight", {E, KV}, tensor_plan::random});
            if (s.qkv_bias) t.push_back({p + "attn_v.bias", {KV}, tensor_plan::random});
        }
        const float damp = agree_after >= 0 && l >= agree_after ? k_agree_scale : 1.0f;
        t.push_back({p + "attn_output.weight", {E, E}, tensor_plan::random, damp});
        t.push_back({p + "ffn_norm.weight", {E}, tensor_plan::ones});
        t.push_back({p + "ffn_gate.weight", {E, s.n_ff}, tensor_plan::random});
        t.push_back({p + "ffn_up.weight", {E, s.n_ff}, tensor_plan::random});
        t.push_back({p + "ffn_down.weight", {s.n_ff, E}, tensor_plan::random, damp});
    }
    if (s.yoco()) {  // the one global K/V, projected from the self-decoder's output
        t.push_back({"global_norm.weight", {E}, tensor_plan::ones});
        t.push_back({"global_k.weight", {E, KV}, tensor_plan::random});
        t.push_back({"global_v.weight", {E, KV}, tensor_plan::random});
    }
    t.push_back({"output_norm.weight", {E}, tensor_plan::ones});
    if (!s.tied_output) t.push_back({"output.weight", {E, s.n_vocab}, tensor_plan::random});
    return t;
}

// Copies every tokenizer.* key of `vocab`, padding tokens/types/scores with control tokens up
// to `n_vocab`.
status copy_vocab(gguf_writer& w, const gguf_file& vocab, int64_t n_vocab) {
    auto tokens = vocab.get_string_array("tokenizer.ggml.tokens");
    if (!tokens) return tokens.error();
    const int64_t n_have = int64_t(tokens.value()->size());
    if (n_have > n_vocab)
        return status::error(strfmt("the vocabulary has %lld tokens, more than the shape's n_vocab %lld",
                                    (long long)n_have, (long long)n_vocab));
    for (const auto& kv : vocab.kvs()) {
        if (kv.key.substr(0, 10) != "tokenizer.") continue;
        w.set_value(std::string(kv.key), kv.value);
    }
    if (n_have == n_vocab) return status::ok();
    std::vector<std::string> toks(tokens.value()->begin(), tokens.value()->end());
    for (int64_t id = n_have; id < n_vocab; ++id) toks.push_back("<|synth_pad_" + std::to_string(id) + "|>");
    w.set_string_array("tokenizer.ggml.tokens", toks);
    if (vocab.find("tokenizer.ggml.token_type")) {
        auto types = vocab.get_int_array("tokenizer.ggml.token_type");
        if (!types) return types.error();
        if (int64_t(types.value().size()) != n_have) return status::error("tokenizer.ggml.token_type and tokens differ in length");
        std::vector<int32_t> t32(types.value().begin(), types.value().end());
        t32.resize(size_t(n_vocab), 3);  // control
        w.set_i32_array("tokenizer.ggml.token_type", t32);
    }
    if (vocab.find("tokenizer.ggml.scores")) {
        auto scores = vocab.get_f32_array("tokenizer.ggml.scores");
        if (!scores) return scores.error();
        if (int64_t(scores.value().size()) != n_have) return status::error("tokenizer.ggml.scores and tokens differ in length");
        scores.value().resize(size_t(n_vocab), 0.0f);
        w.set_f32_array("tokenizer.ggml.scores", scores.value());
    }
    return status::ok();
}

void set_hparams(gguf_writer& w, const model_shape& s, const weight_format& format, uint64_t seed) {
    const dtype type = format.base;
    const std::string a = std::string(s.arch) + ".";
    w.set_string("general.architecture", s.arch);
    w.set_string("general.name", std::string("synth-") + s.name);
    w.set_u32("general.file_type", uint32_t(llama_ftype_of(format)));
    if (dtype_info(type).block_size > 1) w.set_u32("general.quantization_version", 2);
    w.set_u32(a + "vocab_size", uint32_t(s.n_vocab));
    w.set_u32(a + "context_length", uint32_t(s.n_ctx_train));
    w.set_u32(a + "embedding_length", uint32_t(s.n_embd));
    w.set_u32(a + "block_count", uint32_t(s.n_layer));
    w.set_u32(a + "feed_forward_length", uint32_t(s.n_ff));
    w.set_u32(a + "attention.head_count", uint32_t(s.n_head));
    w.set_u32(a + "attention.head_count_kv", uint32_t(s.mla_split ? 1 : s.n_head_kv));
    w.set_u32(a + "rope.dimension_count", uint32_t(s.deepseek2() ? s.qk_rope : s.head_dim()));
    w.set_f32(a + "rope.freq_base", s.rope_freq_base);
    w.set_f32(a + "attention.layer_norm_rms_epsilon", s.rms_eps);
    if (s.deepseek2()) {
        w.set_u32(a + "leading_dense_block_count", uint32_t(s.n_layer_dense_lead));
        w.set_u32(a + "attention.q_lora_rank", uint32_t(s.q_lora));  // 0: one full attn_q matrix
        w.set_u32(a + "attention.kv_lora_rank", uint32_t(s.kv_lora));
        if (s.mla_split) {  // the generic keys describe the latent, the *_mla ones the heads
            w.set_u32(a + "attention.key_length", uint32_t(s.kv_lora + s.qk_rope));
            w.set_u32(a + "attention.value_length", uint32_t(s.kv_lora));
            w.set_u32(a + "attention.key_length_mla", uint32_t(s.qk_nope + s.qk_rope));
            w.set_u32(a + "attention.value_length_mla", uint32_t(s.v_head));
        } else {
            w.set_u32(a + "attention.key_length", uint32_t(s.qk_nope + s.qk_rope));
            w.set_u32(a + "attention.value_length", uint32_t(s.v_head));
        }
        w.set_u32(a + "expert_feed_forward_length", uint32_t(s.n_ff_exp));
        w.set_u32(a + "expert_count", uint32_t(s.n_expert));
        w.set_u32(a + "expert_shared_count", uint32_t(s.n_expert_shared));
        w.set_u32(a + "expert_used_count", uint32_t(s.n_expert_used));
        w.set_f32(a + "expert_weights_scale", s.expert_weights_scale);
        w.set_bool(a + "expert_weights_norm", false);
        w.set_u32(a + "expert_gating_func", 1);  // softmax
        if (s.yarn_factor > 0) {
            w.set_string(a + "rope.scaling.type", "yarn");
            w.set_f32(a + "rope.scaling.factor", s.yarn_factor);
            w.set_u32(a + "rope.scaling.original_context_length", uint32_t(s.yarn_orig_ctx));
            w.set_f32(a + "rope.scaling.yarn_log_multiplier", s.yarn_log_mul);
        }
    }
    if (s.yoco()) {
        w.set_u32(a + "self_decoder_block_count", uint32_t(s.n_layer_self));
        w.set_u32(a + "sliding_window", uint32_t(s.sliding_window));
    }
    w.set_string("kvserve.synth.shape", s.name);
    w.set_u64("kvserve.synth.seed", seed);
}

// Fills a (rows x ne0) tensor of dtype `type` with synthetic values, rows split across threads.
status fill_tensor(uint8_t* dst, const tensor_plan& p, dtype type, uint64_t key, int n_threads) {
    const int64_t ne0 = p.ne[0];
    int64_t rows = 1;
    for (size_t d = 1; d < p.ne.size(); ++d) rows *= p.ne[d];
    const size_t row_bytes = dtype_row_bytes(type, ne0);
    const int n_workers = int(std::clamp<int64_t>(rows / 16, 1, n_threads));
    std::vector<std::thread> pool;
    std::vector<char> ok(size_t(n_workers), 1);
    auto work = [&](int w) {
        std::vector<float> row(static_cast<size_t>(ne0));  // (ne0) f32 scratch
        for (int64_t r = w; r < rows; r += n_workers) {
            for (int64_t i = 0; i < ne0; ++i)
                row[size_t(i)] = p.init == tensor_plan::ones ? 1.0f : 0.02f * p.scale * synth_normal(key, uint64_t(r * ne0 + i));
            if (!quantize_row(type, row.data(), dst + size_t(r) * row_bytes, ne0)) ok[size_t(w)] = 0;
        }
    };
    for (int w = 1; w < n_workers; ++w) pool.emplace_back(work, w);
    work(0);
    for (auto& t : pool) t.join();
    for (char c : ok)
        if (!c) return status::error(strfmt("cannot write %s values", dtype_name(type)));
    return status::ok();
}

int cmd_synth(int argc, char** argv) {
    CLI::App app("Write a model with random weights in a real model's geometry", "kvserve synth");
    std::string shape_name, dtype_name_str, out, vocab_path;
    uint64_t seed = 1;
    int64_t agree_after = -1, n_layers = 0;
    int n_threads = int(std::max(1u, std::thread::hardware_concurrency()));
    app.add_option("--shape", shape_name, "model geometry: " + model_shape_names())->required();
    app.add_option("--dtype", dtype_name_str,
                   "weight dtype: f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, or the llama.cpp mixtures q4_k_m, "
                   "q5_k_m")
        ->required();
    app.add_option("-o,--output", out, "GGUF file to write")->required();
    app.add_option("--vocab", vocab_path, "vocabulary GGUF to copy tokenizer.* keys from (default: the shape's, under $KVSERVE_SHARED or ../shared)");
    app.add_option("--seed", seed, "random seed")->capture_default_str();
    app.add_option("--agree-after", agree_after,
                   "layers from E on change the residual stream negligibly (outputs scaled by 1e-5), so early exit at E "
                   "agrees with the full model: the best case of self-speculative decoding (not for yoco shapes)")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    app.add_option("-t,--threads", n_threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    app.add_option("--layers", n_layers,
                   "keep only the first N layers of the shape: with the same --seed every shared tensor is identical, so this "
                   "is the full model's first N layers and its head (a draft model that agrees with an --agree-after N model); "
                   "yoco shapes keep their self-decoder, so N must exceed its layer count")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
    int64_t q_lora_rank = -1;
    float yarn = -1.0f;
    bool mla_split = false;
    app.add_option("--q-lora-rank", q_lora_rank,
                   "deepseek2 shapes: rank of the query bottleneck (attn_q_a / attn_q_b); 0 writes one full attn_q matrix")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
    app.add_option("--yarn", yarn,
                   "deepseek2 shapes: YaRN context extension by FACTOR (>= 1; 0: none), over the shape's original context "
                   "or its context / FACTOR")
        ->check(CLI::Range(0.0f, 1e6f));
    app.add_flag("--mla-split", mla_split,
                 "deepseek2 shapes: write attn_k_b and attn_v_b (llama.cpp's current layout, which it runs over a latent cache) "
                 "instead of attn_kv_b");
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    const model_shape* found = find_model_shape(shape_name);
    if (!found) {
        std::fprintf(stderr, "kvserve synth: unknown shape '%s' (known: %s)\n", shape_name.c_str(), model_shape_names().c_str());
        return 2;
    }
    model_shape shape_copy = *found;
    if ((q_lora_rank >= 0 || yarn >= 0 || mla_split) && !found->deepseek2()) {
        std::fprintf(stderr, "kvserve synth: --q-lora-rank, --yarn and --mla-split apply to deepseek2 shapes only, not %s\n", found->name);
        return 2;
    }
    shape_copy.mla_split = mla_split;
    if (q_lora_rank >= 0) shape_copy.q_lora = q_lora_rank;
    if (yarn > 0 && yarn < 1) {
        std::fprintf(stderr, "kvserve synth: --yarn %g: the factor must be at least 1 (or 0 for none)\n", double(yarn));
        return 2;
    }
    if (yarn == 0) {
        shape_copy.yarn_factor = 0.0f, shape_copy.yarn_orig_ctx = 0, shape_copy.yarn_log_mul = 0.0f;
    } else if (yarn > 0) {
        shape_copy.yarn_factor = yarn;
        if (found->yarn_orig_ctx == 0)
            shape_copy.yarn_orig_ctx = std::max<int64_t>(1, int64_t(std::lround(double(found->n_ctx_train) / double(yarn))));
        if (found->yarn_log_mul == 0) shape_copy.yarn_log_mul = k_deepseek2_yarn_log_mul;
    }
    if (n_layers > 0) {
        if (n_layers > found->n_layer) {
            std::fprintf(stderr, "kvserve synth: --layers %lld: the shape has %lld layers\n", (long long)n_layers, (long long)found->n_layer);
            return 2;
        }
        // YOCO: the self-decoder stays whole and at least one cross-decoder layer remains, so
        // the result is the full model's first N layers, global K/V and head.
        if (found->yoco() && n_layers <= found->n_layer_self) {
            std::fprintf(stderr,
                         "kvserve synth: --layers %lld: the self-decoder of shape %s has %lld layers; keep more than that "
                         "(at least one cross-decoder layer)\n",
                         (long long)n_layers, found->name, (long long)found->n_layer_self);
            return 2;
        }
        shape_copy.n_layer = n_layers;
        shape_copy.n_layer_dense_lead = std::min(shape_copy.n_layer_dense_lead, n_layers);
    }
    if (found->yoco() && agree_after >= 0) {
        std::fprintf(stderr,
                     "kvserve synth: --agree-after is not supported for yoco shapes (%s): early exit across the "
                     "self-/cross-decoder split is not defined\n",
                     found->name);
        return 2;
    }
    const model_shape* shape = &shape_copy;
    weight_format format;
    if (!weight_format_from_name(dtype_name_str, &format)) {
        std::fprintf(stderr,
                     "kvserve synth: unsupported --dtype '%s' (use f32, f16, bf16, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, "
                     "q4_k_m or q5_k_m)\n",
                     dtype_name_str.c_str());
        return 2;
    }
    if (vocab_path.empty()) vocab_path = shared_dir() + "/" + shape->default_vocab;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(vocab_path, ec)) {
        std::fprintf(stderr, "kvserve synth: vocabulary file %s not found (pass --vocab FILE.gguf or set KVSERVE_SHARED)\n",
                     vocab_path.c_str());
        return 2;
    }
    auto vocab = gguf_file::open(vocab_path);
    if (!vocab) {
        std::fprintf(stderr, "kvserve synth: %s\n", vocab.message().c_str());
        return 1;
    }

    if (agree_after >= shape->n_layer) {
        std::fprintf(stderr, "kvserve synth: --agree-after %lld: the shape has %lld layers\n", (long long)agree_after,
                     (long long)shape->n_layer);
        return 2;
    }
    gguf_writer w;
    set_hparams(w, *shape, format, seed);
    if (agree_after >= 0) w.set_u32("kvserve.synth.agree_after", uint32_t(agree_after));
    if (status s = copy_vocab(w, *vocab.value(), shape->n_vocab); !s) {
        std::fprintf(stderr, "kvserve synth: %s: %s\n", vocab_path.c_str(), s.message().c_str());
        return 1;
    }
    uint64_t n_bytes = 0;
    for (const tensor_plan& p : plan_tensors(*shape, agree_after)) {
        dtype t = weight_dtype_for(p.name, int(p.ne.size()), p.ne[0], format, shape->n_layer, !shape->tied_output);
        uint64_t key = mix64(seed ^ hash_name(p.name));
        status s = w.add_tensor(p.name, t, p.ne, [p, t, key, n_threads](uint8_t* dst) { return fill_tensor(dst, p, t, key, n_threads); });
        if (!s) {
            std::fprintf(stderr, "kvserve synth: %s\n", s.message().c_str());
            return 1;
        }
        int64_t n = 1;
        for (int64_t d : p.ne) n *= d;
        n_bytes += dtype_row_bytes(t, p.ne[0]) * uint64_t(n / p.ne[0]);
    }
    std::fprintf(stderr, "kvserve synth: writing %s (%s, %.1fM parameters, %s, %.1f MB of weights)...\n", out.c_str(), shape->name,
                 double(shape->n_params()) / 1e6, weight_format_name(format).c_str(), double(n_bytes) / 1e6);
    if (status s = w.write(out); !s) {
        std::fprintf(stderr, "kvserve synth: %s\n", s.message().c_str());
        return 1;
    }
    std::printf("wrote %s\n", out.c_str());
    return 0;
}

}  // namespace

KVS_COMMAND("synth", "write a random-weight model in a real model's geometry", cmd_synth);

}  // namespace kvs::tools
