// kvserve bench batched: llama-batched-bench's measurement on the continuous-batching
// scheduler. For each batch size B, B different random prompts of PP tokens are submitted at
// once and each generates TG tokens (EOS ignored). Reported: prompt time and speed (until every
// sequence has its first token), generation time and speed (the rest), and the total.
//   kvserve bench batched -m MODEL -p 128 -n 32 -b 1,4,16,32 -t 2
// With --long-prompt L, once the B sequences are decoding a request with an L-token prompt
// arrives; the longest scheduler step while it is prefilled is reported next to the decode-only
// step time, showing whether decodes stall behind the long prompt (chunked prefill keeps each
// step to at most one prefill chunk plus the decodes). With --self-spec every sequence speculates
// while at most --spec-max-running run (the throughput of speculation under load).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <sstream>

#include "bench_commands.h"
#include "common.h"
#include "sched/scheduler.h"

namespace kvs::tools {

namespace {

std::vector<int64_t> int_list(const std::string& s, bool* ok) {
    std::vector<int64_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        char* end = nullptr;
        long long v = std::strtoll(item.c_str(), &end, 10);
        if (item.empty() || *end || v <= 0) {
            *ok = false;
            return {};
        }
        out.push_back(v);
    }
    *ok = !out.empty();
    return out;
}

}  // namespace

