// kvserve bench spec: single-stream decode with speculative decoding against plain decoding, in
// one run, repetitions alternating between the variants (shared machines are noisy). Each
// variant generates the same greedy continuation through the scheduler (one sequence), so every
// speculative variant must reproduce the plain tokens — the bench checks that too.
//   kvserve bench spec -m MODEL -n 128 --exit 2,3,4 --draft 1,2,4,6 [--model-draft DRAFT] [-P TEXT | -p 64]
// Reported per variant: decode tokens/s (after the first token) and its ratio to plain decoding,
// the draft acceptance rate, tokens emitted per cycle (accepted drafts + the target's own), and
// draft and verification time per generated token.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench_commands.h"
#include "common.h"
#include "sched/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

std::vector<int64_t> positive_list(const std::string& s, const char* what, bool* ok) {
    std::vector<int64_t> out;
    if (s.empty()) return out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        const long long v = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end || v <= 0) {
            std::fprintf(stderr, "kvserve bench spec: %s: '%s' is not a positive integer\n", what, item.c_str());
            *ok = false;
            return {};
        }
        out.push_back(v);
    }
    return out;
}

struct variant {
    std::string name;
    speculative_params spec;  // off: plain decoding
    std::vector<double> tps;  // decode tokens/s per repetition
    scheduler_metrics metrics;  // summed over repetitions
    std::vector<int32_t> tokens;  // the continuation (checked against plain decoding's)
    bool mismatch = false;
};

using clock_type = std::chrono::steady_clock;

struct one_run {
    double decode_seconds = 0;
    int64_t n_tokens = 0;
    std::vector<int32_t> tokens;
    scheduler_metrics metrics;
};

result<one_run> generate(const language_model& m, const tokenizer& tok, const language_model* draft, thread_pool& pool,
                         const std::vector<int32_t>& prompt, int64_t n_gen, dtype kv_type, const speculative_params& spec) {
    const int32_t ps = 16;
    const int32_t n_pages = kv_cache::pages_for(int64_t(prompt.size()) + n_gen + k_max_draft_tokens + 1, ps) + 2;
    auto kv = kv_cache::create(m.kv_geometry(ps, n_pages, kv_type));
    if (!kv) return kv.error();
    std::unique_ptr<kv_cache> dkv;
    if (draft) {
        auto d = kv_cache::create(draft->kv_geometry(ps, n_pages, kv_type));
        if (!d) return d.error();
        dkv = std::move(d.value());
    }
    scheduler_config cfg;
    cfg.max_seqs = 1;
    cfg.spec_max_running = 1;
    cfg.prefix_cache = false;
    cfg.n_ctx = std::max<int64_t>(m.hparams().n_ctx_train, int64_t(prompt.size()) + n_gen + 1);
    scheduler s(m, tok, *kv.value(), pool, cfg, {spec.on() && spec.exit_layer == 0 ? draft : nullptr, dkv.get()});
    request_params p;
    p.prompt = prompt;
    p.sampling.temperature = 0;
    p.max_tokens = n_gen;
    p.ignore_eos = true;
    p.speculative = spec;
    auto stream = std::make_shared<request_stream>();
    KVS_TRY(s.submit(p, stream));
    one_run r;
    clock_type::time_point t_first{};
    bool first = false;
    while (!s.idle()) {
        auto ok = s.step();
        if (!ok) return ok.error();
        while (auto ev = stream->pop(0)) {
            if (!ev->error.empty()) return status::error(ev->error);
            r.tokens.insert(r.tokens.end(), ev->tokens.begin(), ev->tokens.end());
            if (!first && !ev->tokens.empty()) {
                first = true;
                t_first = clock_type::now();
            }
        }
    }
    r.decode_seconds = std::chrono::duration<double>(clock_type::now() - t_first).count();
    r.n_tokens = int64_t(r.tokens.size()) - 1;  // decoded after the first
    r.metrics = s.metrics();
    return r;
}

}  // namespace

