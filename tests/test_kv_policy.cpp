// KV policies (window, StreamingLLM, recompute) against their float64 definitions
// (reference_model.h: masks over the whole sequence, positions inside the cache for
// StreamingLLM, a fresh dense pass per token for recompute), on the real stories260K model and
// on synthetic MHA/GQA/MQA ones, across prefill chunk sizes and page sizes; and what the paged
// cache keeps and reads against the same masks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/utf8.h"
#include "kv/attention_plan.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/llama.h"
#include "model/session.h"
#include "reference_model.h"
#include "test_util.h"

using namespace kvs;
using kvs::test::reference_kept;
using kvs::test::reference_policy_logits;
using kvs::test::ref_positions;

namespace {

kv_policy policy(const char* spec) { return kv_policy::parse(spec).value(); }

// Logits of every row of `tokens` through a session under `pol`, prefilled n_batch tokens per pass.
std::vector<float> session_logits(const llama_model& m, const std::vector<int32_t>& tokens, const kv_policy& pol, int64_t n_batch,
                                  int32_t page_size, int32_t* peak_pages = nullptr) {
    thread_pool pool(2);
    session_params sp;
    sp.kv_type = dtype::f32;  // the reference keeps K and V in float64
    sp.n_ctx = int64_t(tokens.size()) + 8;
    sp.n_batch = n_batch;
    sp.max_logit_rows = n_batch;
    sp.page_size = page_size;
    sp.policy = pol;
    auto s = session::create(m, pool, sp);
    EXPECT_TRUE(s) << s.message();
    std::vector<float> logits;
    EXPECT_TRUE(s.value()->eval(tokens.data(), int64_t(tokens.size()), 0, &logits));
    if (peak_pages) *peak_pages = s.value()->peak_pages();
    return logits;
}

// Worst normalized error over rows [first, n) between engine logits and a reference.
double worst_error(const std::vector<float>& got, const std::vector<std::vector<double>>& want, int64_t n_vocab, size_t first = 0) {
    double worst = 0;
    for (size_t t = first; t < want.size(); ++t) worst = std::max(worst, test::nmse_norm(got.data() + int64_t(t) * n_vocab, want[t].data(), n_vocab));
    return worst;
}

// Every policy, chunk size and page size against the reference on one model.
void expect_policies_match_reference(const llama_model& m, int64_t n_tokens, uint64_t seed) {
    const int64_t nv = m.hparams().n_vocab;
    const auto tokens = test::some_tokens(n_tokens, nv, seed);
    for (const char* spec : {"dense", "window:size=24", "streaming:sinks=4,size=20", "streaming:sinks=1,size=9", "recompute:size=16"}) {
        const kv_policy pol = policy(spec);
        const auto want = reference_policy_logits(m, tokens, pol);
        for (int64_t n_batch : {1, 7, 64, 512}) {
            for (int32_t page_size : {16, 5}) {
                int32_t peak = 0;
                const auto got = session_logits(m, tokens, pol, n_batch, page_size, &peak);
                ASSERT_EQ(got.size(), size_t(n_tokens * nv));
                EXPECT_LT(worst_error(got, want, nv), 1e-4) << spec << " chunk " << n_batch << " page " << page_size;
                if (pol.slides()) {
                    EXPECT_LE(peak, kv_cache::policy_page_bound(pol, std::min<int64_t>(n_batch, n_tokens), page_size))
                        << spec << " chunk " << n_batch << " page " << page_size;
                }
            }
        }
    }
}

}  // namespace

TEST(KvPolicyReference, KeptSetsFollowTheDefinitions) {
    EXPECT_EQ(reference_kept(policy("dense"), 3), (std::vector<int64_t>{0, 1, 2, 3}));
    EXPECT_EQ(reference_kept(policy("window:size=3"), 5), (std::vector<int64_t>{3, 4, 5}));
    EXPECT_EQ(reference_kept(policy("window:size=3"), 1), (std::vector<int64_t>{0, 1}));
    EXPECT_EQ(reference_kept(policy("streaming:sinks=2,size=3"), 6), (std::vector<int64_t>{0, 1, 4, 5, 6}));
    EXPECT_EQ(reference_kept(policy("streaming:sinks=2,size=3"), 4), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(KvPolicy, Stories260kMatchesFloat64Reference) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path);
    ASSERT_TRUE(m) << m.message();
    expect_policies_match_reference(*m.value(), 90, 5);
}

struct kv_group_case {
    const char* name;
    int64_t n_head_kv;
};

class KvPolicySynthetic : public ::testing::TestWithParam<kv_group_case> {};

TEST_P(KvPolicySynthetic, MatchesFloat64Reference) {
    test::synth_spec spec;
    spec.n_head_kv = GetParam().n_head_kv;
    if (spec.n_head_kv == 1) spec.n_rot = 8;
    auto m = llama_model::load(test::write_synth(spec, std::string("policy_") + GetParam().name));
    ASSERT_TRUE(m) << m.message();
    expect_policies_match_reference(*m.value(), 70, 9);
}

