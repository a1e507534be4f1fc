// Continuous batching on the real stories260K model: batching, chunked prefill, preemption by
// recompute and n > 1 forks must not change greedy outputs; cancellation frees pages; stop
// strings, max_tokens and validation behave as the OpenAI API does. The KV integrity check
// runs after every scheduler step.
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "sched/engine.h"
#include "sched/scheduler.h"
#include "model/session.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;

namespace {

using fixture = test::stories_fixture;

struct completion_out {
    std::string text;
    std::vector<int32_t> tokens;
    finish_reason finish = finish_reason::none;
};

request_params greedy(const fixture* f, const std::string& prompt, int64_t max_tokens) {
    request_params p;
    p.prompt = f->tok->encode(prompt, true, false);
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    return p;
}

// Drains every stream (non-blocking: the scheduler runs in this thread).
void collect(std::vector<std::shared_ptr<request_stream>>& streams, std::vector<std::vector<completion_out>>& outs) {
    for (size_t i = 0; i < streams.size(); ++i)
        while (auto ev = streams[i]->pop(0)) {
            auto& o = outs[i][size_t(ev->index)];
            o.text += ev->text;
            o.tokens.insert(o.tokens.end(), ev->tokens.begin(), ev->tokens.end());
            if (ev->finish != finish_reason::none) o.finish = ev->finish;
        }
}

struct run_result {
    std::vector<std::vector<completion_out>> outs;
    scheduler_metrics metrics;
    int64_t max_pages_used = 0;
};

run_result run_all(const fixture* f, std::vector<request_params> reqs, scheduler_config cfg, int32_t n_pages,
                   int32_t page_size = 16, std::function<void(int, std::vector<std::shared_ptr<request_stream>>&)> each_step = nullptr,
                   dtype kv_type = kv_default_type, std::optional<dtype> kv_v_type = std::nullopt, kivi_config kivi = {},
                   int32_t n_packed_pages = 0) {
    kv_config geom = f->model->kv_geometry(page_size, n_pages, kv_type);
    geom.v_type = kv_v_type;
    geom.kivi_bits = kivi.bits;
    geom.kivi_residual = kivi.residual;
    geom.n_packed_pages = n_packed_pages;
    for (auto& p : reqs) {
        geom.token_scores |= p.policy.kind == kv_policy_kind::h2o;  // H2O needs them
        geom.key_bounds |= p.policy.kind == kv_policy_kind::quest;  // and Quest these
    }
    auto kv = kv_cache::create(geom).value();
    thread_pool pool(2);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    run_result r;
    std::vector<std::shared_ptr<request_stream>> streams;
    for (auto& p : reqs) {
        r.outs.emplace_back(size_t(p.n));
        streams.push_back(std::make_shared<request_stream>());
        status st = s.submit(p, streams.back());
        EXPECT_TRUE(st) << st.message();
    }
    int step = 0;
    while (!s.idle()) {
        auto ok = s.step();
        EXPECT_TRUE(ok) << ok.message();
        EXPECT_TRUE(s.check_integrity()) << s.check_integrity().message();
        r.max_pages_used = std::max<int64_t>(r.max_pages_used, kv->pool().n_used());
        collect(streams, r.outs);
        if (each_step) each_step(step, streams);
        if (++step > 100000) {
            ADD_FAILURE() << "scheduler does not finish";
            break;
        }
    }
    collect(streams, r.outs);
    EXPECT_TRUE(s.check_integrity()) << s.check_integrity().message();  // idle: only cached pages in use
    s.drop_prefix_cache();
    EXPECT_EQ(kv->pool().n_free() + kv->pool().n_free_packed(), kv->pool().n_pages()) << "pages leaked";
    for (auto& st : streams) EXPECT_TRUE(st->done());
    r.metrics = s.metrics();
    return r;
}

const std::vector<std::string> k_prompts = {"Once upon a time", "Lily and Tom went to the park", "The cat",
                                            "One day, a little bird", "Sam had a big red ball. He"};

}  // namespace

TEST(Scheduler, BatchEqualsEachPromptAlone) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) reqs.push_back(greedy(f, p, 24));
    scheduler_config cfg;
    std::vector<completion_out> alone;
    for (auto& r : reqs) alone.push_back(run_all(f, {r}, cfg, 64).outs[0][0]);
    auto together = run_all(f, reqs, cfg, 64);
    for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(together.outs[i][0].tokens, alone[i].tokens) << k_prompts[i];
        EXPECT_EQ(together.outs[i][0].text, alone[i].text);
        EXPECT_EQ(together.outs[i][0].finish, finish_reason::length);
        EXPECT_EQ(together.outs[i][0].tokens.size(), 24u);
    }
    // The known continuation of the first prompt.
    EXPECT_EQ(alone[0].text.rfind(", there was a little girl named Lily.", 0), 0u) << alone[0].text;
}

