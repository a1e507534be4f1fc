// H2O (h2o:heavy=H,recent=R) against its definition: the probability kernel against a float64
// reference in every KV format, the per-head cut-back (recent by position, heavy by score,
// rows and metadata moved bit for bit, pages freed, shared pages copied first), and the
// engine's logits, held tokens and scores per (chunk, layer, KV head) against the float64
// un-paged reference (reference_h2o_logits) on stories260K and synthetic MHA/GQA/MQA models,
// across chunk and page sizes; a budget that covers the stream gives exactly the dense result,
// and the sequence never holds more than its bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "kernels/cpu/attention_probs.h"
#include "kv/h2o.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/llama.h"
#include "model/session.h"
#include "policy_check.h"
#include "reference_model.h"
#include "test_util.h"

using namespace kvs;

namespace {

kv_policy policy(const std::string& spec) { return kv_policy::parse(spec).value(); }

kv_config small_config(dtype type, int64_t n_layer, int64_t n_kv, int64_t hd, int32_t ps, int32_t n_pages) {
    kv_config c;
    c.n_layer = n_layer;
    c.n_kv_head = n_kv;
    c.head_dim = hd;
    c.page_size = ps;
    c.n_pages = n_pages;
    c.type = type;
    c.token_scores = true;
    return c;
}

}  // namespace

TEST(H2oKernel, ProbabilitiesMatchFloat64ReferenceInEveryFormat) {
    for (dtype type : {dtype::f32, dtype::bf16, dtype::f16}) {
        for (int64_t hd : {8, 64, 100}) {
            const int64_t n_kv = 2, group = 3, n_slots = 45;
            const int32_t ps = 8;
            auto kv = std::move(kv_cache::create(small_config(type, 1, n_kv, hd, ps, 8)).value());
            const int32_t seq = kv->seq_add();
            ASSERT_TRUE(kv->seq_reserve(seq, n_slots));
            std::mt19937 rng{uint32_t(hd + 3 * int64_t(type))};
            std::normal_distribution<float> nd(0.0f, 1.0f);
            std::vector<float> k(size_t(n_kv * hd)), v(size_t(n_kv * hd));
            for (int64_t s = 0; s < n_slots; ++s) {
                for (auto& x : k) x = nd(rng) * 2.0f;
                for (auto& x : v) x = nd(rng);
                kv->write(0, seq, s, k.data(), v.data(), int32_t(s));
            }
            const auto q = test::random_floats(group * hd, 11 + uint64_t(hd), 1.0f);
            for (int64_t h = 0; h < n_kv; ++h) {
                for (int64_t len : {int64_t(1), int64_t(ps), n_slots}) {
                    std::vector<float> acc(size_t(len), 0.5f), scratch(size_t(group * len));
                    std::vector<double> want(size_t(len), 0.5);
                    cpu::attention_probs_add(kv->view(0), h, kv->seq_pages(seq).data(), len, q.data(), group, 0.3f, acc.data(), scratch.data());
                    cpu::ref::attention_probs_add(kv->view(0), h, kv->seq_pages(seq).data(), len, q.data(), group, 0.3f, want.data());
                    EXPECT_LT(test::nmse_norm(acc.data(), want.data(), len), 1e-6) << dtype_name(type) << " hd " << hd << " len " << len;
                    double total = 0;
                    for (float a : acc) total += a - 0.5;
                    EXPECT_NEAR(total, double(group), 1e-4);  // each query head's probabilities sum to 1
                }
            }
        }
    }
}

