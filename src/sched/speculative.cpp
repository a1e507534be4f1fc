#include "sched/speculative.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

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

result<speculative_params> parse_speculative(const char* spec) {
    speculative_params sp;
    const std::string s = spec ? spec : "";
    if (s.empty() || s == "off") return sp;
    bool have_draft = false;
    size_t pos = 0;
    while (pos <= s.size()) {
        const size_t comma = s.find(',', pos);
        const std::string part = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        const size_t eq = part.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == part.size())
            return status::error("speculation '" + s + "': expected key=value, got '" + part + "'");
        const std::string key = part.substr(0, eq), val = part.substr(eq + 1);
        char* end = nullptr;
        if (key == "exit" || key == "draft") {
            const long v = std::strtol(val.c_str(), &end, 10);
            if (*end != '\0' || v < 1 || v > (key == "draft" ? k_max_draft_tokens : 1 << 20))
                return status::error("speculation '" + s + "': " + key + " must be an integer in [1, " +
                                     std::to_string(key == "draft" ? k_max_draft_tokens : 1 << 20) + "], got '" + val + "'");
            if (key == "exit") sp.exit_layer = int32_t(v);
            else sp.draft_tokens = int32_t(v), have_draft = true;
        } else if (key == "min_p") {
            const float v = std::strtof(val.c_str(), &end);
            if (*end != '\0' || !(v >= 0.0f && v < 1.0f))
                return status::error("speculation '" + s + "': min_p must be in [0, 1), got '" + val + "'");
            sp.min_draft_p = v;
        } else {
            return status::error("speculation '" + s + "': unknown key '" + key + "' (exit, draft, min_p)");
        }
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    if (!have_draft) return status::error("speculation '" + s + "': draft=D is required");
    return sp;
}

}  // namespace kvs
