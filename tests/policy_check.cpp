#include "policy_check.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>

#include "core/thread_pool.h"
#include "kv/h2o.h"
#include "kv/kv_cache.h"
#include "model/session.h"
#include "test_util.h"

namespace kvs::test {

namespace {

kv_policy policy(const std::string& spec) { return kv_policy::parse(spec).value(); }

}  // namespace

// Runs tokens through a session under h2o in the chunks ending at chunk_ends.
h2o_run h2o_session(const language_model& m, const std::vector<int32_t>& tokens, const kv_policy& pol, int32_t page_size,
                    const std::vector<int64_t>& chunk_ends, dtype kv_type) {
    thread_pool pool(2);
    session_params sp;
    sp.kv_type = kv_type;
    sp.page_size = page_size;
    sp.policy = pol;
    int64_t longest = 1;
    for (size_t i = 0; i < chunk_ends.size(); ++i) longest = std::max(longest, chunk_ends[i] - (i ? chunk_ends[i - 1] : 0));
    sp.n_batch = longest;
    sp.max_logit_rows = longest;
    if (pol.is_dense()) sp.n_ctx = int64_t(tokens.size());
    auto s = std::move(session::create(m, pool, sp).value());
    h2o_run out;
    const int64_t nv = m.hparams().n_vocab;
    int64_t start = 0;
    std::vector<float> rows;
    for (int64_t end : chunk_ends) {
        EXPECT_TRUE(s->eval(tokens.data() + start, end - start, 0, &rows));
        for (int64_t i = 0; i < end - start; ++i) out.logits.emplace_back(rows.begin() + i * nv, rows.begin() + (i + 1) * nv);
        out.max_pages = std::max(out.max_pages, int32_t(s->kv().seq_pages(s->kv_seq()).size()));
        EXPECT_TRUE(s->kv().check_integrity());
        if (pol.kind == kv_policy_kind::h2o) {
            const kv_cache& kv = s->kv();
            const int64_t n_slots = h2o_kept_slots(pol, end);
            for (int64_t l = 0; l < m.hparams().n_layer; ++l)
                for (int64_t h = 0; h < kv.config().n_kv_head; ++h) {
                    reference_h2o_kept k{end, l, h, {}, {}};
                    // (position, score) of every held slot, ascending by position.
                    std::vector<std::pair<int32_t, float>> ps;
                    for (int64_t sl = 0; sl < n_slots; ++sl) {
                        const int32_t pg = kv.seq_pages(s->kv_seq())[size_t(sl / page_size)];
                        ps.push_back({kv.token_positions(l, pg, h)[sl % page_size], kv.token_scores(l, pg, h)[sl % page_size]});
                    }
                    std::sort(ps.begin(), ps.end());
                    for (auto [p, sc] : ps) k.tokens.push_back(p), k.scores.push_back(sc);
                    out.held.push_back(std::move(k));
                }
        }
        start = end;
    }
    return out;
}

// Chunks: the prompt in pieces of `chunk`, then one token at a time (what a session does).
std::vector<int64_t> chunk_ends(int64_t n, int64_t prompt, int64_t chunk) {
    std::vector<int64_t> e;
    for (int64_t t = chunk; t < prompt; t += chunk) e.push_back(t);
    e.push_back(prompt);
    for (int64_t t = prompt + 1; t <= n; ++t) e.push_back(t);
    return e;
}

// The engine against the reference: the same tokens held by every (chunk, layer, KV head) (a
// different choice only where the reference scores of the two tokens tie to 1e-5), scores to
// 1e-4, and the same logits up to the first differing choice.
void expect_h2o_matches_reference(const language_model& m, const h2o_reference_fn& reference, int64_t n_tokens, int64_t prompt, uint64_t seed) {
    const int64_t nv = m.hparams().n_vocab;
    const auto tokens = some_tokens(n_tokens, nv, seed);
    struct setup {
        int64_t heavy, recent, chunk;
        int32_t page;
    };
    for (const setup& su : {setup{8, 8, 1, 4}, setup{6, 10, 5, 16}, setup{12, 3, 7, 4}, setup{0, 9, 3, 8}, setup{10, 1, 1, 16}}) {
        const std::string spec = "h2o:heavy=" + std::to_string(su.heavy) + ",recent=" + std::to_string(su.recent);
        const std::string what = spec + " chunk " + std::to_string(su.chunk) + " page " + std::to_string(su.page);
        const auto ends = chunk_ends(n_tokens, prompt, su.chunk);
        std::vector<reference_h2o_kept> want_held;
        const auto want = reference(tokens, su.heavy, su.recent, ends, &want_held);
        const h2o_run got = h2o_session(m, tokens, policy(spec), su.page, ends);
        // The reference goes layer by layer over all chunks, the engine chunk by chunk.
        std::stable_sort(want_held.begin(), want_held.end(), [](const auto& a, const auto& b) {
            return std::tie(a.end, a.layer, a.kv_head) < std::tie(b.end, b.layer, b.kv_head);
        });
        ASSERT_EQ(got.held.size(), want_held.size()) << what;
        int64_t first_diff = n_tokens;
        for (size_t i = 0; i < want_held.size() && want_held[i].end <= first_diff; ++i) {
            const auto& w = want_held[i];
            const auto& g = got.held[i];
            ASSERT_EQ(g.end, w.end);
            if (g.tokens != w.tokens) {
                first_diff = std::min(first_diff, w.end);
                ADD_FAILURE() << what << ": different tokens held after " << w.end << " at layer " << w.layer << " head " << w.kv_head;
                continue;
            }
            for (size_t j = 0; j < w.tokens.size(); ++j)
                EXPECT_NEAR(g.scores[j], w.scores[j], 1e-4 * std::max(1.0, std::fabs(w.scores[j]))) << what << " end " << w.end;
        }
        ASSERT_EQ(got.logits.size(), size_t(n_tokens));
        for (int64_t t = 0; t < first_diff; ++t)
            EXPECT_LT(nmse_norm(got.logits[size_t(t)].data(), want[size_t(t)].data(), nv), 1e-4) << what << " t " << t;
        // Memory: H + R slots between passes, plus one chunk during a pass.
        EXPECT_LE(got.max_pages, kv_cache::pages_for(su.heavy + su.recent + su.chunk, su.page)) << what;
    }
}


// Prefills `prompt_len` tokens in one pass, then decodes the rest one by one under `spec`;
// returns the logits of every decoded row and the engine's Quest choices.
std::vector<std::vector<float>> quest_session(const language_model& m, const std::vector<int32_t>& tokens, const kv_policy& pol,
                                              int32_t page_size, int64_t prompt_len, std::vector<forward_state::quest_choice>* trace,
                                              std::vector<int64_t>* trace_t) {
    thread_pool pool(2);
    session_params sp;
    sp.kv_type = dtype::f32;
    sp.n_ctx = int64_t(tokens.size()) + 8;
    sp.page_size = page_size;
    sp.policy = pol;
    auto s = std::move(session::create(m, pool, sp).value());
    std::vector<std::vector<float>> out;
    const int64_t nv = m.hparams().n_vocab;
    EXPECT_TRUE(s->prefill(std::vector<int32_t>(tokens.begin(), tokens.begin() + prompt_len)));
    if (trace) s->set_quest_trace(trace);
    for (size_t t = size_t(prompt_len); t < tokens.size(); ++t) {
        const size_t before = trace ? trace->size() : 0;
        EXPECT_TRUE(s->decode(tokens[t]));
        out.emplace_back(s->logits(), s->logits() + nv);
        if (trace_t)
            for (size_t i = before; i < trace->size(); ++i) trace_t->push_back(int64_t(t));
    }
    return out;
}

// The engine against the reference: the same pages chosen by every (token, layer, KV head)
// (a different choice is allowed only between pages whose reference scores tie to 1e-5), and
// the same logits wherever every choice of the token agreed.
void expect_quest_matches_reference(const language_model& m, const quest_reference_fn& reference, int64_t n_tokens, int64_t prompt_len, uint64_t seed) {
    const int64_t nv = m.hparams().n_vocab;
    const auto tokens = some_tokens(n_tokens, nv, seed);
    for (int32_t ps : {4, 16}) {
        for (int64_t budget : {int64_t(ps), int64_t(3 * ps), int64_t(ps) * 2 + 3}) {
            const std::string what = "page " + std::to_string(ps) + " budget " + std::to_string(budget);
            std::vector<reference_quest_choice> want_choices;
            const auto want = reference(tokens, budget, ps, prompt_len, &want_choices);
            std::vector<forward_state::quest_choice> got_choices;
            std::vector<int64_t> got_t;
            const auto got = quest_session(m, tokens, policy("quest:budget=" + std::to_string(budget)), ps, prompt_len,
                                           &got_choices, &got_t);
            // The reference goes layer by layer over all tokens, the engine token by token.
            std::stable_sort(want_choices.begin(), want_choices.end(), [](const auto& a, const auto& b) {
                return std::tie(a.t, a.layer, a.kv_head) < std::tie(b.t, b.layer, b.kv_head);
            });
            ASSERT_EQ(got_choices.size(), want_choices.size()) << what;
            ASSERT_FALSE(want_choices.empty()) << what << ": the test never selects";
            std::vector<bool> token_agrees(size_t(n_tokens), true);
            int64_t tolerated = 0;
            for (size_t i = 0; i < want_choices.size(); ++i) {
                const auto& w = want_choices[i];
                const auto& g = got_choices[i];
                ASSERT_EQ(got_t[i], w.t) << what;
                ASSERT_EQ(g.layer, w.layer) << what;
                ASSERT_EQ(g.kv_head, w.kv_head) << what;
                if (g.pages == w.pages) continue;
                // Only a near tie may go the other way: the worst page taken must score (in the
                // reference) within 1e-5 of the best page left out.
                double worst_in = 1e300, best_out = -1e300;
                for (size_t p = 0; p < w.scores.size(); ++p) {
                    const bool in = std::find(g.pages.begin(), g.pages.end(), int32_t(p)) != g.pages.end();
                    if (in) worst_in = std::min(worst_in, w.scores[p]);
                    else best_out = std::max(best_out, w.scores[p]);
                }
                EXPECT_LE(best_out - worst_in, 1e-5 * std::max(1.0, std::fabs(best_out))) << what << " t " << w.t << " layer " << w.layer;
                token_agrees[size_t(w.t)] = false;
                ++tolerated;
            }
            EXPECT_LE(tolerated * 20, int64_t(want_choices.size())) << what << ": too many near ties";
            for (int64_t t = prompt_len; t < n_tokens; ++t) {
                if (!token_agrees[size_t(t)]) continue;
                EXPECT_LT(nmse_norm(got[size_t(t - prompt_len)].data(), want[size_t(t)].data(), nv), 1e-4) << what << " t " << t;
            }
        }
    }
}

}  // namespace kvs::test
