// Beam search (sched/beam_search.h) in the scheduler: the n best hypotheses equal an exhaustive
// float64 reference beam search over stories260K (every beam's every token scored from the
// float64 reference forward pass, selection written here from the definition); beams share the
// pages of their common history (a width-8 search holds about one sequence's pages plus one per
// beam, not eight sequences'); batching with other requests, the prefix cache, preemption of
// others, stop strings and cancellation change nothing and leak nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "reference_model.h"
#include "sched/beam_search.h"
#include "sched/scheduler.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;

namespace {

using fixture = test::stories_fixture;

struct ref_hyp {
    std::vector<int32_t> tokens;
    double cum = 0, score = 0;
    bool ended = false;
};

// The definition, on float64 logits of the whole sequence recomputed for every beam and step.
// live_after_step, when given, receives the live beams' generated tokens after each step (before
// the last step turns them into hypotheses); ignore_eos makes end tokens ordinary.
std::vector<ref_hyp> reference_beam_search(const fixture* f, const std::vector<int32_t>& prompt, int32_t K, int64_t max_tokens,
                                           double alpha, int32_t n, std::vector<std::vector<std::vector<int32_t>>>* live_after_step = nullptr,
                                           bool ignore_eos = false) {
    const int64_t V = f->model->hparams().n_vocab;
    auto is_end = [&](int32_t t) { return !ignore_eos && f->tok->is_eog(t); };
    auto score = [&](double cum, size_t len) { return cum / std::pow(double(std::max<size_t>(1, len)), alpha); };
    struct live_beam {
        std::vector<int32_t> tokens;
        double cum;
    };
    std::vector<live_beam> live = {{{}, 0.0}};
    std::vector<ref_hyp> hyps;
    for (int64_t step = 0; step < max_tokens && !live.empty(); ++step) {
        struct cand {
            double s;
            int32_t beam, token;
        };
        std::vector<cand> all;  // every (beam, token)
        for (size_t b = 0; b < live.size(); ++b) {
            std::vector<int32_t> seq = prompt;
            seq.insert(seq.end(), live[b].tokens.begin(), live[b].tokens.end());
            const std::vector<double> last = test::reference_logits(*f->model, seq).back();
            double mx = -std::numeric_limits<double>::infinity();
            for (double x : last) mx = std::max(mx, x);
            double z = 0;
            for (double x : last) z += std::exp(x - mx);
            for (int64_t t = 0; t < V; ++t) all.push_back({live[b].cum + last[size_t(t)] - mx - std::log(z), int32_t(b), int32_t(t)});
        }
        std::sort(all.begin(), all.end(), [](const cand& a, const cand& c) {
            return a.s != c.s ? a.s > c.s : a.beam != c.beam ? a.beam < c.beam : a.token < c.token;
        });
        std::vector<live_beam> next;
        for (size_t rank = 0; rank < all.size() && rank < size_t(2 * K) && int32_t(next.size()) < K; ++rank) {
            std::vector<int32_t> toks = live[size_t(all[rank].beam)].tokens;
            toks.push_back(all[rank].token);
            if (is_end(all[rank].token)) {
                if (rank < size_t(K)) hyps.push_back({toks, all[rank].s, score(all[rank].s, toks.size()), true});
                continue;
            }
            next.push_back({toks, all[rank].s});
        }
        live = next;
        if (live_after_step) {
            live_after_step->emplace_back();
            for (const auto& b : live) live_after_step->back().push_back(b.tokens);
        }
        if (step + 1 == max_tokens) {
            for (auto& b : live) hyps.push_back({b.tokens, b.cum, score(b.cum, b.tokens.size()), false});
            live.clear();
        }
        // Done: K hypotheses, none of which the best live beam can still beat.
        if (int32_t(hyps.size()) >= K && !live.empty()) {
            std::vector<double> sc;
            for (auto& h : hyps) sc.push_back(h.score);
            std::sort(sc.rbegin(), sc.rend());
            if (sc[size_t(K - 1)] >= score(live.front().cum, live.front().tokens.size())) break;
        }
    }
    std::stable_sort(hyps.begin(), hyps.end(), [](const ref_hyp& a, const ref_hyp& b) { return a.score > b.score; });
    if (int32_t(hyps.size()) > n) hyps.resize(size_t(n));
    return hyps;
}

struct out {
    std::vector<int32_t> tokens;
    std::string text;
    finish_reason finish = finish_reason::none;
};

struct result_set {
    std::vector<std::vector<out>> outs;
    int64_t max_pages = 0;
    std::vector<int64_t> pages;  // pages in use after each step (the prefix cache's own excluded)
    scheduler_metrics metrics;
    request_usage usage0;
};

result_set run_all(const fixture* f, const std::vector<request_params>& reqs, scheduler_config cfg, int32_t n_pages, int32_t page_size,
                   std::function<void(int, std::vector<std::shared_ptr<request_stream>>&)> each_step = nullptr) {
    auto kv = kv_cache::create(f->model->kv_geometry(page_size, n_pages, dtype::f32)).value();
    thread_pool pool(2);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    result_set r;
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
        r.pages.push_back(kv->pool().n_used() - s.n_cached_only_pages());
        r.max_pages = std::max<int64_t>(r.max_pages, r.pages.back());
        collect();
        if (each_step) each_step(step, streams);
        if (++step > 20000) {
            ADD_FAILURE() << "scheduler does not finish";
            break;
        }
    }
    collect();
    for (auto& st : streams) EXPECT_TRUE(st->done());
    if (!streams.empty()) r.usage0 = streams[0]->usage();
    s.drop_prefix_cache();
    EXPECT_EQ(kv->pool().n_free(), kv->pool().n_pages()) << "pages leaked";
    r.metrics = s.metrics();
    return r;
}