int bench_spec(int argc, char** argv) {
    CLI::App app("Single-stream decode with speculative decoding against plain decoding, alternating in one run", "kvserve bench spec");
    std::string model_path = default_model_path(), exit_list, draft_list = "4", model_draft, prompt_text, output = "md";
    int64_t n_prompt = 64, n_gen = 128;
    int reps = 3, threads = default_threads();
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-P,--prompt", prompt_text, "prompt text (default: -p random tokens)");
    app.add_option("-p,--n-prompt", n_prompt, "random prompt tokens when no -P is given")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("-n,--n-gen", n_gen, "tokens to generate")->check(CLI::Range(int64_t(2), int64_t(1) << 20))->capture_default_str();
    app.add_option("--exit", exit_list, "self-speculation exit layers (comma list; each with every --draft)");
    app.add_option("--draft", draft_list, "draft lengths (comma list)")->capture_default_str();
    app.add_option("--model-draft", model_draft, "a draft model of the same vocabulary (one variant per --draft)");
    app.add_option("-r,--repetitions", reps, "repetitions per variant")->check(CLI::Range(1, 1000))->capture_default_str();
    app.add_option("-t,--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    app.add_option("-o,--output", output, "md (table) or json")->check(CLI::IsMember({"md", "json"}))->capture_default_str();
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    bool ok = true;
    const auto exits = positive_list(exit_list, "--exit", &ok), drafts = positive_list(draft_list, "--draft", &ok);
    if (!ok) return 2;
    for (int64_t d : drafts)
        if (d > k_max_draft_tokens) {
            std::fprintf(stderr, "kvserve bench spec: --draft: %lld is more than %d\n", (long long)d, k_max_draft_tokens);
            return 2;
        }
    if (exits.empty() && model_draft.empty()) {
        std::fprintf(stderr, "kvserve bench spec: name --exit layers and/or a --model-draft to compare with plain decoding\n");
        return 2;
    }
    std::optional<dtype> kv_type, kv_v_type;
    kivi_config kivi;
    if (!resolve_kv_type(kvt, "bench spec", &kv_type, &kv_v_type, &kivi)) return 2;
    if (kivi.bits || kv_v_type) {
        std::fprintf(stderr, "kvserve bench spec: speculation runs over one KV format for K and V, not KIVI\n");
        return 2;
    }
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve bench spec: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto model = language_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve bench spec: %s\n", model.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    auto tok = tokenizer::from_gguf(m.file());
    if (!tok) {
        std::fprintf(stderr, "kvserve bench spec: %s: %s\n", model_path.c_str(), tok.message().c_str());
        return 1;
    }
    for (int64_t e : exits)
        if (e >= m.hparams().n_layer) {
            std::fprintf(stderr, "kvserve bench spec: --exit %lld: the model has %lld layers\n", (long long)e, (long long)m.hparams().n_layer);
            return 2;
        }
    speculative_option so;
    so.model_draft = model_draft;
    std::unique_ptr<language_model> draft;
    if (!load_draft_model(so, "bench spec", m, no_repack, &draft)) return 2;

    std::vector<int32_t> prompt;
    if (!prompt_text.empty()) {
        prompt = tok.value()->encode(prompt_text, tok.value()->add_bos(), false);
    } else {
        std::mt19937 rng(42);
        for (int64_t i = 0; i < n_prompt; ++i) prompt.push_back(int32_t(rng() % uint64_t(m.hparams().n_vocab)));
    }
    if (prompt.empty()) {
        std::fprintf(stderr, "kvserve bench spec: the prompt is empty\n");
        return 2;
    }

    std::vector<variant> vars;
    vars.push_back({"plain", {}, {}, {}, {}, false});
    for (int64_t e : exits)
        for (int64_t d : drafts) {
            speculative_params sp;
            sp.exit_layer = int32_t(e);
            sp.draft_tokens = int32_t(d);
            vars.push_back({strfmt("self exit=%lld draft=%lld", (long long)e, (long long)d), sp, {}, {}, {}, false});
        }
    if (draft)
        for (int64_t d : drafts) {
            speculative_params sp;
            sp.draft_tokens = int32_t(d);
            vars.push_back({strfmt("draft model, draft=%lld", (long long)d), sp, {}, {}, {}, false});
        }

    thread_pool pool(threads);
    const dtype kvf = kv_type.value_or(m.auto_kv_type());
    // Warm-up: page the weights in.
    (void)generate(m, *tok.value(), draft.get(), pool, prompt, 8, kvf, {});
    if (draft) (void)generate(*draft, *tok.value(), nullptr, pool, prompt, 8, kvf, {});
    for (int rep = 0; rep < reps; ++rep)
        for (variant& v : vars) {
            auto r = generate(m, *tok.value(), draft.get(), pool, prompt, n_gen, kvf, v.spec);
            if (!r) {
                std::fprintf(stderr, "kvserve bench spec: %s: %s\n", v.name.c_str(), r.message().c_str());
                return 1;
            }
            v.tps.push_back(double(r.value().n_tokens) / std::max(r.value().decode_seconds, 1e-9));
            const scheduler_metrics& mt = r.value().metrics;
            v.metrics.spec_cycles += mt.spec_cycles;
            v.metrics.spec_drafted += mt.spec_drafted;
            v.metrics.spec_accepted += mt.spec_accepted;
            v.metrics.spec_emitted += mt.spec_emitted;
            v.metrics.spec_draft_seconds += mt.spec_draft_seconds;
            v.metrics.spec_verify_seconds += mt.spec_verify_seconds;
            if (v.tokens.empty()) v.tokens = r.value().tokens;
            if (r.value().tokens != vars[0].tokens && !vars[0].tokens.empty()) v.mismatch = true;
        }

    auto mean = [](const std::vector<double>& x) {
        double s = 0;
        for (double v : x) s += v;
        return x.empty() ? 0.0 : s / double(x.size());
    };
    auto sd = [&](const std::vector<double>& x) {
        if (x.size() < 2) return 0.0;
        const double mu = mean(x);
        double s = 0;
        for (double v : x) s += (v - mu) * (v - mu);
        return std::sqrt(s / double(x.size() - 1));
    };
    const double plain = mean(vars[0].tps);
    const std::string name = std::filesystem::path(model_path).filename().string();
    nlohmann::json arr = nlohmann::json::array();
    if (output == "md") {
        std::printf("model %s, %zu prompt tokens, %lld generated, %d threads, KV %s, %d repetitions alternating\n\n", name.c_str(),
                    prompt.size(), (long long)n_gen, threads, dtype_name(kvf), reps);
        std::printf("| variant | decode t/s | × plain | accepted | tokens/cycle | draft ms/token | verify ms/token | output |\n");
        std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");
    }
    for (const variant& v : vars) {
        const scheduler_metrics& mt = v.metrics;
        const double emitted = double(std::max<int64_t>(1, mt.spec_emitted));
        const double acc = mt.spec_drafted > 0 ? double(mt.spec_accepted) / double(mt.spec_drafted) : 0.0;
        const double per_cycle = mt.spec_cycles > 0 ? double(mt.spec_emitted) / double(mt.spec_cycles) : 1.0;
        if (output == "md") {
            std::printf("| %s | %.2f ± %.2f | %.2f | %s | %.2f | %s | %s | %s |\n", v.name.c_str(), mean(v.tps), sd(v.tps),
                        plain > 0 ? mean(v.tps) / plain : 0.0, v.spec.on() ? strfmt("%.1f%%", 100.0 * acc).c_str() : "-", per_cycle,
                        v.spec.on() ? strfmt("%.2f", 1e3 * mt.spec_draft_seconds / emitted).c_str() : "-",
                        v.spec.on() ? strfmt("%.2f", 1e3 * mt.spec_verify_seconds / emitted).c_str() : "-",
                        v.mismatch ? "DIFFERS" : "same");
        }
        arr.push_back({{"variant", v.name}, {"exit_layer", v.spec.exit_layer}, {"draft_tokens", v.spec.draft_tokens},
                       {"decode_ts", v.tps}, {"avg_ts", mean(v.tps)}, {"ratio_to_plain", plain > 0 ? mean(v.tps) / plain : 0.0},
                       {"acceptance", acc}, {"tokens_per_cycle", per_cycle}, {"cycles", mt.spec_cycles},
                       {"drafted", mt.spec_drafted}, {"accepted", mt.spec_accepted}, {"draft_seconds", mt.spec_draft_seconds},
                       {"verify_seconds", mt.spec_verify_seconds}, {"same_output", !v.mismatch}});
    }
    if (output == "json") std::printf("%s\n", arr.dump(2).c_str());
    for (const variant& v : vars)
        if (v.mismatch) {
            std::fprintf(stderr, "kvserve bench spec: %s produced other tokens than plain decoding\n", v.name.c_str());
            return 1;
        }
    return 0;
}

}  // namespace kvs::tools
