// Quest (quest:budget=B) against its definition: the page score kernel against a float64
// reference and as an upper bound of every logit in the page, the key bounds kept as keys are
// written and copied on write, and the engine's logits and per-(layer, KV head) page choices
// against the float64 un-paged reference (reference_quest_logits) on stories260K and on
// synthetic MHA/GQA/MQA models, at several page sizes and budgets; a budget that covers the
// context gives exactly the dense result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/quest.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/llama.h"
#include "model/session.h"
#include "policy_check.h"
#include "reference_model.h"
#include "test_util.h"

using namespace kvs;

namespace {

kv_policy policy(const char* spec) { return kv_policy::parse(spec).value(); }

// A cache of one layer with random keys written into `n_pages` pages of one sequence.
std::unique_ptr<kv_cache> random_cache(dtype type, int64_t n_kv, int64_t hd, int32_t ps, int32_t n_pages, uint64_t seed, int32_t* seq) {
    kv_config c;
    c.n_layer = 1;
    c.n_kv_head = n_kv;
    c.head_dim = hd;
    c.page_size = ps;
    c.n_pages = n_pages + 2;
    c.type = type;
    c.key_bounds = true;
    auto kv = std::move(kv_cache::create(c).value());
    *seq = kv->seq_add();
    EXPECT_TRUE(kv->seq_reserve(*seq, int64_t(n_pages) * ps));
    std::mt19937 rng{uint32_t(seed)};
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> k(size_t(n_kv * hd)), v(size_t(n_kv * hd));
    for (int64_t slot = 0; slot < int64_t(n_pages) * ps; ++slot) {
        for (auto& x : k) x = nd(rng) * 2.0f;
        for (auto& x : v) x = nd(rng);
        kv->write(0, *seq, slot, k.data(), v.data());
    }
    return kv;
}

}  // namespace

// Every SIMD path, head sizes with and without a partial 16-channel chunk, group sizes below,
// at and past a block of 8 heads, and odd page counts (the AVX-512 path scores pages in pairs).
TEST(QuestKernel, ScoresMatchReferenceAndBoundEveryLogit) {
    for (cpu::isa path : {cpu::isa::scalar, cpu::isa::avx2, cpu::isa::avx512}) {
        if (!cpu::isa_supported(path)) continue;
        cpu::isa_override(path);
        for (dtype type : {dtype::f32, dtype::bf16, dtype::f16}) {
            for (auto [hd, group, n_pages] : {std::tuple<int64_t, int64_t, int32_t>{8, 3, 12}, {64, 3, 13}, {100, 3, 12}, {64, 8, 13},
                                              {64, 1, 7}, {100, 11, 9}, {64, 16, 12}}) {
                const int64_t n_kv = 2;
                const int32_t ps = 16;
                int32_t seq = -1;
                auto kv = random_cache(type, n_kv, hd, ps, n_pages, uint64_t(hd) * 7 + uint64_t(type), &seq);
                const auto& pages = kv->seq_pages(seq);
                std::mt19937 rng(3);
                std::normal_distribution<float> nd(0.0f, 1.0f);
                std::vector<float> q(size_t(group * hd));
                for (auto& x : q) x = nd(rng);
                for (int64_t h = 0; h < n_kv; ++h) {
                    std::vector<float> got(static_cast<size_t>(n_pages));
                    std::vector<double> want(static_cast<size_t>(n_pages));
                    cpu::quest_page_scores(q.data(), group, hd, kv->key_bounds(0, 0, h), kv->bounds_page_stride(), pages.data(), n_pages, got.data());
                    cpu::ref::quest_page_scores(q.data(), group, hd, kv->key_bounds(0, 0, h), kv->bounds_page_stride(), pages.data(), n_pages,
                                                want.data());
                    EXPECT_LT(test::nmse_norm(got.data(), want.data(), n_pages), 1e-6)
                        << cpu::isa_name(path) << " " << dtype_name(type) << " hd " << hd << " group " << group << " pages " << n_pages;
                    for (int32_t p = 0; p < n_pages; ++p) {
                        // The bounds are the min and max of the keys as stored, rounded outwards to bf16 ...
                        const uint16_t* b = kv->key_bounds(0, pages[size_t(p)], h);
                        const uint8_t* block = kv->k_block(0, pages[size_t(p)], h);
                        double true_max = -1e300;
                        for (int64_t d = 0; d < hd; ++d) {
                            float mn = 1e30f, mx = -1e30f;
                            for (int32_t r = 0; r < ps; ++r) {
                                mn = std::min(mn, cpu::kv_load_k(kv->layout(), block, r, d));
                                mx = std::max(mx, cpu::kv_load_k(kv->layout(), block, r, d));
                            }
                            ASSERT_EQ(b[d], cpu::bf16_round_down(mn));
                            ASSERT_EQ(b[hd + d], cpu::bf16_round_up(mx));
                            ASSERT_LE(cpu::bf16_to_f32(b[d]), mn);
                            ASSERT_GE(cpu::bf16_to_f32(b[hd + d]), mx);
                        }
                        // ... and the score bounds every logit of every query head of the group.
                        for (int64_t g = 0; g < group; ++g)
                            for (int32_t r = 0; r < ps; ++r) {
                                double dot = 0;
                                for (int64_t d = 0; d < hd; ++d) dot += double(q[size_t(g * hd + d)]) * cpu::kv_load_k(kv->layout(), block, r, d);
                                true_max = std::max(true_max, dot);
                            }
                        EXPECT_GE(want[size_t(p)], true_max - 1e-9);
                        EXPECT_GE(double(got[size_t(p)]), true_max - 1e-4 * std::max(1.0, std::fabs(true_max)));
                    }
                }
            }
        }
    }
    cpu::isa_reset();
}

