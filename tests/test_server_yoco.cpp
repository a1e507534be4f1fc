// A yoco model served over real HTTP on 127.0.0.1 (a synthetic model in stories260K's
// vocabulary, driven by its tokenizer): completions equal the session's greedy tokens, both KV
// groups show in /metrics and /debug/kv, and what yoco does not run is a 400 that says why.
#include <gtest/gtest.h>

#include "model/session.h"
#include "reference_model.h"
#include "server_fixture.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;
using namespace kvs::test;

namespace {

TEST(server_yoco, completions_metrics_and_refusals) {
    NEED_MODEL(f);
    synth_spec spec;
    spec.n_vocab = f->model->hparams().n_vocab;
    spec.n_layer = 4;
    spec.n_layer_self = 2;
    spec.window = 8;
    auto m = llama_model::load(write_synth(spec, "server-yoco"));
    ASSERT_TRUE(m) << m.message();
    stories_fixture yf;
    yf.model = std::move(m.value());
    yf.tok = std::move(tokenizer::from_gguf(f->model->file()).value());
    const std::string prompt = "Once upon a time there was a little girl named Lily who liked to play";

    // The session's greedy continuation.
    std::vector<int32_t> want;
    std::vector<int32_t> prompt_ids;
    {
        thread_pool pool(1);
        auto s = session::create(*yf.model, pool, {}).value();
        prompt_ids = yf.tok->encode(prompt, true, false);
        ASSERT_TRUE(s->prefill(prompt_ids));
        for (int i = 0; i < 10; ++i) {
            const float* l = s->logits();
            const int32_t t = int32_t(std::max_element(l, l + yf.model->hparams().n_vocab) - l);
            want.push_back(t);
            ASSERT_TRUE(s->decode(t));
        }
    }
    engine_config ec = small_engine();
    server_config sc;
    sc.debug_routes = true;
    served srv(&yf, ec, sc);
    json req = greedy_completion(prompt, 10);
    req["ignore_eos"] = true;
    auto [code, body] = srv.post("/v1/completions", req);
    ASSERT_EQ(code, 200) << body.dump();
    // The text as the server streams it: continuing the prompt (a leading space is kept), bytes
    // that never form UTF-8 shown as U+FFFD.
    std::string want_text;
    {
        detok_stream d(*yf.tok);
        d.push(prompt_ids.back());
        d.flush();
        for (int32_t t : want) want_text += d.push(t);
        want_text += d.flush();
    }
    EXPECT_EQ(body["choices"][0]["text"].get<std::string>(), want_text);
    // Several at once (batched) give the same text.
    req["n"] = 3;
    auto [code3, body3] = srv.post("/v1/completions", req);
    ASSERT_EQ(code3, 200) << body3.dump();
    for (int i = 0; i < 3; ++i) EXPECT_EQ(body3["choices"][i]["text"].get<std::string>(), want_text);

    ASSERT_TRUE(wait_idle(srv));
    auto [mcode, text] = srv.get("/metrics");
    ASSERT_EQ(mcode, 200);
    EXPECT_GT(metric(text, "kvserve_kv_group_pages_total{group=\"self\"}"), 0);
    EXPECT_GT(metric(text, "kvserve_kv_group_pages_total{group=\"global\"}"), 0);
    EXPECT_EQ(metric(text, "kvserve_kv_group_pages_used{group=\"self\"}"), 0);
    auto [dcode, dbody] = srv.get("/debug/kv");
    ASSERT_EQ(dcode, 200);
    const json kv = json::parse(dbody);
    EXPECT_EQ(kv["integrity"], "ok");
    ASSERT_EQ(kv["groups"].size(), 2u);
    EXPECT_EQ(kv["groups"][1]["name"], "self");
    EXPECT_EQ(kv["groups"][1]["window"], 8);

    json bad = greedy_completion(prompt, 4);
    bad["kv_policy"] = "window:size=16";
    auto [bcode, bbody] = srv.post("/v1/completions", bad);
    EXPECT_EQ(bcode, 400);
    EXPECT_NE(bbody.dump().find("dense policy only"), std::string::npos) << bbody.dump();
}

}  // namespace
