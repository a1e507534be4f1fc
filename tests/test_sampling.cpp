// Sampling layer: penalties, greedy, top-k / top-p / min-p, temperature, reproducibility,
// empirical distribution vs softmax, validation messages, logprobs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <vector>

#include "sampling/logprobs.h"
#include "sampling/sampler.h"
#include "test_util.h"

namespace kvs {
namespace {

constexpr float k_inf = std::numeric_limits<float>::infinity();

sampling_params make_params(int64_t n_vocab, float temperature = 1.0f, uint64_t seed = 42) {
    sampling_params p;
    p.n_vocab = n_vocab;
    p.temperature = temperature;
    p.seed = seed;
    return p;
}

sampler make_sampler(const sampling_params& p) {
    result<sampler> r = sampler::create(p);
    EXPECT_TRUE(r.is_ok()) << r.message();
    return std::move(r).value();
}

// Reference softmax in double of logits / temperature.
std::vector<double> ref_softmax(const std::vector<float>& logits, double temperature = 1.0) {
    double mx = -1e300;
    for (float x : logits) mx = std::max(mx, double(x) / temperature);
    std::vector<double> p(logits.size());
    double sum = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(double(logits[i]) / temperature - mx);
    for (double& v : p) v /= sum;
    return p;
}

// Draws n tokens from the same logits and returns the per-token histogram.
std::vector<int64_t> histogram(sampler& s, const std::vector<float>& logits, int n) {
    std::vector<int64_t> h(logits.size(), 0);
    for (int i = 0; i < n; ++i) {
        int32_t t = s.sample(logits.data(), int64_t(logits.size()));
        EXPECT_GE(t, 0);
        EXPECT_LT(t, int32_t(logits.size()));
        if (t >= 0 && t < int32_t(logits.size())) ++h[size_t(t)];
    }
    return h;
}

// Pearson chi-square statistic of observed counts against expected probabilities.
double chi_square(const std::vector<int64_t>& observed, const std::vector<double>& expected_p) {
    int64_t n = 0;
    for (int64_t c : observed) n += c;
    double chi2 = 0.0;
    for (size_t i = 0; i < observed.size(); ++i) {
        double e = expected_p[i] * double(n);
        double d = double(observed[i]) - e;
        chi2 += d * d / e;
    }
    return chi2;
}

std::set<int32_t> drawn_set(const std::vector<int64_t>& h) {
    std::set<int32_t> s;
    for (size_t i = 0; i < h.size(); ++i)
        if (h[i] > 0) s.insert(int32_t(i));
    return s;
}

// ---------------------------------------------------------------------------------------------
// greedy

TEST(Sampling, GreedyIsArgmax) {
    const int64_t n_vocab = 5000;
    for (uint64_t seed = 1; seed <= 5; ++seed) {
        std::vector<float> logits = test::random_floats(n_vocab, seed, 8.0f);
        sampler s = make_sampler(make_params(n_vocab, 0.0f));
        int32_t expected = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        EXPECT_EQ(s.sample(logits.data(), n_vocab), expected) << "seed " << seed;
    }
}

TEST(Sampling, GreedyTiesPickLowestIndex) {
    std::vector<float> logits = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f, 2.0f};
    sampler s = make_sampler(make_params(6, 0.0f));
    EXPECT_EQ(s.sample(logits.data(), 6), 1);
    // NaN never wins, even in first position.
    std::vector<float> with_nan = {std::nanf(""), 1.0f, 2.0f, 2.0f};
    EXPECT_EQ(s.sample(with_nan.data(), 4), 2);
    // All masked: lowest index, like argmax over -inf.
    std::vector<float> masked(4, -k_inf);
    EXPECT_EQ(s.sample(masked.data(), 4), 0);
}

TEST(Sampling, TopK1EqualsGreedyAtAnyTemperature) {
    const int64_t n_vocab = 3000;
    for (float temp : {0.1f, 0.7f, 1.0f, 2.0f, 50.0f}) {
        for (uint64_t seed = 1; seed <= 4; ++seed) {
            std::vector<float> logits = test::random_floats(n_vocab, seed * 7, 3.0f);
            logits[size_t(seed * 100)] = logits[size_t(seed * 100 + 1)] = 10.0f;  // a tie for the max
            sampling_params p = make_params(n_vocab, temp, seed);
            p.top_k = 1;
            sampler s = make_sampler(p);
            sampler g = make_sampler(make_params(n_vocab, 0.0f));
            int32_t greedy = g.sample(logits.data(), n_vocab);
            EXPECT_EQ(greedy, int32_t(seed * 100));
            for (int i = 0; i < 20; ++i)
                ASSERT_EQ(s.sample(logits.data(), n_vocab), greedy) << "temperature " << temp;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// truncation

TEST(Sampling, TopKKeepsExactlyTheKLargest) {
    std::vector<float> logits = {0.0f, 1.0f, 0.2f, 0.9f, 0.1f, 0.8f, -3.0f, 0.3f};
    sampling_params p = make_params(8, 1.0f);
    p.top_k = 3;
    sampler s = make_sampler(p);
    std::vector<int64_t> h = histogram(s, logits, 5000);
    EXPECT_EQ(drawn_set(h), (std::set<int32_t>{1, 3, 5}));
}

// Heavy ties: top-k must keep the k best by (logit desc, id asc), on both selection paths
// (heap for small k, nth_element for large k).
void check_top_k_with_ties(int32_t k) {
    const int n_vocab = 2000;
    std::vector<float> logits(n_vocab);
    for (int i = 0; i < n_vocab; ++i) logits[size_t(i)] = float((i * 13) % 7);  // 7 tie groups
    logits[5] = -k_inf;
    std::vector<int32_t> order(n_vocab);
    for (int i = 0; i < n_vocab; ++i) order[size_t(i)] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    std::set<int32_t> expected(order.begin(), order.begin() + k);
    sampling_params p = make_params(n_vocab, 1000.0f);  // ~uniform over the kept set
    p.top_k = k;
    sampler s = make_sampler(p);
    std::vector<int64_t> h = histogram(s, logits, 40 * k);
    std::set<int32_t> got = drawn_set(h);
    for (int32_t t : got) EXPECT_TRUE(expected.count(t)) << "k " << k << ": token " << t << " not in top-k";
    EXPECT_GT(got.size(), size_t(k) * 9 / 10) << "k " << k;
}

TEST(Sampling, TopKTiesKeepLowestIdsOnBothPaths) {
    check_top_k_with_ties(5);    // heap path
    check_top_k_with_ties(400);  // nth_element path
}

TEST(Sampling, TopPUniformTiesKeepLowestIds) {
    // 10 equal tokens, top_p 0.35: 0.3 < 0.35 <= 0.4, so exactly 4 survive, ids 0..3.
    std::vector<float> logits(10, 0.25f);
    sampling_params p = make_params(10, 1.0f);
    p.top_p = 0.35f;
    sampler s = make_sampler(p);
    EXPECT_EQ(drawn_set(histogram(s, logits, 4000)), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(Sampling, TinyTopPKeepsOnlyTheMax) {
    const int64_t n_vocab = 2000;
    std::vector<float> logits = test::random_floats(n_vocab, 3, 1.0f);  // a flat distribution
    logits[777] = 1.5f;
    sampling_params p = make_params(n_vocab, 1.0f);
    p.top_p = 1e-6f;
    sampler s = make_sampler(p);
    for (int i = 0; i < 500; ++i) ASSERT_EQ(s.sample(logits.data(), n_vocab), 777);
}

TEST(Sampling, TopPKeepsTheSmallestNucleus) {
    // p = {0.05, 0.5, 0.15, 0.3}: sorted 0.5 (id 1), 0.3 (id 3) -> cum 0.8 >= 0.75.
    std::vector<float> logits = {std::log(0.05f), std::log(0.5f), std::log(0.15f), std::log(0.3f)};
    sampling_params p = make_params(4, 1.0f);
    p.top_p = 0.75f;
    sampler s = make_sampler(p);
    std::vector<int64_t> h = histogram(s, logits, 20000);
    EXPECT_EQ(drawn_set(h), (std::set<int32_t>{1, 3}));
    // Renormalised over the nucleus: 0.5/0.8 and 0.3/0.8.
    double chi2 = chi_square({h[1], h[3]}, {0.625, 0.375});
    EXPECT_LT(chi2, 15.0);  // 1 dof; p < 1e-4 for a correct sampler
}

TEST(Sampling, TopPWideNucleusIsExact) {
    // 400 tokens with slowly decaying probabilities spread over many top-p buckets; the
    // nucleus must match a full-sort reference exactly. Logits are shuffled by id.
    const int n_vocab = 400;
    std::vector<float> logits(n_vocab);
    for (int i = 0; i < n_vocab; ++i) logits[size_t((i * 37) % n_vocab)] = -0.01f * float(i);
    const float top_p = 0.8f;
    // Reference nucleus in double, sorted by logit descending.
    std::vector<double> ref = ref_softmax(logits);
    std::vector<int32_t> order(n_vocab);
    for (int i = 0; i < n_vocab; ++i) order[size_t(i)] = i;
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ref[size_t(a)] > ref[size_t(b)]; });
    std::set<int32_t> nucleus;
    double cum = 0.0;
    for (int32_t t : order) {
        nucleus.insert(t);
        cum += ref[size_t(t)];
        if (cum >= top_p) {
            ASSERT_GT(cum - top_p, 1e-5) << "test setup: boundary too close to call";
            ASSERT_GT(top_p - (cum - ref[size_t(t)]), 1e-5) << "test setup: boundary too close";
            break;
        }
    }
    ASSERT_GT(nucleus.size(), 100u);
    sampling_params p = make_params(n_vocab, 1.0f);
    p.top_p = top_p;
    sampler s = make_sampler(p);
    std::vector<int64_t> h = histogram(s, logits, 60000);
    std::set<int32_t> got = drawn_set(h);
    for (int32_t t : got) EXPECT_TRUE(nucleus.count(t)) << "token " << t << " is outside the nucleus";
    EXPECT_EQ(got, nucleus);  // every nucleus token has p > 1/400: all are drawn in 60k draws
}

TEST(Sampling, MinPKeepsTheExactSet) {
    // p = {0.4, 0.3, 0.15, 0.1, 0.05}; min_p = 0.3 -> threshold 0.12 keeps ids {0, 1, 2}.
    std::vector<float> logits = {std::log(0.4f), std::log(0.3f), std::log(0.15f), std::log(0.1f),
                                 std::log(0.05f)};
    sampling_params p = make_params(5, 1.0f);
    p.min_p = 0.3f;
    sampler s = make_sampler(p);
    std::vector<int64_t> h = histogram(s, logits, 20000);
    EXPECT_EQ(drawn_set(h), (std::set<int32_t>{0, 1, 2}));
    double chi2 = chi_square({h[0], h[1], h[2]}, {0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85});
    EXPECT_LT(chi2, 20.0);  // 2 dof
    // min_p = 1 keeps only the max.
    p.min_p = 1.0f;
    sampler only_max = make_sampler(p);
    EXPECT_EQ(drawn_set(histogram(only_max, logits, 500)), (std::set<int32_t>{0}));
}

TEST(Sampling, MaskedTokensAreNeverDrawn) {
    std::vector<float> logits = {-k_inf, 0.0f, -k_inf, 0.0f, std::nanf("")};
    sampler s = make_sampler(make_params(5, 1.0f));
    EXPECT_EQ(drawn_set(histogram(s, logits, 2000)), (std::set<int32_t>{1, 3}));
    std::vector<float> all_masked(5, -k_inf);
    EXPECT_EQ(s.sample(all_masked.data(), 5), 0);
}

// ---------------------------------------------------------------------------------------------
// temperature and the empirical distribution

TEST(Sampling, EmpiricalDistributionMatchesSoftmax) {
    std::vector<float> logits = {1.0f, 0.5f, -0.5f, 2.0f};
    sampler s = make_sampler(make_params(4, 1.0f, 1234));
    std::vector<int64_t> h = histogram(s, logits, 20000);
    // 3 dof: P(chi2 > 21.1) = 1e-4 for a correct sampler. A sampler that, say, ignored the
    // smallest token's mass (p = 0.06) or drew from softmax(logits / 2) lands in the hundreds.
    double chi2 = chi_square(h, ref_softmax(logits));
    EXPECT_LT(chi2, 21.1) << "counts " << h[0] << " " << h[1] << " " << h[2] << " " << h[3];
}

TEST(Sampling, LowTemperatureSharpens) {
    std::vector<float> logits = {1.0f, 0.5f, -0.5f, 2.0f};
    sampler s1 = make_sampler(make_params(4, 1.0f, 99));
    sampler s05 = make_sampler(make_params(4, 0.5f, 99));
    std::vector<int64_t> h1 = histogram(s1, logits, 20000);
    std::vector<int64_t> h05 = histogram(s05, logits, 20000);
    // softmax(logits / 0.5), and the max token gains mass: 0.61 -> 0.84.
    EXPECT_LT(chi_square(h05, ref_softmax(logits, 0.5)), 21.1);
    EXPECT_GT(h05[3], h1[3] + 3000);
    EXPECT_LT(h05[2], h1[2]);
    // High temperature flattens.
    sampler s4 = make_sampler(make_params(4, 4.0f, 99));
    std::vector<int64_t> h4 = histogram(s4, logits, 20000);
    EXPECT_LT(chi_square(h4, ref_softmax(logits, 4.0)), 21.1);
    EXPECT_LT(h4[3], h1[3]);
}

// ---------------------------------------------------------------------------------------------
// reproducibility

std::vector<int32_t> generate(sampler& s, int n_tokens, int64_t n_vocab) {
    std::vector<int32_t> out;
    for (int i = 0; i < n_tokens; ++i) {
        std::vector<float> logits = test::random_floats(n_vocab, uint64_t(1000 + i), 2.0f);
        int32_t t = s.sample(logits.data(), n_vocab);
        EXPECT_TRUE(s.accept(t).is_ok());
        out.push_back(t);
    }
    return out;
}

TEST(Sampling, SameSeedSameTokensDifferentSeedDiffers) {
    const int64_t n_vocab = 1000;
    sampling_params p = make_params(n_vocab, 0.9f, 7);
    p.top_k = 50;
    p.top_p = 0.95f;
    p.min_p = 0.01f;
    p.repeat_penalty = 1.1f;
    p.frequency_penalty = 0.2f;
    sampler a = make_sampler(p);
    sampler b = make_sampler(p);
    std::vector<int32_t> ta = generate(a, 200, n_vocab);
    std::vector<int32_t> tb = generate(b, 200, n_vocab);
    EXPECT_EQ(ta, tb);
    p.seed = 8;
    sampler c = make_sampler(p);
    std::vector<int32_t> tc = generate(c, 200, n_vocab);
    EXPECT_NE(ta, tc);
    int n_diff = 0;
    for (size_t i = 0; i < ta.size(); ++i) n_diff += ta[i] != tc[i];
    EXPECT_GT(n_diff, 100);  // independent streams agree rarely, not just at one position
    // reset() restarts the same sequence.
    a.reset();
    EXPECT_EQ(a.n_accepted(), 0);
    EXPECT_EQ(generate(a, 200, n_vocab), ta);
}

// ---------------------------------------------------------------------------------------------
// penalties

TEST(Sampling, RepeatPenaltyOverWindow) {
    sampling_params p = make_params(6, 1.0f);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 3;
    sampler s = make_sampler(p);
    // History 0 1 1 2 3: window (last 3) = {1, 2, 3}; 0 has left the window.
    for (int32_t t : {0, 1, 1, 2, 3}) ASSERT_TRUE(s.accept(t).is_ok());
    std::vector<float> logits = {4.0f, 4.0f, -3.0f, 0.0f, 1.5f, -1.0f};
    s.apply_penalties(logits.data(), 6);
    // llama.cpp: positive / r, non-positive * r, once per distinct token regardless of count.
    EXPECT_EQ(logits, (std::vector<float>{4.0f, 2.0f, -6.0f, 0.0f, 1.5f, -1.0f}));
    EXPECT_EQ(s.count(1), 2);
    EXPECT_EQ(s.count(5), 0);
}

TEST(Sampling, RepeatPenaltyAllTokensAndOff) {
    sampling_params p = make_params(4, 1.0f);
    p.repeat_penalty = 1.25f;
    p.repeat_last_n = -1;  // whole history
    sampler all = make_sampler(p);
    for (int32_t t : {0, 1, 2, 2}) ASSERT_TRUE(all.accept(t).is_ok());
    std::vector<float> logits = {5.0f, -2.0f, 2.5f, 1.0f};
    all.apply_penalties(logits.data(), 4);
    EXPECT_EQ(logits, (std::vector<float>{4.0f, -2.5f, 2.0f, 1.0f}));
    p.repeat_last_n = 0;  // off
    sampler off = make_sampler(p);
    for (int32_t t : {0, 1, 2}) ASSERT_TRUE(off.accept(t).is_ok());
    std::vector<float> unchanged = {5.0f, -2.0f, 2.5f, 1.0f};
    off.apply_penalties(unchanged.data(), 4);
    EXPECT_EQ(unchanged, (std::vector<float>{5.0f, -2.0f, 2.5f, 1.0f}));
}

TEST(Sampling, FrequencyAndPresencePenaltiesOverAllTokens) {
    sampling_params p = make_params(5, 1.0f);
    p.frequency_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    sampler s = make_sampler(p);
    // 100 tokens of 4 then 3x token 1 and 1x token 2: counts 1 -> 3, 2 -> 1, 4 -> 100.
    for (int i = 0; i < 100; ++i) ASSERT_TRUE(s.accept(4).is_ok());
    for (int32_t t : {1, 2, 1, 1}) ASSERT_TRUE(s.accept(t).is_ok());
    std::vector<float> logits = {1.0f, 1.0f, -1.0f, 0.0f, 60.0f};
    s.apply_penalties(logits.data(), 5);
    EXPECT_FLOAT_EQ(logits[0], 1.0f);
    EXPECT_FLOAT_EQ(logits[1], 1.0f - (0.5f * 3 + 0.25f));
    EXPECT_FLOAT_EQ(logits[2], -1.0f - (0.5f * 1 + 0.25f));
    EXPECT_FLOAT_EQ(logits[3], 0.0f);
    EXPECT_FLOAT_EQ(logits[4], 60.0f - (0.5f * 100 + 0.25f));  // no window: all tokens count
}

TEST(Sampling, RepeatThenFrequencyAndPresence) {
    sampling_params p = make_params(3, 1.0f);
    p.repeat_penalty = 2.0f;
    p.frequency_penalty = 1.0f;
    p.presence_penalty = 0.5f;
    sampler s = make_sampler(p);
    for (int32_t t : {0, 0, 1}) ASSERT_TRUE(s.accept(t).is_ok());
    std::vector<float> logits = {3.0f, -1.0f, 3.0f};
    s.apply_penalties(logits.data(), 3);
    EXPECT_FLOAT_EQ(logits[0], 3.0f / 2.0f - (2.0f + 0.5f));
    EXPECT_FLOAT_EQ(logits[1], -1.0f * 2.0f - (1.0f + 0.5f));
    EXPECT_FLOAT_EQ(logits[2], 3.0f);
}

TEST(Sampling, SampleAppliesPenaltiesWithoutTouchingInput) {
    sampling_params p = make_params(3, 0.0f);
    p.presence_penalty = 2.0f;
    sampler s = make_sampler(p);
    std::vector<float> logits = {1.0f, 2.5f, 1.2f};
    const std::vector<float> original = logits;
    EXPECT_EQ(s.sample(logits.data(), 3), 1);
    ASSERT_TRUE(s.accept(1).is_ok());
    EXPECT_EQ(s.sample(logits.data(), 3), 2);  // 2.5 - 2 = 0.5 < 1.2
    EXPECT_EQ(logits, original);
}

TEST(Sampling, AcceptRejectsOutOfRangeTokens) {
    sampler s = make_sampler(make_params(10));
    status bad = s.accept(10);
    EXPECT_FALSE(bad.is_ok());
    EXPECT_NE(bad.message().find("token 10"), std::string::npos) << bad.message();
    EXPECT_FALSE(s.accept(-1).is_ok());
    EXPECT_EQ(s.n_accepted(), 0);
    EXPECT_EQ(s.sample(nullptr, 10), -1);
}

// ---------------------------------------------------------------------------------------------
// validation

void expect_invalid(sampling_params p, const std::string& name, const std::string& got) {
    status s = p.validate();
    ASSERT_FALSE(s.is_ok()) << name << " should be rejected";
    EXPECT_NE(s.message().find(name), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("got " + got), std::string::npos) << s.message();
    result<sampler> r = sampler::create(p);
    EXPECT_FALSE(r.is_ok());
    EXPECT_NE(r.message().find(name), std::string::npos) << r.message();
}

TEST(Sampling, ValidateRejectsBadValuesNamingTheParameter) {
    sampling_params ok = make_params(100);
    EXPECT_TRUE(ok.validate().is_ok()) << ok.validate().message();

    sampling_params p = ok;
    p.top_p = 1.5f;
    EXPECT_EQ(p.validate().message(), "top_p must be in (0, 1], got 1.5");
    p.top_p = 0.0f;
    expect_invalid(p, "top_p", "0");
    p = ok;
    p.top_p = std::nanf("");
    expect_invalid(p, "top_p", "nan");
    p = ok;
    p.temperature = -0.1f;
    expect_invalid(p, "temperature", "-0.1");
    p.temperature = k_inf;
    expect_invalid(p, "temperature", "inf");
    p = ok;
    p.min_p = 1.2f;
    expect_invalid(p, "min_p", "1.2");
    p = ok;
    p.repeat_penalty = 0.0f;
    expect_invalid(p, "repeat_penalty", "0");
    p = ok;
    p.repeat_last_n = -2;
    expect_invalid(p, "repeat_last_n", "-2");
    p = ok;
    p.presence_penalty = 2.5f;
    expect_invalid(p, "presence_penalty", "2.5");
    p = ok;
    p.frequency_penalty = -3.0f;
    expect_invalid(p, "frequency_penalty", "-3");
    p = ok;
    p.n_vocab = 0;
    expect_invalid(p, "n_vocab", "0");

    // Boundaries that are valid.
    p = ok;
    p.temperature = 0.0f;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.top_k = -5;
    p.repeat_last_n = -1;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    EXPECT_TRUE(p.validate().is_ok()) << p.validate().message();
}

// ---------------------------------------------------------------------------------------------
// logprobs

TEST(Sampling, LogprobsMatchLogSoftmaxAndTopN) {
    std::vector<float> logits = {1.0f, 3.0f, -2.0f, 3.0f, 0.5f, -k_inf};
    token_logprobs out;
    ASSERT_TRUE(compute_logprobs(logits.data(), 6, 4, 3, &out).is_ok());
    std::vector<double> ref = ref_softmax(logits);
    EXPECT_EQ(out.chosen.token, 4);
    EXPECT_NEAR(out.chosen.logprob, std::log(ref[4]), 1e-5);
    ASSERT_EQ(out.top.size(), 3u);
    EXPECT_EQ(out.top[0].token, 1);  // tie with 3: lower id first
    EXPECT_EQ(out.top[1].token, 3);
    EXPECT_EQ(out.top[2].token, 0);
    for (const token_logprob& e : out.top) EXPECT_NEAR(e.logprob, std::log(ref[size_t(e.token)]), 1e-5);
    // A masked token has logprob -inf; n_top larger than the vocabulary is clamped.
    ASSERT_TRUE(compute_logprobs(logits.data(), 6, 5, 100, &out).is_ok());
    EXPECT_EQ(out.chosen.logprob, -k_inf);
    EXPECT_EQ(out.top.size(), 6u);
    EXPECT_EQ(out.top.back().token, 5);
    // Errors.
    EXPECT_FALSE(compute_logprobs(logits.data(), 6, 6, 1, &out).is_ok());
    EXPECT_FALSE(compute_logprobs(logits.data(), 6, 0, -1, &out).is_ok());
}

TEST(Sampling, LogprobsLargeVocabTopN) {
    const int64_t n_vocab = 50000;
    std::vector<float> logits = test::random_floats(n_vocab, 17, 10.0f);
    token_logprobs out;
    ASSERT_TRUE(compute_logprobs(logits.data(), n_vocab, 123, 20, &out).is_ok());
    std::vector<int32_t> order(static_cast<size_t>(n_vocab));
    for (int32_t i = 0; i < n_vocab; ++i) order[size_t(i)] = i;
    std::partial_sort(order.begin(), order.begin() + 20, order.end(),
                      [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    ASSERT_EQ(out.top.size(), 20u);
    std::vector<double> ref = ref_softmax(logits);
    double total = 0.0;
    for (size_t i = 0; i < 20; ++i) {
        EXPECT_EQ(out.top[i].token, order[i]);
        EXPECT_NEAR(out.top[i].logprob, std::log(ref[size_t(order[i])]), 1e-4);
        total += std::exp(out.top[i].logprob);
    }
    EXPECT_LE(total, 1.0 + 1e-5);
}

TEST(Sampling, SamplerLogprobsAreAfterPenaltiesBeforeTemperature) {
    sampling_params p = make_params(4, 0.3f);  // temperature must not affect logprobs
    p.top_k = 1;                               // nor truncation
    p.presence_penalty = 1.0f;
    sampler s = make_sampler(p);
    ASSERT_TRUE(s.accept(2).is_ok());
    std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f};
    token_logprobs out;
    ASSERT_TRUE(s.logprobs(logits.data(), 4, 2, 2, &out).is_ok());
    std::vector<double> ref = ref_softmax({0.0f, 1.0f, 1.0f, -1.0f});  // token 2 penalised by 1
    EXPECT_NEAR(out.chosen.logprob, std::log(ref[2]), 1e-5);
    ASSERT_EQ(out.top.size(), 2u);
    EXPECT_EQ(out.top[0].token, 1);
    EXPECT_EQ(out.top[1].token, 2);
    EXPECT_NEAR(out.top[0].logprob, std::log(ref[1]), 1e-5);
}

}  // namespace
}  // namespace kvs