TEST(Scheduler, ChunkedPrefillAndSmallBudgetsGiveTheSameTokens) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) reqs.push_back(greedy(f, p, 16));
    // f32 KV: the two runs use different page sizes, so the attention tiles differ; with bf16
    // KV the probabilities are rounded to bf16 relative to each tile's running max, which
    // legitimately moves the logits by ~1e-3 — enough to flip near-ties of this tiny model.
    // Chunking and budgets are what this test is about.
    auto base = run_all(f, reqs, scheduler_config{}, 64, 16, nullptr, dtype::f32);
    scheduler_config tiny;
    tiny.max_batch_tokens = 5;
    tiny.prefill_chunk = 2;
    tiny.max_seqs = 3;
    auto chunked = run_all(f, reqs, tiny, 64, 4, nullptr, dtype::f32);
    for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(chunked.outs[i][0].tokens, base.outs[i][0].tokens) << k_prompts[i];
}

// A short request that arrives behind a long prompt starts within a step (the admission
// reserve) and then decodes every step while the older prompt is still being prefilled
// (decodes first); both outputs equal their runs alone.
TEST(Scheduler, ShortRequestsAreNotQueuedBehindALongPrompt) {
    NEED_MODEL(f);
    std::string long_text;
    for (int i = 0; i < 12; ++i) long_text += "Once upon a time, there was a little girl named Lily. ";
    std::vector<request_params> reqs = {greedy(f, long_text, 4), greedy(f, "The cat", 6)};
    ASSERT_GT(reqs[0].prompt.size(), 100u);
    scheduler_config cfg;
    cfg.max_batch_tokens = 16;
    cfg.prefill_chunk = 16;
    std::vector<completion_out> alone;
    for (auto& r : reqs) alone.push_back(run_all(f, {r}, cfg, 64).outs[0][0]);

    auto kv = kv_cache::create(f->model->kv_geometry(16, 64)).value();
    thread_pool pool(2);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    std::vector<std::shared_ptr<request_stream>> streams;
    for (auto& p : reqs) {
        streams.push_back(std::make_shared<request_stream>());
        ASSERT_TRUE(s.submit(p, streams.back()));
    }
    std::vector<std::vector<int>> token_steps(2);  // the step each token arrived in
    std::vector<std::vector<int32_t>> tokens(2);
    for (int step = 0; !s.idle() && step < 1000; ++step) {
        ASSERT_TRUE(s.step());
        ASSERT_TRUE(s.check_integrity());
        for (size_t i = 0; i < 2; ++i)
            while (auto ev = streams[i]->pop(0))
                for (int32_t t : ev->tokens) {
                    tokens[i].push_back(t);
                    token_steps[i].push_back(step);
                }
    }
    EXPECT_EQ(tokens[0], alone[0].tokens);
    EXPECT_EQ(tokens[1], alone[1].tokens);
    ASSERT_EQ(token_steps[1].size(), 6u);
    EXPECT_LE(token_steps[1][0], 1) << "the short request waited for the long prompt";
    for (size_t k = 1; k < token_steps[1].size(); ++k) EXPECT_EQ(token_steps[1][k], token_steps[1][k - 1] + 1);
    ASSERT_FALSE(token_steps[0].empty());
    EXPECT_GT(token_steps[0][0], token_steps[1].back()) << "the long prompt should still be prefilling";
}

TEST(Scheduler, PreemptionByRecomputeLosesAndRepeatsNothing) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) reqs.push_back(greedy(f, p, 40));
    // f32 KV for the same reason as above (pages of 16 against pages of 4).
    auto base = run_all(f, reqs, scheduler_config{}, 128, 16, nullptr, dtype::f32);
    // 12 pages of 4 tokens: far less than 5 sequences of ~50 tokens need.
    auto tight = run_all(f, reqs, scheduler_config{}, 14, 4, nullptr, dtype::f32);
    EXPECT_GT(tight.metrics.preemptions, 0);
    EXPECT_LE(tight.max_pages_used, 14);
    for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(tight.outs[i][0].tokens, base.outs[i][0].tokens) << k_prompts[i];
        EXPECT_EQ(tight.outs[i][0].text, base.outs[i][0].text);
    }
}

