// DeepSeek-V2 in the engine (src/model/deepseek2*.cpp: absorbed MLA over the latent KV group,
// MoE FFN) against the float64 reference written from the paper's equations, un-absorbed
// (test::reference_deepseek2_logits: per-head keys and values materialized, whole-sequence
// masks, no pages): whole, chunked and token-by-token prefill, q low rank on and off, YaRN;
// the routing of the last MoE layer; several sequences in one batch with shared prefix pages
// (copy-on-write, cascade); the scheduler with n > 1, preemption and the prefix cache over the
// latent pages (integrity after every step); H2O and Quest over the latent group against
// their float64 references; what it refuses; malformed files.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "kv/kv_groups.h"
#include "model/deepseek2.h"
#include "model/session.h"
#include "policy_check.h"
#include "reference_deepseek2.h"
#include "reference_model.h"
#include "sched/scheduler.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;

namespace {

// Writes deepseek-v2-tiny (f32 weights unless `dtype`) with extra synth arguments; "" if the
// vocabulary fixture is missing.
std::string synth_tiny(const std::string& name, const std::string& extra = "", const std::string& dtype = "f32") {
    const std::string vocab = test::shared_file("models/stories260K.gguf");
    if (vocab.empty()) return "";
    const std::string out = test::temp_dir() + "/" + name + ".gguf";
    std::string text;
    const int rc = test::run_command("'" + test::kvserve_binary() + "' synth --shape deepseek-v2-tiny --dtype " + dtype + " --vocab '" +
                                         vocab + "' " + extra + " -o '" + out + "'",
                                     &text);
    EXPECT_EQ(rc, 0) << text;
    return rc == 0 ? out : "";
}

#define NEED_FILE(var, ...)                                                                  \
    const std::string var = synth_tiny(__VA_ARGS__);                                         \
    if (var.empty()) GTEST_SKIP() << "models/stories260K.gguf not found under " << test::shared_dir()

std::unique_ptr<deepseek2_model> load(const std::string& path, const load_options& opts = {}) {
    auto f = gguf_file::open(path);
    EXPECT_TRUE(f) << f.message();
    if (!f) return nullptr;
    auto m = deepseek2_model::from_gguf(std::move(f.value()), opts);
    EXPECT_TRUE(m) << m.message();
    return m ? std::move(m.value()) : nullptr;
}

// Every row's logits through a session (f32 latent pages of page_size tokens, n_batch per pass).
std::vector<float> session_logits(const language_model& m, const std::vector<int32_t>& tokens, int64_t n_batch, int32_t page_size = 4,
                                  dtype kv_type = dtype::f32) {
    thread_pool pool(2);
    session_params p;
    p.kv_type = kv_type;
    p.page_size = page_size;
    p.n_batch = n_batch;
    p.max_logit_rows = n_batch;
    auto s = session::create(m, pool, p);
    EXPECT_TRUE(s) << s.message();
    if (!s) return {};
    std::vector<float> all;
    status st = s.value()->eval(tokens.data(), int64_t(tokens.size()), 0, &all);
    EXPECT_TRUE(st) << st.message();
    return all;
}

// The model's latent group of n_pages f32 pages of 4 tokens (with Quest's bounds and H2O's
// scores when policy_metadata), for the scheduler.
std::unique_ptr<kv_groups> latent_groups(const language_model& m, int32_t n_pages, bool policy_metadata = false) {
    std::vector<kv_group_desc> layout = m.kv_group_layout(4, dtype::f32);
    layout[0].config.n_pages = n_pages;
    layout[0].config.key_bounds = layout[0].config.token_scores = policy_metadata;
    return kv_groups::create(layout).value();
}

void expect_matches_reference(const std::string& path, double tol) {
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    const int64_t n_vocab = m->hparams().n_vocab;
    const std::vector<int32_t> tokens = test::some_tokens(23, n_vocab, 11);
    const auto want = test::reference_deepseek2_logits(*f, tokens);
    ASSERT_EQ(want.size(), tokens.size());
    for (int64_t n_batch : {int64_t(1), int64_t(5), int64_t(64)}) {
        const std::vector<float> got = session_logits(*m, tokens, n_batch);
        ASSERT_EQ(got.size(), tokens.size() * size_t(n_vocab));
        double worst = 0;
        for (size_t t = 0; t < tokens.size(); ++t)
            worst = std::max(worst, test::nmse_norm(got.data() + int64_t(t) * n_vocab, want[t].data(), n_vocab));
        EXPECT_LT(worst, tol) << path << " n_batch " << n_batch;
    }
}

TEST(DeepSeek2, AbsorbedAttentionMatchesTheUnabsorbedReference) {
    NEED_FILE(path, "ds2-engine-qlora");
    expect_matches_reference(path, 1e-5);
}

TEST(DeepSeek2, WithoutQueryLowRank) {
    NEED_FILE(path, "ds2-engine-noqlora", "--q-lora-rank 0");
    expect_matches_reference(path, 1e-5);
}

// llama.cpp's current layout (attn_k_b / attn_v_b, the latent in the generic keys), as
// `synth --mla-split` writes it.
TEST(DeepSeek2, SplitLayoutFromSynthMatchesTheReference) {
    NEED_FILE(path, "ds2-engine-synth-split", "--mla-split --yarn 4");
    auto m = load(path);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->hparams().mla_split);
    EXPECT_EQ(m->hparams().n_head_kv, m->hparams().n_head);
    expect_matches_reference(path, 1e-5);
}

TEST(DeepSeek2, WithYarnScaling) {
    NEED_FILE(path, "ds2-engine-yarn", "--yarn 4");
    auto m = load(path);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->hparams().rope_yarn);
    EXPECT_GT(m->attention_scale(), 1.0f / std::sqrt(float(m->hparams().head_dim)));  // mscale > 1
    expect_matches_reference(path, 1e-5);
}

TEST(DeepSeek2, QuantizedWeightsStayCloseToTheReference) {
    NEED_FILE(path, "ds2-engine-q8", "", "q8_0");
    expect_matches_reference(path, 2e-2);
}

