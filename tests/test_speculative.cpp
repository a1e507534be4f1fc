// Speculative decoding (sched/speculative.h): the acceptance rule against a direct
// implementation of its definition and in distribution; the layer span the early exit runs;
// rollback leaving the KV cache as if the drafts never existed; and the scheduler, whose greedy
// output with self-speculation (every exit layer and draft length) or a draft model is token for
// token the plain output — under paging, the prefix cache, chunking, preemption, n > 1, stop
// strings, sliding policies and plain sequences in the same batch — and whose sampled output
// has the plain output's distribution. The KV integrity check runs after every step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "model/llama.h"
#include "sched/scheduler.h"
#include "sched/speculative.h"
#include "stories_fixture.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;

namespace {

using fixture = test::stories_fixture;

// The chi-square critical value at significance 0.001 (Wilson-Hilferty).
double chi2_critical(int64_t df) {
    const double z = 3.09, k = double(df);
    const double t = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
    return k * t * t * t;
}

// Two-sample chi-square statistic over categories with at least 10 observations in all
// (rarer ones pooled); *df gets the degrees of freedom.
double chi2_two_sample(const std::map<int32_t, int64_t>& a, const std::map<int32_t, int64_t>& b, int64_t* df) {
    int64_t na = 0, nb = 0;
    for (auto& [k, c] : a) na += c;
    for (auto& [k, c] : b) nb += c;
    std::map<int32_t, std::pair<int64_t, int64_t>> cells;
    for (auto& [k, c] : a) cells[k].first += c;
    for (auto& [k, c] : b) cells[k].second += c;
    std::vector<std::pair<int64_t, int64_t>> kept;
    std::pair<int64_t, int64_t> rare{0, 0};
    for (auto& [k, c] : cells) {
        if (c.first + c.second >= 10) kept.push_back(c);
        else rare.first += c.first, rare.second += c.second;
    }
    if (rare.first + rare.second > 0) kept.push_back(rare);
    const double ka = std::sqrt(double(nb) / double(na)), kb = std::sqrt(double(na) / double(nb));
    double chi2 = 0;
    for (auto& [x, y] : kept) {
        const double d = ka * double(x) - kb * double(y);
        chi2 += d * d / double(x + y);
    }
    *df = int64_t(kept.size()) - 1;
    return chi2;
}

std::vector<float> random_distribution(std::mt19937_64& rng, int64_t n, double zero_share) {
    std::uniform_real_distribution<double> u(0, 1);
    std::vector<float> p(static_cast<size_t>(n));
    double sum = 0;
    for (auto& x : p) {
        x = u(rng) < zero_share ? 0.0f : float(std::pow(u(rng), 3.0));
        sum += x;
    }
    if (sum == 0) p[0] = 1, sum = 1;
    for (auto& x : p) x = float(x / sum);
    return p;
}

// The rule as the papers state it, in float64, written separately from the engine's.
spec_verdict reference_accept(const std::vector<float>& p, const std::vector<float>& q, int32_t x, double ua, double ur) {
    if (ua < std::min(1.0, double(p[size_t(x)]) / double(q[size_t(x)]))) return {x, true};
    std::vector<double> r(p.size());
    double z = 0;
    for (size_t t = 0; t < p.size(); ++t) z += r[t] = std::max(0.0, double(p[t]) - double(q[t]));
    if (z <= 0) {
        for (size_t t = 0; t < p.size(); ++t) z += r[t] = p[t];
    }
    double c = 0;
    int32_t last = 0;
    for (size_t t = 0; t < p.size(); ++t) {
        if (r[t] <= 0) continue;
        c += r[t] / z;
        last = int32_t(t);
        if (ur < c) return {int32_t(t), false};
    }
    return {last, false};
}

}  // namespace

