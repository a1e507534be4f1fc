// kvserve bench soak: the server's fault and load harness. It starts the engine and the HTTP
// server in this process on 127.0.0.1 (an ephemeral port, an API key, a small wait queue and
// body limit, /debug/kv on), then drives it over real loopback HTTP with a seeded plan of
// mixed requests from several clients:
//
//   whole, stream     completions and chat, n 1-2, stop strings, logprobs, per-request KV
//                     policies (dense, window, streaming, recompute); 200, or 503 when the
//                     queue is full
//   disconnect        a raw connection that sends a request (streamed or not) and closes at a
//                     random point: at once, after some bytes of the answer, or after a pause
//   burst             many requests released together, far over the queue: 200 or 503 with
//                     Retry-After
//   body_too_large    413;  over_context: a prompt longer than the context, 400 "prompt"
//   bad_json, bad_param, bad_policy: 400 naming the field;  bad_http: 400;  wrong_key: 401
//
// Every answer is checked against its kind; a request that gets no answer (other than the
// disconnects) is a failure. At the end the harness waits for the engine to go idle and checks,
// over HTTP (/debug/kv, /metrics), that no KV page is held, the integrity check passes, the
// server's rejection counters equal what the clients saw, and the resident memory is back
// within a margin of its level after the warm-up. It prints the figures and exits 1 when any
// check fails, so it cannot pass by printing.
//
//   kvserve bench soak -m MODEL [--requests 10000] [--clients 12] [--seed 1] [-t 2]
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "bench_commands.h"
#include "common.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "sched/engine.h"
#include "server/http.h"
#include "server/http_server.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

using json = nlohmann::json;
using clock_type = std::chrono::steady_clock;

enum class kind { whole, stream, disconnect, burst, body_too_large, over_context, bad_json, bad_param, bad_policy, bad_http, wrong_key };
constexpr int n_kinds = 11;
constexpr const char* kind_names[n_kinds] = {"whole",        "stream",   "disconnect", "burst",      "body_too_large", "over_context",
                                             "bad_json",     "bad_param", "bad_policy", "bad_http",   "wrong_key"};

const char* const k_key = "soak-key";

struct soak_options {
    int64_t requests = 10000;
    int clients = 12;
    int burst_size = 48;
    uint64_t seed = 1;
    double time_limit = 900;  // seconds
};

// What the clients saw, per kind.
struct tally {
    std::array<std::atomic<int64_t>, n_kinds> sent{}, right{}, wrong{}, no_answer{};
    std::atomic<int64_t> ok_200{0}, refused_503{0}, refused_413{0}, refused_401{0}, other_400{0}, disconnects{0};
    std::mutex mu;
    std::vector<std::string> samples;  // the first few wrong answers

    void bad(kind k, const std::string& what) {
        wrong[size_t(k)]++;
        std::lock_guard<std::mutex> l(mu);
        if (samples.size() < 8) samples.push_back(std::string(kind_names[int(k)]) + ": " + what.substr(0, 300));
    }
};

int64_t rss_bytes() {
    FILE* f = std::fopen("/proc/self/statm", "r");
    long long pages = 0, resident = 0;
    if (f) {
        if (std::fscanf(f, "%lld %lld", &pages, &resident) != 2) resident = 0;
        std::fclose(f);
    }
    return int64_t(resident) * int64_t(::sysconf(_SC_PAGESIZE));
}

// One generation request of the plan (whole, stream, disconnect or burst), from the RNG.
json generation_body(std::mt19937_64& rng, bool* chat, bool stream) {
    static const char* const policies[] = {"dense", "window:size=64", "streaming:sinks=4,size=60", "recompute:size=64"};
    *chat = rng() % 3 == 0;
    json b = {{"max_tokens", 1 + int(rng() % 24)}, {"n", 1 + int(rng() % 2)}, {"seed", int(rng() % 1000)},
              {"temperature", rng() % 2 ? 0.0 : 0.8}, {"stream", stream}};
    if (rng() % 4 == 0) b["kv_policy"] = policies[rng() % 4];
    if (rng() % 4 == 0) b["stop"] = json::array({".", " the"});
    if (*chat) {
        b["messages"] = {{{"role", "user"}, {"content", "Tell me a story about a cat, number " + std::to_string(rng() % 1000)}}};
        if (rng() % 4 == 0) {
            b["logprobs"] = true;
            b["top_logprobs"] = 2;
        }
    } else {
        b["prompt"] = "Once upon a time, story " + std::to_string(rng() % 1000);
        if (rng() % 4 == 0) b["logprobs"] = 2;
    }
    return b;
}

