#include "kv/kv_policy.h"

#include <cctype>
#include <charconv>
#include <limits>
#include <vector>

#include "core/utf8.h"

namespace kvs {

namespace {

// Largest value any policy parameter may take (tokens): 2^24.
constexpr int64_t max_param = int64_t(1) << 24;

struct key_value {
    std::string_view key, value;
};

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string shown(std::string_view s) { return utf8_shown(s); }

}  // namespace

const char* kv_policy_kind_name(kv_policy_kind k) {
    switch (k) {
        case kv_policy_kind::dense: return "dense";
        case kv_policy_kind::window: return "window";
        case kv_policy_kind::streaming: return "streaming";
        case kv_policy_kind::recompute: return "recompute";
        case kv_policy_kind::h2o: return "h2o";
        case kv_policy_kind::quest: return "quest";
    }
    return "?";
}

result<kv_policy> kv_policy::parse(std::string_view spec_in) {
    const std::string_view spec = trim(spec_in);
    if (spec.empty()) return status::error("the KV policy is empty (dense, window:size=W, streaming:sinks=S,size=W, "
                                           "recompute:size=W, h2o:heavy=H,recent=R, quest:budget=B)");
    const size_t colon = spec.find(':');
    const std::string name = lower(trim(spec.substr(0, colon)));
    kv_policy p;
    std::vector<const char*> keys;  // the keys this policy needs, in canonical order
    if (name == "dense") p.kind = kv_policy_kind::dense;
    else if (name == "window") p.kind = kv_policy_kind::window, keys = {"size"};
    else if (name == "streaming") p.kind = kv_policy_kind::streaming, keys = {"sinks", "size"};
    else if (name == "recompute") p.kind = kv_policy_kind::recompute, keys = {"size"};
    else if (name == "h2o") p.kind = kv_policy_kind::h2o, keys = {"heavy", "recent"};
    else if (name == "quest") p.kind = kv_policy_kind::quest, keys = {"budget"};
    else
        return status::error(strfmt("unknown KV policy '%s' (dense, window, streaming, recompute, h2o, quest)",
                                    shown(spec.substr(0, colon)).c_str()));

    std::vector<key_value> given;
    if (colon != std::string_view::npos) {
        std::string_view rest = spec.substr(colon + 1);
        while (true) {
            const size_t comma = rest.find(',');
            const std::string_view item = trim(rest.substr(0, comma));
            const size_t eq = item.find('=');
            if (item.empty() || eq == std::string_view::npos)
                return status::error(strfmt("%s: expected key=value, got '%s'", name.c_str(), shown(item).c_str()));
            given.push_back({trim(item.substr(0, eq)), trim(item.substr(eq + 1))});
            if (comma == std::string_view::npos) break;
            rest = rest.substr(comma + 1);
        }
    }
    if (keys.empty() && !given.empty()) return status::error(strfmt("%s takes no parameters", name.c_str()));
    auto field = [&](const std::string& key) -> int64_t* {
        if (key == "size") return &p.size;
        if (key == "sinks") return &p.sinks;
        if (key == "heavy") return &p.heavy;
        if (key == "recent") return &p.recent;
        if (key == "budget") return &p.budget;
        return nullptr;
    };
    std::vector<bool> seen(keys.size(), false);
    for (const key_value& kv : given) {
        const std::string key = lower(kv.key);
        size_t k = 0;
        while (k < keys.size() && key != keys[k]) ++k;
        if (k == keys.size()) {
            std::string allowed;
            for (const char* a : keys) allowed += std::string(allowed.empty() ? "" : ", ") + a;
            return status::error(strfmt("%s: unknown parameter '%s' (%s)", name.c_str(), shown(kv.key).c_str(), allowed.c_str()));
        }
        if (seen[k]) return status::error(strfmt("%s: parameter %s given twice", name.c_str(), keys[k]));
        seen[k] = true;
        int64_t value = -1;
        const char* first = kv.value.data();
        const char* last = first + kv.value.size();
        auto [ptr, ec] = std::from_chars(first, last, value);
        const int64_t min_value = key == "sinks" || key == "heavy" ? 0 : 1;
        if (kv.value.empty() || ec != std::errc() || ptr != last || value < min_value || value > max_param)
            return status::error(strfmt("%s: %s must be an integer in [%lld, %lld], got '%s'", name.c_str(), keys[k],
                                        (long long)min_value, (long long)max_param, shown(kv.value).c_str()));
        *field(key) = value;
    }
    for (size_t k = 0; k < keys.size(); ++k)
        if (!seen[k]) return status::error(strfmt("%s: missing parameter %s (%s)", name.c_str(), keys[k], p.spec().c_str()));
    if (p.kind == kv_policy_kind::h2o && p.heavy + p.recent < 1)
        return status::error("h2o: heavy + recent must be at least 1");
    return p;
}

std::string kv_policy::spec() const {
    switch (kind) {
        case kv_policy_kind::dense: return "dense";
        case kv_policy_kind::window: return strfmt("window:size=%lld", (long long)size);
        case kv_policy_kind::streaming: return strfmt("streaming:sinks=%lld,size=%lld", (long long)sinks, (long long)size);
        case kv_policy_kind::recompute: return strfmt("recompute:size=%lld", (long long)size);
        case kv_policy_kind::h2o: return strfmt("h2o:heavy=%lld,recent=%lld", (long long)heavy, (long long)recent);
        case kv_policy_kind::quest: return strfmt("quest:budget=%lld", (long long)budget);
    }
    return "?";
}

int64_t kv_policy::kept_tokens() const {
    switch (kind) {
        case kv_policy_kind::window: return size;
        case kv_policy_kind::streaming: return sinks + size;
        case kv_policy_kind::h2o: return heavy + recent;
        default: return 0;
    }
}

int64_t kv_policy::dense_prefix_tokens() const {
    switch (kind) {
        case kv_policy_kind::dense: return std::numeric_limits<int64_t>::max();
        case kv_policy_kind::window: return size;
        case kv_policy_kind::streaming: return sinks + size;
        // H2O's KV equals dense until its first eviction, but its accumulated scores depend on
        // every query the sequence computed, which no shared page carries: never shared.
        case kv_policy_kind::h2o: return 0;
        case kv_policy_kind::quest: return budget;
        case kv_policy_kind::recompute: return 0;  // positions restart: never shared
    }
    return 0;
}

}  // namespace kvs
