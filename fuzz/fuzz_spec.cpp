// libFuzzer target for the command-line and API spec parsers: KV policy specs (`--kv-policy`,
// "kv_policy"), dtype names (`--kv-type`, GGUF type names), weight formats (`quantize TYPE`,
// `synth --dtype`), speculation specs (`--self-spec`), model shape names (`synth --shape`) and API key files and variables
// (`serve --api-key-file`, KVSERVE_API_KEY). Checked: a parsed spec prints back
// to a canonical spec that parses to the same value; every error names the problem in valid
// UTF-8 (messages reach terminals and JSON error bodies).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "core/utf8.h"
#include "kv/kv_policy.h"
#include "model/shapes.h"
#include "sched/speculative.h"
#include "server/api_keys.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view spec(reinterpret_cast<const char*>(data), size);

    auto p = kvs::kv_policy::parse(spec);
    if (p.is_ok()) {
        const std::string canon = p.value().spec();
        auto again = kvs::kv_policy::parse(canon);
        if (!again.is_ok() || !(again.value() == p.value()) || again.value().spec() != canon) __builtin_trap();
        if (p.value().kept_tokens() < 0 || p.value().dense_prefix_tokens() < 0) __builtin_trap();
    } else if (p.message().empty() || !kvs::utf8_is_valid(p.message())) {
        __builtin_trap();
    }

    auto sp = kvs::parse_speculative(spec);
    if (sp.is_ok()) {
        const kvs::speculative_params& v = sp.value();
        if (v.on() && (v.draft_tokens > kvs::k_max_draft_tokens || v.exit_layer < 0 || !(v.min_draft_p >= 0 && v.min_draft_p < 1)))
            __builtin_trap();
    } else if (sp.message().empty() || !kvs::utf8_is_valid(sp.message())) {
        __builtin_trap();
    }

    kvs::dtype t;
    if (kvs::dtype_from_name(spec, &t)) {
        kvs::dtype back;
        if (!kvs::dtype_from_name(kvs::dtype_name(t), &back) || back != t) __builtin_trap();
    }
    kvs::weight_format f;
    if (kvs::weight_format_from_name(spec, &f)) {
        kvs::weight_format back;
        if (!kvs::weight_format_from_name(kvs::weight_format_name(f), &back) || back.base != f.base || back.k_mix != f.k_mix)
            __builtin_trap();
    }
    if (const kvs::model_shape* s = kvs::find_model_shape(spec)) (void)s;

    // API keys: every key parsed is non-empty, holds no space or control byte, and matches
    // itself; a rejected file names a line.
    auto keys = kvs::parse_api_keys(spec);
    if (keys.is_ok()) {
        for (const std::string& k : keys.value()) {
            if (k.empty() || !kvs::api_key_matches(keys.value(), k)) __builtin_trap();
            for (unsigned char c : k)
                if (c <= 0x20 || c == 0x7f) __builtin_trap();
        }
    } else if (keys.message().find("line ") == std::string::npos) {
        __builtin_trap();
    }
    for (const std::string& k : kvs::split_api_keys(spec))
        if (k.empty() || k.find(',') != std::string::npos) __builtin_trap();
    return 0;
}