request_params beam_request(const fixture* f, const std::string& prompt, int32_t K, int32_t n, int64_t max_tokens, float alpha = 1.0f) {
    request_params p;
    p.prompt = f->tok->encode(prompt, true, false);
    p.beam_width = K;
    p.n = n;
    p.max_tokens = max_tokens;
    p.length_penalty = alpha;
    return p;
}

}  // namespace

// The bookkeeping alone, on hand-made distributions: the first step from one beam keeps the K
// likeliest tokens; an end token among the first K candidates becomes a hypothesis.
TEST(BeamSearch, StepsAndHypothesesByDefinition) {
    const int64_t V = 6;
    auto is_end = [](int32_t t) { return t == 5; };
    beam_search bs(2, 1.0f, 3, 0, false, is_end);
    std::vector<float> l0 = {0.0f, 3.0f, 2.0f, -1.0f, 0.5f, 2.5f};  // 1 best, then 5 (the end), then 2
    auto e0 = bs.step({l0.data()}, V);
    ASSERT_EQ(e0.size(), 2u);
    EXPECT_EQ(e0[0].token, 1);
    EXPECT_EQ(e0[1].token, 2);  // the end token went to the hypotheses instead
    ASSERT_EQ(bs.best(5).size(), 1u);
    EXPECT_TRUE(bs.best(5)[0].ended);
    EXPECT_EQ(bs.best(5)[0].tokens, std::vector<int32_t>({5}));
    EXPECT_FALSE(bs.done());
    std::vector<float> a = {5, 0, 0, 0, 0, -9}, b = {0, 0, 0, 5, 0, -9};
    auto e1 = bs.step({a.data(), b.data()}, V);
    ASSERT_EQ(e1.size(), 2u);
    EXPECT_EQ(bs.live()[0].tokens, std::vector<int32_t>({1, 0}));
    auto e2 = bs.step({a.data(), b.data()}, V);  // max_tokens: the live beams end
    EXPECT_TRUE(e2.empty());
    EXPECT_TRUE(bs.done());
    EXPECT_EQ(bs.best(5).size(), 3u);
    // min_tokens: no end token before it.
    beam_search m(2, 1.0f, 3, 2, false, is_end);
    (void)m.step({l0.data()}, V);
    EXPECT_TRUE(m.best(5).empty());
}

