// kvserve bench serve: load-tests a running OpenAI-compatible server over HTTP and reports what
// vLLM's and SGLang's serving benchmarks report: request throughput, input/output tokens/s,
// time to first token (TTFT), time per output token (TPOT), inter-token latency (ITL) and
// end-to-end latency, as mean, median and p99.
//
// Workloads (prompts are token-id arrays, so input lengths are exact):
//   random          N prompts of I random tokens, O output tokens each
//   shared-prefix   G groups × P questions: each prompt is the group's S-token system prompt
//                   followed by a Q-token question (SGLang's generated-shared-prefix dataset)
// Arrivals: a fixed number of concurrent clients (--concurrency) or a Poisson process
// (--request-rate R requests/s). Requests use temperature 0 and ignore EOS, so every request
// generates exactly O tokens.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>

#include "bench_commands.h"
#include "common.h"
#include "core/status.h"
#include "server/http.h"

namespace kvs::tools {

namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

struct request_spec {
    std::vector<int32_t> prompt;
    int64_t max_tokens = 0;
};

struct request_record {
    bool ok = false;
    std::string error;
    int64_t prompt_tokens = 0, output_tokens = 0, cached_tokens = 0;
    double ttft = 0, e2e = 0;
    std::vector<double> itl;  // gaps between content chunks (s)
};

struct bench_options {
    std::string host = "127.0.0.1", api_key, model, dataset = "random";
    int port = 8080;
    int64_t num_prompts = 64, input_len = 128, output_len = 32;
    int64_t groups = 4, prompts_per_group = 16, system_len = 800, question_len = 24;
    int concurrency = 16;
    double request_rate = 0;  // 0 = use concurrency
    int32_t vocab_lo = 3, vocab_hi = 500;
    uint64_t seed = 0;
};

std::vector<request_spec> make_workload(const bench_options& o) {
    std::mt19937_64 rng(o.seed);
    auto random_ids = [&](int64_t n) {
        std::vector<int32_t> v(static_cast<size_t>(n));
        for (auto& t : v) t = o.vocab_lo + int32_t(rng() % uint64_t(o.vocab_hi - o.vocab_lo));
        return v;
    };
    std::vector<request_spec> out;
    if (o.dataset == "random") {
        for (int64_t i = 0; i < o.num_prompts; ++i) out.push_back({random_ids(o.input_len), o.output_len});
    } else {
        for (int64_t g = 0; g < o.groups; ++g) {
            auto system = random_ids(o.system_len);
            for (int64_t q = 0; q < o.prompts_per_group; ++q) {
                request_spec r;
                r.prompt = system;
                auto question = random_ids(o.question_len);
                r.prompt.insert(r.prompt.end(), question.begin(), question.end());
                r.max_tokens = o.output_len;
                out.push_back(std::move(r));
            }
        }
        std::shuffle(out.begin(), out.end(), rng);
    }
    return out;
}

// One streamed completion; times the first content chunk and the gaps between chunks.
request_record send_one(const bench_options& o, const request_spec& spec) {
    request_record rec;
    httplib::Client cli(o.host, o.port);
    cli.set_read_timeout(600, 0);
    cli.set_connection_timeout(10, 0);
    json body = {{"prompt", spec.prompt}, {"max_tokens", spec.max_tokens}, {"temperature", 0}, {"ignore_eos", true},
                 {"stream", true}, {"stream_options", {{"include_usage", true}}}};
    if (!o.model.empty()) body["model"] = o.model;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.set_header("Content-Type", "application/json");
    if (!o.api_key.empty()) req.set_header("Authorization", "Bearer " + o.api_key);
    req.body = body.dump();
    std::string buf;
    auto t0 = clock_type::now();
    auto last = t0;
    bool first = true;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        buf.append(data, len);
        size_t at;
        while ((at = buf.find("\n\n")) != std::string::npos) {
            std::string event = buf.substr(0, at);
            buf.erase(0, at + 2);
            if (event.rfind("data: ", 0) != 0) continue;
            std::string payload = event.substr(6);
            if (payload == "[DONE]") continue;
            json j = json::parse(payload, nullptr, false);
            if (j.is_discarded()) continue;
            if (j.contains("usage") && j["usage"].is_object()) {
                rec.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(0));
                rec.output_tokens = j["usage"].value("completion_tokens", int64_t(0));
                if (j["usage"].contains("prompt_tokens_details") && j["usage"]["prompt_tokens_details"].is_object())
                    rec.cached_tokens = j["usage"]["prompt_tokens_details"].value("cached_tokens", int64_t(0));
            }
            if (j.contains("choices") && j["choices"].is_array() && !j["choices"].empty()) {
                auto now = clock_type::now();
                if (first) {
                    rec.ttft = std::chrono::duration<double>(now - t0).count();
                    first = false;
                } else {
                    rec.itl.push_back(std::chrono::duration<double>(now - last).count());
                }
                last = now;
            }
        }
        return true;
    };
    httplib::Response res;
    httplib::Error err = httplib::Error::Success;
    bool sent = cli.send(req, res, err);
    rec.e2e = std::chrono::duration<double>(clock_type::now() - t0).count();
    if (!sent) {
        rec.error = "connection failed: " + httplib::to_string(err);
    } else if (res.status != 200) {
        rec.error = "HTTP " + std::to_string(res.status) + ": " + buf + res.body;
    } else if (first) {
        rec.error = "no tokens received";
    } else {
        rec.ok = true;
    }
    return rec;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const double idx = p / 100.0 * double(v.size() - 1);
    const size_t lo = size_t(std::floor(idx)), hi = size_t(std::ceil(idx));
    return v[lo] + (v[hi] - v[lo]) * (idx - double(lo));
}