// Window, StreamingLLM and recompute over the latent group against the reference's masks
// (StreamingLLM: keys at their ranks inside the cache, which the engine reaches by turning only
// the queries' RoPE parts in its sink pass), whole and chunked, past the window.
TEST(DeepSeek2, KvPoliciesOverTheLatentCacheMatchTheReference) {
    NEED_FILE(path, "ds2-engine-policy", "--yarn 4");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    const int64_t n_vocab = m->hparams().n_vocab;
    const std::vector<int32_t> tokens = test::some_tokens(40, n_vocab, 17);
    for (const char* spec : {"window:size=8", "streaming:sinks=2,size=8"}) {
        const kv_policy pol = kv_policy::parse(spec).value();
        const auto want = test::reference_deepseek2_policy_logits(*f, tokens, pol);
        ASSERT_EQ(want.size(), tokens.size());
        for (int64_t n_batch : {int64_t(1), int64_t(3)}) {
            thread_pool pool(2);
            session_params p;
            p.kv_type = dtype::f32;
            p.page_size = 4;
            p.n_batch = n_batch;
            p.max_logit_rows = n_batch;
            p.policy = pol;
            auto s = session::create(*m, pool, p);
            ASSERT_TRUE(s) << s.message();
            std::vector<float> got;
            status st = s.value()->eval(tokens.data(), int64_t(tokens.size()), 0, &got);
            ASSERT_TRUE(st) << st.message();
            ASSERT_EQ(got.size(), tokens.size() * size_t(n_vocab));
            double worst = 0;
            for (size_t t = 0; t < tokens.size(); ++t)
                worst = std::max(worst, test::nmse_norm(got.data() + int64_t(t) * n_vocab, want[t].data(), n_vocab));
            EXPECT_LT(worst, 1e-5) << spec << " n_batch " << n_batch;
            // The table holds the window (and sinks), not the sequence.
            const model_hparams& hp = m->hparams();
            EXPECT_LE(s.value()->kv_bytes(), size_t(kv_cache::policy_page_bound(pol, n_batch, 4)) * 4 * size_t(hp.n_layer * (hp.kv_lora + hp.n_rot)) * 4);
        }
    }
    // Dense differs from both past the window (the test can fail).
    const auto dense = test::reference_deepseek2_logits(*f, tokens);
    const auto window = test::reference_deepseek2_policy_logits(*f, tokens, kv_policy::parse("window:size=8").value());
    EXPECT_GT(test::nmse_norm(std::vector<float>(window.back().begin(), window.back().end()).data(), dense.back().data(), n_vocab), 1e-3);
}

// H2O over the latent group (one latent "KV head" per layer, each entry scored by the
// probabilities all H heads gave it) against the float64 reference's held sets, scores and
// logits, over chunk and page sizes and budgets (policy_check.h).
TEST(DeepSeek2, H2oOverTheLatentCacheMatchesTheReference) {
    NEED_FILE(path, "ds2-engine-h2o", "--yarn 4");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    test::expect_h2o_matches_reference(
        *m, [&f](const auto&... a) { return test::reference_deepseek2_h2o_logits(*f, a...); }, 48, 15, 5);
}

// Quest over the latent group: pages chosen by the bounds of their latent entries against the
// absorbed queries of all heads, against the float64 reference's choices and logits (layer 2
// selects; layers 0 and 1 stay dense).
TEST(DeepSeek2, QuestOverTheLatentCacheMatchesTheReference) {
    NEED_FILE(path, "ds2-engine-quest", "--yarn 4");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    test::expect_quest_matches_reference(
        *m, [&f](const auto&... a) { return test::reference_deepseek2_quest_logits(*f, a...); }, 72, 17, 5);
}

// Prefill in MLA's un-absorbed form (mla_unabsorbed.h: the context's latents lifted to per-head
// keys and values, then per-head attention) against the same float64 reference as the absorbed
// form, with either form forced, in both file layouts, whole, chunked and token by token; a
// prompt continued over a prefix (the rows' context reaches back into earlier chunks); 16-bit
// latent pages; and several sequences in one batch where some rows are absorbed and some not.
TEST(DeepSeek2, UnabsorbedPrefillMatchesTheReference) {
    for (const char* extra : {"--yarn 4", "--mla-split --q-lora-rank 0"}) {
        NEED_FILE(path, std::string("ds2-engine-unabsorbed") + (extra[2] == 'y' ? "" : "-split"), extra);
        auto f = gguf_file::open(path).value();
        load_options un_opts, abs_opts;
        un_opts.prefill_form = mla_prefill::unabsorbed;
        abs_opts.prefill_form = mla_prefill::absorbed;
        auto un = load(path, un_opts), absorbed = load(path, abs_opts);
        ASSERT_TRUE(un && absorbed);
        const int64_t n_vocab = un->hparams().n_vocab;
        const std::vector<int32_t> tokens = test::some_tokens(29, n_vocab, 21);
        const auto want = test::reference_deepseek2_logits(*f, tokens);
        ASSERT_EQ(want.size(), tokens.size());
        for (int64_t n_batch : {int64_t(1), int64_t(6), int64_t(29)}) {
            for (const deepseek2_model* m : {un.get(), absorbed.get()}) {
                const std::vector<float> got = session_logits(*m, tokens, n_batch);
                ASSERT_EQ(got.size(), tokens.size() * size_t(n_vocab));
                double worst = 0;
                for (size_t t = 0; t < tokens.size(); ++t)
                    worst = std::max(worst, test::nmse_norm(got.data() + int64_t(t) * n_vocab, want[t].data(), n_vocab));
                EXPECT_LT(worst, 1e-5) << extra << (m == un.get() ? " un-absorbed" : " absorbed") << " n_batch " << n_batch;
            }
        }
        // 16-bit latent pages: both forms read the same stored values (equal to float rounding).
        const std::vector<float> a = session_logits(*absorbed, tokens, 29, 4, dtype::bf16), u = session_logits(*un, tokens, 29, 4, dtype::bf16);
        ASSERT_EQ(a.size(), u.size());
        for (size_t t = 0; t < tokens.size(); ++t)
            EXPECT_LT(test::nmse_norm(u.data() + int64_t(t) * n_vocab, std::vector<double>(a.begin() + long(t) * n_vocab,
                                                                                        a.begin() + long(t + 1) * n_vocab).data(), n_vocab), 1e-5)
                << extra << " bf16 t " << t;
        // Mixed batches: sequences forked from a shared prompt, each then given a chunk of its own
        // (un-absorbed, its context reaching into the shared pages) beside decode rows.
        thread_pool pool(2);
        for (const deepseek2_model* m : {un.get(), absorbed.get()}) {
            auto kv = kv_cache::create(m->kv_geometry(4, 64, dtype::f32)).value();
            forward_state st(*m, 32, 32);
            const int32_t s0 = kv->seq_add();
            batch b;
            for (int32_t i = 0; i < 10; ++i) b.add(tokens[size_t(i)], i, s0, false);
            ASSERT_TRUE(kv->seq_reserve(s0, 10));
            ASSERT_TRUE(m->forward(b, *kv, st, pool));
            const int32_t s1 = kv->seq_fork(s0);
            b.clear();
            for (int32_t i = 10; i < 19; ++i) b.add(tokens[size_t(i)], i, s0, true);  // a chunk of s0
            b.add(tokens[20], 10, s1, true);                                       // a decode row of s1
            ASSERT_TRUE(kv->seq_reserve(s0, 19));
            ASSERT_TRUE(kv->seq_reserve(s1, 11));
            ASSERT_TRUE(m->forward(b, *kv, st, pool));
            ASSERT_TRUE(kv->check_integrity());
            std::vector<int32_t> t1(tokens.begin(), tokens.begin() + 10);
            t1.push_back(tokens[20]);
            const auto want1 = test::reference_deepseek2_logits(*f, t1);
            for (int64_t r = 0; r < 9; ++r)
                EXPECT_LT(test::nmse_norm(st.logits() + r * n_vocab, want[size_t(10 + r)].data(), n_vocab), 1e-5) << extra << " row " << r;
            EXPECT_LT(test::nmse_norm(st.logits() + 9 * n_vocab, want1.back().data(), n_vocab), 1e-5) << extra << " decode row";
        }
    }
}

