// Beam search over the OpenAI-compatible server (stories260K, real HTTP on 127.0.0.1):
// /v1/completions with vLLM's best_of + use_beam_search returns the n best hypotheses — the
// scheduler's own beam search, whole texts with their finish reasons and usage — and the
// parameters that do not combine with it are 400s naming the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "sched/engine.h"
#include "sched/scheduler.h"
#include "server/http_server.h"
#include "server_fixture.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;
using namespace kvs::test;

namespace {

// The same search straight through a scheduler.
std::vector<std::string> direct_beam_texts(const stories_fixture* f, const std::string& prompt, int32_t width, int32_t n, int64_t max_tokens) {
    auto kv = kv_cache::create(f->model->kv_geometry(16, 256, dtype::f32)).value();
    thread_pool pool(1);
    scheduler_config cfg;
    cfg.max_seqs = 16;
    scheduler s(*f->model, *f->tok, *kv, pool, cfg);
    request_params p;
    p.prompt = f->tok->encode(prompt, true, false);
    p.beam_width = width;
    p.n = n;
    p.max_tokens = max_tokens;
    auto out = std::make_shared<request_stream>();
    EXPECT_TRUE(s.submit(p, out));
    while (!s.idle()) EXPECT_TRUE(s.step());
    std::vector<std::string> texts(static_cast<size_t>(n));
    while (auto ev = out->pop(0)) texts[size_t(ev->index)] += ev->text;
    return texts;
}

}  // namespace

TEST(server_beam, completions_return_the_n_best_hypotheses) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.kv_type = dtype::f32;
    served s(f, ec);
    json req = {{"prompt", "Once upon a time"}, {"max_tokens", 24}, {"best_of", 4}, {"n", 2}, {"use_beam_search", true}};
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    ASSERT_EQ(b["choices"].size(), 2u);
    const auto want = direct_beam_texts(f, "Once upon a time", 4, 2, 24);
    int64_t tokens = 0;
    for (int i = 0; i < 2; ++i) {
        const json& c = b["choices"][size_t(i)];
        EXPECT_EQ(c["index"], i);
        EXPECT_EQ(c["text"], want[size_t(i)]) << i;
        EXPECT_TRUE(c["finish_reason"] == "length" || c["finish_reason"] == "stop");
    }
    EXPECT_NE(b["choices"][0]["text"], b["choices"][1]["text"]);
    tokens = b["usage"]["completion_tokens"];
    EXPECT_GT(tokens, 0);
    EXPECT_LE(tokens, 48);
    // length_penalty is taken; best_of == n with beam search returns all the beams.
    req["length_penalty"] = 0.5;
    req["best_of"] = 2;
    auto [st2, b2] = s.post("/v1/completions", req);
    ASSERT_EQ(st2, 200) << b2.dump();
    EXPECT_EQ(b2["choices"].size(), 2u);
}

TEST(server_beam, parameters_that_do_not_combine_are_400s) {
    NEED_MODEL(f);
    served s(f);
    const json base = {{"prompt", "The cat"}, {"max_tokens", 8}, {"best_of", 3}, {"use_beam_search", true}};
    auto expect_400 = [&](json req, const char* param) {
        auto [st, b] = s.post("/v1/completions", req);
        EXPECT_EQ(st, 400) << req.dump() << " " << b.dump();
        EXPECT_EQ(b["error"]["param"], param) << b.dump();
    };
    json streamed = base;
    streamed["stream"] = true;
    expect_400(streamed, "stream");
    json fewer = base;
    fewer["n"] = 4;
    expect_400(fewer, "best_of");
    json sampled = base;
    sampled.erase("use_beam_search");
    expect_400(sampled, "best_of");
    json lp = {{"prompt", "The cat"}, {"length_penalty", 0.5}};
    expect_400(lp, "length_penalty");
    json pol = base;
    pol["kv_policy"] = "window:size=16";
    expect_400(pol, "best_of");
    json wide = base;
    wide["best_of"] = 1000;
    expect_400(wide, "best_of");
    json type = base;
    type["use_beam_search"] = "yes";
    expect_400(type, "use_beam_search");
}
