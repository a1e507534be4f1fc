// Small helpers shared by the kvserve subcommands.
#pragma once

#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "core/dtype.h"
#include "kv/kv_cache.h"
#include "kv/kv_policy.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "sched/speculative.h"

namespace kvs::tools {

// The KV storage format: --kv-type auto|f32|f16|bf16|q8_0|q4_0|q4_1 for K and V, and llama.cpp's
// --cache-type-k / --cache-type-v for one side each (a side not named follows --kv-type, else
// V follows K).
// kivi2 / kivi4 (KIVI, K and V alike: --kv-type, or -ctk and -ctv both) with --kivi-group G and
// --kivi-residual R; the residual's format is -ctk's float format when named, else auto.
struct kv_type_option {
    std::string type, k, v;
    int32_t kivi_group = 32, kivi_residual = 128;
};
void add_kv_type_options(CLI::App& app, kv_type_option& o);
// The chosen formats: *k unset for `auto` (the default: the model's, language_model::auto_kv_type);
// *v set only where V differs from K; *kivi the KIVI settings (bits 0 without KIVI). False
// after printing why, prefixed with `cmd`.
bool resolve_kv_type(const kv_type_option& o, const char* cmd, std::optional<dtype>* k, std::optional<dtype>* v,
                     kivi_config* kivi);
// "f16", or "K/V" when V differs ("f16/q4_0"), or "kivi2 (G 32, R 128, residual f16)".
std::string kv_format_name(dtype k, std::optional<dtype> v, const kivi_config& kivi = {});

// --kv-policy SPEC (kv/kv_policy.h): which tokens the KV cache keeps and reads.
void add_kv_policy_option(CLI::App& app, std::string& spec);
// The parsed policy (dense when spec is empty); false after printing why, prefixed with `cmd`.
bool resolve_kv_policy(const std::string& spec, const char* cmd, kv_policy* out);

// Speculative decoding (sched/speculative.h): --self-spec exit=E,draft=D[,min_p=P] drafts with the
// model's first E layers; --model-draft PATH drafts with a second model of the same vocabulary,
// --draft-tokens D at a time (--draft-min-p P: stop drafting below that confidence).
struct speculative_option {
    std::string self_spec, model_draft;
    int32_t draft_tokens = 4;
    float draft_min_p = 0.0f;
};
void add_speculative_options(CLI::App& app, speculative_option& o);
// The speculation asked for (off when neither --self-spec nor --model-draft is given); false
// after printing why, prefixed with `cmd` (both given, a bad spec, a missing draft file).
bool resolve_speculative(const speculative_option& o, const char* cmd, speculative_params* out);
// Loads --model-draft (null when none is named) and checks it shares `target`'s vocabulary;
// false after printing why.
bool load_draft_model(const speculative_option& o, const char* cmd, const language_model& target, bool no_repack,
                      std::unique_ptr<language_model>* out);

// The shared fixture folder: $KVSERVE_SHARED, else ../shared from the working directory.
std::string shared_dir();
// The default model: $KVSERVE_MODEL, else <shared>/models/stories260K.gguf.
std::string default_model_path();
// Says plainly how to point a command at a model when the default one is absent.
std::string missing_model_help(const std::string& path);
// Threads to use by default: the hardware's cores.
int default_threads();
// Help text of the --no-repack flag, and the load options it selects.
inline constexpr const char* no_repack_help =
    "keep q4_0/q8_0/f16/bf16/q4_K/q5_K/q6_K weights in file order (no interleaved copy for the VNNI kernels)";
inline load_options repack_options(bool no_repack) {
    load_options o;
    if (no_repack) o.repack = weight_repack::never;
    return o;
}
// Help text of the --tune option (bench, serve).
inline constexpr const char* tune_help =
    "matmul autotuning at load: off, fast (a few seconds) or full (longer; also picks the weight layout); "
    "results are cached per CPU, build and model shape ($KVSERVE_TUNE_CACHE, else ~/.cache/kvserve)";
// Runs CLI11 parsing; returns -1 to continue or the exit code (0 for --help, 2 for errors).
int parse_cli(CLI::App& app, int argc, char** argv);

}  // namespace kvs::tools
