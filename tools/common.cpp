#include "common.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <vector>

#include "kv/kv_cache.h"

namespace kvs::tools {

std::string shared_dir() {
    if (const char* env = std::getenv("KVSERVE_SHARED"); env && *env) return env;
    return "../shared";
}

std::string default_model_path() {
    if (const char* env = std::getenv("KVSERVE_MODEL"); env && *env) return env;
    return shared_dir() + "/models/stories260K.gguf";
}

std::string missing_model_help(const std::string& path) {
    return "model file '" + path +
           "' not found.\n"
           "Point kvserve at any GGUF model with -m PATH (or set KVSERVE_MODEL=PATH),\n"
           "or set KVSERVE_SHARED to the folder holding models/stories260K.gguf.";
}

int default_threads() {
    unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : int(n);
}

void add_kv_type_options(CLI::App& app, kv_type_option& o) {
    const auto names = CLI::IsMember({"auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"}, CLI::ignore_case);
    app.add_option("--kv-type", o.type,
                   "KV cache storage format: auto (default: the model's float weight format, for quantized weights bf16 on AVX-512 CPUs without AVX512-FP16, else f16), "
                   "f32, f16, bf16, or per-group quantized q8_0, q4_0, q4_1 (groups of 32 along head_dim)")
        ->check(names);
    app.add_option("--cache-type-k", o.k, "alias of --kv-type (llama.cpp's -ctk)")->check(names);
    app.add_option("--cache-type-v", o.v, "alias of --kv-type (llama.cpp's -ctv); K and V share one format")->check(names);
}

bool resolve_kv_type(const kv_type_option& o, const char* cmd, std::optional<dtype>* out) {
    std::string chosen;
    for (const std::string* s : {&o.type, &o.k, &o.v}) {
        if (s->empty()) continue;
        if (!chosen.empty() && CLI::detail::to_lower(*s) != CLI::detail::to_lower(chosen)) {
            std::fprintf(stderr, "kvserve %s: K and V are stored in one format; got both %s and %s\n", cmd, chosen.c_str(), s->c_str());
            return false;
        }
        chosen = *s;
    }
    out->reset();
    if (chosen.empty() || CLI::detail::to_lower(chosen) == "auto") return true;
    dtype t;
    if (!kv_type_from_name(chosen, &t)) {
        std::fprintf(stderr, "kvserve %s: unknown KV format '%s' (auto, f32, f16, bf16, q8_0, q4_0, q4_1)\n", cmd, chosen.c_str());
        return false;
    }
    *out = t;
    return true;
}

void add_kv_policy_option(CLI::App& app, std::string& spec) {
    app.add_option("--kv-policy", spec,
                   "KV policy: dense (default), window:size=W, streaming:sinks=S,size=W, recompute:size=W, "
                   "h2o:heavy=H,recent=R, quest:budget=B");
}

bool resolve_kv_policy(const std::string& spec, const char* cmd, kv_policy* out) {
    *out = kv_policy{};
    if (spec.empty()) return true;
    auto p = kv_policy::parse(spec);
    if (!p) {
        std::fprintf(stderr, "kvserve %s: --kv-policy: %s\n", cmd, p.message().c_str());
        return false;
    }
    *out = p.value();
    return true;
}

int parse_cli(CLI::App& app, int argc, char** argv) {
    // llama.cpp's short spellings of the KV format options (CLI11 takes one-letter short names).
    std::vector<char*> args(argv, argv + argc);
    static char ctk[] = "--cache-type-k", ctv[] = "--cache-type-v";
    for (char*& a : args) {
        if (std::strcmp(a, "-ctk") == 0) a = ctk;
        if (std::strcmp(a, "-ctv") == 0) a = ctv;
    }
    try {
        app.parse(argc, args.data());
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return 2;
    }
    return -1;
}

}  // namespace kvs::tools