// The cost model picks the absorbed form for decode and the un-absorbed one for long prefill
// chunks (DeepSeek-V2-Lite's dimensions).
TEST(DeepSeek2, PrefillFormFollowsTheCostModel) {
    const mla_dims lite{16, 512, 128, 64, 128};
    EXPECT_FALSE(mla_unabsorbed_cheaper(lite, 1, 8192, 8192));       // decode
    EXPECT_FALSE(mla_unabsorbed_cheaper(lite, 4, 4096, 4 * 4096));   // a few rows over a long context
    EXPECT_TRUE(mla_unabsorbed_cheaper(lite, 512, 512, 512 * 513 / 2));
    EXPECT_TRUE(mla_unabsorbed_cheaper(lite, 512, 4096, 512 * (4096 - 256)));
    // One row of a sequence is never cheaper un-absorbed (the forward pass skips the choice for
    // batches of single rows), whatever its context, here and in the tiny shape.
    const mla_dims tiny{4, 32, 16, 8, 16};
    for (int64_t len : {1, 7, 300, 100000}) {
        EXPECT_FALSE(mla_unabsorbed_cheaper(lite, 1, len, len)) << len;
        EXPECT_FALSE(mla_unabsorbed_cheaper(tiny, 1, len, len)) << len;
    }
}

TEST(DeepSeek2, LatentCacheHoldsOneEntryPerTokenAndLayer) {
    NEED_FILE(path, "ds2-engine-kv");
    auto m = load(path);
    ASSERT_TRUE(m);
    const model_hparams& hp = m->hparams();
    const auto groups = m->kv_group_layout(16, dtype::f32);
    ASSERT_EQ(groups.size(), 1u);
    EXPECT_EQ(groups[0].name, "latent");
    const kv_config& c = groups[0].config;
    EXPECT_TRUE(c.keys_only);
    EXPECT_EQ(c.n_kv_head, 1);
    EXPECT_EQ(c.head_dim, hp.kv_lora + hp.n_rot);
    kv_config sized = c;
    sized.n_pages = 1;
    // Bytes of a page: (kv_lora + qk_rope) floats per token and layer, no separate V.
    EXPECT_EQ(sized.page_bytes(), size_t(hp.n_layer * 16 * (hp.kv_lora + hp.n_rot)) * sizeof(float));
    EXPECT_EQ(m->per_head_kv_values(), hp.n_head * (hp.head_dim + hp.v_head));
    // 16-bit pages: half the bytes, the entry read as K and V in K's row layout.
    kv_config bf = sized;
    bf.type = dtype::bf16;
    EXPECT_EQ(bf.page_bytes(), size_t(hp.n_layer * 16 * (hp.kv_lora + hp.n_rot)) * 2);
    EXPECT_TRUE(kv_cache::create(bf));
    // A keys-only group has no V format of its own.
    kv_config mixed = sized;
    mixed.v_type = dtype::f16;
    auto kv = kv_cache::create(mixed);
    ASSERT_FALSE(kv);
    EXPECT_NE(kv.message().find("keys-only"), std::string::npos) << kv.message();
}

// The latent pages in the float formats (--kv-type; the tiny shape's entry of 40 values has no
// groups of 32 for q8_0 and q4, which the Lite shape's 576 have), whole and token by token: the
// logits stay close to the float64 reference, and the error grows as the format narrows (this
// random model's attention is sharp, so K's rounding moves the logits more than a trained one's).
TEST(DeepSeek2, EveryLatentPageFormatStaysCloseToTheReference) {
    NEED_FILE(path, "ds2-engine-kvtypes");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    const int64_t n_vocab = m->hparams().n_vocab;
    const std::vector<int32_t> tokens = test::some_tokens(30, n_vocab, 13);
    const auto want = test::reference_deepseek2_logits(*f, tokens);
    ASSERT_EQ(want.size(), tokens.size());
    struct format_case {
        dtype type;
        double tol;
    };
    double last = 0;
    for (const format_case fc : {format_case{dtype::f32, 1e-5}, {dtype::f16, 1e-3}, {dtype::bf16, 5e-3}}) {
        for (int64_t n_batch : {int64_t(1), int64_t(30)}) {
            const std::vector<float> got = session_logits(*m, tokens, n_batch, 4, fc.type);
            ASSERT_EQ(got.size(), tokens.size() * size_t(n_vocab)) << dtype_name(fc.type);
            double worst = 0;
            for (size_t t = 0; t < tokens.size(); ++t)
                worst = std::max(worst, test::nmse_norm(got.data() + int64_t(t) * n_vocab, want[t].data(), n_vocab));
            EXPECT_LT(worst, fc.tol) << dtype_name(fc.type) << " n_batch " << n_batch;
            if (n_batch == 1) {
                EXPECT_GT(worst, last) << dtype_name(fc.type);
            }
            last = std::max(last, worst);
        }
    }
}

