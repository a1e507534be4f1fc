// kvserve bench embed: a burst of embedding requests of mixed lengths on the continuous-batching
// scheduler, submitted at once in several orders — as they arrived (random), shortest first,
// longest first — and timed until every vector is out. The scheduler packs ragged batches
// without padding under one token budget, so the order decides only which requests share a
// step; this measures how much any batching order (a length-aware split of the queue included)
// could gain over first-come batching. Orders alternate over rounds; the vectors of each request
// must be the same in every order (printed as the largest difference).
//   kvserve bench embed -m MODEL -N 64 --min-len 8 --max-len 2000 -r 3 -t 2
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <random>

#include "bench_commands.h"
#include "common.h"
#include "sched/scheduler.h"

namespace kvs::tools {

namespace {

struct burst_result {
    double seconds = 0;
    int64_t steps = 0;
    std::vector<std::vector<float>> vectors;  // per request (in arrival index)
};

}  // namespace

int bench_embed(int argc, char** argv) {
    CLI::App app("Embedding burst of mixed lengths on the scheduler, in several submission orders", "kvserve bench embed");
    std::string model_path = default_model_path();
    int64_t n_requests = 64, min_len = 8, max_len = 2000, max_batch_tokens = 2048, prefill_chunk = 512;
    int32_t max_seqs = 16, page_size = 16, rounds = 3;
    int threads = default_threads();
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-N,--n-requests", n_requests, "requests in the burst")->check(CLI::Range(int64_t(1), int64_t(1) << 16))->capture_default_str();
    app.add_option("--min-len", min_len, "shortest input (tokens)")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--max-len", max_len, "longest input (tokens); lengths are log-uniform in between")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 20))
        ->capture_default_str();
    app.add_option("--max-batch-tokens", max_batch_tokens, "scheduler token budget per step")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--prefill-chunk", prefill_chunk, "most input tokens of one request per step")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--max-seqs", max_seqs, "requests computed at once")->check(CLI::Range(1, 65536))->capture_default_str();
    app.add_option("-r,--rounds", rounds, "rounds (the orders alternate within each)")->check(CLI::Range(1, 1000))->capture_default_str();
    app.add_option("-t,--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    if (min_len > max_len) {
        std::fprintf(stderr, "kvserve bench embed: --min-len %lld is longer than --max-len %lld\n", (long long)min_len, (long long)max_len);
        return 2;
    }
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve bench embed: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto model = language_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve bench embed: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve bench embed: %s\n", tok.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    if (max_len > m.hparams().n_ctx_train) {
        std::fprintf(stderr, "kvserve bench embed: --max-len %lld is past the model's context (%lld)\n", (long long)max_len,
                     (long long)m.hparams().n_ctx_train);
        return 2;
    }
    thread_pool pool(threads);

    // The burst: log-uniform lengths, random tokens, in arrival order.
    std::mt19937 rng(7);
    std::vector<std::vector<int32_t>> inputs(static_cast<size_t>(n_requests));
    int64_t total_tokens = 0;
    for (auto& in : inputs) {
        const double u = std::uniform_real_distribution<double>(std::log(double(min_len)), std::log(double(max_len) + 1))(rng);
        in.resize(size_t(std::clamp<int64_t>(int64_t(std::exp(u)), min_len, max_len)));
        for (auto& t : in) t = int32_t(rng() % uint64_t(m.hparams().n_vocab));
        total_tokens += int64_t(in.size());
    }
    std::vector<size_t> arrival(inputs.size());
    std::iota(arrival.begin(), arrival.end(), size_t(0));
    std::vector<size_t> shortest = arrival, longest = arrival;
    std::stable_sort(shortest.begin(), shortest.end(), [&](size_t a, size_t b) { return inputs[a].size() < inputs[b].size(); });
    std::stable_sort(longest.begin(), longest.end(), [&](size_t a, size_t b) { return inputs[a].size() > inputs[b].size(); });
    struct order {
        const char* name;
        const std::vector<size_t>* idx;
    };
    const std::vector<order> orders = {{"arrival (first-come)", &arrival}, {"shortest first", &shortest}, {"longest first", &longest}};

    const int32_t n_pages = int32_t(int64_t(max_seqs) * kv_cache::pages_for(max_len + 1, page_size) + 1);
    auto run_burst = [&](const std::vector<size_t>& idx) -> result<burst_result> {
        auto kv = kv_cache::create(m.kv_geometry(page_size, n_pages, m.auto_kv_type()));
        if (!kv) return kv.error();
        scheduler_config sc;
        sc.max_batch_tokens = max_batch_tokens;
        sc.prefill_chunk = prefill_chunk;
        sc.max_seqs = max_seqs;
        sc.n_ctx = max_len + 1;
        sc.prefix_cache = false;
        scheduler sched(m, *tok.value(), *kv.value(), pool, sc);
        std::vector<std::shared_ptr<request_stream>> streams(inputs.size());
        const auto t0 = std::chrono::steady_clock::now();
        for (size_t i : idx) {
            request_params p;
            p.prompt = inputs[i];
            p.embed = true;
            p.pooling = pooling_type::mean;
            streams[i] = std::make_shared<request_stream>();
            KVS_TRY(sched.submit(std::move(p), streams[i]));
        }
        burst_result out;
        out.vectors.resize(inputs.size());
        while (!sched.idle()) {
            auto r = sched.step();
            if (!r) return r.error();
            ++out.steps;
            for (size_t i = 0; i < streams.size(); ++i)
                while (auto ev = streams[i]->pop(0))
                    if (!ev->embedding.empty()) out.vectors[i] = std::move(ev->embedding);
        }
        out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return out;
    };

    std::printf("burst: %lld requests, %lld tokens (lengths %lld-%lld, log-uniform), budget %lld tokens/step, %d at once, chunk %lld\n",
                (long long)n_requests, (long long)total_tokens, (long long)min_len, (long long)max_len, (long long)max_batch_tokens,
                max_seqs, (long long)prefill_chunk);
    if (auto warm = run_burst(arrival); !warm) {  // untimed: page in the weights, grow the arenas
        std::fprintf(stderr, "kvserve bench embed: %s\n", warm.message().c_str());
        return 1;
    }
    std::vector<std::vector<double>> times(orders.size());
    std::vector<int64_t> steps(orders.size());
    std::vector<std::vector<float>> first_vectors;
    double max_diff = 0;
    for (int32_t r = 0; r < rounds; ++r)
        for (size_t o = 0; o < orders.size(); ++o) {
            auto res = run_burst(*orders[o].idx);
            if (!res) {
                std::fprintf(stderr, "kvserve bench embed: %s\n", res.message().c_str());
                return 1;
            }
            times[o].push_back(res.value().seconds);
            steps[o] = res.value().steps;
            if (first_vectors.empty()) {
                first_vectors = std::move(res.value().vectors);
            } else {
                for (size_t i = 0; i < first_vectors.size(); ++i)
                    for (size_t j = 0; j < first_vectors[i].size() && j < res.value().vectors[i].size(); ++j)
                        max_diff = std::max(max_diff, double(std::fabs(first_vectors[i][j] - res.value().vectors[i][j])));
            }
        }
    auto median = [](std::vector<double> v) {
        std::sort(v.begin(), v.end());
        return v[v.size() / 2];
    };
    const double base = median(times[0]);
    std::printf("| order                | steps |  median s |    tokens/s | vs first-come |\n");
    std::printf("|----------------------|-------|-----------|-------------|---------------|\n");
    for (size_t o = 0; o < orders.size(); ++o) {
        const double t = median(times[o]);
        std::printf("| %-20s | %5lld | %9.3f | %11.1f | %12.3fx |\n", orders[o].name, (long long)steps[o], t, double(total_tokens) / t, base / t);
    }
    std::printf("largest difference between the orders' vectors: %.3g\n", max_diff);
    if (max_diff > 1e-4) {  // the order decides only which rows share a step, never a vector
        std::fprintf(stderr, "kvserve bench embed: the vectors depend on the order (largest difference %.3g)\n", max_diff);
        return 1;
    }
    return 0;
}

}  // namespace kvs::tools
