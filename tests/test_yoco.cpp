// YOCO in the engine (src/model/yoco_forward.cpp over kv_groups) against the float64 reference
// written from the paper's equations (test::reference_yoco_logits: whole-sequence masks, no
// pages): sessions with whole and chunked prefill, prompts shorter and longer than W; the
// cross-decoder skipped for rows without logits; the scheduler with batching, n > 1 forks and
// preemption, the two groups' integrity (and the ring's page bound) checked after every step.
#include <gtest/gtest.h>

#include <cmath>

#include "kv/kv_groups.h"
#include "model/session.h"
#include "reference_model.h"
#include "sched/engine.h"
#include "sched/scheduler.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;

namespace {

// 6 layers split 3/3, GQA 4/2 heads of 16, window W; stories260K's vocabulary size so its
// tokenizer can drive the scheduler.
test::synth_spec yoco_spec(int64_t window, int64_t n_vocab = 96) {
    test::synth_spec s;
    s.n_vocab = n_vocab;
    s.n_layer = 6;
    s.n_layer_self = 3;
    s.window = window;
    return s;
}

std::unique_ptr<llama_model> load_yoco(int64_t window, const std::string& name, int64_t n_vocab = 96) {
    auto m = llama_model::load(test::write_synth(yoco_spec(window, n_vocab), name));
    EXPECT_TRUE(m) << m.message();
    return m ? std::move(m.value()) : nullptr;
}

double row_error(const float* got, const std::vector<double>& want) {
    return test::nmse_norm(got, want.data(), int64_t(want.size()));
}

// Every row's logits through a session (f32 KV, pages of 4 tokens, n_batch tokens per pass).
std::vector<float> session_logits(const llama_model& m, const std::vector<int32_t>& tokens, int64_t n_batch) {
    thread_pool pool(2);
    session_params p;
    p.kv_type = dtype::f32;
    p.page_size = 4;
    p.n_batch = n_batch;
    p.max_logit_rows = n_batch;
    auto s = session::create(m, pool, p);
    EXPECT_TRUE(s) << s.message();
    std::vector<float> all;
    status st = s.value()->eval(tokens.data(), int64_t(tokens.size()), 0, &all);
    EXPECT_TRUE(st) << st.message();
    return all;
}

TEST(Yoco, SessionMatchesTheReference) {
    auto m = load_yoco(8, "yoco-session");
    ASSERT_TRUE(m);
    const int64_t n_vocab = m->hparams().n_vocab;
    for (int64_t n : {5, 40}) {  // shorter and longer than W
        const std::vector<int32_t> tokens = test::some_tokens(n, n_vocab, 7 + uint64_t(n));
        const auto want = test::reference_yoco_logits(*m, tokens);
        for (int64_t n_batch : {int64_t(1), int64_t(3), int64_t(64)}) {
            const std::vector<float> got = session_logits(*m, tokens, n_batch);
            ASSERT_EQ(got.size(), size_t(n * n_vocab));
            for (int64_t t = 0; t < n; ++t)
                EXPECT_LT(row_error(got.data() + t * n_vocab, want[size_t(t)]), 2e-5) << "n " << n << " n_batch " << n_batch << " token " << t;
        }
    }
}

TEST(Yoco, SkippingTheCrossDecoderKeepsTheLastLogits) {
    auto m = load_yoco(8, "yoco-skip");
    ASSERT_TRUE(m);
    const int64_t n_vocab = m->hparams().n_vocab;
    const std::vector<int32_t> tokens = test::some_tokens(37, n_vocab, 3);
    thread_pool pool(2);
    session_params p;
    p.kv_type = dtype::f32;
    p.n_batch = 64;
    auto last_only = session::create(*m, pool, p).value();
    ASSERT_TRUE(last_only->prefill(tokens));
    const std::vector<float> all = session_logits(*m, tokens, 64);
    const float* last_of_all = all.data() + (int64_t(tokens.size()) - 1) * n_vocab;
    EXPECT_LT(test::nmse_norm(last_only->logits(), last_of_all, n_vocab), 1e-6);
    // And the reference agrees with the skipped pass.
    const auto want = test::reference_yoco_logits(*m, tokens);
    EXPECT_LT(row_error(last_only->logits(), want.back()), 2e-5);
}

TEST(Yoco, RingGroupHoldsOnlyTheWindow) {
    auto m = load_yoco(8, "yoco-ring");
    ASSERT_TRUE(m);
    thread_pool pool(2);
    session_params p;
    p.kv_type = dtype::f32;
    p.page_size = 4;
    p.n_batch = 4;
    auto s = session::create(*m, pool, p).value();
    const std::vector<int32_t> tokens = test::some_tokens(100, m->hparams().n_vocab, 5);
    ASSERT_TRUE(s->prefill(tokens));
    const kv_groups& g = s->kv_group_set();
    ASSERT_EQ(g.size(), 2u);
    EXPECT_EQ(g.desc(0).name, "global");
    EXPECT_EQ(g.desc(1).name, "self");
    EXPECT_EQ(g.group(0).config().n_layer, 1);
    EXPECT_EQ(g.group(1).config().n_layer, 3);
    EXPECT_EQ(g.group(0).seq_pages(s->kv_seq()).size(), 25u);  // 100 tokens, every one kept
    // The next query reads slots 93..100: pages 23..25 of 4 tokens (the last one reserved next).
    EXPECT_LE(g.group(1).seq_pages(s->kv_seq()).size(), size_t(g.ring_page_bound(1, 1)));
    EXPECT_TRUE(g.check_integrity());
    for (int i = 0; i < 20; ++i) ASSERT_TRUE(s->decode(int32_t(i % 50)));
    EXPECT_LE(g.group(1).seq_pages(s->kv_seq()).size(), size_t(g.ring_page_bound(1, 1)));
    EXPECT_TRUE(g.check_integrity());
}

TEST(Yoco, RefusesWhatItDoesNotRun) {
    auto m = load_yoco(8, "yoco-refuse");
    ASSERT_TRUE(m);
    thread_pool pool(2);
    session_params p;
    p.policy = kv_policy::parse("window:size=16").value();
    auto s = session::create(*m, pool, p);
    ASSERT_FALSE(s);
    EXPECT_NE(s.message().find("dense policy only"), std::string::npos) << s.message();
    // The single-cache forward needs the groups.
    auto kv = kv_cache::create(m->kv_geometry(16, 4, dtype::f32)).value();
    forward_state st(*m, 4, 1);
    batch b;
    b.add(1, 0, kv->seq_add(), true);
    ASSERT_TRUE(kv->seq_reserve(0, 1));
    status r = m->forward(b, *kv, st, pool);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("KV groups"), std::string::npos) << r.message();
}