// Several sequences in one batch: a shared prompt forked (shared pages, copy-on-write of the
// partial one), then decode rows of every sequence together (cascade over the shared pages).
TEST(DeepSeek2, BatchedSequencesWithSharedPagesMatchTheReference) {
    NEED_FILE(path, "ds2-engine-batch");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    const int64_t n_vocab = m->hparams().n_vocab;
    thread_pool pool(2);
    auto kv = kv_cache::create(m->kv_geometry(4, 64, dtype::f32)).value();
    forward_state st(*m, 64, 8);
    const std::vector<int32_t> prompt = test::some_tokens(10, n_vocab, 5);
    const int32_t s0 = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(s0, int64_t(prompt.size())));
    batch b;
    for (size_t i = 0; i < prompt.size(); ++i) b.add(prompt[i], int32_t(i), s0, i + 1 == prompt.size());
    ASSERT_TRUE(m->forward(b, *kv, st, pool));
    std::vector<int32_t> seqs = {s0};
    for (int k = 0; k < 2; ++k) {
        const int32_t s = kv->seq_fork(s0);
        ASSERT_GE(s, 0);
        seqs.push_back(s);
    }
    std::vector<std::vector<int32_t>> all(seqs.size(), prompt);
    for (int step = 0; step < 6; ++step) {
        b.clear();
        for (size_t j = 0; j < seqs.size(); ++j) {
            const int32_t tok = int32_t((7 * step + 13 * j + 1) % n_vocab);
            const int32_t pos = int32_t(all[j].size());
            ASSERT_TRUE(kv->seq_reserve(seqs[j], pos + 1));
            b.add(tok, pos, seqs[j], true);
            all[j].push_back(tok);
        }
        ASSERT_TRUE(m->forward(b, *kv, st, pool));
        const status integrity = kv->check_integrity();
        ASSERT_TRUE(integrity) << integrity.message();
        for (size_t j = 0; j < seqs.size(); ++j) {
            const auto want = test::reference_deepseek2_logits(*f, all[j]);
            EXPECT_LT(test::nmse_norm(st.logits() + int64_t(j) * n_vocab, want.back().data(), n_vocab), 1e-5)
                << "step " << step << " seq " << j;
        }
    }
}

TEST(DeepSeek2, RoutingOfTheLastLayerEqualsTheReference) {
    NEED_FILE(path, "ds2-engine-route");
    auto m = load(path);
    ASSERT_TRUE(m);
    auto f = gguf_file::open(path).value();
    const std::vector<int32_t> tokens = test::some_tokens(12, m->hparams().n_vocab, 9);
    std::vector<test::reference_deepseek2_route> routes;
    test::reference_deepseek2_logits(*f, tokens, &routes);
    thread_pool pool(2);
    auto kv = kv_cache::create(m->kv_geometry(4, 16, dtype::f32)).value();
    forward_state st(*m, 16, 1);
    const int32_t s = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(s, int64_t(tokens.size())));
    batch b;
    for (size_t i = 0; i < tokens.size(); ++i) b.add(tokens[i], int32_t(i), s, i + 1 == tokens.size());
    ASSERT_TRUE(m->forward(b, *kv, st, pool));
    const int64_t last = m->hparams().n_layer - 1, k = m->hparams().n_expert_used;
    const moe_scratch& r = st.last_moe();
    int64_t checked = 0;
    for (const auto& route : routes) {
        if (route.layer != last) continue;
        for (int64_t j = 0; j < k; ++j) {
            EXPECT_EQ(r.ids[size_t(route.token * k + j)], route.experts[size_t(j)]) << "token " << route.token << " rank " << j;
            EXPECT_NEAR(r.weights[size_t(route.token * k + j)], route.weights[size_t(j)], 1e-5 * std::max(1.0, route.weights[size_t(j)]));
        }
        ++checked;
    }
    EXPECT_EQ(checked, int64_t(tokens.size()));
}

TEST(DeepSeek2, RefusesWhatItDoesNotRun) {
    NEED_FILE(path, "ds2-engine-refuse");
    auto m = load(path);
    ASSERT_TRUE(m);
    thread_pool pool(2);
    session_params p;
    p.kv_type = dtype::f32;
    p.kivi.bits = 2;
    {
        auto s = session::create(*m, pool, p);
        ASSERT_FALSE(s);
        EXPECT_NE(s.message().find("KIVI"), std::string::npos) << s.message();
    }
    // A cache of another geometry.
    kv_config other = m->kv_geometry(4, 4, dtype::f32);
    other.keys_only = false;
    auto kv = kv_cache::create(other).value();
    forward_state st(*m, 4, 1);
    batch b;
    b.add(1, 0, kv->seq_add(), true);
    ASSERT_TRUE(kv->seq_reserve(0, 1));
    status r = m->forward(b, *kv, st, pool);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("latent"), std::string::npos) << r.message();
    // Bad layer spans are refused before anything is written.
    auto kv2 = kv_cache::create(m->kv_geometry(4, 4, dtype::f32)).value();
    b.clear();
    b.add(1, 0, kv2->seq_add(), true);
    ASSERT_TRUE(kv2->seq_reserve(0, 1));
    layer_span span;
    span.begin = 1;
    r = m->forward(b, *kv2, st, pool, nullptr, span);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("hidden states"), std::string::npos) << r.message();
    span.begin = 0;
    span.end = m->hparams().n_layer + 1;
    r = m->forward(b, *kv2, st, pool, nullptr, span);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("layer span"), std::string::npos) << r.message();
    kv2->seq_set_policy(0, kv_policy::parse("h2o:heavy=2,recent=2").value());
    span.end = 1;
    r = m->forward(b, *kv2, st, pool, nullptr, span);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("H2O"), std::string::npos) << r.message();
}

// Layer spans: layers [0, E) with the exit hidden states, then [E, L) from them, give the full
// pass's logits bit for bit, for every E (the latent pages written once, by the layer that owns them).
TEST(DeepSeek2, LayerSpanSplitPassEqualsTheFullPass) {
    NEED_FILE(path, "ds2-engine-span");
    auto m = load(path);
    ASSERT_TRUE(m);
    const int64_t d = m->hparams().n_embd, nv = m->hparams().n_vocab, L = m->hparams().n_layer;
    const std::vector<int32_t> toks = test::some_tokens(11, nv, 4);
    const int64_t n = int64_t(toks.size());
    thread_pool pool(2);
    auto run = [&](int64_t exit_layer) {
        auto kv = kv_cache::create(m->kv_geometry(4, 16, dtype::f32)).value();
        const int32_t seq = kv->seq_add();
        EXPECT_TRUE(kv->seq_reserve(seq, n));
        forward_state st(*m, n, n);
        batch b;
        for (int64_t i = 0; i < n; ++i) b.add(toks[size_t(i)], int32_t(i), seq, true);
        if (exit_layer == 0) {
            EXPECT_TRUE(m->forward(b, *kv, st, pool));
        } else {
            std::vector<float> h(size_t(n * d));
            layer_span a;
            a.end = exit_layer;
            a.hidden_out = h.data();
            EXPECT_TRUE(m->forward(b, *kv, st, pool, nullptr, a));
            layer_span z;
            z.begin = exit_layer;
            z.hidden_in = h.data();
            EXPECT_TRUE(m->forward(b, *kv, st, pool, nullptr, z));
        }
        return std::vector<float>(st.logits(), st.logits() + n * nv);
    };
    const std::vector<float> full = run(0);
    for (int64_t e = 1; e < L; ++e) {
        const std::vector<float> split = run(e);
        ASSERT_EQ(split.size(), full.size());
        size_t differ = 0;
        for (size_t i = 0; i < full.size(); ++i) differ += split[i] != full[i];
        EXPECT_EQ(differ, 0u) << "exit " << e;
    }
}