TEST(SpeculativeRule, EqualsTheDirectDefinition) {
    std::mt19937_64 rng(3);
    std::uniform_real_distribution<double> u(0, 1);
    for (int trial = 0; trial < 2000; ++trial) {
        const int64_t n = 2 + int64_t(rng() % 40);
        auto p = random_distribution(rng, n, 0.3), q = random_distribution(rng, n, 0.3);
        const int32_t x = sample_from_probs(q.data(), n, u(rng));
        ASSERT_GT(q[size_t(x)], 0.0f);
        const double ua = u(rng), ur = u(rng);
        const spec_verdict a = speculative_accept(p.data(), q.data(), n, x, ua, ur), b = reference_accept(p, q, x, ua, ur);
        EXPECT_EQ(a.accepted, b.accepted) << trial;
        EXPECT_EQ(a.token, b.token) << trial;
        if (!a.accepted) { EXPECT_GT(p[size_t(a.token)], q[size_t(a.token)] * 0.0f) << "a resampled token has target mass"; }
    }
    // q == p: every draft is kept.
    std::vector<float> p = {0.1f, 0.2f, 0.7f};
    for (int i = 0; i < 100; ++i) EXPECT_TRUE(speculative_accept(p.data(), p.data(), 3, int32_t(i % 3), u(rng), u(rng)).accepted);
}

// Drafting from q and verifying against p yields p, whatever q (where q covers p or not).
TEST(SpeculativeRule, OutputHasTheTargetDistribution) {
    std::mt19937_64 rng(11);
    std::uniform_real_distribution<double> u(0, 1);
    for (int config = 0; config < 4; ++config) {
        const int64_t n = 12;
        auto p = random_distribution(rng, n, config == 0 ? 0.0 : 0.3), q = random_distribution(rng, n, config == 3 ? 0.5 : 0.2);
        std::map<int32_t, int64_t> got, want;
        const int64_t trials = 200000;
        int64_t n_accepted = 0;
        for (int64_t i = 0; i < trials; ++i) {
            const int32_t x = sample_from_probs(q.data(), n, u(rng));
            const double ua = u(rng), ur = u(rng);
            const spec_verdict v = speculative_accept(p.data(), q.data(), n, x, ua, ur);
            n_accepted += v.accepted;
            ++got[v.token];
            ++want[sample_from_probs(p.data(), n, u(rng))];
        }
        int64_t df = 0;
        const double chi2 = chi2_two_sample(got, want, &df);
        EXPECT_LT(chi2, chi2_critical(df)) << "config " << config << " df " << df;
        // Acceptance is sum_x min(p(x), q(x)).
        double overlap = 0;
        for (int64_t t = 0; t < n; ++t) overlap += std::min(p[size_t(t)], q[size_t(t)]);
        EXPECT_NEAR(double(n_accepted) / double(trials), overlap, 0.01);
        // And drafting from q without the rule does not give p (the test can tell).
        if (config == 1) {
            std::map<int32_t, int64_t> raw;
            for (int64_t i = 0; i < trials; ++i) ++raw[sample_from_probs(q.data(), n, u(rng))];
            const double raw_chi2 = chi2_two_sample(raw, want, &df);
            EXPECT_GT(raw_chi2, chi2_critical(df));
        }
    }
}

TEST(SpeculativeRule, ParsesSpecsAndNamesErrors) {
    auto a = parse_speculative("exit=3,draft=4");
    ASSERT_TRUE(a) << a.message();
    EXPECT_EQ(a.value().exit_layer, 3);
    EXPECT_EQ(a.value().draft_tokens, 4);
    auto b = parse_speculative("draft=6,min_p=0.4");
    ASSERT_TRUE(b) << b.message();
    EXPECT_EQ(b.value().exit_layer, 0);
    EXPECT_FLOAT_EQ(b.value().min_draft_p, 0.4f);
    EXPECT_FALSE(parse_speculative("off").value().on());
    for (const char* bad : {"exit=3", "draft=0", "draft=17", "draft=x", "exit=-1,draft=2", "draft=2,min_p=1", "draft=2,foo=1", "draft",
                            "draft=2,", "=3"}) {
        auto r = parse_speculative(bad);
        EXPECT_FALSE(r) << bad;
        if (!r) { EXPECT_NE(r.message().find("speculation"), std::string::npos) << r.message(); }
    }
}

