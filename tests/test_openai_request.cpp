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