// Speculative decoding over the latent cache: self-speculation (every exit layer, several draft
// lengths) and a draft model (the target itself: every draft accepted; a random deepseek2 model:
// few), each with prompts in chunks, the prefix cache and a pool small enough to preempt, give
// the plain greedy tokens; integrity after every step, no page of either cache leaked.
TEST(DeepSeek2, SpeculationGivesThePlainGreedyTokens) {
    NEED_FILE(path, "ds2-engine-spec");
    NEED_FILE(other_path, "ds2-engine-spec-draft", "--seed 9");
    auto lm = language_model::load(path);
    ASSERT_TRUE(lm) << lm.message();
    auto other = language_model::load(other_path);
    ASSERT_TRUE(other) << other.message();
    const language_model& m = *lm.value();
    auto tok = tokenizer::from_gguf(m.file());
    ASSERT_TRUE(tok) << tok.message();
    const int64_t nv = m.hparams().n_vocab;
    struct outcome {
        std::vector<std::vector<int32_t>> tokens;
        scheduler_metrics metrics;
    };
    auto run = [&](int32_t exit_layer, int32_t draft_tokens, const language_model* draft, int32_t n_pages, bool prefix_cache) {
        auto groups = latent_groups(m, n_pages);
        std::unique_ptr<kv_cache> dkv;
        if (draft) dkv = kv_cache::create(draft->kv_geometry(4, 256, dtype::f32)).value();
        thread_pool pool(2);
        scheduler_config cfg;
        cfg.spec_max_running = 8;
        cfg.max_batch_tokens = 16;
        cfg.prefill_chunk = 6;
        cfg.prefix_cache = prefix_cache;
        scheduler s(m, *tok.value(), *groups, pool, cfg, {draft, dkv.get()});
        std::vector<std::shared_ptr<request_stream>> streams;
        outcome out;
        for (int r = 0; r < 3; ++r) {
            request_params p;
            p.prompt = test::some_tokens(7 + 5 * r, nv, 30 + r);
            p.sampling.temperature = 0;
            p.max_tokens = 24;
            p.ignore_eos = true;
            if (exit_layer > 0 || draft) {
                p.speculative.exit_layer = exit_layer;
                p.speculative.draft_tokens = draft_tokens;
            }
            streams.push_back(std::make_shared<request_stream>());
            status st = s.submit(p, streams.back());
            EXPECT_TRUE(st) << st.message();
        }
        out.tokens.resize(streams.size());
        for (int step = 0; !s.idle() && step < 5000; ++step) {
            auto ok = s.step();
            EXPECT_TRUE(ok) << ok.message();
            status integrity = s.check_integrity();
            EXPECT_TRUE(integrity) << integrity.message();
            for (size_t i = 0; i < streams.size(); ++i)
                while (auto ev = streams[i]->pop(0)) out.tokens[i].insert(out.tokens[i].end(), ev->tokens.begin(), ev->tokens.end());
        }
        EXPECT_TRUE(s.idle());
        s.drop_prefix_cache();
        EXPECT_EQ(groups->group(0).pool().n_free(), groups->group(0).pool().n_pages()) << "pages leaked";
        if (dkv) { EXPECT_EQ(dkv->pool().n_free(), dkv->pool().n_pages()) << "draft pages leaked"; }
        out.metrics = s.metrics();
        return out;
    };
    const outcome plain = run(0, 0, nullptr, 256, false);
    for (const auto& t : plain.tokens) EXPECT_EQ(t.size(), 24u);
    for (int32_t e = 1; e < m.hparams().n_layer; ++e)
        for (int32_t dn : {1, 3, 5}) {
            const outcome r = run(e, dn, nullptr, dn == 3 ? 16 : 256, dn != 1);
            EXPECT_EQ(r.tokens, plain.tokens) << "exit " << e << " draft " << dn;
            EXPECT_GT(r.metrics.spec_cycles, 0);
            if (dn == 3) { EXPECT_GT(r.metrics.preemptions, 0); }
        }
    const outcome self_drafted = run(0, 4, &m, 256, true);
    EXPECT_EQ(self_drafted.tokens, plain.tokens);
    EXPECT_GT(self_drafted.metrics.spec_cycles, 0);
    EXPECT_EQ(self_drafted.metrics.spec_accepted, self_drafted.metrics.spec_drafted) << "the target drafting for itself";
    const outcome other_drafted = run(0, 4, other.value().get(), 24, true);
    EXPECT_EQ(other_drafted.tokens, plain.tokens);
    EXPECT_GT(other_drafted.metrics.spec_cycles, 0);
    EXPECT_LT(other_drafted.metrics.spec_accepted, other_drafted.metrics.spec_drafted) << "another model's drafts";
}

// The scheduler over the latent group: several requests, n > 1, a shared prompt (prefix cache)
// and a pool small enough to preempt; integrity after every step, no pages leaked, and the
// same tokens as with a pool large enough for all and the prefix cache off.
TEST(DeepSeek2, SchedulerWithPrefixCacheAndPreemption) {
    NEED_FILE(path, "ds2-engine-sched");
    auto lm = language_model::load(path);
    ASSERT_TRUE(lm) << lm.message();
    const language_model& m = *lm.value();
    auto tok = tokenizer::from_gguf(m.file());
    ASSERT_TRUE(tok) << tok.message();
    auto run = [&](int32_t n_pages, bool prefix_cache, const std::vector<const char*>& policies) {
        auto groups = latent_groups(m, n_pages, true);  // Quest and H2O requests
        thread_pool pool(2);
        scheduler_config cfg;
        cfg.max_seqs = 4;
        cfg.max_batch_tokens = 16;
        cfg.prefill_chunk = 8;
        cfg.prefix_cache = prefix_cache;
        scheduler s(m, *tok.value(), *groups, pool, cfg);
        std::vector<std::shared_ptr<request_stream>> streams;
        std::vector<std::vector<std::vector<int32_t>>> out;
        const std::vector<int32_t> shared = test::some_tokens(13, m.hparams().n_vocab, 3);
        for (int r = 0; r < 4; ++r) {
            request_params p;
            p.prompt = shared;
            p.prompt.push_back(int32_t(20 + r));
            p.sampling.temperature = 0;
            p.max_tokens = 12;
            p.ignore_eos = true;
            p.n = r == 0 ? 2 : 1;
            p.policy = kv_policy::parse(policies[size_t(r)]).value();
            if (r == 0) p.sampling.temperature = 0.8f, p.sampling.seed = 5;
            out.emplace_back(size_t(p.n));
            streams.push_back(std::make_shared<request_stream>());
            EXPECT_TRUE(s.submit(p, streams.back()));
        }
        for (int step = 0; !s.idle() && step < 5000; ++step) {
            auto ok = s.step();
            EXPECT_TRUE(ok) << ok.message();
            status integrity = s.check_integrity();
            EXPECT_TRUE(integrity) << integrity.message();
            for (size_t i = 0; i < streams.size(); ++i)
                while (auto ev = streams[i]->pop(0)) {
                    auto& o = out[i][size_t(ev->index)];
                    o.insert(o.end(), ev->tokens.begin(), ev->tokens.end());
                }
        }
        EXPECT_TRUE(s.idle());
        const auto metrics = s.metrics();
        EXPECT_EQ(groups->group(0).pool().n_free() + (prefix_cache ? groups->group(0).pool().n_pages() - groups->group(0).pool().n_free() : 0),
                  groups->group(0).pool().n_pages());
        return std::make_pair(out, metrics);
    };
    const std::vector<const char*> dense = {"dense", "dense", "dense", "dense"};
    const auto [big, big_metrics] = run(256, false, dense);
    const auto [small, small_metrics] = run(12, true, dense);
    EXPECT_EQ(big, small);
    EXPECT_GT(small_metrics.preemptions, 0);
    EXPECT_GT(small_metrics.prefix_hit_tokens, 0);
    for (const auto& req : big)
        for (const auto& c : req) EXPECT_EQ(c.size(), 12u);
    // Every policy over the latent group in one batch, with and without preemption and the
    // prefix cache: the same tokens.
    const std::vector<const char*> mixed = {"quest:budget=8", "h2o:heavy=4,recent=4", "streaming:sinks=2,size=8", "dense"};
    const auto [pbig, pbig_metrics] = run(256, false, mixed);
    const auto [psmall, psmall_metrics] = run(12, true, mixed);
    EXPECT_EQ(pbig, psmall);
    EXPECT_GT(psmall_metrics.preemptions, 0);
    for (const auto& req : pbig)
        for (const auto& c : req) EXPECT_EQ(c.size(), 12u);
    EXPECT_NE(pbig[1], big[1]);  // H2O's budget is below the sequence: another continuation
}