// The cut-back keeps the R latest and the H best-scored tokens per head, moves kept tokens into
// evicted slots bit for bit (with their metadata), frees pages past H + R, and copies a shared
// page before writing it.
TEST(H2oCutBack, KeepsRecentAndHeaviestPerHeadAndFreesPages) {
    for (dtype type : {dtype::f32, dtype::bf16}) {
        const int64_t n_layer = 2, n_kv = 2, hd = 4;
        const int32_t ps = 4;
        auto kv = std::move(kv_cache::create(small_config(type, n_layer, n_kv, hd, ps, 16)).value());
        const int32_t seq = kv->seq_add();
        kv->seq_set_policy(seq, policy("h2o:heavy=3,recent=2"));
        const int64_t n_filled = 11;
        ASSERT_TRUE(kv->seq_reserve(seq, n_filled));
        // Token t's K and V are all t (and -t): exact in every format, so moves can be traced.
        for (int64_t l = 0; l < n_layer; ++l)
            for (int64_t s = 0; s < n_filled; ++s) {
                std::vector<float> k(size_t(n_kv * hd), float(100 + s)), v(size_t(n_kv * hd), -float(100 + s));
                kv->write(l, seq, s, k.data(), v.data(), int32_t(100 + s));
            }
        // Scores: head 0 of layer 0 favours tokens 101, 105, 103 (ties at 1.0 between 102 and
        // 107: the earlier wins); head 1 favours the latest non-recent ones.
        auto set_score = [&](int64_t l, int64_t h, int64_t s, float v) {
            kv->token_scores(l, kv->seq_pages(seq)[size_t(s / ps)], h)[s % ps] = v;
        };
        for (int64_t l = 0; l < n_layer; ++l)
            for (int64_t s = 0; s < n_filled; ++s) {
                set_score(l, 0, s, 0.1f);
                set_score(l, 1, s, float(s));
            }
        set_score(0, 0, 1, 5.0f);
        set_score(0, 0, 5, 4.0f);
        set_score(0, 0, 2, 1.0f);
        set_score(0, 0, 7, 1.0f);
        set_score(0, 0, 9, 9.0f);  // recent anyway
        // A fork shares every page: the cut-back must copy before it writes.
        const int32_t fork = kv->seq_fork(seq);
        const std::vector<int32_t> shared = kv->seq_pages(fork);
        ASSERT_TRUE(h2o_cut_back(*kv, seq, n_filled));
        EXPECT_EQ(kv->seq_pages(seq).size(), 2u);  // ceil(5 / 4)
        EXPECT_EQ(kv->seq_pages(fork), shared);
        EXPECT_EQ(h2o_held_positions(*kv, fork, 0, 0, n_filled).size(), size_t(n_filled));  // untouched
        EXPECT_EQ(h2o_held_positions(*kv, seq, 0, 0, 5), (std::vector<int32_t>{101, 102, 105, 109, 110}));
        EXPECT_EQ(h2o_held_positions(*kv, seq, 0, 1, 5), (std::vector<int32_t>{106, 107, 108, 109, 110}));
        EXPECT_EQ(h2o_held_positions(*kv, seq, 1, 0, 5), (std::vector<int32_t>{100, 101, 102, 109, 110}));  // all tie: the earliest
        // Every held slot's K and V still belong to the token its position names.
        const cpu::kv_page_layout lay = kv->layout();
        for (int64_t l = 0; l < n_layer; ++l)
            for (int64_t h = 0; h < n_kv; ++h)
                for (int64_t s = 0; s < 5; ++s) {
                    const int32_t pg = kv->seq_pages(seq)[size_t(s / ps)];
                    const int32_t pos = kv->token_positions(l, pg, h)[s % ps];
                    for (int64_t d = 0; d < hd; ++d) {
                        EXPECT_EQ(cpu::kv_load_k(lay, kv->k_block(l, pg, h), s % ps, d), float(pos));
                        EXPECT_EQ(cpu::kv_load_v(lay, kv->v_block(l, pg, h), s % ps, d), -float(pos));
                    }
                    if (l == 0 && h == 0 && pos == 101) {
                        EXPECT_EQ(kv->token_scores(l, pg, h)[s % ps], 5.0f);  // the score moved with it
                    }
                }
        EXPECT_TRUE(kv->check_integrity());
        kv->seq_remove(fork);
        kv->seq_remove(seq);
        EXPECT_EQ(kv->pool().n_used(), 0);
    }
}

namespace {

using test::chunk_ends;
using test::h2o_session;

void expect_h2o_matches_reference(const llama_model& m, int64_t n_tokens, int64_t prompt, uint64_t seed) {
    test::expect_h2o_matches_reference(
        m, [&m](const auto&... a) { return test::reference_h2o_logits(m, a...); }, n_tokens, prompt, seed);
}

}  // namespace