bool valid_whole(const json& b, int n) {
    if (!b.is_object() || !b.contains("choices") || !b["choices"].is_array() || int(b["choices"].size()) != n) return false;
    for (const json& c : b["choices"]) {
        const json& f = c["finish_reason"];
        if (!f.is_string() || (f != "stop" && f != "length")) return false;
    }
    return b.contains("usage");
}

// A streamed body: ends with [DONE], and every choice finished with stop or length.
bool valid_stream(const std::string& body, int n) {
    if (body.size() < 14 || body.compare(body.size() - 14, 14, "data: [DONE]\n\n") != 0) return false;
    std::vector<bool> finished(size_t(n), false);
    size_t pos = 0;
    while ((pos = body.find("data: {", pos)) != std::string::npos) {
        const size_t end = body.find("\n\n", pos);
        json c = json::parse(body.substr(pos + 6, end - pos - 6), nullptr, false);
        pos = end;
        if (c.is_discarded() || c.contains("error")) return false;
        if (!c.contains("choices")) continue;
        for (const json& ch : c["choices"]) {
            const int i = ch.value("index", -1);
            if (i < 0 || i >= n) return false;
            if (ch["finish_reason"].is_string()) finished[size_t(i)] = ch["finish_reason"] == "stop" || ch["finish_reason"] == "length";
        }
    }
    return std::all_of(finished.begin(), finished.end(), [](bool b) { return b; });
}