// Embeddings over the latent cache: the final-normed hidden states pooled and L2-normalized
// (sched/pooling.h). The last token's vector, through the output head, gives the float64
// reference's logits up to a positive scale; every pooling gives the same vector alone, batched
// with other texts and a generation, and in 3-token chunks under a 7-token budget.
TEST(DeepSeek2, EmbeddingsPoolTheFinalHiddenStates) {
    NEED_FILE(path, "ds2-engine-embed");
    auto lm = language_model::load(path);
    ASSERT_TRUE(lm) << lm.message();
    const language_model& m = *lm.value();
    auto tok = tokenizer::from_gguf(m.file());
    ASSERT_TRUE(tok) << tok.message();
    const int64_t d = m.hparams().n_embd, V = m.hparams().n_vocab;
    const std::vector<std::vector<int32_t>> texts = {test::some_tokens(9, V, 2), test::some_tokens(23, V, 5), test::some_tokens(4, V, 8)};
    auto run = [&](const std::vector<request_params>& reqs, scheduler_config cfg) {
        auto groups = latent_groups(m, 128);
        thread_pool pool(2);
        scheduler s(m, *tok.value(), *groups, pool, cfg);
        std::vector<std::shared_ptr<request_stream>> streams;
        for (const auto& p : reqs) {
            streams.push_back(std::make_shared<request_stream>());
            status st = s.submit(p, streams.back());
            EXPECT_TRUE(st) << st.message();
        }
        std::vector<std::vector<float>> out(reqs.size());
        for (int step = 0; !s.idle() && step < 5000; ++step) {
            auto ok = s.step();
            EXPECT_TRUE(ok) << ok.message();
            EXPECT_TRUE(s.check_integrity());
            for (size_t i = 0; i < streams.size(); ++i)
                while (auto ev = streams[i]->pop(0))
                    if (!ev->embedding.empty()) out[i] = ev->embedding;
        }
        EXPECT_TRUE(s.idle());
        return out;
    };
    auto embed = [&](const std::vector<int32_t>& t, pooling_type p) {
        request_params r;
        r.prompt = t;
        r.embed = true;
        r.pooling = p;
        return r;
    };
    const auto file = gguf_file::open(path).value();
    const gguf_tensor_info* out_w = m.file().find_tensor("output.weight");
    ASSERT_TRUE(out_w && out_w->type == dtype::f32);
    const float* W = reinterpret_cast<const float*>(out_w->data);
    for (pooling_type p : {pooling_type::last, pooling_type::mean, pooling_type::cls}) {
        std::vector<std::vector<float>> alone;
        for (const auto& t : texts) alone.push_back(run({embed(t, p)}, scheduler_config{})[0]);
        for (const auto& v : alone) {
            ASSERT_EQ(int64_t(v.size()), d);
            double norm = 0;
            for (float x : v) norm += double(x) * x;
            EXPECT_NEAR(norm, 1.0, 1e-5);
        }
        std::vector<request_params> mixed;
        for (const auto& t : texts) mixed.push_back(embed(t, p));
        request_params gen;
        gen.prompt = texts[1];
        gen.sampling.temperature = 0;
        gen.max_tokens = 8;
        gen.ignore_eos = true;
        mixed.push_back(gen);
        scheduler_config tiny;
        tiny.max_batch_tokens = 7;
        tiny.prefill_chunk = 3;
        const auto got = run(mixed, tiny);
        for (size_t i = 0; i < texts.size(); ++i) {
            ASSERT_EQ(got[i].size(), alone[i].size());
            double diff = 0;
            for (size_t j = 0; j < got[i].size(); ++j) diff = std::max(diff, double(std::fabs(got[i][j] - alone[i][j])));
            EXPECT_LT(diff, 1e-5) << pooling_name(p) << " text " << i;
        }
        EXPECT_TRUE(got[texts.size()].empty());
        if (p != pooling_type::last) continue;
        for (size_t i = 0; i < texts.size(); ++i) {
            const std::vector<double> ref = test::reference_deepseek2_logits(*file, texts[i]).back();
            std::vector<double> mine(static_cast<size_t>(V));
            for (int64_t v = 0; v < V; ++v)
                for (int64_t j = 0; j < d; ++j) mine[size_t(v)] += double(W[v * d + j]) * alone[i][size_t(j)];
            double num = 0, den = 0, err = 0, ref_norm = 0;
            for (int64_t v = 0; v < V; ++v) num += ref[size_t(v)] * mine[size_t(v)], den += mine[size_t(v)] * mine[size_t(v)];
            const double scale = num / den;
            for (int64_t v = 0; v < V; ++v) {
                err += std::pow(ref[size_t(v)] - scale * mine[size_t(v)], 2);
                ref_norm += ref[size_t(v)] * ref[size_t(v)];
            }
            EXPECT_GT(scale, 0);
            EXPECT_LT(std::sqrt(err / ref_norm), 1e-4) << "text " << i;
        }
    }
}