TEST(SpeculativeRule, SamplerDistributionIsWhatItDraws) {
    const int64_t n = 64;
    std::vector<float> logits(static_cast<size_t>(n));
    std::mt19937_64 rng(5);
    std::normal_distribution<float> nd(0, 2);
    for (auto& x : logits) x = nd(rng);
    sampling_params sp;
    sp.n_vocab = n;
    for (int variant = 0; variant < 4; ++variant) {
        sp.temperature = variant == 0 ? 0.0f : 0.8f;
        sp.top_k = variant == 2 ? 10 : 0;
        sp.top_p = variant == 3 ? 0.7f : 1.0f;
        sp.repeat_penalty = 1.3f;
        sp.seed = 9;
        sampler s(sp);
        ASSERT_TRUE(s.accept(int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin())));
        std::vector<float> probs(static_cast<size_t>(n));
        s.distribution(logits.data(), n, probs.data());
        double sum = 0;
        for (float p : probs) sum += p;
        EXPECT_NEAR(sum, 1.0, 1e-5);
        std::map<int32_t, int64_t> drawn, want;
        for (int i = 0; i < 40000; ++i) {
            const int32_t t = s.sample(logits.data(), n);
            ASSERT_GT(probs[size_t(t)], 0.0f) << "variant " << variant << " drew a token of probability 0";
            ++drawn[t];
            ++want[sample_from_probs(probs.data(), n, double(rng() >> 11) * 0x1.0p-53)];
        }
        if (variant > 0) {
            int64_t df = 0;
            const double chi2 = chi2_two_sample(drawn, want, &df);
            EXPECT_LT(chi2, chi2_critical(df)) << variant;
        }
    }
}

// Layers [0, E) then [E, L) from the exit hidden states give the full pass's logits, and the
// early exit's logits are the final norm and LM head over layer E's output.
TEST(LayerSpan, SplitPassEqualsTheFullPass) {
    NEED_MODEL(f);
    const llama_model& m = *f->model;
    const int64_t d = m.hparams().n_embd, nv = m.hparams().n_vocab, L = m.hparams().n_layer;
    std::vector<int32_t> toks = f->tok->encode("Once upon a time there was a little dog", true, false);
    const int64_t n = int64_t(toks.size());
    thread_pool pool(2);
    auto run = [&](std::vector<float>& logits, int64_t exit_layer) {
        auto kv = kv_cache::create(m.kv_geometry(4, 16, dtype::f32)).value();
        const int32_t seq = kv->seq_add();
        EXPECT_TRUE(kv->seq_reserve(seq, n));
        forward_state st(m, n, n);
        batch b;
        for (int64_t i = 0; i < n; ++i) b.add(toks[size_t(i)], int32_t(i), seq, true);
        if (exit_layer == 0) {
            ASSERT_TRUE(m.forward(b, *kv, st, pool));
        } else {
            std::vector<float> h(size_t(n * d));
            layer_span a;
            a.end = exit_layer;
            a.hidden_out = h.data();
            ASSERT_TRUE(m.forward(b, *kv, st, pool, nullptr, a));
            layer_span z;
            z.begin = exit_layer;
            z.hidden_in = h.data();
            ASSERT_TRUE(m.forward(b, *kv, st, pool, nullptr, z));
        }
        logits.assign(st.logits(), st.logits() + n * nv);
    };
    std::vector<float> full;
    run(full, 0);
    for (int64_t e = 1; e < L; ++e) {
        std::vector<float> split;
        run(split, e);
        ASSERT_EQ(split.size(), full.size());
        for (size_t i = 0; i < full.size(); ++i) ASSERT_EQ(split[i], full[i]) << "exit " << e << " at " << i;
    }
    // Bad spans are refused before anything is written.
    auto kv = kv_cache::create(m.kv_geometry(4, 16, dtype::f32)).value();
    const int32_t seq = kv->seq_add();
    ASSERT_TRUE(kv->seq_reserve(seq, 4));
    forward_state st(m, 4, 4);
    batch b;
    b.add(toks[0], 0, seq, true);
    layer_span bad;
    bad.begin = 2;
    EXPECT_FALSE(m.forward(b, *kv, st, pool, nullptr, bad));  // no hidden states
    bad.begin = 0;
    bad.end = L + 1;
    EXPECT_FALSE(m.forward(b, *kv, st, pool, nullptr, bad));
}