// ---- the scheduler over both groups ----

struct run_out {
    std::vector<std::vector<std::vector<int32_t>>> tokens;  // [request][completion]
    scheduler_metrics metrics;
};

run_out run_scheduler(const llama_model& m, const tokenizer& tok, const std::vector<request_params>& reqs, scheduler_config cfg,
                      int32_t global_pages, int32_t page_size) {
    std::vector<kv_group_desc> layout = m.kv_group_layout(page_size, dtype::f32);
    layout[0].config.n_pages = global_pages;
    layout[1].config.n_pages = cfg.max_seqs * kv_cache::policy_page_bound({kv_policy_kind::window, layout[1].window}, cfg.prefill_chunk, page_size);
    auto groups = kv_groups::create(layout).value();
    thread_pool pool(2);
    scheduler s(m, tok, *groups, pool, cfg);
    run_out out;
    std::vector<std::shared_ptr<request_stream>> streams;
    for (const auto& p : reqs) {
        out.tokens.emplace_back(size_t(p.n));
        streams.push_back(std::make_shared<request_stream>());
        status st = s.submit(p, streams.back());
        EXPECT_TRUE(st) << st.message();
    }
    auto drain = [&] {
        for (size_t i = 0; i < streams.size(); ++i)
            while (auto ev = streams[i]->pop(0)) {
                auto& o = out.tokens[i][size_t(ev->index)];
                o.insert(o.end(), ev->tokens.begin(), ev->tokens.end());
            }
    };
    for (int step = 0; !s.idle(); ++step) {
        auto ok = s.step();
        EXPECT_TRUE(ok) << ok.message();
        status integrity = s.check_integrity();
        EXPECT_TRUE(integrity) << integrity.message();
        drain();
        if (step > 20000) {
            ADD_FAILURE() << "the scheduler does not finish";
            break;
        }
    }
    drain();
    out.metrics = s.metrics();
    for (size_t g = 0; g < groups->size(); ++g)
        EXPECT_EQ(groups->group(g).pool().n_free(), groups->group(g).pool().n_pages()) << "group " << g << " leaked pages";
    return out;
}

request_params greedy_prompt(const std::vector<int32_t>& prompt, int64_t max_tokens) {
    request_params p;
    p.prompt = prompt;
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    return p;
}

