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
    const auto names = CLI::IsMember({"auto", "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "kivi2", "kivi4"}, CLI::ignore_case);
    app.add_option("--kv-type", o.type,
                   "KV cache storage format: auto (default: the model's float weight format, for quantized weights bf16 on AVX-512 CPUs without AVX512-FP16, else f16), "
                   "f32, f16, bf16, per-group quantized q8_0, q4_0, q4_1 (groups of 32 along head_dim), or KIVI kivi2, kivi4 "
                   "(keys per channel, values per token, the newest tokens in full precision)")
        ->check(names);
    app.add_option("--cache-type-k", o.k, "K's format alone (llama.cpp's -ctk); with KIVI, the residual's format")->check(names);
    app.add_option("--cache-type-v", o.v, "V's format alone (llama.cpp's -ctv); a side not named follows --kv-type, else V follows K")
        ->check(names);
    app.add_option("--kivi-group", o.kivi_group, "KIVI: tokens per key group (the page size), channels per value group (default 32)")
        ->check(CLI::Range(1, 4096));
    app.add_option("--kivi-residual", o.kivi_residual, "KIVI: newest tokens kept in full precision (default 128)")
        ->check(CLI::Range(0, 1 << 20));
}

bool resolve_kv_type(const kv_type_option& o, const char* cmd, std::optional<dtype>* k, std::optional<dtype>* v,
                     kivi_config* kivi) {
    auto kivi_bits = [](const std::string& name) {
        const std::string n = CLI::detail::to_lower(name);
        return n == "kivi2" ? 2 : n == "kivi4" ? 4 : 0;
    };
    auto parse = [&](const std::string& name, std::optional<dtype>* out) {
        out->reset();
        if (CLI::detail::to_lower(name) == "auto") return true;
        dtype t;
        if (!kv_type_from_name(name, &t)) {
            std::fprintf(stderr, "kvserve %s: unknown KV format '%s' (auto, f32, f16, bf16, q8_0, q4_0, q4_1, kivi2, kivi4)\n", cmd,
                         name.c_str());
            return false;
        }
        *out = t;
        return true;
    };
    k->reset();
    v->reset();
    *kivi = kivi_config{};
    // KIVI: --kv-type kivi2, or -ctk kivi2 -ctv kivi2.
    const int bits_t = kivi_bits(o.type), bits_k = kivi_bits(o.k), bits_v = kivi_bits(o.v);
    if (bits_t || bits_k || bits_v) {
        const int bits = bits_t ? bits_t : bits_k;
        const bool both = bits_k && bits_k == bits_v;
        if (!bits_t && !both) {
            std::fprintf(stderr, "kvserve %s: KIVI quantizes K and V together: use --kv-type kivi%d (or name it for both -ctk and -ctv)\n",
                         cmd, bits_k ? bits_k : bits_v);
            return false;
        }
        if ((bits_k && bits_k != bits) || (bits_v && bits_v != bits) || (bits_t && !o.v.empty() && !bits_v)) {
            std::fprintf(stderr, "kvserve %s: KIVI quantizes K and V together; V cannot take another format\n", cmd);
            return false;
        }
        if (!bits_k && !o.k.empty()) {  // the residual's format
            if (!parse(o.k, k)) return false;
            if (*k && cpu::kv_page_layout::quantized(**k)) {
                std::fprintf(stderr, "kvserve %s: KIVI's residual pages take a float format (f32, f16, bf16), not %s\n", cmd, o.k.c_str());
                return false;
            }
        }
        kivi->bits = bits;
        kivi->group = o.kivi_group;
        kivi->residual = o.kivi_residual;
        return true;
    }
    const std::string& k_name = !o.k.empty() ? o.k : o.type;
    const std::string& v_name = !o.v.empty() ? o.v : o.type;
    if (!k_name.empty() && !parse(k_name, k)) return false;
    if (v_name.empty()) return true;  // V follows K
    std::optional<dtype> vt;
    if (!parse(v_name, &vt)) return false;
    if (!vt) {
        if (k->has_value()) {
            std::fprintf(stderr, "kvserve %s: V cannot be 'auto' when K is %s; name V's format\n", cmd, k_name.c_str());
            return false;
        }
        return true;
    }
    if (vt != *k) *v = vt;
    return true;
}

std::string kv_format_name(dtype k, std::optional<dtype> v, const kivi_config& kivi) {
    if (kivi.bits)
        return strfmt("kivi%d (G %d, R %d, residual %s)", kivi.bits, kivi.group, kivi.residual, dtype_name(k));
    return v && *v != k ? std::string(dtype_name(k)) + "/" + dtype_name(*v) : std::string(dtype_name(k));
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

void add_speculative_options(CLI::App& app, speculative_option& o) {
    app.add_option("--self-spec", o.self_spec,
                   "self-speculative decoding (LayerSkip): exit=E,draft=D[,min_p=P] drafts D tokens with the first E layers and the "
                   "LM head, verified by the remaining layers in one pass (greedy output unchanged)");
    app.add_option("--model-draft", o.model_draft, "speculative decoding with a draft model of the same vocabulary (GGUF)");
    app.add_option("--draft-tokens", o.draft_tokens, "tokens the draft model proposes per cycle")
        ->check(CLI::Range(1, k_max_draft_tokens))
        ->capture_default_str();
    app.add_option("--draft-min-p", o.draft_min_p, "stop drafting once the draft's top probability is below this (0 = never)")
        ->check(CLI::Range(0.0f, 0.999f));
}

bool resolve_speculative(const speculative_option& o, const char* cmd, speculative_params* out) {
    *out = speculative_params{};
    if (!o.self_spec.empty() && !o.model_draft.empty()) {
        std::fprintf(stderr, "kvserve %s: --self-spec and --model-draft exclude each other\n", cmd);
        return false;
    }
    if (!o.self_spec.empty()) {
        auto p = parse_speculative(o.self_spec.c_str());
        if (!p) {
            std::fprintf(stderr, "kvserve %s: --self-spec: %s\n", cmd, p.message().c_str());
            return false;
        }
        if (p.value().on() && p.value().exit_layer == 0) {
            std::fprintf(stderr, "kvserve %s: --self-spec needs exit=E (the layer the drafts exit after)\n", cmd);
            return false;
        }
        *out = p.value();
        return true;
    }
    if (!o.model_draft.empty()) {
        std::error_code ec;
        if (!std::filesystem::is_regular_file(o.model_draft, ec)) {
            std::fprintf(stderr, "kvserve %s: --model-draft: %s not found\n", cmd, o.model_draft.c_str());
            return false;
        }
        out->draft_tokens = o.draft_tokens;
        out->min_draft_p = o.draft_min_p;
    }
    return true;
}

bool load_draft_model(const speculative_option& o, const char* cmd, const language_model& target, bool no_repack,
                      std::unique_ptr<language_model>* out) {
    out->reset();
    if (o.model_draft.empty()) return true;
    auto m = language_model::load(o.model_draft, repack_options(no_repack));
    if (!m) {
        std::fprintf(stderr, "kvserve %s: --model-draft %s: %s\n", cmd, o.model_draft.c_str(), m.message().c_str());
        return false;
    }
    if (m.value()->hparams().n_vocab != target.hparams().n_vocab) {
        std::fprintf(stderr, "kvserve %s: the draft model has %lld tokens in its vocabulary, the model %lld: they must share one\n", cmd,
                     (long long)m.value()->hparams().n_vocab, (long long)target.hparams().n_vocab);
        return false;
    }
    *out = std::move(m.value());
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