// Drafts written into a sequence's pages and rolled back leave the cache as if they had never
// been written: the same pages (ids and count) as a cache that only computed the accepted
// tokens, the same bytes in every kept slot, the same free pages, and a clean integrity check.
TEST(Rollback, LeavesTheCacheAsIfTheDraftsNeverExisted) {
    NEED_MODEL(f);
    const llama_model& m = *f->model;
    thread_pool pool(2);
    std::vector<int32_t> toks = f->tok->encode("Lily and Tom went to the park and saw a big", true, false);
    const int64_t n = int64_t(toks.size());
    for (int32_t t : {10, 11, 12}) toks.push_back(t);  // what follows the prompt
    for (int64_t accepted = 0; accepted <= 6; ++accepted) {
        auto plain = kv_cache::create(m.kv_geometry(4, 32, dtype::f32)).value();
        auto spec = kv_cache::create(m.kv_geometry(4, 32, dtype::f32)).value();
        forward_state st(m, 64, 64);
        auto fill = [&](kv_cache& kv, int32_t seq, int64_t from, int64_t to, const std::vector<int32_t>& t) {
            ASSERT_TRUE(kv.seq_reserve(seq, to));
            batch b;
            for (int64_t i = from; i < to; ++i) b.add(t[size_t(i)], int32_t(i), seq, false);
            ASSERT_TRUE(m.forward(b, kv, st, pool));
        };
        const int32_t a = plain->seq_add(), s = spec->seq_add();
        const int64_t keep = n - 6 + accepted;  // tokens a verifier accepted
        fill(*plain, a, 0, keep, toks);
        fill(*spec, s, 0, n - 6, toks);
        // Six rows past the prompt: the accepted ones are the real tokens, the others junk.
        std::vector<int32_t> drafted = toks;
        for (int64_t i = keep; i < n + 3; ++i) drafted[size_t(i)] = int32_t((drafted[size_t(i)] * 7 + 3) % m.hparams().n_vocab);
        fill(*spec, s, n - 6, n + 3, drafted);
        const int32_t freed = spec->seq_rollback(s, keep);
        EXPECT_EQ(freed, kv_cache::pages_for(n + 3, 4) - kv_cache::pages_for(keep, 4));
        EXPECT_TRUE(spec->check_integrity()) << spec->check_integrity().message();
        EXPECT_EQ(spec->seq_pages(s), plain->seq_pages(a));
        EXPECT_EQ(spec->pool().n_free(), plain->pool().n_free());
        const auto& lay = spec->layout();
        for (int64_t l = 0; l < m.hparams().n_layer; ++l)
            for (int64_t h = 0; h < m.hparams().n_head_kv; ++h)
                for (int64_t slot = 0; slot < keep; ++slot) {
                    const int32_t page = spec->page_of(s, slot);
                    const size_t row_bytes = lay.k_head_bytes() / 4, off = size_t(slot % 4) * row_bytes;
                    ASSERT_EQ(0, std::memcmp(spec->k_block(l, page, h) + off, plain->k_block(l, page, h) + off, row_bytes));
                    ASSERT_EQ(0, std::memcmp(spec->v_block(l, page, h) + off, plain->v_block(l, page, h) + off, row_bytes));
                }
        // The next token computed after the rollback reads the same cache as the plain one.
        fill(*plain, a, keep, keep + 1, toks);
        fill(*spec, s, keep, keep + 1, toks);
        for (int64_t l = 0; l < m.hparams().n_layer; ++l) {
            const int32_t page = spec->page_of(s, keep);
            ASSERT_EQ(0, std::memcmp(spec->k_block(l, page, 0), plain->k_block(l, page, 0), lay.k_head_bytes() / 4 * size_t(keep % 4 + 1)));
        }
    }
}