INSTANTIATE_TEST_SUITE_P(KvGroups, KvPolicySynthetic,
                         ::testing::Values(kv_group_case{"mha", 4}, kv_group_case{"gqa", 2}, kv_group_case{"mqa", 1}),
                         [](const auto& info) { return std::string(info.param.name); });

// StreamingLLM's positions are assigned inside the cache: past S + W tokens the sinks sit at
// distance S + W - 1 - s from every query, not at their original distance. The engine must
// equal that definition and differ from the same mask with original positions.
TEST(KvPolicy, StreamingSinksSitAtInCacheDistances) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path).value();
    const int64_t nv = m->hparams().n_vocab, n = 120;
    const auto tokens = test::some_tokens(n, nv, 21);
    const kv_policy pol = policy("streaming:sinks=4,size=20");
    const auto in_cache = reference_policy_logits(*m, tokens, pol, ref_positions::in_cache);
    const auto original = reference_policy_logits(*m, tokens, pol, ref_positions::original);
    const auto got = session_logits(*m, tokens, pol, 7, 16);
    // Rows before S + W see every token at its own position under both definitions.
    const size_t full = size_t(pol.sinks + pol.size);
    for (size_t t = 0; t < full; ++t) EXPECT_LT(test::nmse_norm(got.data() + int64_t(t) * nv, original[t].data(), nv), 1e-4) << t;
    EXPECT_LT(worst_error(got, in_cache, nv), 1e-4);
    // Past it the two definitions part, and the engine follows the in-cache one.
    double apart = 0;
    for (size_t t = full; t < size_t(n); ++t)
        apart = std::max(apart, test::nmse_norm(got.data() + int64_t(t) * nv, original[t].data(), nv));
    EXPECT_GT(apart, 1e-2);
}

// What the paged cache keeps and reads: for every row of a long sequence, prefilled in chunks,
// the slots the attention plan hands the kernel (window run plus sink pass) are exactly the
// reference's kept set; the sink pass's query sits at the reference's in-cache position; pages
// are dropped as the window slides and never exceed the bound; the integrity check holds.
TEST(KvPolicy, PlanReadsExactlyTheKeptTokens) {
    for (const char* spec : {"window:size=7", "window:size=16", "streaming:sinks=4,size=12", "streaming:sinks=3,size=5", "dense"}) {
        const kv_policy pol = policy(spec);
        for (int32_t ps : {4, 5, 16}) {
            for (int64_t chunk : {1, 3, 17}) {
                kv_config c;
                c.n_layer = 1;
                c.n_kv_head = 1;
                c.head_dim = 4;
                c.page_size = ps;
                c.n_pages = 64;
                c.type = dtype::f32;
                auto kv = kv_cache::create(c).value();
                const int32_t seq = kv->seq_add();
                kv->seq_set_policy(seq, pol);
                attention_plan plan;
                const int64_t n = 150;
                for (int64_t start = 0; start < n; start += chunk) {
                    const int64_t m = std::min(chunk, n - start);
                    ASSERT_TRUE(kv->seq_reserve(seq, start + m));
                    if (pol.slides()) {
                        EXPECT_LE(int32_t(kv->seq_pages(seq).size()), kv_cache::policy_page_bound(pol, m, ps));
                    }
                    std::vector<int32_t> seqs(size_t(m), seq);
                    std::vector<int32_t> slots(static_cast<size_t>(m));
                    for (int64_t i = 0; i < m; ++i) slots[size_t(i)] = int32_t(start + i);
                    ASSERT_TRUE(plan_attention(m, seqs.data(), slots.data(), *kv, plan));
                    const int64_t n_pinned = kv->seq_n_pinned(seq), n_dropped = kv->seq_n_dropped(seq);
                    auto logical = [&](int64_t ts) {
                        const int64_t pi = ts / ps;
                        return (pi < n_pinned ? pi : pi + n_dropped) * ps + ts % ps;
                    };
                    for (int64_t i = 0; i < m; ++i) {
                        const int64_t t = start + i;
                        std::vector<int64_t> read;
                        for (size_t k = 0; k < plan.sink_rows.size(); ++k) {
                            if (plan.sink_rows[k] != i) continue;
                            for (int64_t ts = 0; ts < plan.sink_len[k]; ++ts) read.push_back(logical(ts));
                            // The query's in-cache position: the last rank among the kept tokens.
                            EXPECT_EQ(plan.sink_pos[k], int64_t(reference_kept(pol, t).size()) - 1) << spec << " t " << t;
                        }
                        for (int64_t ts = plan.q_kv_begin[size_t(i)]; ts < plan.q_kv_len[size_t(i)]; ++ts) read.push_back(logical(ts));
                        EXPECT_EQ(read, reference_kept(pol, t)) << spec << " page " << ps << " chunk " << chunk << " row " << t;
                    }
                    kv->seq_trim(seq, start + m);
                    ASSERT_TRUE(kv->check_integrity());
                    if (pol.slides()) {
                        EXPECT_LE(int32_t(kv->seq_pages(seq).size()), kv_cache::policy_page_bound(pol, 1, ps)) << spec;
                    }
                }
                if (pol.slides()) {
                    // The pages still held cover the sinks and the next query's window.
                    const auto next = reference_kept(pol, n);
                    for (int64_t j : next) {
                        if (j < n) {
                            EXPECT_TRUE(kv->seq_holds(seq, j)) << spec << " slot " << j;
                        }
                    }
                    EXPECT_GT(kv->seq_n_dropped(seq), 0) << spec;
                } else {
                    EXPECT_EQ(kv->seq_n_dropped(seq), 0);
                }
                kv->seq_remove(seq);
                EXPECT_EQ(kv->pool().n_used(), 0);
            }
        }
    }
}

