// Embeddings through the scheduler (request_params::embed): the pooled, L2-normalized final-normed
// hidden states — the last token's agrees with the float64 reference's next-token logits through
// the LM head; a text's vector is the same alone, batched with other texts and generation, in
// any chunking and with the prefix cache holding its prompt; the poolings differ as they should.
#include <gtest/gtest.h>

#include <cmath>

#include "reference_model.h"
#include "sched/scheduler.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;

namespace {

using fixture = test::stories_fixture;

request_params embed_request(const fixture* f, const std::string& text, pooling_type p) {
    request_params r;
    r.prompt = f->tok->encode(text, true, false);
    r.embed = true;
    r.pooling = p;
    return r;
}

// Runs everything; returns each request's embedding (empty for generation requests).
std::vector<std::vector<float>> run_all(const fixture* f, const std::vector<request_params>& reqs, scheduler_config cfg) {
    auto kv = kv_cache::create(f->model->kv_geometry(4, 256, dtype::f32)).value();
    thread_pool pool(2);
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    std::vector<std::shared_ptr<request_stream>> streams;
    for (const auto& p : reqs) {
        streams.push_back(std::make_shared<request_stream>());
        status st = s.submit(p, streams.back());
        EXPECT_TRUE(st) << st.message();
    }
    std::vector<std::vector<float>> out(reqs.size());
    while (!s.idle()) {
        EXPECT_TRUE(s.step());
        EXPECT_TRUE(s.check_integrity());
        for (size_t i = 0; i < streams.size(); ++i)
            while (auto ev = streams[i]->pop(0))
                if (!ev->embedding.empty()) {
                    EXPECT_EQ(ev->finish, finish_reason::stop);
                    out[i] = ev->embedding;
                }
    }
    for (auto& st : streams) EXPECT_TRUE(st->done());
    s.drop_prefix_cache();
    EXPECT_EQ(kv->pool().n_free(), kv->pool().n_pages());
    return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    double m = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
    return m;
}

const char* const k_texts[] = {"Once upon a time", "Lily and Tom went to the park and played on the swings all day long",
                               "The cat", "One day, a little bird sang a song to the sun. The sun smiled."};

}  // namespace

TEST(Embeddings, LastTokenAgreesWithTheReferenceLogits) {
    NEED_MODEL(f);
    scheduler_config cfg;
    const int64_t d = f->model->hparams().n_embd, V = f->model->hparams().n_vocab;
    // The output head's rows (f32 in stories260K), to turn the vector back into logits.
    const gguf_tensor_info* out_w = f->model->file().find_tensor("output.weight");
    if (!out_w) out_w = f->model->file().find_tensor("token_embd.weight");
    ASSERT_TRUE(out_w && out_w->type == dtype::f32);
    const float* W = reinterpret_cast<const float*>(out_w->data);
    for (const char* text : k_texts) {
        auto e = run_all(f, {embed_request(f, text, pooling_type::last)}, cfg)[0];
        ASSERT_EQ(int64_t(e.size()), d);
        double norm = 0;
        for (float x : e) norm += double(x) * x;
        EXPECT_NEAR(norm, 1.0, 1e-5);
        // logits = W · normed_last, and the vector is normed_last / |normed_last|: the same
        // ranking as the float64 reference's logits of the last token, up to that scale.
        const auto ref = test::reference_logits(*f->model, f->tok->encode(text, true, false)).back();
        std::vector<double> mine(static_cast<size_t>(V));
        for (int64_t v = 0; v < V; ++v)
            for (int64_t j = 0; j < d; ++j) mine[size_t(v)] += double(W[v * d + j]) * e[size_t(j)];
        const double scale = [&] {
            double num = 0, den = 0;
            for (int64_t v = 0; v < V; ++v) num += ref[size_t(v)] * mine[size_t(v)], den += mine[size_t(v)] * mine[size_t(v)];
            return num / den;
        }();
        double err = 0, ref_norm = 0;
        for (int64_t v = 0; v < V; ++v) {
            err += std::pow(ref[size_t(v)] - scale * mine[size_t(v)], 2);
            ref_norm += ref[size_t(v)] * ref[size_t(v)];
        }
        EXPECT_LT(std::sqrt(err / ref_norm), 1e-4) << text;
        EXPECT_GT(scale, 0);
    }
}

TEST(Embeddings, SameAloneBatchedChunkedAndCached) {
    NEED_MODEL(f);
    for (pooling_type p : {pooling_type::mean, pooling_type::last, pooling_type::cls}) {
        std::vector<request_params> alone_reqs;
        std::vector<std::vector<float>> alone;
        for (const char* t : k_texts) alone.push_back(run_all(f, {embed_request(f, t, p)}, scheduler_config{})[0]);
        // Batched with each other and with generation, in 3-token chunks under a 7-token budget,
        // the same texts twice (the second finds the prompt in the prefix cache and must not use it).
        std::vector<request_params> mixed;
        for (const char* t : k_texts) mixed.push_back(embed_request(f, t, p));
        request_params gen;
        gen.prompt = f->tok->encode("Sam had a big red ball. He", true, false);
        gen.sampling.temperature = 0;
        gen.max_tokens = 20;
        mixed.push_back(gen);
        for (const char* t : k_texts) mixed.push_back(embed_request(f, t, p));
        scheduler_config tiny;
        tiny.max_batch_tokens = 7;
        tiny.prefill_chunk = 3;
        const auto got = run_all(f, mixed, tiny);
        for (size_t i = 0; i < 4; ++i) {
            EXPECT_LT(max_abs_diff(got[i], alone[i]), 1e-5) << pooling_name(p) << " " << k_texts[i];
            EXPECT_LT(max_abs_diff(got[5 + i], alone[i]), 1e-5) << pooling_name(p) << " again " << k_texts[i];
        }
        EXPECT_TRUE(got[4].empty());
    }
    // The poolings are different vectors; cls is the BOS state, the same for every text.
    const auto mean = run_all(f, {embed_request(f, k_texts[1], pooling_type::mean)}, scheduler_config{})[0];
    const auto last = run_all(f, {embed_request(f, k_texts[1], pooling_type::last)}, scheduler_config{})[0];
    const auto cls_a = run_all(f, {embed_request(f, k_texts[0], pooling_type::cls)}, scheduler_config{})[0];
    const auto cls_b = run_all(f, {embed_request(f, k_texts[1], pooling_type::cls)}, scheduler_config{})[0];
    EXPECT_GT(max_abs_diff(mean, last), 1e-2);
    EXPECT_LT(max_abs_diff(cls_a, cls_b), 1e-6);
}

TEST(Embeddings, ValidationNamesTheProblem) {
    NEED_MODEL(f);
    auto kv = kv_cache::create(f->model->kv_geometry(16, 64, dtype::f32)).value();
    thread_pool pool(1);
    scheduler s(*f->model, *f->tok, *kv, pool, scheduler_config{});
    auto r = embed_request(f, "The cat", pooling_type::mean);
    r.n = 2;
    EXPECT_FALSE(s.validate(r));
    r.n = 1;
    r.policy = kv_policy::parse("window:size=8").value();
    EXPECT_FALSE(s.validate(r));
    r.policy = kv_policy{};
    EXPECT_TRUE(s.validate(r));
    pooling_type p;
    EXPECT_TRUE(pooling_from_name("mean", &p));
    EXPECT_FALSE(pooling_from_name("max", &p));
}