TEST(H2o, Stories260kMatchesFloat64Reference) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    expect_h2o_matches_reference(*m.value(), 64, 21, 3);
}

struct h2o_group_case {
    const char* name;
    int64_t n_head_kv;
};

class H2oSynthetic : public ::testing::TestWithParam<h2o_group_case> {};

TEST_P(H2oSynthetic, MatchesFloat64Reference) {
    test::synth_spec spec;
    spec.n_layer = 2;
    spec.n_head_kv = GetParam().n_head_kv;
    if (spec.n_head_kv == 1) spec.n_rot = 8;
    auto m = llama_model::load(test::write_synth(spec, std::string("h2o_") + GetParam().name));
    ASSERT_TRUE(m) << m.message();
    expect_h2o_matches_reference(*m.value(), 56, 17, 5);
}

INSTANTIATE_TEST_SUITE_P(KvGroups, H2oSynthetic,
                         ::testing::Values(h2o_group_case{"mha", 4}, h2o_group_case{"gqa", 2}, h2o_group_case{"mqa", 1}),
                         [](const auto& info) { return std::string(info.param.name); });

// With heavy + recent covering the stream nothing is evicted: exactly the dense logits, in every
// KV format; a smaller budget changes them and holds fewer pages.
TEST(H2o, BudgetCoveringTheStreamEqualsDense) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    const auto tokens = test::some_tokens(70, m.value()->hparams().n_vocab, 8);
    const auto ends = chunk_ends(70, 20, 8);
    for (dtype type : {dtype::f32, dtype::bf16}) {
        const auto dense = h2o_session(*m.value(), tokens, kv_policy{}, 16, ends, type);
        const auto full = h2o_session(*m.value(), tokens, policy("h2o:heavy=40,recent=30"), 16, ends, type);
        ASSERT_EQ(dense.logits.size(), full.logits.size());
        for (size_t t = 0; t < dense.logits.size(); ++t) ASSERT_EQ(dense.logits[t], full.logits[t]) << t;
        const auto small = h2o_session(*m.value(), tokens, policy("h2o:heavy=8,recent=8"), 16, ends, type);
        EXPECT_NE(small.logits.back(), dense.logits.back());
        EXPECT_LE(small.max_pages, 2);  // ceil((16 + 8) / 16)
    }
}

// The attention-mass diagnostic: 1 when nothing was evicted, a share in (0, 1) below, growing
// with the budget.
TEST(H2o, AttentionMassKeptGrowsWithTheBudget) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    const auto tokens = test::some_tokens(120, m.value()->hparams().n_vocab, 4);
    double last = 0;
    for (int64_t budget : {8, 32, 120}) {
        thread_pool pool(1);
        session_params sp;
        sp.kv_type = dtype::f32;
        sp.n_batch = 1;
        sp.policy = policy("h2o:heavy=" + std::to_string(budget / 2) + ",recent=" + std::to_string(budget / 2));
        auto s = std::move(session::create(*m.value(), pool, sp).value());
        s->set_h2o_mass(true);
        ASSERT_TRUE(s->prefill(tokens));
        const auto& sum = s->state().h2o_mass().sum();
        const auto& cnt = s->state().h2o_mass().count();
        ASSERT_EQ(sum.size(), size_t(m.value()->hparams().n_layer));
        double all = 0;
        for (size_t l = 0; l < sum.size(); ++l) {
            ASSERT_EQ(cnt[l], int64_t(tokens.size()) * m.value()->hparams().n_head);
            const double mean = sum[l] / double(cnt[l]);
            EXPECT_GT(mean, 0.0);
            EXPECT_LE(mean, 1.0 + 1e-9);
            all += mean / double(sum.size());
        }
        if (budget >= int64_t(tokens.size())) {
            EXPECT_NEAR(all, 1.0, 1e-9);
        } else {
            EXPECT_LT(all, 1.0);
        }
        EXPECT_GT(all, last);
        last = all;
    }
}