int bench_batched(int argc, char** argv) {
    CLI::App app("Batched generation throughput on the scheduler (llama-batched-bench's test)", "kvserve bench batched");
    std::string model_path = default_model_path(), b_list = "1,4,16,32";
    int64_t n_prompt = 128, n_gen = 32, max_batch_tokens = 2048, prefill_chunk = 512;
    int threads = default_threads();
    int32_t page_size = 16;
    int64_t long_prompt = 0;
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-p,--n-prompt", n_prompt, "prompt tokens per sequence")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("-n,--n-gen", n_gen, "generated tokens per sequence")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("-b,--batch", b_list, "batch sizes (comma list)")->capture_default_str();
    app.add_option("-t,--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    app.add_option("--max-batch-tokens", max_batch_tokens, "scheduler token budget per step")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--prefill-chunk", prefill_chunk, "most prompt tokens of one sequence per step")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--page-size", page_size, "KV tokens per page")->check(CLI::Range(1, 4096))->capture_default_str();
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    app.add_option("--long-prompt", long_prompt, "tokens of a prompt that arrives while the batch decodes (0 = none)")->check(CLI::Range(int64_t(0), int64_t(1) << 20));
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    std::string self_spec;
    int32_t spec_max_running = scheduler_config{}.spec_max_running;
    app.add_option("--self-spec", self_spec, "every sequence speculates with exit=E,draft=D (self-speculative decoding)");
    app.add_option("--spec-max-running", spec_max_running, "speculation runs only while at most this many sequences run")
        ->check(CLI::Range(0, 65536))
        ->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    speculative_option so;
    so.self_spec = self_spec;
    speculative_params spec;
    if (!resolve_speculative(so, "bench batched", &spec)) return 2;
    std::optional<dtype> kv_choice, kv_v_choice;
    kivi_config kivi;
    if (!resolve_kv_type(kvt, "bench batched", &kv_choice, &kv_v_choice, &kivi)) return 2;
    if (kivi.bits) {
        std::fprintf(stderr, "kvserve bench batched: KIVI caches are sized by the server (use kvserve serve --kv-type kivi2)\n");
        return 2;
    }
    bool ok = false;
    auto batches = int_list(b_list, &ok);
    if (!ok) {
        std::fprintf(stderr, "kvserve bench batched: -b: expected a comma list of positive integers, got '%s'\n", b_list.c_str());
        return 2;
    }
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve bench batched: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto model = language_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve bench batched: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve bench batched: %s\n", tok.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    const dtype kv_type = kv_choice.value_or(m.auto_kv_type());
    thread_pool pool(threads);
    std::mt19937 rng(1);
    std::printf("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |\n");
    std::printf("|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|\n");
    for (int64_t B : batches) {
        const int64_t n_kv = B * (n_prompt + n_gen);
        kv_config geom = m.kv_geometry(page_size, kv_cache::pages_for(n_prompt + n_gen + spec.draft_tokens + 1, page_size) * int32_t(B) +
                                                      kv_cache::pages_for(long_prompt + 2, page_size) + 1,
                                       kv_type);
        if (kv_v_choice && *kv_v_choice != kv_type) geom.v_type = kv_v_choice;
        auto kv = kv_cache::create(geom);
        if (!kv) {
            std::fprintf(stderr, "kvserve bench batched: %s\n", kv.message().c_str());
            return 1;
        }
        scheduler_config sc;
        sc.max_batch_tokens = max_batch_tokens;
        sc.prefill_chunk = prefill_chunk;
        sc.max_seqs = int32_t(B) + (long_prompt > 0 ? 1 : 0);
        sc.n_ctx = std::max(n_prompt + n_gen, long_prompt + 2);
        sc.spec_max_running = spec_max_running;
        scheduler sched(m, *tok.value(), *kv.value(), pool, sc);
        std::vector<std::shared_ptr<request_stream>> streams;
        for (int64_t b = 0; b < B; ++b) {
            request_params p;
            p.prompt.resize(size_t(n_prompt));
            for (auto& t : p.prompt) t = int32_t(rng() % uint64_t(m.hparams().n_vocab));
            p.max_tokens = n_gen;
            p.ignore_eos = true;
            p.sampling.temperature = 0;
            p.speculative = spec;
            streams.push_back(std::make_shared<request_stream>());
            if (status s = sched.submit(std::move(p), streams.back()); !s) {
                std::fprintf(stderr, "kvserve bench batched: %s\n", s.message().c_str());
                return 1;
            }
        }
        auto t0 = std::chrono::steady_clock::now();
        double t_pp = -1;
        bool long_sent = false, long_done = false;
        double max_step_long = 0, sum_step_decode = 0;
        int64_t n_step_decode = 0, long_prefill_steps = 0;
        std::shared_ptr<request_stream> long_stream;
        while (!sched.idle()) {
            if (long_prompt > 0 && !long_sent && t_pp >= 0 && n_step_decode >= 3) {
                request_params p;
                p.prompt.resize(size_t(long_prompt));
                for (auto& t : p.prompt) t = int32_t(rng() % uint64_t(m.hparams().n_vocab));
                p.max_tokens = 1;
                p.ignore_eos = true;
                p.sampling.temperature = 0;
                long_stream = std::make_shared<request_stream>();
                if (status st = sched.submit(std::move(p), long_stream); !st) {
                    std::fprintf(stderr, "kvserve bench batched: %s\n", st.message().c_str());
                    return 1;
                }
                long_sent = true;
            }
            auto ts = std::chrono::steady_clock::now();
            auto r = sched.step();
            const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
            if (t_pp >= 0 && !long_sent) {
                sum_step_decode += dt;
                ++n_step_decode;
            }
            if (long_sent && !long_done) {
                max_step_long = std::max(max_step_long, dt);
                ++long_prefill_steps;
                while (long_stream->pop(0)) long_done = true;
            }
            if (!r) {
                std::fprintf(stderr, "kvserve bench batched: %s\n", r.message().c_str());
                return 1;
            }
            if (t_pp < 0 && sched.metrics().generated_tokens >= B)
                t_pp = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            for (auto& s : streams)
                while (s->pop(0)) {
                }
        }
        const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double t_tg = t - t_pp;
        std::printf("| %5lld | %6lld | %4lld | %6lld | %8.3f | %8.2f | %8.3f | %8.2f | %8.3f | %8.2f |\n", (long long)n_prompt,
                    (long long)n_gen, (long long)B, (long long)n_kv, t_pp, double(B * n_prompt) / t_pp, t_tg,
                    double(B * (n_gen - 1)) / std::max(t_tg, 1e-9), t, double(n_kv) / t);
        if (long_prompt > 0 && long_sent)
            std::printf("|       | long prompt of %lld tokens arrived while %lld decode: longest step %.3f s over %lld steps; "
                        "decode-only step %.3f s (prefill chunk %lld)\n",
                        (long long)long_prompt, (long long)B, max_step_long, (long long)long_prefill_steps,
                        sum_step_decode / double(std::max<int64_t>(1, n_step_decode)), (long long)prefill_chunk);
        if (spec.on())
            std::printf("|       | speculation %s: %lld cycles, %lld of %lld drafts accepted\n", self_spec.c_str(),
                        (long long)sched.metrics().spec_cycles, (long long)sched.metrics().spec_accepted,
                        (long long)sched.metrics().spec_drafted);
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace kvs::tools