// Load-time tuning over deepseek2's own calls (projections, per-head absorption, experts at
// their share of a chunk's rows): the first load measures and writes the cache, the second reads
// it, and the tuned kernels give the default tuning's logits bit for bit (work splits only).
TEST(DeepSeek2, TunedLoadTimesItsCallsAndKeepsTheLogits) {
    NEED_FILE(path, "ds2-engine-tune", "", "q8_0");
    const cpu::matmul_tuning_table before = cpu::matmul_tuning_active();
    const std::vector<int32_t> tokens = test::some_tokens(13, 512, 6);
    auto plain = load(path);
    ASSERT_TRUE(plain);
    const std::vector<float> want = session_logits(*plain, tokens, 13);
    const std::string dir = test::temp_dir() + "/ds2-tune-cache";
    std::filesystem::remove_all(dir);
    const char* old = std::getenv("KVSERVE_TUNE_CACHE");
    const std::string saved = old ? old : "";
    setenv("KVSERVE_TUNE_CACHE", dir.c_str(), 1);
    load_options opts;
    opts.tune = cpu::tune_level::fast;
    opts.tune_threads = 2;
    testing::internal::CaptureStderr();
    auto tuned = load(path, opts);
    std::string err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(tuned);
    EXPECT_NE(err.find("matmul tuning (fast):"), std::string::npos) << err;
    EXPECT_NE(err.find("saved to"), std::string::npos) << err;
    // The cache names the tuned formats: the model's q8_0 matrices among them.
    std::vector<std::string> files;
    for (const auto& e : std::filesystem::directory_iterator(dir)) files.push_back(e.path().string());
    ASSERT_EQ(files.size(), 1u);
    std::ifstream in(files[0]);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_NE(text.find("q8_0"), std::string::npos) << text;
    const std::vector<float> got = session_logits(*tuned, tokens, 13);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), want.size() * sizeof(float)), 0);
    testing::internal::CaptureStderr();
    auto again = load(path, opts);
    err = testing::internal::GetCapturedStderr();
    ASSERT_TRUE(again);
    EXPECT_NE(err.find("matmul tuning (fast): read "), std::string::npos) << err;
    if (old) setenv("KVSERVE_TUNE_CACHE", saved.c_str(), 1);
    else unsetenv("KVSERVE_TUNE_CACHE");
    cpu::matmul_tuning_set(before);
}

// The split MLA layout llama.cpp's converter writes now: attn_k_b (per head W_UK,iᵀ, ne
// {qk_nope, kv_lora, n_head}) and attn_v_b (per head W_UV,i, ne {kv_lora, v_head, n_head}) in
// place of attn_kv_b, the generic keys describing the latent (head_count_kv 1, key_length
// kv_lora + qk_rope, value_length kv_lora) and the heads' sizes in key_length_mla /
// value_length_mla. Made here from the attn_kv_b file (f32): the same model, the same logits.
std::string write_split_layout(const gguf_file& f, const std::string& name) {
    auto u = [&](const char* key) { return f.get_int(std::string("deepseek2.") + key).value(); };
    const int64_t H = u("attention.head_count"), qk = u("attention.key_length"), vh = u("attention.value_length");
    const int64_t rope = u("rope.dimension_count"), lora = u("attention.kv_lora_rank"), nope = qk - rope;
    gguf_writer w;
    w.copy_metadata(f);
    w.set_u32("deepseek2.attention.head_count_kv", 1);
    w.set_u32("deepseek2.attention.key_length", uint32_t(lora + rope));
    w.set_u32("deepseek2.attention.value_length", uint32_t(lora));
    w.set_u32("deepseek2.attention.key_length_mla", uint32_t(qk));
    w.set_u32("deepseek2.attention.value_length_mla", uint32_t(vh));
    for (const auto& t : f.tensors()) {
        const std::string tname(t.name);
        if (tname.size() > 16 && tname.compare(tname.size() - 16, 16, "attn_kv_b.weight") == 0) {
            // kv_b in any format: dequantized; v_b written back in kv_b's format (its rows of
            // kv_lora fit the blocks), k_b in it too when its rows of qk_nope do, else f32.
            const size_t in_row = dtype_row_bytes(t.type, lora);
            std::vector<float> kv_b(size_t(H * (nope + vh) * lora));  // (H·(nope + vh), lora)
            for (int64_t r = 0; r < H * (nope + vh); ++r) dequantize_row(t.type, t.data + size_t(r) * in_row, kv_b.data() + r * lora, lora);
            std::vector<float> k_b(size_t(H * lora * nope)), v_b(size_t(H * vh * lora));
            for (int64_t i = 0; i < H; ++i) {
                for (int64_t c = 0; c < lora; ++c)
                    for (int64_t r = 0; r < nope; ++r) k_b[size_t((i * lora + c) * nope + r)] = kv_b[size_t((i * (nope + vh) + r) * lora + c)];
                for (int64_t r = 0; r < vh; ++r)
                    for (int64_t c = 0; c < lora; ++c) v_b[size_t((i * vh + r) * lora + c)] = kv_b[size_t((i * (nope + vh) + nope + r) * lora + c)];
            }
            auto encoded = [](const std::vector<float>& v, int64_t row, dtype type) {
                const size_t rb = dtype_row_bytes(type, row);
                std::vector<uint8_t> out(v.size() / size_t(row) * rb);
                for (size_t r = 0; r < v.size() / size_t(row); ++r) quantize_row(type, v.data() + r * size_t(row), out.data() + r * rb, row);
                return out;
            };
            const dtype k_type = nope % dtype_info(t.type).block_size == 0 ? t.type : dtype::f32;
            const std::vector<uint8_t> k_bytes = encoded(k_b, nope, k_type), v_bytes = encoded(v_b, lora, t.type);
            const std::string p = tname.substr(0, tname.size() - 16);
            EXPECT_TRUE(w.add_tensor_data(p + "attn_k_b.weight", k_type, {nope, lora, H}, k_bytes.data(), k_bytes.size()));
            EXPECT_TRUE(w.add_tensor_data(p + "attn_v_b.weight", t.type, {lora, vh, H}, v_bytes.data(), v_bytes.size()));
        } else {
            EXPECT_TRUE(w.add_tensor_data(tname, t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.n_bytes));
        }
    }
    const std::string out = test::temp_dir() + "/" + name + ".gguf";
    status st = w.write(out);
    EXPECT_TRUE(st) << st.message();
    return out;
}