TEST(QuestKvBounds, Bf16RoundingIsOutward) {
    for (float x : {1.0f, -1.0f, 0.0f, 3.14159f, -3.14159f, 1e-20f, -1e-20f, 65504.5f, -7.00390625f}) {
        const float lo = cpu::bf16_to_f32(cpu::bf16_round_down(x)), hi = cpu::bf16_to_f32(cpu::bf16_round_up(x));
        EXPECT_LE(lo, x) << x;
        EXPECT_GE(hi, x) << x;
        EXPECT_LE(hi - lo, std::fabs(x) * 0x1p-7f) << x;  // one bf16 step at most
    }
    EXPECT_EQ(cpu::bf16_to_f32(cpu::bf16_round_down(1.0f)), 1.0f);  // exact values stay
}

TEST(QuestKvBounds, CopyOnWriteCopiesTheBounds) {
    int32_t seq = -1;
    auto kv = random_cache(dtype::f32, 2, 8, 4, 3, 11, &seq);
    // A fork shares the pages; the last page is made to hold 2 rows only by trimming nothing:
    // write row 0 of a fresh page, fork, then write row 1 in the fork (copy-on-write).
    ASSERT_TRUE(kv->seq_reserve(seq, 13));
    std::vector<float> k(16, 0.5f), v(16, 0.0f);
    kv->write(0, seq, 12, k.data(), v.data());
    const int32_t fork = kv->seq_fork(seq);
    const int32_t shared = kv->page_of(seq, 12);
    ASSERT_TRUE(kv->seq_prepare_write(fork, 13, 14));
    const int32_t copy = kv->page_of(fork, 13);
    ASSERT_NE(copy, shared);
    for (int64_t h = 0; h < 2; ++h)
        for (int64_t i = 0; i < 16; ++i) EXPECT_EQ(kv->key_bounds(0, copy, h)[i], kv->key_bounds(0, shared, h)[i]);
    std::vector<float> k2(16, -3.0f);
    kv->write(0, fork, 13, k2.data(), v.data());
    EXPECT_EQ(cpu::bf16_to_f32(kv->key_bounds(0, copy, 0)[0]), -3.0f);   // min of the fork's page
    EXPECT_EQ(cpu::bf16_to_f32(kv->key_bounds(0, copy, 0)[8]), 0.5f);    // max
    EXPECT_EQ(cpu::bf16_to_f32(kv->key_bounds(0, shared, 0)[0]), 0.5f);  // the shared page is untouched
    EXPECT_TRUE(kv->check_integrity());
}

