// /v1/embeddings over real HTTP on 127.0.0.1 (stories260K): the shapes the official client sends
// (a string, a list of strings, token ids, lists of token ids; float and base64 encodings),
// vectors equal to the scheduler's own and the same whether a text comes alone or in a batch,
// usage, and 400s for bad inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "sched/engine.h"
#include "server/embeddings.h"
#include "server/http_server.h"
#include "server_fixture.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;
using namespace kvs::test;

namespace {

std::vector<float> as_floats(const json& e) {
    std::vector<float> v;
    for (const auto& x : e) v.push_back(x.get<float>());
    return v;
}

std::vector<uint8_t> base64_decode(const std::string& s) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        return c == '+' ? 62 : c == '/' ? 63 : -1;
    };
    std::vector<uint8_t> out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : s) {
        const int v = val(c);
        if (v < 0) continue;
        acc = acc << 6 | uint32_t(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(uint8_t(acc >> bits));
        }
    }
    return out;
}

}  // namespace

TEST(server_embeddings, shapes_encodings_and_batching) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.kv_type = dtype::f32;
    served s(f, ec);
    const std::vector<std::string> texts = {"Once upon a time", "Lily and Tom went to the park", "The cat sat on the mat"};
    // Alone, one at a time.
    std::vector<std::vector<float>> alone;
    int64_t tokens = 0;
    for (const auto& t : texts) {
        auto [st, b] = s.post("/v1/embeddings", {{"input", t}, {"model", "stories"}});
        ASSERT_EQ(st, 200) << b.dump();
        EXPECT_EQ(b["object"], "list");
        ASSERT_EQ(b["data"].size(), 1u);
        EXPECT_EQ(b["data"][0]["object"], "embedding");
        EXPECT_EQ(b["data"][0]["index"], 0);
        alone.push_back(as_floats(b["data"][0]["embedding"]));
        EXPECT_EQ(int64_t(alone.back().size()), f->model->hparams().n_embd);
        double n2 = 0;
        for (float x : alone.back()) n2 += double(x) * x;
        EXPECT_NEAR(n2, 1.0, 1e-5);
        tokens += b["usage"]["prompt_tokens"].get<int64_t>();
        EXPECT_EQ(b["usage"]["total_tokens"], b["usage"]["prompt_tokens"]);
    }
    // All at once: the same vectors, in order.
    auto [st, b] = s.post("/v1/embeddings", {{"input", texts}});
    ASSERT_EQ(st, 200) << b.dump();
    ASSERT_EQ(b["data"].size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        EXPECT_EQ(b["data"][i]["index"], i);
        const auto v = as_floats(b["data"][i]["embedding"]);
        for (size_t j = 0; j < v.size(); ++j) ASSERT_NEAR(v[j], alone[i][j], 1e-5) << i;
    }
    EXPECT_EQ(b["usage"]["prompt_tokens"], tokens);
    // Token ids, and lists of them: the same as the text.
    const auto ids = f->tok->encode(texts[1], true, false);
    auto [st2, b2] = s.post("/v1/embeddings", {{"input", ids}});
    ASSERT_EQ(st2, 200) << b2.dump();
    const auto v2 = as_floats(b2["data"][0]["embedding"]);
    for (size_t j = 0; j < v2.size(); ++j) ASSERT_NEAR(v2[j], alone[1][j], 1e-5);
    auto [st3, b3] = s.post("/v1/embeddings", {{"input", json::array({ids, ids})}, {"encoding_format", "base64"}});
    ASSERT_EQ(st3, 200) << b3.dump();
    ASSERT_EQ(b3["data"].size(), 2u);
    const auto bytes = base64_decode(b3["data"][1]["embedding"].get<std::string>());
    ASSERT_EQ(bytes.size(), alone[1].size() * sizeof(float));
    std::vector<float> v3(alone[1].size());
    std::memcpy(v3.data(), bytes.data(), bytes.size());
    for (size_t j = 0; j < v3.size(); ++j) ASSERT_NEAR(v3[j], alone[1][j], 1e-5);
    // Generation beside embeddings still works.
    auto [gst, g] = s.post("/v1/completions", greedy_completion("Once upon a time", 8));
    EXPECT_EQ(gst, 200) << g.dump();
}

TEST(server_embeddings, bad_inputs_are_400s) {
    NEED_MODEL(f);
    served s(f);
    const json bad[] = {json::object(),
                        {{"input", 5}},
                        {{"input", json::array()}},
                        {{"input", ""}},
                        {{"input", json::array({"a", 3})}},
                        {{"input", json::array({-1})}},
                        {{"input", json::array({100000})}},
                        {{"input", "x"}, {"encoding_format", "hex"}},
                        {{"input", "x"}, {"dimensions", 3}},
                        {{"input", json::array({json::array()})}}};
    for (const json& req : bad) {
        auto [st, b] = s.post("/v1/embeddings", req);
        EXPECT_EQ(st, 400) << req.dump() << " " << b.dump();
        EXPECT_TRUE(b.contains("error")) << b.dump();
    }
    EXPECT_EQ(base64_encode(reinterpret_cast<const uint8_t*>("foobar"), 6), "Zm9vYmFy");
    EXPECT_EQ(base64_encode(reinterpret_cast<const uint8_t*>("fooba"), 5), "Zm9vYmE=");
    EXPECT_EQ(base64_encode(reinterpret_cast<const uint8_t*>("f"), 1), "Zg==");
}
