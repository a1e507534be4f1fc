// UTF-8 well-formedness and cutting on character boundaries (core/utf8.h).
#include <gtest/gtest.h>

#include <string>

#include "core/utf8.h"

using namespace kvs;

TEST(Utf8, SequenceLengths) {
    EXPECT_EQ(utf8_sequence_length("a", 0), 1u);
    EXPECT_EQ(utf8_sequence_length("\xc3\xa9", 0), 2u);              // é
    EXPECT_EQ(utf8_sequence_length("\xe2\x82\xac", 0), 3u);          // €
    EXPECT_EQ(utf8_sequence_length("\xf0\x9f\xa6\x99", 0), 4u);      // 🦙
    EXPECT_EQ(utf8_sequence_length("\xf4\x8f\xbf\xbf", 0), 4u);      // U+10FFFF
    EXPECT_EQ(utf8_sequence_length("\x80", 0), 0u);                  // stray continuation
    EXPECT_EQ(utf8_sequence_length("\xc0\xaf", 0), 0u);              // overlong '/'
    EXPECT_EQ(utf8_sequence_length("\xe0\x80\xaf", 0), 0u);          // overlong
    EXPECT_EQ(utf8_sequence_length("\xed\xa0\x80", 0), 0u);          // surrogate
    EXPECT_EQ(utf8_sequence_length("\xf4\x90\x80\x80", 0), 0u);      // past U+10FFFF
    EXPECT_EQ(utf8_sequence_length("\xe2\x82", 0), 0u);              // truncated
    EXPECT_EQ(utf8_sequence_length("\xff", 0), 0u);
    EXPECT_TRUE(utf8_is_valid(""));
    EXPECT_TRUE(utf8_is_valid("caf\xc3\xa9 \xf0\x9f\xa6\x99"));
    EXPECT_FALSE(utf8_is_valid("caf\xc3"));
    EXPECT_FALSE(utf8_is_valid("\xfe\xff"));
}

TEST(Utf8, PrefixNeverSplitsACharacter) {
    for (const std::string ch : {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\xa6\x99"}) {
        std::string s;
        for (int i = 0; i < 8; ++i) s += "x" + ch;
        for (size_t max = 0; max <= s.size() + 1; ++max) {
            const size_t n = utf8_prefix_length(s, max);
            EXPECT_LE(n, std::min(max, s.size()));
            EXPECT_GE(n + 3, std::min(max, s.size()));
            EXPECT_TRUE(utf8_is_valid(s.substr(0, n))) << "max " << max;
        }
    }
    EXPECT_EQ(utf8_prefix_length("abc", 2), 2u);
    EXPECT_EQ(utf8_prefix_length("a\xe2\x82\xac", 2), 1u);
    EXPECT_EQ(utf8_prefix_length("abc", 10), 3u);
    EXPECT_EQ(utf8_prefix_length("\x80\x80\x80\x80\x80\x80", 5), 5u);  // not UTF-8: a plain cut
}