int connect_loopback(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    timeval tv{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

std::string http_post(const std::string& path, const std::string& body) {
    return "POST " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + k_key +
           "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

class soak {
public:
    soak(int port, const soak_options& o, int64_t n_ctx) : port_(port), o_(o), n_ctx_(n_ctx) {}

    // One request of the given kind, checked. seed: the request's own RNG seed.
    void run_one(kind k, uint64_t seed, httplib::Client& cli) {
        std::mt19937_64 rng(seed);
        t_.sent[size_t(k)]++;
        switch (k) {
            case kind::whole:
            case kind::stream:
            case kind::burst: return generation(k, rng, cli);
            case kind::disconnect: return disconnect(rng);
            case kind::bad_http: return bad_http();
            default: return refused(k, rng, cli);
        }
    }

    void burst(uint64_t seed) {
        std::vector<std::thread> th;
        std::atomic<int> ready{0};
        for (int i = 0; i < o_.burst_size; ++i)
            th.emplace_back([&, i] {
                httplib::Client c("127.0.0.1", port_);
                c.set_read_timeout(60, 0);
                ready++;
                while (ready.load() < o_.burst_size) std::this_thread::yield();  // released together
                run_one(kind::burst, seed * 1000 + uint64_t(i), c);
            });
        for (auto& t : th) t.join();
    }

    tally& counts() { return t_; }

private:
    void generation(kind k, std::mt19937_64& rng, httplib::Client& cli) {
        bool chat = false;
        const bool stream = k == kind::stream || (k == kind::burst && rng() % 2 == 0);
        json body = generation_body(rng, &chat, stream);
        const int n = body["n"].get<int>();
        httplib::Request req;
        req.method = "POST";
        req.path = chat ? "/v1/chat/completions" : "/v1/completions";
        req.body = body.dump();
        req.set_header("Content-Type", "application/json");
        req.set_header("Authorization", std::string("Bearer ") + k_key);
        std::string streamed;
        if (stream)
            req.content_receiver = [&](const char* d, size_t len, uint64_t, uint64_t) {
                streamed.append(d, len);
                return true;
            };
        auto r = cli.send(req);
        if (!r) {
            t_.no_answer[size_t(k)]++;
            t_.bad(k, "no answer: " + httplib::to_string(r.error()));
            return;
        }
        const std::string& text = stream ? streamed : r->body;  // a receiver takes the body, errors included
        if (r->status == 503) {
            const json e = json::parse(text, nullptr, false);
            if (r->get_header_value("Retry-After").empty() || e.is_discarded() || e["error"]["code"] != "server_overloaded")
                return t_.bad(k, "503 without Retry-After or error body: " + text);
            t_.refused_503++;
            t_.right[size_t(k)]++;
            return;
        }
        if (r->status != 200) return t_.bad(k, std::to_string(r->status) + " " + text);
        const bool good = stream ? valid_stream(streamed, n) : valid_whole(json::parse(r->body, nullptr, false), n);
        if (!good) return t_.bad(k, "malformed 200: " + text);
        t_.ok_200++;
        t_.right[size_t(k)]++;
    }

    void disconnect(std::mt19937_64& rng) {
        bool chat = false;
        json body = generation_body(rng, &chat, rng() % 2 == 0);
        body["max_tokens"] = 16 + int(rng() % 200);
        body["ignore_eos"] = true;
        const int fd = connect_loopback(port_);
        if (fd < 0) {
            t_.no_answer[size_t(kind::disconnect)]++;
            return t_.bad(kind::disconnect, "cannot connect");
        }
        const std::string msg = http_post(chat ? "/v1/chat/completions" : "/v1/completions", body.dump());
        const int how = int(rng() % 4);
        size_t sent = msg.size();
        if (how == 0) sent = rng() % msg.size();  // in the middle of the request
        (void)!::send(fd, msg.data(), sent, MSG_NOSIGNAL);
        if (how == 1) {
            // after some bytes of the answer
            const size_t want = 1 + rng() % 1500;
            size_t got = 0;
            char buf[512];
            while (got < want) {
                pollfd p{fd, POLLIN, 0};
                if (::poll(&p, 1, 2000) != 1) break;
                const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
                if (n <= 0) break;
                got += size_t(n);
            }
        } else if (how == 2) {
            std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 40));
        }
        ::close(fd);
        t_.disconnects++;
        t_.right[size_t(kind::disconnect)]++;
    }

    void bad_http() {
        const int fd = connect_loopback(port_);
        if (fd < 0) {
            t_.no_answer[size_t(kind::bad_http)]++;
            return t_.bad(kind::bad_http, "cannot connect");
        }
        const std::string msg = "THIS IS NOT HTTP\r\nConnection: close\r\n\r\n";
        (void)!::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL);
        char buf[64] = {};
        const ssize_t n = ::recv(fd, buf, sizeof buf - 1, 0);
        ::close(fd);
        if (n <= 0) {
            t_.no_answer[size_t(kind::bad_http)]++;
            return t_.bad(kind::bad_http, "no answer");
        }
        if (std::string(buf, size_t(n)).rfind("HTTP/1.1 400", 0) != 0) return t_.bad(kind::bad_http, std::string(buf, size_t(n)));
        t_.other_400++;
        t_.right[size_t(kind::bad_http)]++;
    }

    // A request the server must refuse: the status and the field it names.
    void refused(kind k, std::mt19937_64& rng, httplib::Client& cli) {
        std::string body, key = k_key;
        int want = 400;
        std::string param;
        json b = {{"prompt", "Once upon a time"}, {"max_tokens", 4}};
        switch (k) {
            case kind::body_too_large:
                b["prompt"] = std::string(size_t(70000 + rng() % 20000), 'a');
                want = 413;
                break;
            case kind::over_context: {
                std::string p;
                for (int64_t i = 0; i < n_ctx_ + 50; ++i) p += " a";
                b["prompt"] = p;
                param = "prompt";
                break;
            }
            case kind::bad_json: body = "{\"prompt\": \"unterminated"; break;
            case kind::bad_param:
                b["temperature"] = "hot";
                param = "temperature";
                break;
            case kind::bad_policy:
                b["kv_policy"] = "streaming:sinks=-1";
                param = "kv_policy";
                break;
            case kind::wrong_key:
                key = "not-the-key";
                want = 401;
                break;
            default: break;
        }
        if (body.empty()) body = b.dump();
        httplib::Headers h = {{"Authorization", "Bearer " + key}};
        auto r = cli.Post("/v1/completions", h, body, "application/json");
        if (!r) {
            t_.no_answer[size_t(k)]++;
            return t_.bad(k, "no answer: " + httplib::to_string(r.error()));
        }
        const json e = json::parse(r->body, nullptr, false);
        if (r->status != want || e.is_discarded() || !e.contains("error") || (!param.empty() && e["error"]["param"] != param))
            return t_.bad(k, std::to_string(r->status) + " " + r->body.substr(0, 200));
        (want == 413 ? t_.refused_413 : want == 401 ? t_.refused_401 : t_.other_400)++;
        t_.right[size_t(k)]++;
    }

    int port_;
    soak_options o_;
    int64_t n_ctx_;
    tally t_;
};