namespace {

struct completion_out {
    std::vector<int32_t> tokens;
    std::string text;
    finish_reason finish = finish_reason::none;
};

struct run_result {
    std::vector<std::vector<completion_out>> outs;
    scheduler_metrics metrics;
};

request_params greedy(const fixture* f, const std::string& prompt, int64_t max_tokens) {
    request_params p;
    p.prompt = f->tok->encode(prompt, true, false);
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    return p;
}

request_params speculating(request_params p, int32_t exit_layer, int32_t draft) {
    p.speculative.exit_layer = exit_layer;
    p.speculative.draft_tokens = draft;
    return p;
}

// Runs the requests to the end, checking integrity after every step; `each_step` may cancel.
run_result run_all(const fixture* f, const std::vector<request_params>& reqs, scheduler_config cfg, int32_t n_pages, int32_t page_size,
                   const llama_model* draft = nullptr, std::function<void(int, std::vector<std::shared_ptr<request_stream>>&)> each_step = nullptr) {
    auto kv = kv_cache::create(f->model->kv_geometry(page_size, n_pages, dtype::f32)).value();
    std::unique_ptr<kv_cache> dkv;
    if (draft) dkv = kv_cache::create(draft->kv_geometry(page_size, n_pages, dtype::f32)).value();
    thread_pool pool(2);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg, {draft, dkv.get()});
    run_result r;
    std::vector<std::shared_ptr<request_stream>> streams;
    for (const auto& p : reqs) {
        r.outs.emplace_back(size_t(p.n));
        streams.push_back(std::make_shared<request_stream>());
        status st = s.submit(p, streams.back());
        EXPECT_TRUE(st) << st.message();
    }
    auto collect = [&] {
        for (size_t i = 0; i < streams.size(); ++i)
            while (auto ev = streams[i]->pop(0)) {
                auto& o = r.outs[i][size_t(ev->index)];
                o.text += ev->text;
                o.tokens.insert(o.tokens.end(), ev->tokens.begin(), ev->tokens.end());
                if (ev->finish != finish_reason::none) o.finish = ev->finish;
            }
    };
    int step = 0;
    while (!s.idle()) {
        auto ok = s.step();
        EXPECT_TRUE(ok) << ok.message();
        status integ = s.check_integrity();
        EXPECT_TRUE(integ) << integ.message();
        if (!integ) break;
        collect();
        if (each_step) each_step(step, streams);
        if (++step > 20000) {
            ADD_FAILURE() << "scheduler does not finish";
            break;
        }
    }
    collect();
    s.drop_prefix_cache();
    EXPECT_EQ(kv->pool().n_free(), kv->pool().n_pages()) << "pages leaked";
    if (dkv) { EXPECT_EQ(dkv->pool().n_free(), dkv->pool().n_pages()) << "draft pages leaked"; }
    r.metrics = s.metrics();
    return r;
}

const std::vector<std::string> k_prompts = {"Once upon a time", "Lily and Tom went to the park", "The cat",
                                            "One day, a little bird", "Sam had a big red ball. He"};

std::vector<request_params> greedy_requests(const fixture* f, int64_t max_tokens) {
    std::vector<request_params> reqs;
    for (const auto& p : k_prompts) {
        reqs.push_back(greedy(f, p, max_tokens));
        reqs.back().ignore_eos = true;
    }
    return reqs;
}

}  // namespace

// Self-speculation with every exit layer and draft length gives the plain greedy tokens, one
// request at a time over 4-token pages (drafts cross page boundaries, rollbacks free pages).
TEST(SelfSpeculation, GreedyOutputIsThePlainOutputForEveryExitAndLength) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    const auto reqs = greedy_requests(f, 40);
    const auto plain = run_all(f, reqs, cfg, 256, 4);
    for (int32_t e = 1; e < f->model->hparams().n_layer; ++e)
        for (int32_t dn : {1, 2, 3, 4, 6}) {
            std::vector<request_params> spec;
            for (const auto& p : reqs) spec.push_back(speculating(p, e, dn));
            const auto r = run_all(f, spec, cfg, 256, 4);
            for (size_t i = 0; i < reqs.size(); ++i) {
                EXPECT_EQ(r.outs[i][0].tokens, plain.outs[i][0].tokens) << "exit " << e << " draft " << dn << ": " << k_prompts[i];
                EXPECT_EQ(r.outs[i][0].text, plain.outs[i][0].text);
                EXPECT_EQ(r.outs[i][0].finish, finish_reason::length);
            }
            EXPECT_GT(r.metrics.spec_cycles, 0);
            EXPECT_LE(r.metrics.spec_accepted, r.metrics.spec_drafted);
            EXPECT_EQ(r.metrics.spec_emitted, r.metrics.spec_accepted + r.metrics.spec_cycles)
                << "every cycle emits its accepted drafts and one token of the target's";
            EXPECT_EQ(r.metrics.generated_tokens, plain.metrics.generated_tokens);
            EXPECT_LE(r.metrics.steps, plain.metrics.steps);
        }
}

