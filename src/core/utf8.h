// UTF-8 well-formedness (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF) for
// code that puts user text into messages and JSON: error texts must stay valid UTF-8 even when
// they quote a cut or malformed input.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kvs {

// Length (1..4 bytes) of the well-formed UTF-8 sequence starting at s[pos], or 0 when the bytes
// there are not one (a stray continuation byte, a truncated or overlong sequence, a surrogate,
// C0/C1/F5..FF). pos must be < s.size().
size_t utf8_sequence_length(std::string_view s, size_t pos);

// True when all of `s` is well-formed UTF-8.
bool utf8_is_valid(std::string_view s);

// The longest prefix length n <= max_bytes that does not end inside a multi-byte sequence of
// `s` (cutting s to n bytes never splits a character). For valid UTF-8 input the prefix is
// valid UTF-8.
size_t utf8_prefix_length(std::string_view s, size_t max_bytes);

// Printable form of user text in messages: control bytes and bytes that are not well-formed
// UTF-8 escaped as \xNN, text cut after `limit` input bytes (never inside a character, "..."
// appended), so a message quoting it stays valid UTF-8 wherever it goes.
std::string utf8_shown(std::string_view s, size_t limit = 64);

}  // namespace kvs