// Quantized KV pages are pages like any other (also V alone quantized, K f32): with the same page size, the prefix cache on or
// off, a tiny token budget (chunked prefill), a pool small enough to preempt and n > 1 forks
// sharing pages all give the tokens of the plain run, and the integrity check holds after
// every step (run_all). A token's row is quantized once, when it is written, from K and V that
// do not depend on how the scheduler cut the work.
TEST(Scheduler, QuantizedKvServesLikeAnyOtherFormat) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) reqs.push_back(greedy(f, p, 24));
    reqs.push_back(greedy(f, k_prompts[0], 24));  // a prefix-cache hit on the whole prompt
    for (auto [t, vt] : {std::pair<dtype, std::optional<dtype>>{dtype::q8_0, std::nullopt}, {dtype::q4_0, std::nullopt},
                          {dtype::q4_1, std::nullopt}, {dtype::f32, dtype::q4_0}}) {
        scheduler_config plain;
        plain.prefix_cache = false;
        plain.cascade = false;
        auto base = run_all(f, reqs, plain, 128, 4, nullptr, t, vt);
        auto cached = run_all(f, reqs, scheduler_config{}, 128, 4, nullptr, t, vt);
        EXPECT_GT(cached.metrics.prefix_hit_tokens, 0) << dtype_name(t);
        scheduler_config tiny;
        tiny.max_batch_tokens = 5;
        tiny.prefill_chunk = 2;
        tiny.max_seqs = 3;
        auto chunked = run_all(f, reqs, tiny, 128, 4, nullptr, t, vt);
        auto tight = run_all(f, reqs, scheduler_config{}, 16, 4, nullptr, t, vt);
        EXPECT_GT(tight.metrics.preemptions, 0) << dtype_name(t);
        request_params forked = reqs[1];
        forked.n = 3;
        auto fork = run_all(f, {forked}, scheduler_config{}, 64, 4, nullptr, t, vt);
        for (size_t i = 0; i < reqs.size(); ++i) {
            EXPECT_EQ(cached.outs[i][0].tokens, base.outs[i][0].tokens) << dtype_name(t) << " prefix cache: " << i;
            EXPECT_EQ(chunked.outs[i][0].tokens, base.outs[i][0].tokens) << dtype_name(t) << " chunked: " << i;
            EXPECT_EQ(tight.outs[i][0].tokens, base.outs[i][0].tokens) << dtype_name(t) << " preempted: " << i;
        }
        for (int c = 0; c < 3; ++c) EXPECT_EQ(fork.outs[0][size_t(c)].tokens, base.outs[1][0].tokens) << dtype_name(t) << " fork " << c;
    }
}

// KIVI: a query reads a page packed by its own position alone (kv_cache.h), so the prefix
// cache on or off, chunked prefill down to 2-token chunks (pages aged out inside a chunk are
// read through their twins by the chunk's later rows), preemption with recompute and n > 1
// forks all give the plain run's tokens, with the integrity check after every step. Small
// groups and residuals make pages age within these short prompts; R = 0 packs a page as soon
// as it fills.
TEST(Scheduler, KiviServesIdenticallyHoweverTheWorkIsCut) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) reqs.push_back(greedy(f, p, 40));
    reqs.push_back(greedy(f, k_prompts[0], 40));  // a prefix-cache hit on the whole prompt
    for (kivi_config kivi : {kivi_config{2, 4, 8}, kivi_config{4, 4, 8}, kivi_config{2, 8, 0}}) {
        const std::string where = "kivi" + std::to_string(kivi.bits) + " G " + std::to_string(kivi.group) + " R " + std::to_string(kivi.residual);
        const int32_t g = kivi.group;
        scheduler_config plain;
        plain.prefix_cache = false;
        plain.cascade = false;
        auto base = run_all(f, reqs, plain, 256, g, nullptr, dtype::f32, std::nullopt, kivi, 256);
        EXPECT_GT(base.metrics.generated_tokens, 0) << where;
        auto cached = run_all(f, reqs, scheduler_config{}, 256, g, nullptr, dtype::f32, std::nullopt, kivi, 256);
        if (g == 4) {  // (the prompts are shorter than 8 tokens)
            EXPECT_GT(cached.metrics.prefix_hit_tokens, 0) << where;
        }
        scheduler_config tiny;
        tiny.max_batch_tokens = 5;
        tiny.prefill_chunk = 2;
        tiny.max_seqs = 3;
        auto chunked = run_all(f, reqs, tiny, 256, g, nullptr, dtype::f32, std::nullopt, kivi, 256);
        auto tight = run_all(f, reqs, scheduler_config{}, 256, g, nullptr, dtype::f32, std::nullopt, kivi, 24);
        EXPECT_GT(tight.metrics.preemptions, 0) << where;
        request_params forked = reqs[1];
        forked.n = 3;
        auto fork = run_all(f, {forked}, scheduler_config{}, 256, g, nullptr, dtype::f32, std::nullopt, kivi, 256);
        for (size_t i = 0; i < reqs.size(); ++i) {
            EXPECT_EQ(cached.outs[i][0].tokens, base.outs[i][0].tokens) << where << " prefix cache: " << i;
            EXPECT_EQ(chunked.outs[i][0].tokens, base.outs[i][0].tokens) << where << " chunked: " << i;
            EXPECT_EQ(tight.outs[i][0].tokens, base.outs[i][0].tokens) << where << " preempted: " << i;
        }
        for (int c = 0; c < 3; ++c) EXPECT_EQ(fork.outs[0][size_t(c)].tokens, base.outs[1][0].tokens) << where << " fork " << c;
    }
}

