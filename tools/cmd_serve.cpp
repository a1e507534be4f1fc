// kvserve serve: the OpenAI-compatible HTTP server (src/server/http_server.h).
//
// SIGINT / SIGTERM: stop accepting requests, let the ones in flight finish and their responses
// be written, exit 0. A second signal during the drain cancels what is still running.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <mutex>
#include <thread>

#include "command.h"
#include "common.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "sched/engine.h"
#include "server/api_keys.h"
#include "server/http_server.h"
#include "server/signals.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

bool read_file_text(const std::string& path, std::string* out) {
    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
    const bool ok = !std::ferror(f);
    std::fclose(f);
    return ok;
}

int cmd_serve(int argc, char** argv) {
    CLI::App app("Serve a GGUF model over an OpenAI-compatible HTTP API", "kvserve serve");
    std::string model_path = default_model_path();
    server_config sc;
    engine_config ec;
    int threads = default_threads();
    int64_t kv_memory_mib = 0;
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("--host", sc.host, "address to listen on")->capture_default_str();
    app.add_option("--port", sc.port, "port to listen on (0 = any free port)")->check(CLI::Range(0, 65535))->capture_default_str();
    app.add_option("-t,--threads", threads, "compute threads")->check(CLI::Range(1, 1024))->capture_default_str();
    std::vector<std::string> cli_keys;
    app.add_option("--api-key", cli_keys,
                   "require 'Authorization: Bearer KEY' on every route but /health (repeatable; visible in the process list: "
                   "prefer --api-key-file or KVSERVE_API_KEY)");
    std::string key_file;
    app.add_option("--api-key-file", key_file, "file of accepted API keys, one per line ('#' starts a comment line)");
    app.add_flag("--public-metrics", sc.public_metrics, "serve /metrics without an API key (default: /metrics needs one when keys are set)");
    app.add_flag("--debug-routes", sc.debug_routes, "serve GET /debug/kv (the KV integrity check and page counts)");
    app.add_option("--alias", sc.model_name, "model id to serve (default: the GGUF's general.name, else the file name)");
    app.add_option("-c,--ctx-size", ec.sched.n_ctx, "context length per sequence (0 = the model's)")->check(CLI::NonNegativeNumber);
    auto* kv_mem = app.add_option("--kv-memory", kv_memory_mib, "KV cache size in MiB (default: max-seqs full contexts, at most 2 GiB)")
                       ->check(CLI::Range(int64_t(1), int64_t(1) << 30));
    auto* kv_tok = app.add_option("--kv-tokens", ec.kv_tokens, "KV cache size in tokens")->check(CLI::Range(int64_t(1), int64_t(1) << 40));
    kv_mem->excludes(kv_tok);
    app.add_option("--page-size", ec.page_size, "tokens per KV page")->check(CLI::Range(1, 4096))->capture_default_str();
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    app.add_option("--max-batch-tokens", ec.sched.max_batch_tokens, "tokens per forward pass")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--prefill-chunk", ec.sched.prefill_chunk, "most prompt tokens of one sequence per step")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--admission-reserve", ec.sched.admission_reserve,
                   "tokens of each step kept from running prompt chunks for waiting requests (at most half the batch)")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 20))->capture_default_str();
    app.add_option("--max-seqs", ec.sched.max_seqs, "running sequences at most")->check(CLI::Range(1, 65536))->capture_default_str();
    app.add_option("--max-queue,--max-queued", ec.max_queued, "waiting requests at most (more are refused at once with 503 and Retry-After)")
        ->check(CLI::Range(1, 1 << 20))->capture_default_str();
    app.add_option("--request-timeout", sc.request_timeout,
                   "seconds a generation request may wait and run; then 504 (or a final SSE error event) and its pages are freed (0 = no limit)")
        ->check(CLI::Range(0.0, 1e7))->capture_default_str();
    app.add_option("--read-timeout", sc.read_timeout,
                   "seconds for a whole request (headers and body) to arrive; a slower client is disconnected (0 = no limit)")
        ->check(CLI::Range(0.0, 1e7))->capture_default_str();
    app.add_option("--max-body", sc.max_body_bytes, "largest request body (bytes; suffixes k, m, g); larger ones get 413")
        ->transform(CLI::AsSizeValue(false))->check(CLI::Range(int64_t(1), int64_t(1) << 40))->capture_default_str();
    bool no_prefix_cache = false;
    app.add_flag("--no-prefix-cache", no_prefix_cache, "do not reuse the KV pages of cached prompt prefixes");
    bool key_bounds = false;
    app.add_flag("--key-bounds", key_bounds,
                 "keep Quest's per-page key bounds, so requests may use kv_policy quest (1/8 more KV memory with bf16 and "
                 "16-token pages; on by itself when --kv-policy is quest)");
    bool token_scores = false;
    app.add_flag("--token-scores", token_scores,
                 "keep H2O's per-token attention scores and positions, so requests may use kv_policy h2o (8 bytes per "
                 "token, layer and KV head; on by itself when --kv-policy is h2o)");
    app.add_option("--h2o-chunk", ec.sched.h2o_chunk, "H2O prompts are computed in chunks of exactly this many tokens")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    bool no_cascade = false;
    app.add_flag("--no-cascade", no_cascade, "attend to shared prefixes per sequence instead of once per group");
    app.add_option("--http-threads", sc.http_threads, "HTTP request threads (0 = max-seqs + max-queue + 8)")->check(CLI::Range(0, 4096));
    app.add_option("--chat-template-file", sc.chat_template, "Jinja chat template file (default: the GGUF's)")
        ->check(CLI::ExistingFile);
    std::string kv_policy_spec = "dense";
    add_kv_policy_option(app, kv_policy_spec);
    speculative_option spec_opt;
    add_speculative_options(app, spec_opt);
    std::string pooling_spec;
    app.add_option("--pooling", pooling_spec, "/v1/embeddings pooling: mean, cls or last (default: the model's, else last)")
        ->check(CLI::IsMember({"mean", "cls", "last"}));
    app.add_option("--spec-max-running", ec.sched.spec_max_running, "speculation runs only while at most N sequences run (0 = never)")
        ->check(CLI::Range(0, 65536))->capture_default_str();
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    std::string tune = "off";
    app.add_option("--tune", tune, tune_help)->check(CLI::IsMember({"off", "fast", "full"}))->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;

    if (!sc.chat_template.empty()) {
        std::string text;
        if (!read_file_text(sc.chat_template, &text) || text.empty()) {
            std::fprintf(stderr, "kvserve serve: cannot read the chat template file %s\n", sc.chat_template.c_str());
            return 2;
        }
        sc.chat_template = std::move(text);
    }
    for (auto& k : cli_keys)
        if (k.empty()) {
            std::fprintf(stderr, "kvserve serve: --api-key: a key cannot be empty\n");
            return 2;
        }
    sc.api_keys = cli_keys;
    if (const char* env = std::getenv("KVSERVE_API_KEY"); env && *env)
        for (auto& k : split_api_keys(env)) sc.api_keys.push_back(std::move(k));
    if (!key_file.empty()) {
        std::string text;
        if (!read_file_text(key_file, &text)) {
            std::fprintf(stderr, "kvserve serve: cannot read the API key file %s\n", key_file.c_str());
            return 2;
        }
        auto keys = parse_api_keys(text);
        if (!keys) {
            std::fprintf(stderr, "kvserve serve: %s: %s\n", key_file.c_str(), keys.message().c_str());
            return 2;
        }
        if (keys.value().empty()) {
            std::fprintf(stderr, "kvserve serve: the API key file %s holds no key\n", key_file.c_str());
            return 2;
        }
        for (auto& k : keys.value()) sc.api_keys.push_back(std::move(k));
    }
    if (!resolve_speculative(spec_opt, "serve", &sc.default_speculative)) return 2;
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve serve: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    // Before any thread starts: every thread inherits the mask, the watch below receives the signals.
    termination_watch::block_signals();

    load_options load_opts = repack_options(no_repack);
    cpu::tune_level_from_name(tune, &load_opts.tune);
    load_opts.tune_threads = threads;
    auto model = language_model::load(model_path, load_opts);
    if (!model) {
        std::fprintf(stderr, "kvserve serve: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve serve: %s: %s\n", model_path.c_str(), tok.message().c_str());
        return 1;
    }
    if (tok.value()->n_vocab() != model.value()->hparams().n_vocab) {
        std::fprintf(stderr, "kvserve serve: vocabulary has %d tokens but the model's output has %lld\n", tok.value()->n_vocab(),
                     (long long)model.value()->hparams().n_vocab);
        return 1;
    }
    if (!resolve_kv_type(kvt, "serve", &ec.kv_type, &ec.kv_v_type, &ec.kivi)) return 2;
    if (!resolve_kv_policy(kv_policy_spec, "serve", &sc.default_policy)) return 2;
    sc.pooling = pooling_of_model(model.value()->file(), model.value()->hparams().arch);
    if (!pooling_spec.empty()) (void)pooling_from_name(pooling_spec, &sc.pooling);
    // The default speculation must suit the server's default policy and cache, else every
    // request naming neither would be refused.
    if (const speculative_params& sp = sc.default_speculative; sp.on()) {
        if (sp.exit_layer >= model.value()->hparams().n_layer) {
            std::fprintf(stderr, "kvserve serve: --self-spec: exit=%d is not below the model's %lld layers\n", sp.exit_layer,
                         (long long)model.value()->hparams().n_layer);
            return 2;
        }
        const kv_policy_kind k = sc.default_policy.kind;
        if (k == kv_policy_kind::h2o || k == kv_policy_kind::quest || k == kv_policy_kind::recompute) {
            std::fprintf(stderr, "kvserve serve: speculative decoding does not combine with --kv-policy %s\n",
                         sc.default_policy.spec().c_str());
            return 2;
        }
        if (ec.kivi.bits) {
            std::fprintf(stderr, "kvserve serve: speculative decoding does not combine with a KIVI cache\n");
            return 2;
        }
    }
    std::unique_ptr<language_model> draft_model;  // outlives the engine and the server
    if (!load_draft_model(spec_opt, "serve", *model.value(), no_repack, &draft_model)) return 1;
    ec.draft_model = draft_model.get();
    ec.key_bounds = key_bounds || sc.default_policy.kind == kv_policy_kind::quest;
    ec.token_scores = token_scores || sc.default_policy.kind == kv_policy_kind::h2o;
    ec.threads = threads;
    ec.sched.prefix_cache = !no_prefix_cache;
    ec.sched.cascade = !no_cascade;
    ec.kv_memory_bytes = kv_memory_mib << 20;
    auto eng = engine::create(*model.value(), *tok.value(), ec);
    if (!eng) {
        std::fprintf(stderr, "kvserve serve: %s\n", eng.message().c_str());
        return 1;
    }
    if (sc.model_name.empty()) sc.model_name = default_model_name(*model.value(), model_path);
    auto server = http_server::create(*model.value(), *tok.value(), *eng.value(), sc);
    if (!server) {
        std::fprintf(stderr, "kvserve serve: %s\n", server.message().c_str());
        return 1;
    }
    http_server& srv = *server.value();
    if (status st = srv.bind(); !st) {
        std::fprintf(stderr, "kvserve serve: %s\n", st.message().c_str());
        return 1;
    }

    // The watch thread starts the drain; the main thread joins it once run() returns (which the
    // drain itself can cause before the watch thread has stored the std::thread: hence the lock).
    std::mutex drain_mutex;
    std::thread drain;
    int n_signals = 0;
    termination_watch watch([&](int) {
        if (n_signals++ == 0) {
            std::fprintf(stderr, "kvserve serve: draining (in-flight requests finish; signal again to cancel them)\n");
            std::lock_guard<std::mutex> lock(drain_mutex);
            drain = std::thread([&] { srv.shutdown(true); });
        } else {
            std::fprintf(stderr, "kvserve serve: cancelling in-flight requests\n");
            srv.cancel_all();
        }
    });
    const auto& st = eng.value()->stats();
    const std::string pages = ec.kivi.bits ? strfmt("%d KV pages of %d tokens (%d full-precision for the residuals, %d packed)",
                                                    st.kv_pages_total, ec.kivi.group, st.kv_pages_total - st.kv_packed_pages_total,
                                                    st.kv_packed_pages_total)
                                           : strfmt("%d KV pages of %d tokens", st.kv_pages_total, ec.page_size);
    std::string spec;
    if (const speculative_params& sp = sc.default_speculative; sp.on()) {
        const std::string min_p = sp.min_draft_p > 0 ? strfmt(",min_p=%g", double(sp.min_draft_p)) : "";
        spec = draft_model ? strfmt(", speculation draft=%d%s with the draft model %s", sp.draft_tokens, min_p.c_str(),
                                    spec_opt.model_draft.c_str())
                           : strfmt(", speculation exit=%d,draft=%d%s", sp.exit_layer, sp.draft_tokens, min_p.c_str());
        const int32_t most = eng.value()->config().spec_max_running;
        spec += most > 0 ? strfmt(" while at most %d %s", most, most == 1 ? "sequence runs" : "sequences run")
                         : " (never runs: --spec-max-running 0)";
    }
    std::fprintf(stderr, "kvserve serve: model '%s', context %lld, %s (%s), KV policy %s%s\n", srv.model_name().c_str(),
                 (long long)eng.value()->n_ctx(), pages.c_str(),
                 kv_format_name(ec.kv_type.value_or(model.value()->auto_kv_type()), ec.kv_v_type, ec.kivi).c_str(),
                 sc.default_policy.spec().c_str(), spec.c_str());
    std::fprintf(stderr, "kvserve serve: queue %d, request timeout %s, read timeout %gs, body %lld bytes at most, %zu API key(s)%s\n",
                 eng.value()->max_queued(), sc.request_timeout > 0 ? strfmt("%gs", sc.request_timeout).c_str() : "none", sc.read_timeout,
                 (long long)sc.max_body_bytes, sc.api_keys.size(), sc.api_keys.empty() || !sc.public_metrics ? "" : ", /metrics public");
    std::fprintf(stderr, "kvserve serve: listening on http://%s:%d\n", sc.host.c_str(), srv.port());
    std::fflush(stderr);
    status run = srv.run();
    std::thread drained;
    {
        std::lock_guard<std::mutex> lock(drain_mutex);
        drained = std::move(drain);
    }
    if (drained.joinable()) drained.join();
    if (!run) {
        std::fprintf(stderr, "kvserve serve: %s\n", run.message().c_str());
        return 1;
    }
    std::fprintf(stderr, "kvserve serve: stopped\n");
    return 0;
}

}  // namespace

KVS_COMMAND("serve", "serve a model over an OpenAI-compatible HTTP API", cmd_serve);

}  // namespace kvs::tools