namespace {

using test::quest_session;

void expect_quest_matches_reference(const llama_model& m, int64_t n_tokens, int64_t prompt_len, uint64_t seed) {
    test::expect_quest_matches_reference(
        m, [&m](const auto&... a) { return test::reference_quest_logits(m, a...); }, n_tokens, prompt_len, seed);
}

}  // namespace

TEST(Quest, Stories260kMatchesFloat64Reference) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    expect_quest_matches_reference(*m.value(), 96, 20, 3);
}

struct quest_group_case {
    const char* name;
    int64_t n_head_kv;
};

class QuestSynthetic : public ::testing::TestWithParam<quest_group_case> {};

TEST_P(QuestSynthetic, MatchesFloat64Reference) {
    test::synth_spec spec;
    spec.n_layer = 4;  // Quest starts at layer 2
    spec.n_head_kv = GetParam().n_head_kv;
    if (spec.n_head_kv == 1) spec.n_rot = 8;
    auto m = llama_model::load(test::write_synth(spec, std::string("quest_") + GetParam().name));
    ASSERT_TRUE(m) << m.message();
    expect_quest_matches_reference(*m.value(), 80, 17, 5);
}

INSTANTIATE_TEST_SUITE_P(KvGroups, QuestSynthetic,
                         ::testing::Values(quest_group_case{"mha", 4}, quest_group_case{"gqa", 2}, quest_group_case{"mqa", 1}),
                         [](const auto& info) { return std::string(info.param.name); });

// With a budget that covers every token, Quest is dense: the same logits bit for bit.
TEST(Quest, BudgetCoveringTheContextEqualsDense) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    const auto tokens = test::some_tokens(70, m.value()->hparams().n_vocab, 8);
    const auto dense = quest_session(*m.value(), tokens, kv_policy{}, 16, 10, nullptr, nullptr);
    const auto quest = quest_session(*m.value(), tokens, policy("quest:budget=80"), 16, 10, nullptr, nullptr);
    ASSERT_EQ(dense.size(), quest.size());
    for (size_t t = 0; t < dense.size(); ++t) ASSERT_EQ(dense[t], quest[t]) << t;
    // A small budget reads less and changes the result.
    std::vector<forward_state::quest_choice> trace;
    const auto small = quest_session(*m.value(), tokens, policy("quest:budget=32"), 16, 10, &trace, nullptr);
    EXPECT_FALSE(trace.empty());
    EXPECT_NE(small.back(), dense.back());
}

// The attention-mass diagnostic: a share in (0, 1] per Quest layer, growing with the budget.
TEST(Quest, AttentionMassKeptGrowsWithTheBudget) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    const auto tokens = test::some_tokens(130, m.value()->hparams().n_vocab, 4);
    std::vector<double> mean_by_budget;
    for (int64_t budget : {16, 64, 112}) {
        thread_pool pool(1);
        session_params sp;
        sp.kv_type = dtype::f32;
        sp.n_ctx = 160;
        sp.policy = policy(("quest:budget=" + std::to_string(budget)).c_str());
        auto s = std::move(session::create(*m.value(), pool, sp).value());
        s->set_quest_mass(true);
        ASSERT_TRUE(s->prefill(std::vector<int32_t>(tokens.begin(), tokens.begin() + 8)));
        for (size_t t = 8; t < tokens.size(); ++t) ASSERT_TRUE(s->decode(tokens[t]));
        const auto& sum = s->state().quest_mass_sum();
        const auto& cnt = s->state().quest_mass_count();
        ASSERT_EQ(sum.size(), size_t(m.value()->hparams().n_layer));
        double all = 0;
        for (size_t l = 0; l < sum.size(); ++l) {
            if (l < 2) {
                EXPECT_EQ(cnt[l], 0);  // the first two layers stay dense
                continue;
            }
            ASSERT_GT(cnt[l], 0);
            const double mean = sum[l] / double(cnt[l]);
            EXPECT_GT(mean, 0.0);
            EXPECT_LE(mean, 1.0 + 1e-9);
            all += mean;
        }
        mean_by_budget.push_back(all);
    }
    EXPECT_LT(mean_by_budget[0], mean_by_budget[1]);
    EXPECT_LT(mean_by_budget[1], mean_by_budget[2]);
}