// A long stream under StreamingLLM holds a constant number of pages whatever its length, and
// its logits stay finite and exact far past the model's context (positions in the cache never
// exceed S + W - 1).
TEST(KvPolicy, LongStreamHoldsBoundedPages) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path).value();
    thread_pool pool(2);
    const kv_policy pol = policy("streaming:sinks=4,size=60");
    session_params sp;
    sp.kv_type = dtype::f32;
    sp.n_ctx = 128;  // the stream runs far past it
    sp.n_batch = 1;
    sp.policy = pol;
    auto s = session::create(*m, pool, sp).value();
    EXPECT_FALSE(s->bounded_by_ctx());
    const auto tokens = test::some_tokens(3000, m->hparams().n_vocab, 3);
    const int32_t bound = kv_cache::policy_page_bound(pol, 1, 16);
    EXPECT_EQ(bound, 1 + 4 + 1);  // ceil(4/16) + ceil(60/16) + 1
    for (size_t i = 0; i < tokens.size(); ++i) {
        ASSERT_TRUE(s->decode(tokens[i]));
        ASSERT_LE(int32_t(s->kv().seq_pages(0).size()), bound) << i;
    }
    EXPECT_LE(s->peak_pages(), bound);
    EXPECT_EQ(s->kv_bytes(), s->kv().seq_pages(0).size() * s->kv().config().page_bytes());
    for (int64_t t = 0; t < m->hparams().n_vocab; ++t) ASSERT_TRUE(std::isfinite(s->logits()[t]));
    // Past the context (128) and S + W, token by token, the stream equals its definition.
    const auto ref = reference_policy_logits(*m, std::vector<int32_t>(tokens.begin(), tokens.begin() + 300), pol);
    auto s2 = session::create(*m, pool, sp).value();
    for (int i = 0; i < 300; ++i) ASSERT_TRUE(s2->decode(tokens[size_t(i)]));
    EXPECT_LT(test::nmse_norm(s2->logits(), ref.back().data(), m->hparams().n_vocab), 1e-4);
}

TEST(KvPolicy, SessionRejectsPoliciesItCannotRun) {
    KVS_SKIP_IF_MISSING(path, "models/stories260K.gguf");
    auto m = llama_model::load(path).value();
    thread_pool pool(1);
    session_params sp;
    sp.n_ctx = 64;
    auto dense = session::create(*m, pool, sp).value();
    EXPECT_TRUE(dense->bounded_by_ctx());
    std::vector<int32_t> too_long(65, 1);
    auto st = dense->prefill(too_long);
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("context length"), std::string::npos) << st.message();
    sp.policy = policy("window:size=32");
    auto win = session::create(*m, pool, sp).value();
    EXPECT_FALSE(win->bounded_by_ctx());
    EXPECT_TRUE(win->prefill(too_long));  // a window runs past the context
}

// Spec errors quote the offending text; the quote is cut after 64 bytes and used to split
// multi-byte characters, and bytes that are not UTF-8 went through raw, so messages could be
// invalid UTF-8 (they reach JSON error bodies through "kv_policy").
TEST(KvPolicySpec, ErrorMessagesAreValidUtf8) {
    int n_checked = 0;
    for (const std::string ch : {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\xa6\x99"}) {
        for (const std::string lead : {"", "x", "xx", "xxx"}) {
            std::string text = lead;
            for (int i = 0; i < 40; ++i) text += ch;
            for (const std::string& spec : {text, "window:size=" + text, "window:" + text + "=1", "streaming:" + text}) {
                auto p = kv_policy::parse(spec);
                ASSERT_FALSE(p.is_ok()) << spec;
                EXPECT_TRUE(utf8_is_valid(p.message())) << p.message();
                EXPECT_NE(p.message().find("..."), std::string::npos) << p.message();
                ++n_checked;
            }
        }
    }
    EXPECT_EQ(n_checked, 3 * 4 * 4);
    auto bad = kv_policy::parse("\xff\xfe:size=1");
    ASSERT_FALSE(bad.is_ok());
    EXPECT_TRUE(utf8_is_valid(bad.message())) << bad.message();
    EXPECT_NE(bad.message().find("\\xff\\xfe"), std::string::npos) << bad.message();
}
