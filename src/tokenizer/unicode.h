// UTF-8 helpers and the GPT-2 byte <-> unicode mapping used by byte-level BPE vocabularies.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvs::utf8 {

// Classifies the bytes at p (n > 0 available):
//   > 0: length in bytes of the valid UTF-8 character starting at p,
//   0:   a valid but truncated beginning of a character (more bytes needed),
//   -1:  p[0] cannot start a valid character here (stray continuation byte, overlong form,
//        surrogate, > U+10FFFF, or a bad continuation byte).
int check(const uint8_t* p, size_t n);
inline int check(std::string_view s, size_t pos) {
    return check(reinterpret_cast<const uint8_t*>(s.data()) + pos, s.size() - pos);
}

// Length of the character starting at `pos` for splitting text into symbols: the valid
// character's length, or 1 for a byte that is not part of a valid character.
inline size_t char_len(std::string_view s, size_t pos) {
    int r = check(s, pos);
    return r > 0 ? size_t(r) : 1;
}

bool is_valid(std::string_view s);

// Appends the UTF-8 encoding of code point cp (cp <= 0x10FFFF).
void append(std::string& out, uint32_t cp);

// Moves the longest prefix of `in` that is complete into `out`, replacing bytes that can never
// become valid with U+FFFD. With `final`, an incomplete trailing character is replaced too;
// otherwise it stays in `in`.
void drain_valid(std::string& in, std::string& out, bool final);

inline constexpr std::string_view replacement = "\xEF\xBF\xBD";  // U+FFFD
inline constexpr std::string_view spm_space = "\xE2\x96\x81";     // U+2581 "▁"

}  // namespace kvs::utf8

namespace kvs {

// GPT-2's reversible byte -> printable code point mapping: the printable Latin-1 bytes
// (33..126, 161..172, 174..255) map to themselves, the other 68 bytes to U+0100.. in order.
struct byte_unicode_map {
    std::array<uint32_t, 256> byte_to_cp;   // code point for each byte
    std::array<std::string, 256> byte_to_utf8;  // its UTF-8 text
    // Inverse: the byte for code point cp, or -1 if cp is not an image of a byte.
    int cp_to_byte(uint32_t cp) const { return cp < 324 ? inverse[cp] : -1; }
    std::array<int16_t, 324> inverse;  // (code points 0..323)

    static const byte_unicode_map& get();
};

}  // namespace kvs