// Cascade beside Quest: decode rows of forked sequences share their prompt's pages. In layers
// 0 and 1 every group goes through the shared pass; from layer 2 on the Quest rows leave their
// groups and read their per-head lists, while the dense rows keep sharing. The Quest choices
// equal a run without cascade, and the logits do to float32 summation order (~1e-7; a Quest row
// that read every shared page would be off by ~1e-2).
TEST(Quest, CascadeServesDenseRowsAndLeavesQuestRowsTheirLists) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto loaded = llama_model::load(path);
    ASSERT_TRUE(loaded) << loaded.message();
    const llama_model& m = *loaded.value();
    const int64_t nv = m.hparams().n_vocab;
    const auto prompt = test::some_tokens(40, nv, 21);
    struct run_out {
        std::vector<std::vector<float>> logits;  // per step, (rows * n_vocab)
        std::vector<forward_state::quest_choice> trace;
        std::vector<size_t> groups_all, groups_quest_layers;  // rows per group, last step
    };
    auto run = [&](bool cascade) {
        run_out out;
        thread_pool pool(2);
        kv_config geom = m.kv_geometry(4, 96, dtype::f32);
        geom.key_bounds = true;
        auto kv = std::move(kv_cache::create(geom).value());
        forward_state st(m, 64, 8);
        st.set_cascade(cascade);
        std::vector<int32_t> rows;  // 3 Quest forks, then 2 dense forks
        for (const char* spec : {"quest:budget=8", "dense"}) {
            const int32_t parent = kv->seq_add();
            kv->seq_set_policy(parent, policy(spec));
            EXPECT_TRUE(kv->seq_reserve(parent, int64_t(prompt.size())));
            batch b;
            for (size_t i = 0; i < prompt.size(); ++i) b.add(prompt[i], int32_t(i), parent, false);
            EXPECT_TRUE(m.forward(b, *kv, st, pool));
            for (int i = 0; i < (spec[0] == 'q' ? 3 : 2); ++i) rows.push_back(kv->seq_fork(parent));
        }
        st.set_quest_trace(&out.trace);
        for (int32_t step = 0; step < 3; ++step) {
            batch b;
            const int32_t pos = int32_t(prompt.size()) + step;
            for (size_t r = 0; r < rows.size(); ++r) {
                EXPECT_TRUE(kv->seq_reserve(rows[r], pos + 1));
                b.add(int32_t((7 + 13 * r + 5 * size_t(step)) % size_t(nv)), pos, rows[r], true);
            }
            EXPECT_TRUE(m.forward(b, *kv, st, pool));
            out.logits.emplace_back(st.logits(), st.logits() + int64_t(rows.size()) * nv);
        }
        for (const auto& g : st.last_cascade_plan().groups) out.groups_all.push_back(g.rows.size());
        for (const auto& g : st.last_cascade_plan_quest_layers().groups) out.groups_quest_layers.push_back(g.rows.size());
        return out;
    };
    const run_out with = run(true), without = run(false);
    EXPECT_EQ(with.groups_all, (std::vector<size_t>{3, 2})) << "both fork families share their prompt in layers 0 and 1";
    EXPECT_EQ(with.groups_quest_layers, (std::vector<size_t>{2})) << "only the dense rows share where Quest selects";
    EXPECT_TRUE(without.groups_all.empty());
    ASSERT_EQ(with.trace.size(), without.trace.size());
    ASSERT_FALSE(with.trace.empty());
    for (size_t i = 0; i < with.trace.size(); ++i) EXPECT_EQ(with.trace[i].pages, without.trace[i].pages) << i;
    for (size_t s = 0; s < with.logits.size(); ++s)
        for (size_t r = 0; r < 5; ++r)
            EXPECT_LT(test::nmse_norm(with.logits[s].data() + r * size_t(nv), without.logits[s].data() + r * size_t(nv), nv), 1e-5)
                << "step " << s << " row " << r;
}