TEST(Scheduler, ParallelCompletionsShareThePromptPages) {
    NEED_MODEL(f);
    request_params p = greedy(f, "Once upon a time there was a boy who liked to run and jump in the", 8);
    p.n = 4;
    auto single = run_all(f, {greedy(f, "Once upon a time there was a boy who liked to run and jump in the", 8)}, scheduler_config{}, 64, 4);
    auto forked = run_all(f, {p}, scheduler_config{}, 64, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(forked.outs[0][size_t(i)].tokens, single.outs[0][0].tokens) << "completion " << i;
    // The four decode rows share the prompt's pages: cascade attention served them.
    EXPECT_GT(forked.metrics.cascade_rows, 0);
    scheduler_config no_cascade;
    no_cascade.cascade = false;
    auto plain = run_all(f, {p}, no_cascade, 64, 4);
    EXPECT_EQ(plain.metrics.cascade_rows, 0);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(plain.outs[0][size_t(i)].tokens, single.outs[0][0].tokens) << "completion " << i;
    // Four unshared copies would need about 4x the pages of one.
    EXPECT_LT(forked.max_pages_used, 2 * single.max_pages_used + 4);

    // Sampled completions differ from each other but are reproducible.
    p.sampling.temperature = 1.0f;
    p.sampling.seed = 5;
    p.max_tokens = 20;
    auto a = run_all(f, {p}, scheduler_config{}, 64, 4);
    auto b = run_all(f, {p}, scheduler_config{}, 64, 4);
    bool any_differ = false;
    for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(a.outs[0][size_t(i)].tokens, b.outs[0][size_t(i)].tokens);
        any_differ |= a.outs[0][size_t(i)].tokens != a.outs[0][0].tokens;
    }
    EXPECT_TRUE(any_differ);
}

TEST(Scheduler, StopStringsCutTheOutput) {
    NEED_MODEL(f);
    auto base = run_all(f, {greedy(f, "Once upon a time", 40)}, scheduler_config{}, 64).outs[0][0];
    ASSERT_NE(base.text.find("Lily"), std::string::npos) << base.text;
    request_params p = greedy(f, "Once upon a time", 40);
    p.stop = {"Lily", "never matches this"};
    auto cut = run_all(f, {p}, scheduler_config{}, 64).outs[0][0];
    EXPECT_EQ(cut.text, base.text.substr(0, base.text.find("Lily")));
    EXPECT_EQ(cut.finish, finish_reason::stop);
    EXPECT_LT(cut.tokens.size(), base.tokens.size());
}

TEST(Scheduler, CancellationFreesPagesAtOnce) {
    NEED_MODEL(f);
    std::vector<request_params> reqs = {greedy(f, "Once upon a time", 200), greedy(f, "The cat", 30)};
    auto r = run_all(f, reqs, scheduler_config{}, 64, 16, [](int step, std::vector<std::shared_ptr<request_stream>>& s) {
        if (step == 5) s[0]->cancel();
    });
    EXPECT_EQ(r.outs[0][0].finish, finish_reason::cancelled);
    EXPECT_LT(r.outs[0][0].tokens.size(), 10u);
    EXPECT_EQ(r.outs[1][0].finish, finish_reason::length);
    EXPECT_EQ(r.outs[1][0].tokens.size(), 30u);
    EXPECT_EQ(r.metrics.requests_cancelled, 1);
}

TEST(Scheduler, ValidationNamesTheProblem) {
    NEED_MODEL(f);
    auto kv = kv_cache::create(f->model->kv_geometry(16, 8)).value();
    thread_pool pool(1);
    scheduler_config cfg;
    cfg.n_ctx = 64;
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    request_params p = greedy(f, "Once upon a time", 8);
    EXPECT_TRUE(s.validate(p));
    auto expect_error = [&](request_params q, const char* needle) {
        status st = s.validate(q);
        ASSERT_FALSE(st) << needle;
        EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
    };
    request_params q = p;
    q.prompt.assign(64, 5);
    expect_error(q, "context length is 64");
    q = p;
    q.max_tokens = 100;
    expect_error(q, "max_tokens");
    q = p;
    q.n = 99;
    expect_error(q, "n must be");
    q = p;
    q.sampling.top_p = 2;
    expect_error(q, "top_p");
    q = p;
    q.prompt.clear();
    expect_error(q, "empty");
    q = p;
    q.prompt[1] = 100000;
    expect_error(q, "outside the vocabulary");
    scheduler_config small = cfg;
    small.n_ctx = 1024;
    scheduler s2(*f->model, *f->tok, *kv, pool, small);
    q = p;
    q.max_tokens = 500;
    status st = s2.validate(q);
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("KV pages"), std::string::npos) << st.message();
}

TEST(Engine, ConcurrentClientsGetTheirOwnOutputs) {
    NEED_MODEL(f);
    std::vector<completion_out> alone;
    for (auto& p : k_prompts) alone.push_back(run_all(f, {greedy(f, p, 20)}, scheduler_config{}, 64).outs[0][0]);
    engine_config ec;
    ec.threads = 2;
    ec.kv_tokens = 4096;
    auto e = engine::create(*f->model, *f->tok, ec).value();
    std::vector<std::thread> clients;
    std::vector<completion_out> got(k_prompts.size());
    for (size_t i = 0; i < k_prompts.size(); ++i)
        clients.emplace_back([&, i] {
            for (int rep = 0; rep < 3; ++rep) {
                auto s = e->submit(greedy(f, k_prompts[i], 20));
                ASSERT_TRUE(s) << s.message();
                completion_out o;
                while (auto ev = s.value()->pop()) {
                    o.text += ev->text;
                    o.tokens.insert(o.tokens.end(), ev->tokens.begin(), ev->tokens.end());
                    if (ev->finish != finish_reason::none) o.finish = ev->finish;
                }
                EXPECT_EQ(s.value()->usage().completion_tokens, 20);
                got[i] = o;
            }
        });
    for (auto& t : clients) t.join();
    for (size_t i = 0; i < k_prompts.size(); ++i) EXPECT_EQ(got[i].tokens, alone[i].tokens) << k_prompts[i];
    e->shutdown(true);
    auto st = e->stats();
    EXPECT_EQ(st.kv_pages_used, 0);
    EXPECT_EQ(st.sched.requests_finished, int64_t(3 * k_prompts.size()));
    auto refused = e->submit(greedy(f, "late", 4));
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().code(), 503);
}