TEST(DeepSeek2, SplitMlaLayoutGivesTheSameModel) {
    NEED_FILE(path, "ds2-engine-legacy", "--yarn 4");
    auto f = gguf_file::open(path).value();
    const std::string split = write_split_layout(*f, "ds2-engine-split");
    auto a = language_model::load(path);
    auto b = language_model::load(split);
    ASSERT_TRUE(a) << a.message();
    ASSERT_TRUE(b) << b.message();
    EXPECT_FALSE(a.value()->hparams().mla_split);
    EXPECT_TRUE(b.value()->hparams().mla_split);
    EXPECT_EQ(b.value()->hparams().head_dim, a.value()->hparams().head_dim);
    EXPECT_EQ(b.value()->hparams().v_head, a.value()->hparams().v_head);
    EXPECT_EQ(b.value()->hparams().n_head_kv, a.value()->hparams().n_head);
    const int64_t n_vocab = a.value()->hparams().n_vocab;
    const std::vector<int32_t> tokens = test::some_tokens(19, n_vocab, 4);
    for (int64_t n_batch : {int64_t(1), int64_t(7)}) {
        const std::vector<float> la = session_logits(*a.value(), tokens, n_batch), lb = session_logits(*b.value(), tokens, n_batch);
        ASSERT_EQ(la.size(), lb.size());
        for (size_t t = 0; t < tokens.size(); ++t)
            EXPECT_LT(test::nmse_norm(lb.data() + int64_t(t) * n_vocab, la.data() + int64_t(t) * n_vocab, n_vocab), 1e-6) << "token " << t;
    }
    // A split file whose generic keys do not describe the latent is refused, naming them.
    gguf_writer w;
    auto g = gguf_file::open(split).value();
    w.copy_metadata(*g);
    w.set_u32("deepseek2.attention.head_count_kv", 4);
    for (const auto& t : g->tensors())
        EXPECT_TRUE(w.add_tensor_data(std::string(t.name), t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.n_bytes));
    const std::string bad = test::temp_dir() + "/ds2-split-bad.gguf";
    ASSERT_TRUE(w.write(bad));
    auto m = language_model::load(bad);
    ASSERT_FALSE(m);
    EXPECT_NE(m.message().find("key_length_mla"), std::string::npos) << m.message();
}

// Weights repacked at load into the interleaved16 layout (the default where the CPU has its
// kernels) give the logits of the file's row-major layout: every matrix the pass reads is
// covered — projections, per-head W_UK,iᵀ / W_UV,i slices of stacked tensors, expert stacks.
TEST(DeepSeek2, RepackedWeightsGiveTheFileLayoutsLogits) {
    for (const char* type : {"q8_0", "q4_0"}) {
        NEED_FILE(path, std::string("ds2-repack-") + type, "", type);
        auto f = gguf_file::open(path).value();
        const std::string split = write_split_layout(*f, std::string("ds2-repack-split-") + type);
        for (const std::string& file : {path, split}) {
            load_options never, always;
            never.repack = weight_repack::never;
            always.repack = weight_repack::always;
            auto a = language_model::load(file, never);
            auto b = language_model::load(file, always);
            ASSERT_TRUE(a) << a.message();
            ASSERT_TRUE(b) << b.message();
            EXPECT_EQ(a.value()->repacked_bytes(), 0u);
            EXPECT_GT(b.value()->repacked_bytes(), 0u) << file;
            const auto& L = dynamic_cast<const deepseek2_model&>(*b.value()).weights().layers.back();
            EXPECT_EQ(L.moe.gate_exps.layout, cpu::weight_layout::interleaved16) << file;
            EXPECT_EQ(L.moe.down_exps.layout, cpu::weight_layout::interleaved16) << file;
            EXPECT_EQ(L.wv_b.layout, cpu::weight_layout::interleaved16) << file;
            EXPECT_EQ(L.wo.layout, cpu::weight_layout::interleaved16) << file;
            const int64_t n_vocab = a.value()->hparams().n_vocab;
            const std::vector<int32_t> tokens = test::some_tokens(21, n_vocab, 5);
            for (int64_t n_batch : {int64_t(1), int64_t(3), int64_t(21)}) {
                const std::vector<float> la = session_logits(*a.value(), tokens, n_batch), lb = session_logits(*b.value(), tokens, n_batch);
                ASSERT_EQ(la.size(), lb.size());
                double worst = 0;
                for (size_t t = 0; t < tokens.size(); ++t)
                    worst = std::max(worst, test::nmse_norm(lb.data() + int64_t(t) * n_vocab, la.data() + int64_t(t) * n_vocab, n_vocab));
                EXPECT_LT(worst, 1e-6) << file << " n_batch " << n_batch;
            }
        }
    }
}

// Malformed files fail at load with a message naming the tensor or key.
TEST(DeepSeek2, MalformedFilesNameWhatIsWrong) {
    NEED_FILE(path, "ds2-engine-malformed");
    auto f = gguf_file::open(path).value();
    auto rewrite = [&](const std::string& name, const std::string& drop_tensor, const std::string& key, int64_t value) {
        gguf_writer w;
        w.copy_metadata(*f);
        if (!key.empty()) w.set_u32(key, uint32_t(value));
        for (const auto& t : f->tensors())
            if (t.name != drop_tensor) {
                status st = w.add_tensor_data(std::string(t.name), t.type, std::vector<int64_t>(t.ne, t.ne + t.n_dims), t.data, t.n_bytes);
                EXPECT_TRUE(st) << st.message();
            }
        const std::string out = test::temp_dir() + "/" + name + ".gguf";
        status st = w.write(out);
        EXPECT_TRUE(st) << st.message();
        return out;
    };
    struct bad {
        std::string drop, key;
        int64_t value;
        std::string expect;
    } cases[] = {
        {"blk.1.attn_kv_b.weight", "", 0, "blk.1.attn_kv_b.weight"},
        {"blk.2.ffn_gate_exps.weight", "", 0, "blk.2.ffn_gate_exps.weight"},
        {"blk.0.attn_q_a_norm.weight", "", 0, "blk.0.attn_q_a_norm.weight"},
        {"", "deepseek2.expert_count", 6, "ffn_gate_inp.weight"},
        {"", "deepseek2.attention.kv_lora_rank", 16, "attn_kv_a_mqa.weight"},
        {"", "deepseek2.attention.q_lora_rank", 0, "attn_q"},
        {"", "deepseek2.expert_used_count", 9, "expert_used_count"},
        {"", "deepseek2.rope.dimension_count", 24, "rope.dimension_count"},
    };
    int i = 0;
    for (const bad& c : cases) {
        const std::string out = rewrite("ds2-bad-" + std::to_string(i++), c.drop, c.key, c.value);
        auto m = language_model::load(out);
        ASSERT_FALSE(m) << c.drop << c.key;
        EXPECT_NE(m.message().find(c.expect), std::string::npos) << m.message();
    }
}

}  // namespace