TEST(BeamSearch, EqualsAnExhaustiveFloat64Reference) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.max_seqs = 16;
    for (int32_t K : {2, 4, 8})
        for (const char* prompt : {"Once upon a time", "The cat"}) {
            const int32_t n = std::min(K, 3);
            const auto ref = reference_beam_search(f, f->tok->encode(prompt, true, false), K, 32, 1.0, n);
            const auto r = run_all(f, {beam_request(f, prompt, K, n, 32)}, cfg, 512, 16);
            ASSERT_EQ(ref.size(), size_t(n));
            for (int32_t i = 0; i < n; ++i) {
                EXPECT_EQ(r.outs[0][size_t(i)].tokens, ref[size_t(i)].tokens) << "K " << K << " '" << prompt << "' hypothesis " << i;
                EXPECT_EQ(r.outs[0][size_t(i)].finish, ref[size_t(i)].ended ? finish_reason::stop : finish_reason::length);
            }
            EXPECT_EQ(r.usage0.completion_tokens, [&] {
                int64_t c = 0;
                for (auto& h : ref) c += int64_t(h.tokens.size());
                return c;
            }());
        }
}

// Width 8 holds about one sequence's pages plus a page per beam: beams share their history by
// reference, and only the pages where they differ are their own. Exactly: after every step the
// search holds the fewest pages any sharing of KV pages allows — one per distinct (page index,
// written tokens up to that page's end) among the live beams of the reference search, since a
// page's K/V depend on every token before it. And the token-level count (distinct written
// prefixes: what sharing at the granularity of single tokens would hold) shows how far the
// issue's bound of 1.3x one sequence plus one page per beam is from what these beams need.
TEST(BeamSearch, BeamsShareTheirCommonPages) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.max_seqs = 16;
    auto p = beam_request(f, "Once upon a time, there was a little girl named Lily. She", 8, 1, 32);
    p.ignore_eos = true;  // all 32 steps
    std::vector<std::vector<std::vector<int32_t>>> live;  // [step][beam] generated tokens
    reference_beam_search(f, p.prompt, 8, 32, 1.0, 1, &live, true);
    ASSERT_EQ(live.size(), 32u);
    const int64_t P = int64_t(p.prompt.size());
    // Distinct written prefixes ending at each page's end (ps = 1: every token).
    auto fewest_pages = [&](const std::vector<std::vector<int32_t>>& beams, int64_t ps) {
        std::set<std::vector<int32_t>> pages;
        for (const auto& g : beams) {
            std::vector<int32_t> seq = p.prompt;
            seq.insert(seq.end(), g.begin(), g.end());
            const int64_t written = int64_t(seq.size()) - 1;  // the last token is computed next step
            for (int64_t end = ps; end < written + ps; end += ps)
                pages.insert(std::vector<int32_t>(seq.begin(), seq.begin() + std::min(end, written)));
        }
        return int64_t(pages.size());
    };
    for (int32_t ps : {16, 4}) {
        const int64_t one_seq = kv_cache::pages_for(P + 32, ps);
        const auto r = run_all(f, {p}, cfg, 512, ps);
        // Engine step 0 computes the prompt and starts the beams; step i ends the reference's step i.
        ASSERT_GE(r.pages.size(), 32u);
        int64_t fewest_max = 0, tokens_max = 0;
        for (size_t i = 0; i + 1 < 32; ++i) {
            const int64_t fewest = fewest_pages(live[i], ps);
            EXPECT_EQ(r.pages[i], fewest) << ps << "-token pages, step " << i;
            fewest_max = std::max(fewest_max, fewest);
            tokens_max = std::max(tokens_max, fewest_pages(live[i], 1));
        }
        std::printf("width 8, %lld-token prompt, 32 tokens, %d-token pages: %lld pages at most (the fewest these beams allow: %lld), "
                    "one sequence %lld, 8 copies %lld, bound 1.3x one + 8 = %.1f; at the granularity of tokens the beams need "
                    "%lld slots against 1.3x %lld + 8 = %.1f\n",
                    (long long)P, ps, (long long)r.max_pages, (long long)fewest_max, (long long)one_seq, (long long)(8 * one_seq),
                    1.3 * double(one_seq) + 8, (long long)tokens_max, (long long)(P + 32), 1.3 * double(P + 32) + 8);
        EXPECT_EQ(r.max_pages, fewest_max);
        EXPECT_GT(r.max_pages, one_seq) << "beams hold pages of their own";
        EXPECT_LT(r.max_pages, 8 * one_seq / 2) << "far from eight copies";
    }
}