TEST(Engine, InvalidRequestIsRefusedWith400) {
    NEED_MODEL(f);
    engine_config ec;
    ec.kv_tokens = 1024;
    auto e = engine::create(*f->model, *f->tok, ec).value();
    request_params p = greedy(f, "Once", 4);
    p.sampling.temperature = -1;
    auto r = e->submit(p);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), 400);
    EXPECT_NE(r.message().find("temperature"), std::string::npos) << r.message();
}

namespace {
std::vector<request_params> shared_prefix_requests(const fixture* f, int64_t max_tokens) {
    const std::string sys = "Once upon a time there was a little girl named Lily. She loved to play outside in the park with her friends. ";
    std::vector<request_params> reqs;
    for (const char* q : {"One day she saw", "Her mom said", "Lily had a red ball and", "The sun was"}) reqs.push_back(greedy(f, sys + q, max_tokens));
    for (const char* q : {"Tom liked cars", "A big dog ran"}) reqs.push_back(greedy(f, q, max_tokens));  // unrelated
    reqs.push_back(greedy(f, sys.substr(0, 40), max_tokens));                                             // partial
    return reqs;
}
}  // namespace

TEST(PrefixCacheServing, OutputsAreIdenticalWithTheCacheOnAndOff) {
    NEED_MODEL(f);
    auto reqs = shared_prefix_requests(f, 16);
    scheduler_config off;
    off.prefix_cache = false;
    scheduler_config on;
    auto a = run_all(f, reqs, off, 128, 4);
    // Twice in a row over one cache, so the second round hits: run_all builds a new scheduler,
    // so submit the list twice in one run instead.
    std::vector<request_params> twice = reqs;
    twice.insert(twice.end(), reqs.begin(), reqs.end());
    auto b = run_all(f, twice, on, 128, 4);
    for (size_t i = 0; i < twice.size(); ++i) EXPECT_EQ(b.outs[i][0].tokens, a.outs[i % reqs.size()][0].tokens) << "request " << i;
    EXPECT_GT(b.metrics.prefix_hit_tokens, 0);
    // With a small chunk and budget (interleaved prefills) and a pool so small that cached
    // pages are evicted and sequences preempted, still the same tokens.
    scheduler_config tight;
    tight.max_batch_tokens = 24;
    tight.prefill_chunk = 8;
    auto c = run_all(f, twice, tight, 40, 4);
    EXPECT_GT(c.metrics.prefix_evicted_pages, 0);
    for (size_t i = 0; i < twice.size(); ++i) EXPECT_EQ(c.outs[i][0].tokens, a.outs[i % reqs.size()][0].tokens) << "request " << i;
}

TEST(PrefixCacheServing, SecondRequestReportsCachedTokens) {
    NEED_MODEL(f);
    auto kv = kv_cache::create(f->model->kv_geometry(16, 64)).value();
    thread_pool pool(1);
    scheduler s(*f->model, *f->tok, *kv, pool, scheduler_config{});
    request_params p = greedy(f, "Once upon a time there was a little girl named Lily. She loved to play outside in the park.", 4);
    const int64_t n = int64_t(p.prompt.size());
    ASSERT_GT(n, 17);
    std::vector<std::vector<int32_t>> outs;
    for (int round = 0; round < 3; ++round) {
        request_params q = p;
        if (round == 2) q.cache_salt = "other-tenant";
        auto st = std::make_shared<request_stream>();
        ASSERT_TRUE(s.submit(q, st));
        while (!s.idle()) {
            ASSERT_TRUE(s.step());
            ASSERT_TRUE(s.check_integrity()) << s.check_integrity().message();
        }
        std::vector<int32_t> toks;
        while (auto ev = st->pop(0)) toks.insert(toks.end(), ev->tokens.begin(), ev->tokens.end());
        outs.push_back(toks);
        const int64_t expect = round == 1 ? (n - 1) / 16 * 16 : 0;
        EXPECT_EQ(st->usage().cached_tokens, expect) << "round " << round;
        EXPECT_EQ(st->usage().prompt_tokens, n);
    }
    EXPECT_EQ(outs[0], outs[1]);
    EXPECT_EQ(outs[0], outs[2]);
}

// ---- KV policies in the scheduler -----------------------------------------------------------

