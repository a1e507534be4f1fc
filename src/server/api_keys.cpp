#include "server/api_keys.h"

#include <cstdint>

namespace kvs {

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

bool valid_key_char(unsigned char c) { return c > 0x20 && c != 0x7f; }

}  // namespace

result<std::vector<std::string>> parse_api_keys(std::string_view text) {
    std::vector<std::string> keys;
    int line_no = 0;
    while (!text.empty()) {
        ++line_no;
        const size_t nl = text.find('\n');
        std::string_view line = trim(text.substr(0, nl));
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
        if (line.empty() || line.front() == '#') continue;
        for (unsigned char c : line)
            if (!valid_key_char(c)) return status::error(strfmt("line %d: an API key cannot hold spaces or control characters", line_no));
        keys.emplace_back(line);
    }
    return keys;
}

std::vector<std::string> split_api_keys(std::string_view value) {
    std::vector<std::string> keys;
    while (true) {
        const size_t comma = value.find(',');
        std::string_view part = trim(value.substr(0, comma));
        if (!part.empty()) keys.emplace_back(part);
        if (comma == std::string_view::npos) break;
        value.remove_prefix(comma + 1);
    }
    return keys;
}

bool api_key_matches(const std::vector<std::string>& keys, std::string_view presented) {
    // No early exit, neither on a differing byte nor on a matching key: the loops run over
    // every byte of every key (bytes past the presented key's end compare against 0, and a
    // length difference is a difference of its own).
    uint32_t matched = 0;
    for (const std::string& key : keys) {
        uint32_t diff = uint32_t(key.size() ^ presented.size());
        for (size_t i = 0; i < key.size(); ++i) {
            const unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
            diff |= static_cast<unsigned char>(key[i]) ^ p;
        }
        matched |= uint32_t(diff == 0);
    }
    return matched != 0 && !presented.empty();
}

}  // namespace kvs