// Greedy tokens agree with the reference: each generated token is the reference's argmax
// after the tokens before it, or within float tolerance of it.
void expect_reference_greedy(const llama_model& m, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    const auto ref = test::reference_yoco_logits(m, all);
    for (size_t i = 0; i < generated.size(); ++i) {
        const std::vector<double>& row = ref[prompt.size() - 1 + i];
        const double best = *std::max_element(row.begin(), row.end());
        EXPECT_GT(row[size_t(generated[i])], best - 1e-4) << "generated token " << i;
    }
}

TEST(Yoco, SchedulerBatchedChunkedAndPreemptedMatchesTheReference) {
    NEED_MODEL(f);
    auto m = load_yoco(8, "yoco-sched", f->model->hparams().n_vocab);
    ASSERT_TRUE(m);
    std::vector<request_params> reqs;
    for (int64_t n : {3, 9, 21, 40, 13}) reqs.push_back(greedy_prompt(test::some_tokens(n, m->hparams().n_vocab, 100 + uint64_t(n)), 12));
    reqs[2].n = 3;  // forks share both groups' pages
    reqs[2].sampling.temperature = 0;

    scheduler_config cfg;
    cfg.max_seqs = 8;
    const run_out together = run_scheduler(*m, *f->tok, reqs, cfg, 256, 4);
    scheduler_config chunked = cfg;
    chunked.max_batch_tokens = 16;
    chunked.prefill_chunk = 5;
    const run_out small_steps = run_scheduler(*m, *f->tok, reqs, chunked, 256, 4);
    // A global pool too small for all at once: preemption and recompute.
    const run_out tight = run_scheduler(*m, *f->tok, reqs, cfg, 24, 4);
    EXPECT_GT(tight.metrics.preemptions, 0);
    EXPECT_EQ(together.metrics.preemptions, 0);
    for (size_t r = 0; r < reqs.size(); ++r) {
        const run_out alone = run_scheduler(*m, *f->tok, {reqs[r]}, cfg, 256, 4);
        for (size_t c = 0; c < size_t(reqs[r].n); ++c) {
            ASSERT_EQ(alone.tokens[0][c].size(), 12u);
            EXPECT_EQ(together.tokens[r][c], alone.tokens[0][c]) << "request " << r;
            EXPECT_EQ(small_steps.tokens[r][c], alone.tokens[0][c]) << "request " << r;
            EXPECT_EQ(tight.tokens[r][c], alone.tokens[0][c]) << "request " << r;
        }
        expect_reference_greedy(*m, reqs[r].prompt, alone.tokens[0][0]);
    }
}

TEST(Yoco, EngineReportsBothGroupsAndRefusesOtherPolicies) {
    NEED_MODEL(f);
    auto m = load_yoco(8, "yoco-engine", f->model->hparams().n_vocab);
    ASSERT_TRUE(m);
    engine_config c;
    c.kv_type = dtype::f32;
    c.sched.max_seqs = 4;
    c.sched.n_ctx = 256;
    auto e = engine::create(*m, *f->tok, c);
    ASSERT_TRUE(e) << e.message();
    const engine_stats st = e.value()->stats();
    ASSERT_EQ(st.kv_groups.size(), 2u);
    EXPECT_EQ(st.kv_groups[0].name, "global");
    EXPECT_EQ(st.kv_groups[1].name, "self");
    EXPECT_EQ(st.kv_groups[1].window, 8);
    EXPECT_EQ(st.kv_groups[0].n_layer, 1);
    EXPECT_EQ(st.kv_groups[1].n_layer, 3);
    request_params p = greedy_prompt({1, 2, 3}, 4);
    p.policy = kv_policy::parse("streaming:sinks=4,size=16").value();
    auto r = e.value()->submit(p);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("dense policy only"), std::string::npos) << r.message();
    p.policy = kv_policy{};
    p.beam_width = 2;
    r = e.value()->submit(p);
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find("beam search"), std::string::npos) << r.message();
    p.beam_width = 0;
    auto ok = e.value()->submit(p);
    ASSERT_TRUE(ok) << ok.message();
    int n = 0;
    for (;;) {
        auto ev = ok.value()->pop(10000);
        ASSERT_TRUE(ev);
        n += int(ev->tokens.size());
        if (ev->finish != finish_reason::none) break;
    }
    EXPECT_EQ(n, 4);
    EXPECT_TRUE(e.value()->check_integrity());
}

}  // namespace