namespace {

request_params with_policy(request_params p, const char* spec) {
    p.policy = kv_policy::parse(spec).value();
    return p;
}

// Greedy tokens of one prompt decoded token by token through a session under `spec` (the
// definition the scheduler must reproduce under any batching).
// page_size 0: the session's default.
std::vector<int32_t> session_greedy(const fixture* f, const request_params& p, int64_t n_new, int64_t n_batch = 1,
                                    int32_t page_size = 0) {
    thread_pool pool(2);
    session_params sp;
    sp.kv_type = dtype::f32;
    sp.n_batch = n_batch;
    sp.n_ctx = std::max<int64_t>(48, int64_t(p.prompt.size()) + n_new + 1);
    if (page_size > 0) sp.page_size = page_size;
    sp.policy = p.policy;
    auto s = session::create(*f->model, pool, sp).value();
    EXPECT_TRUE(s->prefill(p.prompt));
    std::vector<int32_t> out;
    const int64_t nv = f->model->hparams().n_vocab;
    for (int64_t i = 0; i < n_new; ++i) {
        const float* l = s->logits();
        const int32_t tok = int32_t(std::max_element(l, l + nv) - l);
        out.push_back(tok);
        EXPECT_TRUE(s->decode(tok));
    }
    return out;
}

const char* const k_policies[] = {"window:size=24", "streaming:sinks=4,size=20", "recompute:size=16", "h2o:heavy=10,recent=6"};

}  // namespace

// Under every policy, a batch of sequences prefilled in small chunks over small pages gives
// the tokens of each prompt decoded token by token under the same policy — past the context
// length (48), which the sliding and recompute policies may exceed.
TEST(SchedulerPolicies, BatchedChunkedEqualsTokenByToken) {
    NEED_MODEL(f);
    for (const char* spec : k_policies) {
        std::vector<request_params> reqs;
        for (auto& p : k_prompts) {
            reqs.push_back(with_policy(greedy(f, p, 60), spec));
            reqs.back().ignore_eos = true;
        }
        scheduler_config tiny;
        tiny.n_ctx = 48;
        tiny.max_batch_tokens = 7;
        tiny.prefill_chunk = 3;
        tiny.h2o_chunk = 3;  // H2O's result depends on its chunks: the session's prefill chunk
        tiny.max_seqs = 3;
        auto r = run_all(f, reqs, tiny, 64, 4, nullptr, dtype::f32);
        const int64_t n_batch = kv_policy::parse(spec).value().kind == kv_policy_kind::h2o ? 3 : 1;
        for (size_t i = 0; i < reqs.size(); ++i) {
            EXPECT_EQ(r.outs[i][0].finish, finish_reason::length) << spec;
            EXPECT_EQ(r.outs[i][0].tokens, session_greedy(f, reqs[i], 60, n_batch)) << spec << ": " << k_prompts[i];
        }
    }
}

// One batch mixing dense, window, StreamingLLM and recompute sequences of the same prompt:
// each gives what it gives alone, and the policies do give different continuations.
TEST(SchedulerPolicies, MixedPoliciesInOneBatchEqualEachAlone) {
    NEED_MODEL(f);
    const char* specs[] = {"dense", "window:size=12", "streaming:sinks=2,size=10", "recompute:size=12", "h2o:heavy=6,recent=6"};
    std::vector<request_params> reqs;
    for (const char* spec : specs) reqs.push_back(with_policy(greedy(f, "Lily and Tom went to the park", 40), spec));
    for (auto& r : reqs) r.ignore_eos = true;
    scheduler_config cfg;
    auto together = run_all(f, reqs, cfg, 64, 16, nullptr, dtype::f32);
    std::set<std::vector<int32_t>> distinct;
    for (size_t i = 0; i < reqs.size(); ++i) {
        auto alone = run_all(f, {reqs[i]}, cfg, 64, 16, nullptr, dtype::f32);
        EXPECT_EQ(together.outs[i][0].tokens, alone.outs[0][0].tokens) << specs[i];
        distinct.insert(alone.outs[0][0].tokens);
    }
    EXPECT_EQ(distinct.size(), 5u);
}

// Preempted sliding and recompute sequences recompute through their policy and continue
// exactly; the integrity check (run_all, every step) bounds each sliding table.
TEST(SchedulerPolicies, PreemptionLosesNothing) {
    NEED_MODEL(f);
    for (const char* spec : k_policies) {
        std::vector<request_params> reqs;
        for (auto& p : k_prompts) {
            reqs.push_back(with_policy(greedy(f, p, 50), spec));
            reqs.back().ignore_eos = true;
        }
        // Chunks of 8: a sliding sequence then needs at most 9 pages of 4 during a step (and 7
        // between steps), so 20 pages hold two or three of the five sequences.
        scheduler_config cfg;
        cfg.prefill_chunk = 8;
        cfg.h2o_chunk = 8;
        auto base = run_all(f, reqs, cfg, 128, 4, nullptr, dtype::f32);
        // A recompute window needs 4 pages: 10 hold two of the five; so does H2O's region of 16
        // slots plus a chunk of 8 (6 pages during a step).
        const int32_t pool = kv_policy::parse(spec).value().slides() ? 20 : 10;
        auto tight = run_all(f, reqs, cfg, pool, 4, nullptr, dtype::f32);
        EXPECT_GT(tight.metrics.preemptions, 0) << spec;
        EXPECT_EQ(base.metrics.preemptions, 0) << spec;
        for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(tight.outs[i][0].tokens, base.outs[i][0].tokens) << spec << ": " << k_prompts[i];
    }
}

