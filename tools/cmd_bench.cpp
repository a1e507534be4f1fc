// kvserve bench: llama-bench's tests on our engine — prompt processing (pp), token generation
// (tg), each optionally after a pre-filled depth (d) — as mean ± sd tokens/s over repetitions,
// as a table or as llama-bench-compatible JSON. Comma lists sweep a parameter.
//   kvserve bench -m MODEL -p 512 -n 128 -d 0,4096 -r 5 -t 2 [-o json] [-c CTX] [--kv-policy SPEC ...]
// Decode figures are also shown as a fraction of the measured memory bandwidth.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "bench_commands.h"
#include "command.h"
#include "common.h"
#include "kernels/cpu/autotune.h"
#include "kernels/cpu/bandwidth.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "model/session.h"

namespace kvs::tools {

namespace {

std::vector<int64_t> parse_list(const std::string& s, const char* what, bool* ok) {
    std::vector<int64_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        try {
            size_t used = 0;
            long long v = std::stoll(item, &used);
            if (used != item.size() || v < 0) throw std::invalid_argument(item);
            out.push_back(v);
        } catch (const std::exception&) {
            std::fprintf(stderr, "kvserve bench: %s: '%s' is not a non-negative integer\n", what, item.c_str());
            *ok = false;
        }
    }
    if (out.empty()) {
        std::fprintf(stderr, "kvserve bench: %s: empty list\n", what);
        *ok = false;
    }
    return out;
}

struct bench_result {
    std::string model;
    int64_t size_bytes = 0, n_params = 0;
    int threads = 0;
    int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
    std::string kv_policy = "dense";
    int64_t kv_bytes = 0;  // KV bytes the sequence holds at the end of the test (every KV group)
    std::vector<std::pair<std::string, int64_t>> kv_bytes_by_group;  // the same per KV group (models with several)
    double kv_read = -1;   // Quest: fraction of the dense KV pages its decode rows read (layers 2+); -1 otherwise
    int64_t n_ctx = 0;
    std::vector<double> samples_ts, samples_ns;
    double mean_ts() const {
        double s = 0;
        for (double x : samples_ts) s += x;
        return samples_ts.empty() ? 0 : s / double(samples_ts.size());
    }
    double sd_ts() const {
        if (samples_ts.size() < 2) return 0;
        const double m = mean_ts();
        double s = 0;
        for (double x : samples_ts) s += (x - m) * (x - m);
        return std::sqrt(s / double(samples_ts.size() - 1));
    }
    std::string test_name() const {
        std::string t = n_prompt > 0 ? "pp" + std::to_string(n_prompt) : "tg" + std::to_string(n_gen);
        if (n_depth > 0) t += " @ d" + std::to_string(n_depth);
        return t;
    }
};

using clock_type = std::chrono::steady_clock;

// One timed repetition; the depth is pre-filled untimed.
result<double> run_once(session& s, const std::vector<int32_t>& tokens, int64_t depth, int64_t n_prompt, int64_t n_gen) {
    s.reset();
    if (depth > 0) KVS_TRY(s.eval(tokens.data(), depth, -1, nullptr));
    auto t0 = clock_type::now();
    if (n_prompt > 0) {
        KVS_TRY(s.eval(tokens.data() + depth, n_prompt, -1, nullptr));
    } else {
        for (int64_t i = 0; i < n_gen; ++i) KVS_TRY(s.decode(tokens[size_t(depth + i)]));
    }
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

int64_t count_params(const language_model& m) {
    int64_t n = 0;
    for (auto& t : m.file().tensors()) n += t.n_elements();
    return n;
}

// The matmul tuning the model's weights run with: a line per weight dtype and m class.
void print_tuning(const language_model& m) {
    std::vector<dtype> types;
    auto add = [&](const cpu::weight_view& w) {
        if (std::find(types.begin(), types.end(), w.type) == types.end()) types.push_back(w.type);
    };
    for (const cpu::weight_view& w : m.matmul_weights()) add(w);
    const cpu::matmul_tuning_table& t = cpu::matmul_tuning_active();
    for (dtype type : types)
        for (int c = 0; c < cpu::matmul_n_m_classes; ++c) {
            const cpu::matmul_tuning& e = t.at(type, cpu::matmul_m_class(c));
            std::fprintf(stderr, "matmul tuning: %-5s %-5s (m = %lld): %s%s%s\n", dtype_name(type),
                         cpu::matmul_m_class_name(cpu::matmul_m_class(c)), (long long)cpu::tune_m_of[c],
                         cpu::tune_describe(e).c_str(), e == cpu::matmul_tuning{} ? " (default)" : "",
                         c == 0 ? (t.repack_of(type) ? "; repack allowed" : "; kept row-major") : "");
        }
}

int cmd_bench(int argc, char** argv) {
    if (argc > 1 && std::string(argv[1]) == "batched") return bench_batched(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "serve") return bench_serve(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "soak") return bench_soak(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "spec") return bench_spec(argc - 1, argv + 1);
    if (argc > 1 && std::string(argv[1]) == "embed") return bench_embed(argc - 1, argv + 1);
    CLI::App app("Benchmark prompt processing and generation speed (llama-bench's tests).\n"
                 "Also: kvserve bench batched ... (batched generation), kvserve bench serve ... (an HTTP server), "
                 "kvserve bench soak ... (the server's fault and load harness), kvserve bench spec ... (speculative decoding "
                 "against plain decoding), kvserve bench embed ... (an embedding burst in several orders)",
                 "kvserve bench");
    std::string model_path = default_model_path(), p_list = "512", n_list = "128", d_list = "0", t_list, output = "md";
    int reps = 5;
    int64_t n_batch = 512;
    bool no_probe = false;
    t_list = std::to_string(default_threads());
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-p,--n-prompt", p_list, "prompt lengths (comma list; 0 skips pp)")->capture_default_str();
    app.add_option("-n,--n-gen", n_list, "generated tokens (comma list; 0 skips tg)")->capture_default_str();
    app.add_option("-d,--n-depth", d_list, "tokens already in the cache (comma list)")->capture_default_str();
    app.add_option("-t,--threads", t_list, "thread counts (comma list)")->capture_default_str();
    app.add_option("-r,--repetitions", reps, "repetitions per test")->check(CLI::Range(1, 1000))->capture_default_str();
    app.add_option("-b,--batch-size", n_batch, "prompt tokens per forward pass")->check(CLI::Range(int64_t(1), int64_t(1) << 16))->capture_default_str();
    app.add_option("-o,--output", output, "output format: md (table) or json")->check(CLI::IsMember({"md", "json"}))->capture_default_str();
    app.add_flag("--no-bandwidth-probe", no_probe, "skip the memory-bandwidth probe");
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    std::string tune = "off";
    app.add_option("--tune", tune, tune_help)->check(CLI::IsMember({"off", "fast", "full"}))->capture_default_str();
    std::string mla_form = "auto";
    app.add_option("--mla-prefill", mla_form,
                   "deepseek2: the form of latent attention for prefill rows: auto (the cheaper per sequence), absorbed, unabsorbed")
        ->check(CLI::IsMember({"auto", "absorbed", "unabsorbed"}))
        ->capture_default_str();
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    int64_t n_ctx = 0;
    app.add_option("-c,--ctx-size", n_ctx, "context length of the sequence (0 = what the longest test needs)")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
    std::vector<std::string> policy_specs;
    app.add_option("--kv-policy", policy_specs,
                   "KV policy to measure under (repeat the option to compare several in one run): dense, window:size=W, "
                   "streaming:sinks=S,size=W, recompute:size=W, h2o:heavy=H,recent=R, quest:budget=B");
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    std::optional<dtype> kv_type, kv_v_type;
    kivi_config kivi;
    if (!resolve_kv_type(kvt, "bench", &kv_type, &kv_v_type, &kivi)) return 2;
    const bool show_policy = !policy_specs.empty();
    if (policy_specs.empty()) policy_specs.push_back("dense");
    std::vector<kv_policy> policies;
    for (const std::string& spec : policy_specs) {
        kv_policy pol;
        if (!resolve_kv_policy(spec, "bench", &pol)) return 2;
        policies.push_back(pol);
    }
    bool ok = true;
    auto ps = parse_list(p_list, "-p", &ok), ns = parse_list(n_list, "-n", &ok), ds = parse_list(d_list, "-d", &ok),
         ts = parse_list(t_list, "-t", &ok);
    for (int64_t t : ts)
        if (t < 1 || t > 1024) {
            std::fprintf(stderr, "kvserve bench: -t: thread counts must be in [1, 1024]\n");
            ok = false;
        }
    if (!ok) return 2;
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve bench: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    load_options lo = repack_options(no_repack);
    cpu::tune_level_from_name(tune, &lo.tune);
    lo.prefill_form = mla_form == "absorbed" ? mla_prefill::absorbed : mla_form == "unabsorbed" ? mla_prefill::unabsorbed : mla_prefill::automatic;
    lo.tune_threads = int(*std::max_element(ts.begin(), ts.end()));
    auto model = language_model::load(model_path, lo);
    if (!model) {
        std::fprintf(stderr, "kvserve bench: %s\n", model.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    if (lo.tune != cpu::tune_level::off) print_tuning(m);
    int64_t max_tokens = 0;
    for (int64_t d : ds)
        for (int64_t p : ps) max_tokens = std::max(max_tokens, d + p);
    for (int64_t d : ds)
        for (int64_t n : ns) max_tokens = std::max(max_tokens, d + n);
    std::mt19937 rng(42);
    std::vector<int32_t> tokens(static_cast<size_t>(max_tokens + 1));
    for (auto& t : tokens) t = int32_t(rng() % uint64_t(m.hparams().n_vocab));

    std::vector<bench_result> results;
    std::map<int, double> bandwidth;
    bool activations_shown = false;
    const std::string name = std::filesystem::path(model_path).filename().string();
    const int64_t n_params = count_params(m);
    if (output == "md") {
        std::printf("| model | size | params | threads |%s test | t/s | of bandwidth |\n", show_policy ? " kv policy | KV held |" : "");
        std::printf("| --- | ---: | ---: | ---: |%s ---: | ---: | ---: |\n", show_policy ? " --- | ---: |" : "");
    }
    for (int64_t nt : ts) {
        thread_pool pool{int(nt)};
        if (!no_probe) bandwidth[int(nt)] = cpu::measure_read_bandwidth(pool);
        for (const kv_policy& pol : policies) {
            session_params sp;
            sp.kv_type = kv_type;
            sp.kv_v_type = kv_v_type;
            sp.kivi = kivi;
            sp.n_ctx = n_ctx > 0 ? n_ctx : max_tokens + 1;
            sp.n_batch = n_batch;
            sp.policy = pol;
            auto s = session::create(m, pool, sp);
            if (!s) {
                std::fprintf(stderr, "kvserve bench: %s\n", s.message().c_str());
                return 1;
            }
            if (s.value()->bounded_by_ctx() && max_tokens > s.value()->n_ctx()) {
                std::fprintf(stderr, "kvserve bench: the longest test needs %lld tokens, more than the context %lld (-c)\n",
                             (long long)max_tokens, (long long)s.value()->n_ctx());
                return 2;
            }
            if (!activations_shown) {  // the same for every session: shown once
                activations_shown = true;
                const forward_state& st = s.value()->state();
                std::fprintf(stderr, "activations: planned %.2f MiB for batch %lld (sum of buffers %.2f MiB, ratio %.3f)\n",
                             double(st.planned_bytes()) / 1048576.0, (long long)st.max_tokens(),
                             double(st.unplanned_bytes()) / 1048576.0,
                             double(st.planned_bytes()) / double(std::max<size_t>(1, st.unplanned_bytes())));
                if (const model_hparams& hp = m.hparams(); hp.deepseek2()) {
                    const int64_t latent = hp.kv_lora + hp.n_rot, per_head = hp.n_head * (hp.head_dim + hp.v_head);
                    const kv_cache& c = s.value()->kv_group_set().group(0);
                    std::fprintf(stderr,
                                 "kv: latent cache of %lld values per token and layer (%s, %zu bytes per token over %lld layers); "
                                 "a per-head K/V cache holds %lld values per token and layer (%.1fx the latent)\n",
                                 (long long)latent, dtype_name(c.type()), c.bytes_per_token(), (long long)hp.n_layer,
                                 (long long)per_head, double(per_head) / double(latent));
                }
            }
            // Warm-up: page in the weights, spin up the threads.
            (void)run_once(*s.value(), tokens, 0, std::min<int64_t>(32, max_tokens), 0);
            for (int64_t d : ds) {
                std::vector<std::pair<int64_t, int64_t>> tests;
                for (int64_t p : ps)
                    if (p > 0) tests.push_back({p, 0});
                for (int64_t n : ns)
                    if (n > 0) tests.push_back({0, n});
                for (auto [p, n] : tests) {
                    bench_result r;
                    r.model = name;
                    r.size_bytes = int64_t(m.weight_bytes());
                    r.n_params = n_params;
                    r.threads = int(nt);
                    r.n_prompt = p;
                    r.n_gen = n;
                    r.n_depth = d;
                    r.kv_policy = pol.spec();
                    r.n_ctx = s.value()->n_ctx();
                    const int64_t read0 = s.value()->state().quest_pages_read(), dense0 = s.value()->state().quest_pages_dense();
                    for (int rep = 0; rep < reps; ++rep) {
                        auto secs = run_once(*s.value(), tokens, d, p, n);
                        if (!secs) {
                            std::fprintf(stderr, "kvserve bench: %s\n", secs.message().c_str());
                            return 1;
                        }
                        r.samples_ns.push_back(secs.value() * 1e9);
                        r.samples_ts.push_back(double(p + n) / secs.value());
                    }
                    r.kv_bytes = int64_t(s.value()->kv_bytes());
                    if (const kv_groups& g = s.value()->kv_group_set(); g.size() > 1) {
                        std::string line;
                        for (size_t i = 0; i < g.size(); ++i) {
                            const int64_t b = int64_t(g.group(i).seq_bytes(s.value()->kv_seq()));
                            r.kv_bytes_by_group.push_back({g.desc(i).name, b});
                            line += strfmt("%s%s %.2f MiB", i ? ", " : "", g.desc(i).name.c_str(), double(b) / 1048576.0);
                        }
                        std::fprintf(stderr, "%s: KV held after %lld tokens: %s (total %.2f MiB)\n", r.test_name().c_str(),
                                     (long long)s.value()->n_past(), line.c_str(), double(r.kv_bytes) / 1048576.0);
                    }
                    if (const int64_t dense = s.value()->state().quest_pages_dense() - dense0; dense > 0)
                        r.kv_read = double(s.value()->state().quest_pages_read() - read0) / double(dense);
                    else if (pol.kind == kv_policy_kind::quest)
                        r.kv_read = 1.0;  // every row fit in the budget: read densely
                    if (output == "md") {
                        std::string frac = "";
                        if (n > 0 && bandwidth.count(int(nt)) && bandwidth[int(nt)] > 0)
                            frac = strfmt("%.0f%% of %.1f GB/s",
                                          100.0 * double(m.decode_weight_bytes()) * r.mean_ts() * 1e-9 / bandwidth[int(nt)],
                                          bandwidth[int(nt)]);
                        const std::string kv_cols =
                            show_policy ? strfmt(" %s%s | %.2f MiB |", r.kv_policy.c_str(),
                                                 r.kv_read >= 0 ? strfmt(" (reads %.1f%%)", 100.0 * r.kv_read).c_str() : "",
                                                 double(r.kv_bytes) / 1048576.0)
                                        : "";
                        std::printf("| %s | %.2f GiB | %.2f B | %d |%s %s | %.2f ± %.2f | %s |\n", name.c_str(),
                                    double(r.size_bytes) / (1 << 30), double(n_params) * 1e-9, r.threads, kv_cols.c_str(),
                                    r.test_name().c_str(), r.mean_ts(), r.sd_ts(), frac.c_str());
                        std::fflush(stdout);
                    }
                    results.push_back(std::move(r));
                }
            }
        }
    }
    if (output == "json") {
        nlohmann::json arr = nlohmann::json::array();
        for (const auto& r : results) {
            double mean_ns = 0, sd_ns = 0;
            for (double x : r.samples_ns) mean_ns += x / double(r.samples_ns.size());
            for (double x : r.samples_ns) sd_ns += (x - mean_ns) * (x - mean_ns);
            sd_ns = r.samples_ns.size() > 1 ? std::sqrt(sd_ns / double(r.samples_ns.size() - 1)) : 0;
            nlohmann::json j = {{"model_filename", model_path}, {"model_type", m.hparams().arch}, {"model_size", r.size_bytes},
                                {"model_n_params", r.n_params}, {"n_batch", n_batch}, {"n_threads", r.threads},
                                {"n_prompt", r.n_prompt}, {"n_gen", r.n_gen}, {"n_depth", r.n_depth},
                                {"n_ctx", r.n_ctx}, {"kv_policy", r.kv_policy}, {"kv_bytes", r.kv_bytes},
                                {"avg_ns", int64_t(mean_ns)}, {"stddev_ns", int64_t(sd_ns)}, {"avg_ts", r.mean_ts()},
                                {"stddev_ts", r.sd_ts()}, {"samples_ns", r.samples_ns}, {"samples_ts", r.samples_ts}};
            if (bandwidth.count(r.threads)) j["bandwidth_gbps"] = bandwidth[r.threads];
            if (r.kv_read >= 0) j["kv_read_fraction"] = r.kv_read;
            j["decode_weight_bytes"] = int64_t(m.decode_weight_bytes());
            if (const model_hparams& hp = m.hparams(); hp.deepseek2()) {
                // The latent cache beside a per-head K/V cache of the same model (values per token and layer).
                j["kv_latent_values"] = hp.kv_lora + hp.n_rot;
                j["kv_per_head_values"] = hp.n_head * (hp.head_dim + hp.v_head);
            }
            if (!r.kv_bytes_by_group.empty()) {
                nlohmann::json g = nlohmann::json::object();
                for (const auto& [group, bytes] : r.kv_bytes_by_group) g[group] = bytes;
                j["kv_bytes_by_group"] = g;
            }
            arr.push_back(j);
        }
        std::printf("%s\n", arr.dump(2).c_str());
    }
    return 0;
}

}  // namespace

KVS_COMMAND("bench", "benchmark prompt and generation speed (llama-bench's tests)", cmd_bench);

}  // namespace kvs::tools
