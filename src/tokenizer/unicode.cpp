#include "tokenizer/unicode.h"

namespace kvs::utf8 {

int check(const uint8_t* p, size_t n) {
    const uint8_t b0 = p[0];
    if (b0 < 0x80) return 1;
    int len;
    if (b0 < 0xC2) return -1;  // continuation byte or overlong 2-byte lead
    if (b0 < 0xE0) len = 2;
    else if (b0 < 0xF0) len = 3;
    else if (b0 < 0xF5) len = 4;
    else return -1;
    // Allowed range of the second byte excludes overlongs, surrogates and > U+10FFFF.
    uint8_t lo = 0x80, hi = 0xBF;
    if (b0 == 0xE0) lo = 0xA0;
    else if (b0 == 0xED) hi = 0x9F;
    else if (b0 == 0xF0) lo = 0x90;
    else if (b0 == 0xF4) hi = 0x8F;
    for (int k = 1; k < len; ++k) {
        if (size_t(k) >= n) return 0;
        const uint8_t c = p[k];
        if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -1;
    }
    return len;
}

bool is_valid(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        int r = check(s, i);
        if (r <= 0) return false;
        i += size_t(r);
    }
    return true;
}

void append(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xC0 | (cp >> 6));
        out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += char(0xE0 | (cp >> 12));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    } else {
        out += char(0xF0 | (cp >> 18));
        out += char(0x80 | ((cp >> 12) & 0x3F));
        out += char(0x80 | ((cp >> 6) & 0x3F));
        out += char(0x80 | (cp & 0x3F));
    }
}

void drain_valid(std::string& in, std::string& out, bool final) {
    size_t i = 0;
    while (i < in.size()) {
        int r = check(in, i);
        if (r > 0) {
            out.append(in, i, size_t(r));
            i += size_t(r);
        } else if (r < 0) {
            out += replacement;
            i += 1;
        } else if (final) {
            out += replacement;  // truncated character at the very end
            i = in.size();
        } else {
            break;  // keep the incomplete tail for the next call
        }
    }
    in.erase(0, i);
}

}  // namespace kvs::utf8

namespace kvs {

const byte_unicode_map& byte_unicode_map::get() {
    static const byte_unicode_map m = [] {
        byte_unicode_map r;
        r.inverse.fill(-1);
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
            const uint32_t cp = printable ? b : next++;
            r.byte_to_cp[b] = cp;
            r.inverse[cp] = int16_t(b);
            r.byte_to_utf8[b].clear();
            utf8::append(r.byte_to_utf8[b], cp);
        }
        return r;
    }();
    return m;
}

}  // namespace kvs
