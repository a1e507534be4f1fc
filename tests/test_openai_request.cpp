// OpenAI request mapping (server/openai_request.h): error messages quote rejected values, and
// they must stay valid UTF-8 whatever the value, so the JSON error body always serializes.
#include <gtest/gtest.h>

#include <string>

#include <nlohmann/json.hpp>

#include "core/utf8.h"
#include "server/api_error.h"
#include "server/openai_request.h"

using namespace kvs;
using json = nlohmann::ordered_json;

// brief() cut its rendering of a value at a fixed byte count, which could fall inside a
// multi-byte character; the message was then invalid UTF-8 and api_error_body() threw.
TEST(OpenaiRequest, LongRejectedValuesAreCutOnCharacterBoundaries) {
    int n_checked = 0;
    for (const std::string ch : {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\xa6\x99"}) {
        for (const std::string lead : {"", "x", "xx", "xxx"}) {
            std::string text = lead;
            for (int i = 0; i < 40; ++i) text += ch;
            const json values[] = {text, text, json::array({text}), json(std::vector<std::string>(17, text))};
            const char* keys[] = {"messages", "temperature", "model", "stop"};
            for (int k = 0; k < 4; ++k) {
                json body = {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
                body[keys[k]] = values[k];
                openai_request r;
                auto e = parse_chat_request(body, &r);
                ASSERT_TRUE(e.has_value()) << keys[k];
                EXPECT_TRUE(utf8_is_valid(e->message)) << e->message;
                EXPECT_NO_THROW((void)api_error_body(*e)) << e->message;
                ++n_checked;
            }
        }
    }
    EXPECT_EQ(n_checked, 3 * 4 * 4);
}

// "speculative" (kvserve's extension): an object sets the request's speculation, false or
// {"draft_tokens": 0} turns it off, absent or null keeps the server's default; wrong types and
// ranges are 400s naming "speculative".
TEST(OpenaiRequest, SpeculativeField) {
    const speculative_params server_default{3, 1, 0.0f};
    auto parse = [&](const json& spec, openai_request* r) {
        json body = {{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
        if (!spec.is_discarded()) body["speculative"] = spec;
        r->params.speculative = server_default;
        return parse_chat_request(body, r);
    };
    {
        openai_request r;
        auto e = parse(json{{"exit_layer", 2}, {"draft_tokens", 4}, {"min_draft_p", 0.25}}, &r);
        ASSERT_FALSE(e.has_value()) << e->message;
        EXPECT_EQ(r.params.speculative, (speculative_params{4, 2, 0.25f}));
    }
    {
        openai_request r;
        auto e = parse(json{{"draft_tokens", 16}}, &r);  // a draft model's speculation
        ASSERT_FALSE(e.has_value()) << e->message;
        EXPECT_EQ(r.params.speculative, (speculative_params{16, 0, 0.0f}));
    }
    for (const json& off : {json(false), json{{"draft_tokens", 0}}, json{{"draft_tokens", 0}, {"exit_layer", 99}}}) {
        openai_request r;
        auto e = parse(off, &r);
        ASSERT_FALSE(e.has_value()) << off.dump() << ": " << e->message;
        EXPECT_FALSE(r.params.speculative.on()) << off.dump();
        EXPECT_EQ(r.params.speculative, speculative_params{}) << off.dump();
    }
    for (const json& keep : {json(json::value_t::discarded), json(nullptr)}) {
        openai_request r;
        auto e = parse(keep, &r);
        ASSERT_FALSE(e.has_value()) << e->message;
        EXPECT_EQ(r.params.speculative, server_default) << keep.dump();
    }
    const json bad[] = {json("yes"),
                        json(true),
                        json(4),
                        json::array({4}),
                        json::object(),
                        json{{"exit_layer", 2}},
                        json{{"draft_tokens", "4"}},
                        json{{"draft_tokens", 2.5}},
                        json{{"draft_tokens", -1}},
                        json{{"draft_tokens", 17}},
                        json{{"draft_tokens", 4}, {"exit_layer", -1}},
                        json{{"draft_tokens", 4}, {"exit_layer", "2"}},
                        json{{"draft_tokens", 4}, {"min_draft_p", 1}},
                        json{{"draft_tokens", 4}, {"min_draft_p", -0.1}},
                        json{{"draft_tokens", 4}, {"min_draft_p", "high"}}};
    for (const json& b : bad) {
        openai_request r;
        auto e = parse(b, &r);
        ASSERT_TRUE(e.has_value()) << b.dump();
        EXPECT_EQ(e->http_status, 400) << b.dump();
        EXPECT_EQ(e->param, "speculative") << b.dump() << " -> " << e->message;
        EXPECT_TRUE(utf8_is_valid(e->message));
    }
}