// n > 1 under H2O: the completions fork the prompt's pages (with their scores) and each copies
// what it will write; greedy completions all equal the single one.
TEST(SchedulerPolicies, H2oParallelCompletionsForkTheirScores) {
    NEED_MODEL(f);
    request_params one = with_policy(greedy(f, "Once upon a time there was a boy who liked to run and jump in the", 30), "h2o:heavy=6,recent=6");
    one.ignore_eos = true;
    request_params three = one;
    three.n = 3;
    scheduler_config cfg;
    auto a = run_all(f, {one}, cfg, 64, 4, nullptr, dtype::f32);
    auto b = run_all(f, {three}, cfg, 64, 4, nullptr, dtype::f32);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.outs[0][size_t(i)].tokens, a.outs[0][0].tokens) << i;
    EXPECT_EQ(b.metrics.prefix_hit_tokens, 0);  // H2O takes nothing from the prefix cache
}

// Quest reads every prompt densely however it is chunked and selects for each generated
// token (computed alone, also when a preempted sequence recomputes it): small chunks and
// preemption give the tokens of a session that prefills the prompt at once and then decodes.
TEST(SchedulerPolicies, QuestChunkingAndPreemptionLoseNothing) {
    NEED_MODEL(f);
    std::vector<request_params> reqs;
    for (auto& p : k_prompts) {
        reqs.push_back(with_policy(greedy(f, p, 40), "quest:budget=8"));
        reqs.back().ignore_eos = true;
    }
    scheduler_config cfg;
    cfg.prefill_chunk = 8;
    auto base = run_all(f, reqs, cfg, 128, 4, nullptr, dtype::f32);
    EXPECT_EQ(base.metrics.preemptions, 0);
    scheduler_config tiny;
    tiny.max_batch_tokens = 7;
    tiny.prefill_chunk = 3;
    tiny.max_seqs = 3;
    auto chunked = run_all(f, reqs, tiny, 128, 4, nullptr, dtype::f32);
    auto tight = run_all(f, reqs, cfg, 20, 4, nullptr, dtype::f32);
    EXPECT_GT(tight.metrics.preemptions, 0);
    std::set<std::vector<int32_t>> differs_from_dense;
    for (size_t i = 0; i < reqs.size(); ++i) {
        const auto want = session_greedy(f, reqs[i], 40, 64, 4);
        EXPECT_EQ(base.outs[i][0].tokens, want) << k_prompts[i];
        EXPECT_EQ(chunked.outs[i][0].tokens, want) << k_prompts[i];
        EXPECT_EQ(tight.outs[i][0].tokens, want) << k_prompts[i];
        request_params dense = reqs[i];
        dense.policy = kv_policy{};
        if (session_greedy(f, dense, 40, 64, 4) != want) differs_from_dense.insert(want);
    }
    EXPECT_FALSE(differs_from_dense.empty()) << "a budget of two pages should change some continuation";
}

// n > 1 under Quest: the completions share the prompt's pages (and their key bounds), their
// decode rows go through cascade attention in the dense layers, and each equals the single one.
TEST(SchedulerPolicies, QuestParallelCompletionsShareThePromptThroughCascade) {
    NEED_MODEL(f);
    request_params one = with_policy(greedy(f, "Once upon a time there was a boy who liked to run and jump in the", 30), "quest:budget=8");
    one.ignore_eos = true;
    request_params three = one;
    three.n = 3;
    scheduler_config cfg;
    auto a = run_all(f, {one}, cfg, 64, 4, nullptr, dtype::f32);
    auto b = run_all(f, {three}, cfg, 64, 4, nullptr, dtype::f32);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.outs[0][size_t(i)].tokens, a.outs[0][0].tokens) << i;
    EXPECT_GT(b.metrics.cascade_rows, 0);
}

// A long stream holds a constant number of pages, and a cancelled one frees them all.
TEST(SchedulerPolicies, StreamingHoldsBoundedPagesAndCancellationFreesThem) {
    NEED_MODEL(f);
    request_params p = with_policy(greedy(f, "Once upon a time", 400), "streaming:sinks=4,size=28");
    p.ignore_eos = true;
    scheduler_config cfg;
    cfg.n_ctx = 64;
    cfg.prefix_cache = false;  // pages counted are the sequences' own
    int64_t peak = 0;
    auto r = run_all(f, {p, greedy(f, "The cat", 20)}, cfg, 64, 8, [&](int step, std::vector<std::shared_ptr<request_stream>>& s) {
        if (step == 300) s[0]->cancel();
    });
    peak = r.max_pages_used;
    EXPECT_EQ(r.outs[0][0].finish, finish_reason::cancelled);
    EXPECT_GT(r.outs[0][0].tokens.size(), 200u);  // well past the context of 64
    // ceil(4/8) + ceil(28/8) + 1 = 6 pages for the stream, plus the short request's 3.
    EXPECT_LE(peak, 6 + 3);
    EXPECT_EQ(kv_cache::policy_page_bound(p.policy, 1, 8), 6);
}