void print_stat(const char* name, const std::vector<double>& v) {
    double mean = 0;
    for (double x : v) mean += x / double(v.size());
    std::printf("%-24s mean %9.2f   median %9.2f   p99 %9.2f\n", name, mean * 1e3, percentile(v, 50) * 1e3, percentile(v, 99) * 1e3);
}

}  // namespace

int bench_serve(int argc, char** argv) {
    CLI::App app("Load-test a running kvserve (or any OpenAI-compatible) server", "kvserve bench serve");
    bench_options o;
    app.add_option("--host", o.host, "server address (loopback by default)")->capture_default_str();
    app.add_option("--port", o.port, "server port")->check(CLI::Range(1, 65535))->capture_default_str();
    app.add_option("--api-key", o.api_key, "API key");
    app.add_option("--model", o.model, "model name to send");
    app.add_option("--dataset", o.dataset, "random or shared-prefix")->check(CLI::IsMember({"random", "shared-prefix"}))->capture_default_str();
    app.add_option("--num-prompts", o.num_prompts, "requests (random)")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--input-len", o.input_len, "prompt tokens (random)")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--output-len", o.output_len, "output tokens per request")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--groups", o.groups, "shared-prefix: groups")->check(CLI::Range(int64_t(1), int64_t(1) << 16))->capture_default_str();
    app.add_option("--prompts-per-group", o.prompts_per_group, "shared-prefix: questions per group")->check(CLI::Range(int64_t(1), int64_t(1) << 16))->capture_default_str();
    app.add_option("--system-len", o.system_len, "shared-prefix: system prompt tokens")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--question-len", o.question_len, "shared-prefix: question tokens")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--concurrency", o.concurrency, "concurrent clients")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--request-rate", o.request_rate, "Poisson arrival rate in requests/s (overrides --concurrency)")->check(CLI::NonNegativeNumber);
    app.add_option("--token-id-max", o.vocab_hi, "random prompt token ids are drawn from [3, this)")->check(CLI::Range(4, 1 << 24))->capture_default_str();
    app.add_option("--seed", o.seed, "workload seed")->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;

    {
        httplib::Client probe(o.host, o.port);
        probe.set_connection_timeout(5, 0);
        auto h = probe.Get("/health");
        if (!h || h->status != 200) {
            std::fprintf(stderr, "kvserve bench serve: no healthy server at %s:%d (start one with kvserve serve)\n", o.host.c_str(), o.port);
            return 1;
        }
    }
    auto work = make_workload(o);
    std::vector<request_record> records(work.size());
    std::atomic<size_t> next{0};
    auto t0 = clock_type::now();
    std::vector<std::thread> threads;
    if (o.request_rate > 0) {
        std::mt19937_64 rng(o.seed + 1);
        std::exponential_distribution<double> gap(o.request_rate);
        for (size_t i = 0; i < work.size(); ++i) {
            threads.emplace_back([&, i] { records[i] = send_one(o, work[i]); });
            std::this_thread::sleep_for(std::chrono::duration<double>(gap(rng)));
        }
    } else {
        for (int c = 0; c < o.concurrency; ++c)
            threads.emplace_back([&] {
                for (size_t i; (i = next.fetch_add(1)) < work.size();) records[i] = send_one(o, work[i]);
            });
    }
    for (auto& t : threads) t.join();
    const double wall = std::chrono::duration<double>(clock_type::now() - t0).count();

    std::vector<double> ttft, tpot, itl, e2e;
    int64_t n_ok = 0, in_tok = 0, out_tok = 0, cached = 0;
    for (auto& r : records) {
        if (!r.ok) continue;
        ++n_ok;
        in_tok += r.prompt_tokens;
        out_tok += r.output_tokens;
        cached += r.cached_tokens;
        ttft.push_back(r.ttft);
        e2e.push_back(r.e2e);
        if (r.output_tokens > 1) tpot.push_back((r.e2e - r.ttft) / double(r.output_tokens - 1));
        itl.insert(itl.end(), r.itl.begin(), r.itl.end());
    }
    for (auto& r : records)
        if (!r.ok) {
            std::fprintf(stderr, "kvserve bench serve: a request failed: %s\n", r.error.c_str());
            break;
        }
    std::printf("============ Serving Benchmark Result ============\n");
    std::printf("%-32s %s\n", "Dataset:", o.dataset.c_str());
    std::printf("%-32s %s\n", "Arrivals:", o.request_rate > 0 ? strfmt("Poisson %.2f req/s", o.request_rate).c_str() : strfmt("%d concurrent clients", o.concurrency).c_str());
    std::printf("%-32s %lld\n", "Successful requests:", (long long)n_ok);
    std::printf("%-32s %lld\n", "Failed requests:", (long long)(int64_t(records.size()) - n_ok));
    std::printf("%-32s %.2f\n", "Benchmark duration (s):", wall);
    std::printf("%-32s %lld\n", "Total input tokens:", (long long)in_tok);
    std::printf("%-32s %lld\n", "Cached input tokens:", (long long)cached);
    std::printf("%-32s %lld\n", "Total generated tokens:", (long long)out_tok);
    std::printf("%-32s %.3f\n", "Request throughput (req/s):", double(n_ok) / wall);
    std::printf("%-32s %.2f\n", "Input token throughput (tok/s):", double(in_tok) / wall);
    std::printf("%-32s %.2f\n", "Output token throughput (tok/s):", double(out_tok) / wall);
    std::printf("---------------- latencies (ms) ------------------\n");
    print_stat("TTFT", ttft);
    print_stat("TPOT", tpot);
    print_stat("ITL", itl);
    print_stat("E2E latency", e2e);
    std::printf("%-24s max  %9.2f\n", "ITL", itl.empty() ? 0.0 : *std::max_element(itl.begin(), itl.end()) * 1e3);
    return n_ok == int64_t(records.size()) ? 0 : 1;
}

}  // namespace kvs::tools
