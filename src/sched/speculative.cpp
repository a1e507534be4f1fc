#include "sched/speculative.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/utf8.h"

namespace kvs {

spec_verdict speculative_accept(const float* p, const float* q, int64_t n, int32_t x, double u_accept, double u_resample) {
    const double px = p[x], qx = q[x];
    // Keep x with probability min(1, p(x) / q(x)); q(x) > 0 since x was drawn from q.
    if (u_accept * qx < px) return {x, true};
    double total = 0.0;
    for (int64_t t = 0; t < n; ++t) total += std::max(0.0, double(p[t]) - double(q[t]));
    if (!(total > 0.0)) return {sample_from_probs(p, n, u_resample), false};
    const double u = u_resample * total;
    double cum = 0.0;
    int32_t last = -1;
    for (int64_t t = 0; t < n; ++t) {
        const double r = std::max(0.0, double(p[t]) - double(q[t]));
        if (r <= 0.0) continue;
        last = int32_t(t);
        cum += r;
        if (u < cum) return {int32_t(t), false};
    }
    return {last, false};
}

int32_t sample_from_probs(const float* probs, int64_t n, double u) {
    double total = 0.0;
    for (int64_t t = 0; t < n; ++t) total += probs[t];
    u *= total;
    double cum = 0.0;
    int32_t last = 0;
    for (int64_t t = 0; t < n; ++t) {
        if (probs[t] <= 0.0f) continue;
        last = int32_t(t);
        cum += probs[t];
        if (u < cum) return int32_t(t);
    }
    return last;
}

result<speculative_params> parse_speculative(std::string_view s) {
    speculative_params sp;
    if (s.empty() || s == "off") return sp;
    const std::string whole = utf8_shown(s);
    bool have_draft = false;
    size_t pos = 0;
    for (;;) {
        const size_t comma = s.find(',', pos);
        const std::string_view part = s.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
        const size_t eq = part.find('=');
        if (eq == std::string_view::npos || eq == 0 || eq + 1 == part.size())
            return status::error("speculation '" + whole + "': expected key=value, got '" + utf8_shown(part) + "'");
        const std::string_view key = part.substr(0, eq);
        const std::string val(part.substr(eq + 1));
        char* end = nullptr;
        if (key == "exit" || key == "draft") {
            const long long limit = key == "draft" ? k_max_draft_tokens : 1 << 20;
            errno = 0;
            const long long v = std::strtoll(val.c_str(), &end, 10);
            if (end == val.c_str() || *end != '\0' || errno != 0 || v < 1 || v > limit || val.size() != std::strlen(val.c_str()))
                return status::error("speculation '" + whole + "': " + std::string(key) + " must be an integer in [1, " +
                                     std::to_string(limit) + "], got '" + utf8_shown(val) + "'");
            if (key == "exit") sp.exit_layer = int32_t(v);
            else sp.draft_tokens = int32_t(v), have_draft = true;
        } else if (key == "min_p") {
            errno = 0;
            const float v = std::strtof(val.c_str(), &end);
            if (end == val.c_str() || *end != '\0' || !(v >= 0.0f && v < 1.0f) || val.size() != std::strlen(val.c_str()))
                return status::error("speculation '" + whole + "': min_p must be in [0, 1), got '" + utf8_shown(val) + "'");
            sp.min_draft_p = v;
        } else {
            return status::error("speculation '" + whole + "': unknown key '" + utf8_shown(key) + "' (exit, draft, min_p)");
        }
        if (comma == std::string_view::npos) break;
        pos = comma + 1;
    }
    if (!have_draft) return status::error("speculation '" + whole + "': draft=D is required");
    return sp;
}

}  // namespace kvs
