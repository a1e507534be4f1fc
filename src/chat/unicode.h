// UTF-8 helpers and the Python str predicates the interpreter needs (Python counts, indexes and
// strips strings by code point, so Jinja2 does too).
//
// Invalid UTF-8 bytes decode to U+DC80..U+DCFF (like Python's surrogateescape) and encode back
// to the same byte, so any byte string round-trips unchanged.
#pragma once

#include <string>
#include <string_view>

namespace kvs::jinja {

// Decodes the code point starting at s[i] and advances i past it (i < s.size() required).
char32_t utf8_next(std::string_view s, size_t& i);
void utf8_append(std::string& out, char32_t cp);
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
size_t utf8_length(std::string_view s);  // in code points
bool is_ascii(std::string_view s);

bool py_isspace(char32_t c);       // str.isspace() / regex \s
bool py_isprintable(char32_t c);   // str.isprintable(), approximated for non-ASCII
bool py_is_line_break(char32_t c); // a str.splitlines() boundary
bool py_is_word_char(char32_t c);  // regex \w, approximated for non-ASCII

enum strip_side { strip_left = 1, strip_right = 2, strip_both = 3 };
// str.strip / lstrip / rstrip: chars == nullptr strips whitespace, else any of chars' code points.
std::string py_strip(std::string_view s, int sides, const std::string* chars = nullptr);

// Python str.lower() / str.upper() for ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic,
// Armenian and full-width Latin ('ß'.upper() == "SS"); other scripts pass through unchanged,
// as do the context-dependent rules (Greek final sigma) Python applies.
char32_t cp_lower(char32_t c);
char32_t cp_upper(char32_t c);
bool cp_is_cased(char32_t c);
std::string py_lower(std::string_view s);
std::string py_upper(std::string_view s);
std::string py_capitalize(std::string_view s);  // str.capitalize(): first title-cased, rest lower
std::string py_title(std::string_view s);       // str.title(): cased runs start upper, continue lower

}  // namespace kvs::jinja