// Speculating and plain sequences in one batch, small budgets and chunked prompts, the prefix
// cache on and off, a pool small enough to preempt, and n > 1 forks: the plain tokens.
TEST(SelfSpeculation, BatchingCachingPreemptionAndForksChangeNothing) {
    NEED_MODEL(f);
    auto reqs = greedy_requests(f, 48);
    reqs[4].n = 3;  // forks: greedy completions equal each other
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    cfg.max_batch_tokens = 9;
    cfg.prefill_chunk = 5;
    const auto plain = run_all(f, reqs, cfg, 256, 4);
    for (int variant = 0; variant < 4; ++variant) {
        std::vector<request_params> mixed;
        for (size_t i = 0; i < reqs.size(); ++i) mixed.push_back(i % 2 == 0 ? speculating(reqs[i], 2, 3) : reqs[i]);
        // Shared prefixes for the cache: the same prompts again, speculating the other way.
        for (size_t i = 0; i < reqs.size(); ++i) mixed.push_back(i % 2 == 1 ? speculating(reqs[i], 3, 5) : reqs[i]);
        scheduler_config c = cfg;
        c.prefix_cache = variant != 1;
        const int32_t n_pages = variant == 2 ? 40 : 256;  // 40 pages of 4: preemption
        const auto r = run_all(f, mixed, c, n_pages, 4);
        for (size_t i = 0; i < mixed.size(); ++i)
            for (int32_t k = 0; k < mixed[i].n; ++k)
                EXPECT_EQ(r.outs[i][size_t(k)].tokens, plain.outs[i % reqs.size()][size_t(k)].tokens)
                    << "variant " << variant << " request " << i << " completion " << k;
        EXPECT_GT(r.metrics.spec_cycles, 0) << variant;
        if (variant == 2) { EXPECT_GT(r.metrics.preemptions, 0); }
        if (variant == 0) { EXPECT_GT(r.metrics.prefix_hit_tokens, 0); }
    }
    // spec_max_running below the load: plain decoding, no cycle.
    std::vector<request_params> all;
    for (const auto& p : reqs) all.push_back(speculating(p, 2, 3));
    cfg.spec_max_running = 2;
    const auto loaded = run_all(f, all, cfg, 256, 4);
    for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(loaded.outs[i][0].tokens, plain.outs[i][0].tokens);
}

// Sliding policies roll back within their bounded tables; stop strings and EOS cut inside an
// accepted run; max_tokens is never exceeded.
TEST(SelfSpeculation, PoliciesStopsAndLimits) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    cfg.n_ctx = 48;
    for (const char* spec : {"window:size=24", "streaming:sinks=4,size=20"}) {
        auto reqs = greedy_requests(f, 70);  // past the context length
        for (auto& p : reqs) p.policy = kv_policy::parse(spec).value();
        const auto plain = run_all(f, reqs, cfg, 128, 4);
        for (auto& p : reqs) p = speculating(p, 3, 4);
        const auto r = run_all(f, reqs, cfg, 128, 4);
        for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(r.outs[i][0].tokens, plain.outs[i][0].tokens) << spec << " " << i;
    }
    // Stops: with EOS honoured and stop strings taken from the plain output's middle.
    cfg.n_ctx = 0;
    auto reqs = greedy_requests(f, 60);
    for (auto& p : reqs) p.ignore_eos = false;
    const auto plain = run_all(f, reqs, cfg, 128, 4);
    for (size_t i = 0; i < reqs.size(); ++i) {
        const std::string& text = plain.outs[i][0].text;
        if (text.size() > 24) reqs[i].stop = {text.substr(text.size() / 2, 5)};
    }
    const auto plain_stops = run_all(f, reqs, cfg, 128, 4);
    for (auto& p : reqs) p = speculating(p, 2, 6);
    const auto r = run_all(f, reqs, cfg, 128, 4);
    for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(r.outs[i][0].text, plain_stops.outs[i][0].text) << i;
        EXPECT_EQ(r.outs[i][0].finish, plain_stops.outs[i][0].finish) << i;
        EXPECT_EQ(r.outs[i][0].tokens, plain_stops.outs[i][0].tokens) << i;
    }
    for (int64_t max_tokens : {1, 2, 3, 5, 9}) {
        auto one = greedy_requests(f, max_tokens);
        for (auto& p : one) p = speculating(p, 4, 6);
        const auto rr = run_all(f, one, cfg, 128, 4);
        for (auto& o : rr.outs) EXPECT_EQ(int64_t(o[0].tokens.size()), max_tokens);
    }
}

