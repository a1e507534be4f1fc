// A deepseek2 model (MLA over the latent KV group, MoE) served over real HTTP on 127.0.0.1 (the
// synthetic deepseek-v2-tiny in stories260K's vocabulary, driven by its tokenizer): completions
// equal the session's greedy tokens, alone, self-speculating and batched with n = 3; the latent group shows in
// /metrics (bytes per token) and /debug/kv; Quest and H2O requests run over it; /v1/embeddings
// returns unit vectors; a malformed policy is a 400.
#include <gtest/gtest.h>

#include "model/session.h"
#include "server_fixture.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;
using namespace kvs::test;

namespace {

TEST(server_deepseek2, completions_metrics_and_policies) {
    const std::string vocab = shared_file("models/stories260K.gguf");
    if (vocab.empty()) GTEST_SKIP() << "models/stories260K.gguf not found under " << shared_dir();
    const std::string path = temp_dir() + "/server-ds2.gguf";
    std::string text;
    ASSERT_EQ(run_command("'" + kvserve_binary() + "' synth --shape deepseek-v2-tiny --dtype f32 --vocab '" + vocab + "' -o '" + path + "'", &text), 0)
        << text;
    auto m = language_model::load(path);
    ASSERT_TRUE(m) << m.message();
    const language_model& model = *m.value();
    auto tok = tokenizer::from_gguf(model.file());
    ASSERT_TRUE(tok) << tok.message();
    const std::string prompt = "Once upon a time there was a little girl named Lily who liked to play";

    std::vector<int32_t> want, prompt_ids;
    {
        thread_pool pool(1);
        auto s = session::create(model, pool, {}).value();
        prompt_ids = tok.value()->encode(prompt, true, false);
        ASSERT_TRUE(s->prefill(prompt_ids));
        for (int i = 0; i < 10; ++i) {
            const float* l = s->logits();
            const int32_t t = int32_t(std::max_element(l, l + model.hparams().n_vocab) - l);
            want.push_back(t);
            ASSERT_TRUE(s->decode(t));
        }
    }
    server_config sc;
    sc.debug_routes = true;
    engine_config ec = small_engine();
    ec.key_bounds = ec.token_scores = true;  // Quest and H2O requests over the latent group
    served srv(model, *tok.value(), ec, sc);
    json req = greedy_completion(prompt, 10);
    req["ignore_eos"] = true;
    auto [code, body] = srv.post("/v1/completions", req);
    ASSERT_EQ(code, 200) << body.dump();
    std::string want_text;
    {
        detok_stream d(*tok.value());
        d.push(prompt_ids.back());
        d.flush();
        for (int32_t t : want) want_text += d.push(t);
        want_text += d.flush();
    }
    EXPECT_EQ(body["choices"][0]["text"].get<std::string>(), want_text);
    // Self-speculation (exit after layer 1, drafts of 3) gives the same greedy text.
    json spec_req = req;
    spec_req["speculative"] = json{{"exit_layer", 1}, {"draft_tokens", 3}};
    auto [scode, sbody] = srv.post("/v1/completions", spec_req);
    ASSERT_EQ(scode, 200) << sbody.dump();
    EXPECT_EQ(sbody["choices"][0]["text"].get<std::string>(), want_text);
    req["n"] = 3;
    auto [code3, body3] = srv.post("/v1/completions", req);
    ASSERT_EQ(code3, 200) << body3.dump();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(body3["choices"][i]["text"].get<std::string>(), want_text);

    ASSERT_TRUE(wait_idle(srv));
    auto [mcode, mtext] = srv.get("/metrics");
    ASSERT_EQ(mcode, 200);
    EXPECT_GT(metric(mtext, "kvserve_kv_pages_total"), 0);
    // The latent entry: kv_lora + qk_rope f32 values per token and layer, nothing per head,
    // plus Quest's bounds and H2O's scores.
    const model_hparams& hp = model.hparams();
    kv_config geom = model.kv_geometry(ec.page_size, 1, dtype::f32);
    geom.key_bounds = geom.token_scores = true;
    EXPECT_EQ(metric(mtext, "kvserve_kv_bytes_per_token"), double(geom.page_bytes()) / double(ec.page_size));
    EXPECT_LT(double(geom.page_bytes()) / double(ec.page_size), 1.2 * double(hp.n_layer * (hp.kv_lora + hp.n_rot) * 4));
    auto [dcode, dbody] = srv.get("/debug/kv");
    ASSERT_EQ(dcode, 200);
    const json kv = json::parse(dbody);
    EXPECT_EQ(kv["integrity"], "ok");

    // Quest (a budget below the prompt) and H2O run over the latent group.
    for (const char* pol : {"quest:budget=8", "h2o:heavy=4,recent=4"}) {
        json preq = greedy_completion(prompt, 4);
        preq["kv_policy"] = pol;
        preq["ignore_eos"] = true;
        auto [pcode, pbody] = srv.post("/v1/completions", preq);
        EXPECT_EQ(pcode, 200) << pol << " " << pbody.dump();
        EXPECT_EQ(pbody["usage"]["completion_tokens"], 4) << pol << " " << pbody.dump();
    }
    // /v1/embeddings pools the final hidden states: one unit vector of n_embd per input.
    auto [ecode, ebody] = srv.post("/v1/embeddings", json{{"input", json::array({prompt, "The cat"})}});
    ASSERT_EQ(ecode, 200) << ebody.dump();
    ASSERT_EQ(ebody["data"].size(), 2u);
    for (int i = 0; i < 2; ++i) {
        const auto v = ebody["data"][i]["embedding"].get<std::vector<double>>();
        ASSERT_EQ(int64_t(v.size()), hp.n_embd);
        double norm = 0;
        for (double x : v) norm += x * x;
        EXPECT_NEAR(norm, 1.0, 1e-5);
    }
    EXPECT_EQ(ebody["usage"]["prompt_tokens"], int64_t(prompt_ids.size() + tok.value()->encode("The cat", true, false).size()));
    // A malformed policy is a 400 that names it.
    json bad = greedy_completion(prompt, 4);
    bad["kv_policy"] = "quest:budget=0";
    auto [bcode, bbody] = srv.post("/v1/completions", bad);
    EXPECT_EQ(bcode, 400);
    EXPECT_NE(bbody.dump().find("quest"), std::string::npos) << bbody.dump();
}

}  // namespace