// The plan: a kind per request, bursts counted as burst_size requests each.
std::vector<kind> make_plan(const soak_options& o) {
    std::mt19937_64 rng(o.seed);
    std::vector<kind> plan;
    int64_t n = 0;
    while (n < o.requests) {
        const int r = int(rng() % 1000);
        kind k;
        if (r < 300) k = kind::whole;
        else if (r < 560) k = kind::stream;
        else if (r < 760) k = kind::disconnect;
        else if (r < 766) k = kind::burst;  // ~0.6% of plan entries, each burst_size requests
        else if (r < 836) k = kind::body_too_large;
        else if (r < 880) k = kind::over_context;
        else if (r < 910) k = kind::bad_json;
        else if (r < 940) k = kind::bad_param;
        else if (r < 960) k = kind::bad_policy;
        else if (r < 975) k = kind::bad_http;
        else k = kind::wrong_key;
        plan.push_back(k);
        n += k == kind::burst ? o.burst_size : 1;
    }
    return plan;
}

}  // namespace

int bench_soak(int argc, char** argv) {
    CLI::App app("Fault and load harness for the HTTP server (in-process server, loopback clients)", "kvserve bench soak");
    std::string model_path = default_model_path();
    soak_options o;
    int threads = default_threads();
    engine_config ec;
    ec.sched.max_seqs = 8;
    ec.max_queued = 8;
    ec.kv_tokens = 8192;
    ec.sched.max_batch_tokens = 512;
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("--requests", o.requests, "requests in all (bursts included)")->check(CLI::Range(int64_t(1), int64_t(1) << 30))->capture_default_str();
    app.add_option("--clients", o.clients, "concurrent clients")->check(CLI::Range(1, 256))->capture_default_str();
    app.add_option("--burst-size", o.burst_size, "requests released together in a burst")->check(CLI::Range(2, 1024))->capture_default_str();
    app.add_option("--seed", o.seed, "plan seed")->capture_default_str();
    app.add_option("--time-limit", o.time_limit, "seconds before the run counts as hung")->check(CLI::Range(1.0, 1e6))->capture_default_str();
    app.add_option("-t,--threads", threads, "engine threads")->check(CLI::Range(1, 1024))->capture_default_str();
    app.add_option("--max-seqs", ec.sched.max_seqs, "running sequences at most")->check(CLI::Range(1, 4096))->capture_default_str();
    app.add_option("--max-queue", ec.max_queued, "waiting requests at most")->check(CLI::Range(1, 1 << 20))->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto model = language_model::load(model_path, repack_options(false));
    if (!model) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", tok.message().c_str());
        return 1;
    }
    ec.threads = threads;
    auto eng = engine::create(*model.value(), *tok.value(), ec);
    if (!eng) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", eng.message().c_str());
        return 1;
    }
    server_config sc;
    sc.host = "127.0.0.1";
    sc.port = 0;
    sc.api_keys = {k_key};
    sc.debug_routes = true;
    sc.max_body_bytes = 64 << 10;
    sc.request_timeout = 120;
    sc.read_timeout = 10;
    auto server = http_server::create(*model.value(), *tok.value(), *eng.value(), sc);
    if (!server) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", server.message().c_str());
        return 1;
    }
    http_server& srv = *server.value();
    if (status st = srv.bind(); !st) {
        std::fprintf(stderr, "kvserve bench soak: %s\n", st.message().c_str());
        return 1;
    }
    std::thread server_thread([&] { (void)srv.run(); });
    const int port = srv.port();

    const std::vector<kind> plan = make_plan(o);
    soak s(port, o, eng.value()->n_ctx());
    std::atomic<size_t> next{0};
    std::atomic<bool> out_of_time{false};
    const auto t0 = clock_type::now();
    auto elapsed = [&] { return std::chrono::duration<double>(clock_type::now() - t0).count(); };
    int64_t rss_warm = 0;
    const size_t warm_entries = std::max<size_t>(1, plan.size() / 20);
    std::mutex warm_mu;
    auto worker = [&] {
        httplib::Client cli("127.0.0.1", port);
        cli.set_read_timeout(60, 0);
        cli.set_write_timeout(10, 0);
        for (;;) {
            const size_t i = next.fetch_add(1);
            if (i >= plan.size()) break;
            if (elapsed() > o.time_limit) {
                out_of_time = true;
                break;
            }
            if (plan[i] == kind::burst) s.burst(o.seed * 7919 + i);
            else s.run_one(plan[i], o.seed * 1000003 + i, cli);
            if (i + 1 == warm_entries) {
                std::lock_guard<std::mutex> l(warm_mu);
                malloc_trim(0);
                rss_warm = rss_bytes();
            }
        }
    };
    std::vector<std::thread> clients;
    for (int c = 0; c < o.clients; ++c) clients.emplace_back(worker);
    for (auto& t : clients) t.join();
    const double run_seconds = elapsed();

    // The end state, read over HTTP as an operator would.
    httplib::Client admin("127.0.0.1", port);
    admin.set_read_timeout(30, 0);
    httplib::Headers auth = {{"Authorization", std::string("Bearer ") + k_key}};
    json kv;
    bool idle = false;
    for (int i = 0; i < 600 && !idle; ++i) {
        auto r = admin.Get("/debug/kv", auth);
        if (r && r->status == 200) kv = json::parse(r->body, nullptr, false);
        idle = kv.is_object() && kv["running"] == 0 && kv["waiting"] == 0 && kv["pages_used"] == 0;
        if (!idle) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    std::string metrics_text;
    if (auto r = admin.Get("/metrics", auth); r && r->status == 200) metrics_text = r->body;
    auto sample = [&](const std::string& name) -> int64_t {
        const size_t p = metrics_text.find("\n" + name + " ");
        return p == std::string::npos ? -1 : int64_t(std::stod(metrics_text.substr(p + name.size() + 2)));
    };
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // connections of the last requests close
    malloc_trim(0);
    const int64_t rss_end = rss_bytes();
    srv.shutdown(false);
    server_thread.join();

    tally& t = s.counts();
    int64_t sent = 0, right = 0, wrong = 0, no_answer = 0;
    std::printf("| kind           |   sent |  right |  wrong | no answer |\n|----------------|--------|--------|--------|-----------|\n");
    for (int k = 0; k < n_kinds; ++k) {
        std::printf("| %-14s | %6lld | %6lld | %6lld | %9lld |\n", kind_names[k], (long long)t.sent[size_t(k)], (long long)t.right[size_t(k)],
                    (long long)t.wrong[size_t(k)], (long long)t.no_answer[size_t(k)]);
        sent += t.sent[size_t(k)];
        right += t.right[size_t(k)];
        wrong += t.wrong[size_t(k)];
        no_answer += t.no_answer[size_t(k)];
    }
    const int64_t over_limit = t.refused_503 + t.refused_413 + t.right[size_t(kind::over_context)];
    std::printf("requests %lld in %.1f s (%.0f/s): 200 %lld, 503 queue full %lld, 413 %lld, 401 %lld, other 400 %lld, disconnects %lld, "
                "over-limit %lld\n",
                (long long)sent, run_seconds, double(sent) / std::max(run_seconds, 1e-9), (long long)t.ok_200.load(), (long long)t.refused_503.load(),
                (long long)t.refused_413.load(), (long long)t.refused_401.load(), (long long)t.other_400.load(), (long long)t.disconnects.load(),
                (long long)over_limit);
    std::printf("server: rejected queue_full %lld, body_too_large %lld, unauthorized %lld; client disconnects %lld, request timeouts %lld, "
                "read timeouts %lld, cancelled %lld, finished %lld\n",
                (long long)sample("kvserve_http_rejected_total{reason=\"queue_full\"}"), (long long)sample("kvserve_http_rejected_total{reason=\"body_too_large\"}"),
                (long long)sample("kvserve_http_rejected_total{reason=\"unauthorized\"}"), (long long)sample("kvserve_http_client_disconnects_total"),
                (long long)sample("kvserve_http_request_timeouts_total"), (long long)sample("kvserve_http_read_timeouts_total"),
                (long long)sample("kvserve_requests_cancelled_total"), (long long)sample("kvserve_requests_finished_total"));
    std::printf("end state: %s; pages used %s of %s, integrity %s; RSS after warm-up %.1f MiB, at the end %.1f MiB\n", idle ? "idle" : "NOT IDLE",
                kv.is_object() ? kv["pages_used"].dump().c_str() : "?", kv.is_object() ? kv["pages_total"].dump().c_str() : "?",
                kv.is_object() ? kv["integrity"].dump().c_str() : "?", double(rss_warm) / (1 << 20), double(rss_end) / (1 << 20));
    for (const std::string& w : t.samples) std::printf("wrong answer: %s\n", w.c_str());

    std::vector<std::string> failures;
    if (out_of_time) failures.push_back("the run passed its time limit (hung requests?)");
    if (wrong > 0) failures.push_back(strfmt("%lld answers of the wrong kind", (long long)wrong));
    if (no_answer > 0) failures.push_back(strfmt("%lld requests got no answer", (long long)no_answer));
    if (!idle) failures.push_back("the engine did not go idle with no pages used (leaked pages or a stuck request)");
    if (!kv.is_object() || kv["integrity"] != "ok") failures.push_back("the KV integrity check failed");
    // A disconnecting client may have been refused too, without reading it.
    const int64_t server_503 = sample("kvserve_http_rejected_total{reason=\"queue_full\"}");
    if (server_503 < t.refused_503 || server_503 > t.refused_503 + t.disconnects)
        failures.push_back("the server's queue_full count does not match the clients'");
    if (sample("kvserve_http_rejected_total{reason=\"body_too_large\"}") != t.refused_413) failures.push_back("the server's body_too_large count differs from the clients'");
    if (sample("kvserve_http_rejected_total{reason=\"unauthorized\"}") != t.refused_401) failures.push_back("the server's unauthorized count differs from the clients'");
    const int64_t rss_margin = std::max<int64_t>(int64_t(32) << 20, rss_warm / 4);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    // A sanitizer holds freed memory back (ASan's quarantine, TSan's shadow): RSS says nothing here.
    std::printf("RSS check skipped: built with a sanitizer\n");
#else
    if (rss_warm > 0 && rss_end > rss_warm + rss_margin) failures.push_back("resident memory did not come back to its warm level");
#endif
    for (const std::string& f : failures) std::printf("FAIL: %s\n", f.c_str());
    if (failures.empty()) std::printf("PASS\n");
    return failures.empty() ? 0 : 1;
}

}  // namespace kvs::tools
