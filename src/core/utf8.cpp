#include "core/utf8.h"

namespace kvs {

size_t utf8_sequence_length(std::string_view s, size_t pos) {
    const auto at = [&](size_t k) { return static_cast<unsigned char>(s[pos + k]); };
    const unsigned char b0 = at(0);
    if (b0 < 0x80) return 1;
    size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
    if (b0 >= 0xc2 && b0 <= 0xdf) n = 2;
    else if (b0 == 0xe0) n = 3, lo = 0xa0;          // no overlong 3-byte forms
    else if (b0 == 0xed) n = 3, hi = 0x9f;          // no surrogates U+D800..U+DFFF
    else if (b0 >= 0xe1 && b0 <= 0xef) n = 3;
    else if (b0 == 0xf0) n = 4, lo = 0x90;          // no overlong 4-byte forms
    else if (b0 == 0xf4) n = 4, hi = 0x8f;          // nothing past U+10FFFF
    else if (b0 >= 0xf1 && b0 <= 0xf3) n = 4;
    else return 0;                                   // continuation byte, C0, C1, F5..FF
    if (s.size() - pos < n) return 0;
    if (at(1) < lo || at(1) > hi) return 0;
    for (size_t k = 2; k < n; ++k)
        if (at(k) < 0x80 || at(k) > 0xbf) return 0;
    return n;
}

bool utf8_is_valid(std::string_view s) {
    for (size_t pos = 0; pos < s.size();) {
        const size_t n = utf8_sequence_length(s, pos);
        if (n == 0) return false;
        pos += n;
    }
    return true;
}

size_t utf8_prefix_length(std::string_view s, size_t max_bytes) {
    if (max_bytes >= s.size()) return s.size();
    // s[max_bytes] is the first byte cut off: while it continues a sequence, the cut is inside
    // one, so step back to that sequence's lead byte (at most 3 steps for UTF-8).
    size_t n = max_bytes;
    for (int k = 0; k < 3 && n > 0 && (static_cast<unsigned char>(s[n]) & 0xc0) == 0x80; ++k) --n;
    if ((static_cast<unsigned char>(s[n]) & 0xc0) == 0x80) return max_bytes;  // not UTF-8: cut anywhere
    return n;
}

std::string utf8_shown(std::string_view s, size_t limit) {
    std::string out;
    size_t pos = 0;
    while (pos < s.size() && pos < limit) {
        const auto u = static_cast<unsigned char>(s[pos]);
        const size_t n = utf8_sequence_length(s, pos);
        if (n == 0 || u < 0x20 || u == 0x7f) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 15];
            ++pos;
            continue;
        }
        if (pos + n > limit) break;  // the cut would split this character
        out.append(s.substr(pos, n));
        pos += n;
    }
    if (pos < s.size()) out += "...";
    return out;
}

}  // namespace kvs