// Beam requests beside sampled ones, small budgets, the prefix cache on and off, a pool small
// enough to preempt the others: the same hypotheses, nothing leaked.
TEST(BeamSearch, BatchingCachingAndPreemptionChangeNothing) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.max_seqs = 24;
    const auto alone = run_all(f, {beam_request(f, "Lily and Tom went to the park", 4, 2, 24, 0.7f)}, cfg, 512, 4);
    std::vector<request_params> mixed;
    for (const char* pr : {"The cat", "One day, a little bird", "Sam had a big red ball. He"}) {
        request_params p;
        p.prompt = f->tok->encode(pr, true, false);
        p.sampling.temperature = 0;
        p.max_tokens = 40;
        p.ignore_eos = true;
        mixed.push_back(p);
    }
    mixed.push_back(beam_request(f, "Lily and Tom went to the park", 4, 2, 24, 0.7f));
    mixed.push_back(beam_request(f, "Lily and Tom went to the park", 4, 2, 24, 0.7f));  // a cached prompt
    for (int variant = 0; variant < 3; ++variant) {
        scheduler_config c = cfg;
        c.max_batch_tokens = 12;
        c.prefill_chunk = 5;
        c.prefix_cache = variant != 1;
        const auto r = run_all(f, mixed, c, variant == 2 ? 40 : 512, 4);
        for (size_t i = 3; i < 5; ++i)
            for (int k = 0; k < 2; ++k) EXPECT_EQ(r.outs[i][size_t(k)].tokens, alone.outs[0][size_t(k)].tokens) << variant << " " << i;
        if (variant == 2) { EXPECT_GT(r.metrics.preemptions, 0); }
        if (variant == 0) { EXPECT_GT(r.metrics.prefix_hit_tokens, 0); }
    }
}

TEST(BeamSearch, StopStringsCancellationAndValidation) {
    NEED_MODEL(f);
    scheduler_config cfg;
    cfg.max_seqs = 16;
    auto base = beam_request(f, "Once upon a time", 4, 2, 30);
    const auto plain = run_all(f, {base}, cfg, 512, 16);
    const std::string& text = plain.outs[0][0].text;
    ASSERT_GT(text.size(), 20u);
    auto stopped = base;
    stopped.stop = {text.substr(10, 4)};
    const auto r = run_all(f, {stopped}, cfg, 512, 16);
    EXPECT_EQ(r.outs[0][0].text, text.substr(0, text.find(stopped.stop[0])));
    EXPECT_EQ(r.outs[0][0].finish, finish_reason::stop);
    // Cancelled mid-search: every completion ends cancelled, every page comes back.
    const auto c = run_all(f, {beam_request(f, "Once upon a time", 8, 3, 200)}, cfg, 512, 16,
                           [](int step, std::vector<std::shared_ptr<request_stream>>& s) {
                               if (step == 5) s[0]->cancel();
                           });
    for (int k = 0; k < 3; ++k) EXPECT_EQ(c.outs[0][size_t(k)].finish, finish_reason::cancelled);
    // Validation names the problem.
    auto kv = kv_cache::create(f->model->kv_geometry(16, 64, dtype::f32)).value();
    thread_pool pool(1);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    auto bad = [&](request_params p, const char* needle) {
        status st = s.validate(p);
        EXPECT_FALSE(st) << needle;
        if (!st) { EXPECT_NE(st.message().find(needle), std::string::npos) << st.message(); }
    };
    bad(beam_request(f, "The cat", 4, 5, 8), "must not exceed the beam width");
    bad(beam_request(f, "The cat", 40, 1, 8), "beam width");
    auto pol = beam_request(f, "The cat", 2, 1, 8);
    pol.policy = kv_policy::parse("window:size=16").value();
    bad(pol, "does not combine");
    auto lp = beam_request(f, "The cat", 2, 1, 8);
    lp.n_logprobs = 2;
    bad(lp, "logprobs");
    bad(beam_request(f, "The cat", 8, 1, 4000), "KV pages");
    EXPECT_TRUE(s.validate(beam_request(f, "The cat", 4, 4, 8)));
}