// The prefix cache shares only pages within a policy's dense prefix, both ways, and gives the
// same tokens as no cache.
TEST(SchedulerPolicies, PrefixCacheSharesOnlyTheDensePrefix) {
    NEED_MODEL(f);
    const std::string prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day";
    for (const char* spec : {"window:size=16", "streaming:sinks=4,size=12", "recompute:size=16"}) {
        for (bool dense_first : {true, false}) {
            request_params dense = greedy(f, prompt, 20), sliding = with_policy(greedy(f, prompt, 20), spec);
            std::vector<request_params> reqs = dense_first ? std::vector<request_params>{dense, sliding}
                                                           : std::vector<request_params>{sliding, dense};
            scheduler_config on, off;
            off.prefix_cache = false;
            auto a = run_all(f, reqs, on, 64, 4, nullptr, dtype::f32);
            auto b = run_all(f, reqs, off, 64, 4, nullptr, dtype::f32);
            for (size_t i = 0; i < 2; ++i) EXPECT_EQ(a.outs[i][0].tokens, b.outs[i][0].tokens) << spec << " " << dense_first;
            // At most the dense prefix (16 tokens: 4 pages of 4) is reused, never for recompute.
            const int64_t dense_prefix = kv_policy::parse(spec).value().dense_prefix_tokens();
            EXPECT_LE(a.metrics.prefix_hit_tokens, dense_prefix) << spec;
            if (dense_prefix > 0) {
                EXPECT_GT(a.metrics.prefix_hit_tokens, 0) << spec;
            }
        }
    }
}

// A Quest prompt is read densely, so Quest and dense requests share the whole prompt through
// the prefix cache (past the budget's pages), both ways, with the tokens of no cache.
TEST(SchedulerPolicies, QuestSharesItsWholePromptThroughThePrefixCache) {
    NEED_MODEL(f);
    const std::string prompt = "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day";
    const request_params dense = greedy(f, prompt, 20), quest = with_policy(greedy(f, prompt, 20), "quest:budget=8");
    const int64_t shareable = (int64_t(dense.prompt.size()) - 1) / 4 * 4;
    ASSERT_GT(shareable, 8) << "the prompt must reach past the budget";
    for (const auto& reqs : {std::vector<request_params>{dense, quest}, std::vector<request_params>{quest, dense},
                             std::vector<request_params>{quest, quest}}) {
        scheduler_config on, off;
        off.prefix_cache = false;
        auto a = run_all(f, reqs, on, 64, 4, nullptr, dtype::f32);
        auto b = run_all(f, reqs, off, 64, 4, nullptr, dtype::f32);
        for (size_t i = 0; i < 2; ++i) EXPECT_EQ(a.outs[i][0].tokens, b.outs[i][0].tokens) << i;
        EXPECT_EQ(a.metrics.prefix_hit_tokens, shareable);
    }
}

TEST(SchedulerPolicies, ValidationAllowsOnlyWhatAPolicyCanRun) {
    NEED_MODEL(f);
    auto kv = kv_cache::create(f->model->kv_geometry(16, 8)).value();
    thread_pool pool(1);
    scheduler_config cfg;
    cfg.n_ctx = 64;
    cfg.prefill_chunk = 32;
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    request_params p = greedy(f, "Once upon a time", 500);
    EXPECT_FALSE(s.validate(p));  // dense: past the context
    EXPECT_TRUE(s.validate(with_policy(p, "streaming:sinks=4,size=28")));
    EXPECT_TRUE(s.validate(with_policy(p, "window:size=48")));
    EXPECT_TRUE(s.validate(with_policy(p, "recompute:size=32")));
    request_params long_prompt = with_policy(p, "streaming:sinks=4,size=28");
    long_prompt.prompt.assign(200, 5);  // a prompt longer than the context streams too
    EXPECT_TRUE(s.validate(long_prompt));
    status st = s.validate(with_policy(p, "h2o:heavy=8,recent=8"));
    ASSERT_FALSE(st);
    EXPECT_EQ(st.message().rfind("kv_policy", 0), 0u) << st.message();
    st = s.validate(with_policy(p, "window:size=1000"));  // more pages than the pool of 8
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("KV pages"), std::string::npos) << st.message();
    // With per-token scores in the pages, H2O runs past the context in H + R + a chunk.
    kv_config scored = f->model->kv_geometry(16, 8);
    scored.token_scores = true;
    auto kv2 = kv_cache::create(scored).value();
    scheduler s_scored(*f->model, *f->tok, *kv2, pool, cfg);
    EXPECT_TRUE(s_scored.validate(with_policy(p, "h2o:heavy=48,recent=32")));  // 5 + 2 pages of 16
    st = s_scored.validate(with_policy(p, "h2o:heavy=128,recent=32"));         // 12 pages > 8
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("KV pages"), std::string::npos) << st.message();
}
