#include "sched/stop_matcher.h"

#include <algorithm>

namespace kvs {

stop_matcher::stop_matcher(std::vector<std::string> stops) {
    for (auto& s : stops)
        if (!s.empty()) stops_.push_back(std::move(s));
}

std::string stop_matcher::push(std::string_view text, bool* stopped) {
    *stopped = false;
    if (stops_.empty()) return std::string(text);
    std::string buf = held_;
    buf.append(text);
    held_.clear();
    // The earliest complete stop string wins.
    size_t cut = std::string::npos;
    for (const auto& s : stops_) cut = std::min(cut, buf.find(s));
    if (cut != std::string::npos) {
        *stopped = true;
        return buf.substr(0, cut);
    }
    // Hold back the longest tail that could still become a stop string.
    size_t keep = 0;
    for (const auto& s : stops_) {
        const size_t max_len = std::min(s.size() - 1, buf.size());
        for (size_t len = max_len; len > keep; --len)
            if (buf.compare(buf.size() - len, len, s, 0, len) == 0) {
                keep = len;
                break;
            }
    }
    held_ = buf.substr(buf.size() - keep);
    buf.resize(buf.size() - keep);
    return buf;
}

std::string stop_matcher::flush() {
    std::string out;
    out.swap(held_);
    return out;
}

}  // namespace kvs