// Adaptive length: drafting stops at the first draft the early exit is unsure of — fewer drafts,
// the same output.
TEST(SelfSpeculation, AdaptiveLengthDraftsLessAndChangesNothing) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    const auto reqs = greedy_requests(f, 40);
    std::vector<request_params> fixed, adaptive;
    for (const auto& p : reqs) {
        fixed.push_back(speculating(p, 3, 6));
        adaptive.push_back(speculating(p, 3, 6));
        adaptive.back().speculative.min_draft_p = 0.6f;
    }
    const auto a = run_all(f, fixed, cfg, 256, 4), b = run_all(f, adaptive, cfg, 256, 4);
    for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(a.outs[i][0].tokens, b.outs[i][0].tokens);
    EXPECT_LT(double(b.metrics.spec_drafted) / double(b.metrics.spec_cycles), double(a.metrics.spec_drafted) / double(a.metrics.spec_cycles));
    EXPECT_GT(double(b.metrics.spec_accepted) / double(b.metrics.spec_drafted), double(a.metrics.spec_accepted) / double(a.metrics.spec_drafted))
        << "the drafts it keeps are the likelier ones";
}

// Cancelling sequences in the middle of speculation frees everything at once.
TEST(SelfSpeculation, CancellationFreesPages) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    auto reqs = greedy_requests(f, 200);
    for (auto& p : reqs) p = speculating(p, 2, 5);
    const auto r = run_all(f, reqs, cfg, 256, 4, nullptr, [](int step, std::vector<std::shared_ptr<request_stream>>& streams) {
        if (step == 6) streams[1]->cancel();
        if (step == 9)
            for (auto& s : streams) s->cancel();
    });
    for (auto& o : r.outs) EXPECT_EQ(o[0].finish, finish_reason::cancelled);
    EXPECT_GT(r.metrics.spec_cycles, 0);
}

// A draft model with the target's vocabulary: the same model (every greedy draft accepted) and
// a random-weight model of the same shape (most rejected) both give the plain tokens.
TEST(DraftModel, GreedyOutputIsThePlainOutput) {
    NEED_MODEL(f);
    const std::string dir = test::temp_dir();
    const std::string random_path = dir + "/draft-random.gguf";
    std::string out;
    ASSERT_EQ(test::run_command(test::kvserve_binary() + " synth --shape stories260k --dtype f32 --vocab " +
                                    test::shared_file("models/stories260K.gguf") + " -o " + random_path + " 2>&1",
                                &out),
              0)
        << out;
    auto random_draft = llama_model::load(random_path);
    ASSERT_TRUE(random_draft) << random_draft.message();
    scheduler_config cfg;
    cfg.spec_max_running = 8;
    cfg.max_batch_tokens = 16;
    cfg.prefill_chunk = 6;
    auto reqs = greedy_requests(f, 40);
    reqs[2].n = 2;
    const auto plain = run_all(f, reqs, cfg, 256, 4);
    for (const llama_model* draft : {f->model.get(), random_draft.value().get()}) {
        std::vector<request_params> spec;
        for (const auto& p : reqs) spec.push_back(speculating(p, 0, 4));
        for (int variant = 0; variant < 2; ++variant) {
            scheduler_config c = cfg;
            c.prefix_cache = variant == 0;
            const auto r = run_all(f, spec, c, variant == 1 ? 48 : 256, 4, draft);
            for (size_t i = 0; i < reqs.size(); ++i)
                for (int32_t k = 0; k < reqs[i].n; ++k)
                    EXPECT_EQ(r.outs[i][size_t(k)].tokens, plain.outs[i][size_t(k)].tokens) << "request " << i << " variant " << variant;
            EXPECT_GT(r.metrics.spec_cycles, 0);
            if (draft == f->model.get()) { EXPECT_EQ(r.metrics.spec_accepted, r.metrics.spec_drafted) << "the target drafting for itself"; }
            else { EXPECT_LT(r.metrics.spec_accepted, r.metrics.spec_drafted / 2) << "random drafts"; }
        }
    }
    // The random-weight model (GQA, f32 weights, untrained) as the target of
    // self-speculation: its early exits rarely agree, and its output is still its own.
    fixture synthetic;
    synthetic.model = std::move(random_draft.value());
    synthetic.tok = std::move(tokenizer::from_gguf(synthetic.model->file()).value());
    auto sreqs = greedy_requests(&synthetic, 32);
    const auto splain = run_all(&synthetic, sreqs, cfg, 256, 4);
    for (int32_t e : {1, 3})
        for (int32_t dn : {2, 5}) {
            std::vector<request_params> spec;
            for (const auto& p : sreqs) spec.push_back(speculating(p, e, dn));
            const auto r = run_all(&synthetic, spec, cfg, 256, 4);
            for (size_t i = 0; i < sreqs.size(); ++i) EXPECT_EQ(r.outs[i][0].tokens, splain.outs[i][0].tokens) << "synthetic exit " << e;
            EXPECT_GT(r.metrics.spec_cycles, 0);
        }
    std::filesystem::remove(random_path);
}

// Sampling: the tokens after the first (which the prompt pass draws) come from cycles; over
// many seeds their distribution equals plain sampling's (two-sample chi-square), for
// self-speculation and a draft model.
TEST(Speculation, SampledOutputHasThePlainDistribution) {
    NEED_MODEL(f);
    auto make = [&](int32_t exit_layer, int32_t draft, int n, uint64_t seed0) {
        std::vector<request_params> reqs;
        for (int i = 0; i < n; ++i) {
            request_params p;
            p.prompt = f->tok->encode("Once upon a time, there was a", true, false);
            p.sampling.temperature = 1.0f;
            p.sampling.top_k = 40;
            p.sampling.seed = seed0 + uint64_t(i);
            p.max_tokens = 4;
            p.ignore_eos = true;
            if (draft > 0) p = speculating(p, exit_layer, draft);
            reqs.push_back(p);
        }
        return reqs;
    };
    scheduler_config cfg;
    cfg.spec_max_running = 64;
    cfg.max_seqs = 64;
    const int n = 1000;
    const auto plain = run_all(f, make(0, 0, n, 1000000), cfg, 1024, 16);
    struct variant {
        int32_t exit_layer, draft;
        const llama_model* model;
    };
    for (const variant& v : {variant{2, 3, nullptr}, variant{0, 3, f->model.get()}}) {
        const auto r = run_all(f, make(v.exit_layer, v.draft, n, 7), cfg, 1024, 16, v.model);
        EXPECT_GT(r.metrics.spec_cycles, n / 2);
        if (v.exit_layer > 0) { EXPECT_LT(r.metrics.spec_accepted, r.metrics.spec_drafted) << "some drafts rejected"; }
        for (size_t pos = 1; pos < 4; ++pos) {
            std::map<int32_t, int64_t> a, b;
            for (int i = 0; i < n; ++i) {
                ++a[r.outs[size_t(i)][0].tokens[pos]];
                ++b[plain.outs[size_t(i)][0].tokens[pos]];
            }
            int64_t df = 0;
            const double chi2 = chi2_two_sample(a, b, &df);
            EXPECT_LT(chi2, chi2_critical(df)) << "token " << pos << " exit " << v.exit_layer << " df " << df;
        }
    }
}

TEST(Speculation, ValidationNamesTheProblem) {
    NEED_MODEL(f);
    auto kv = kv_cache::create(f->model->kv_geometry(16, 64, dtype::f32)).value();
    thread_pool pool(1);
    scheduler s(*f->model, *f->tok, *kv, pool, scheduler_config{});
    auto check = [&](request_params p, const char* needle) {
        status st = s.validate(p);
        EXPECT_FALSE(st) << needle;
        if (!st) { EXPECT_NE(st.message().find(needle), std::string::npos) << st.message(); }
    };
    const request_params base = greedy(f, "Once upon a time", 8);
    check(speculating(base, 2, 0), "draft_tokens");
    check(speculating(base, 2, 17), "draft_tokens");
    check(speculating(base, 5, 2), "exit_layer");
    check(speculating(base, -1, 2), "exit_layer");
    check(speculating(base, 0, 2), "draft model");
    for (const char* pol : {"h2o:heavy=8,recent=8", "quest:budget=32", "recompute:size=16"}) {
        request_params p = speculating(base, 2, 2);
        p.policy = kv_policy::parse(pol).value();
        check(p, "does not combine");
    }
    EXPECT_TRUE(s.validate(speculating(base, 4, 16)));
}
