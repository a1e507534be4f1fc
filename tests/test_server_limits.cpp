// The server's limits over real HTTP on 127.0.0.1 with the stories260K model: several API keys
// (and their parsing), the wait-queue bound (503 with Retry-After, /health "overloaded"), the
// request timeout (504, or a final SSE error event, pages freed), the body size limit (413),
// the whole-request read deadline against a client that trickles bytes, the cancellation of a
// non-streamed request whose client goes away, cpp-httplib's own errors in OpenAI's shape, and
// the /debug/kv integrity route. Each test fails when its rule is taken out.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server/api_keys.h"
#include "server_fixture.h"

using namespace kvs;
using namespace kvs::test;

namespace {

// A blocking TCP connection to 127.0.0.1:port (-1 on failure).
int connect_loopback(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(fd);
        return -1;
    }
    return fd;
}

bool send_all(int fd, const std::string& s) { return ::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == ssize_t(s.size()); }

// Reads until the peer closes (or timeout_ms without data).
std::string read_until_close(int fd, int timeout_ms) {
    std::string out;
    char buf[4096];
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, timeout_ms) != 1) break;
        const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        out.append(buf, size_t(n));
    }
    return out;
}

// Whether the server has closed the connection (a read sees the end or a reset).
bool peer_closed(int fd) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) != 1) return false;
    char c;
    return ::recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

// A request that runs until something stops it: past the context under a sliding policy.
json endless_completion() {
    return {{"prompt", "Once upon a time"}, {"max_tokens", 1000000}, {"ignore_eos", true},
            {"temperature", 0}, {"kv_policy", "streaming:sinks=4,size=60"}};
}

}  // namespace

TEST(server_limits, api_key_file_parsing) {
    auto keys = parse_api_keys("# keys of the team\n\nalpha\r\n  beta-key  \n#gamma\nlast");
    ASSERT_TRUE(keys) << keys.message();
    EXPECT_EQ(keys.value(), (std::vector<std::string>{"alpha", "beta-key", "last"}));
    auto bad = parse_api_keys("alpha\nbad key\n");
    ASSERT_FALSE(bad);
    EXPECT_NE(bad.message().find("line 2"), std::string::npos) << bad.message();
    EXPECT_FALSE(parse_api_keys(std::string("a\x01z")));
    EXPECT_TRUE(parse_api_keys("").value().empty());
    EXPECT_EQ(split_api_keys(" one, two ,,three"), (std::vector<std::string>{"one", "two", "three"}));
    EXPECT_TRUE(split_api_keys("").empty());

    const std::vector<std::string> k = {"alpha", "beta-key"};
    EXPECT_TRUE(api_key_matches(k, "alpha"));
    EXPECT_TRUE(api_key_matches(k, "beta-key"));
    EXPECT_FALSE(api_key_matches(k, "alph"));
    EXPECT_FALSE(api_key_matches(k, "alphaa"));
    EXPECT_FALSE(api_key_matches(k, "beta-kez"));
    EXPECT_FALSE(api_key_matches(k, std::string("alpha\0", 6)));
    EXPECT_FALSE(api_key_matches(k, ""));
    EXPECT_FALSE(api_key_matches({}, "alpha"));
}

TEST(server_limits, several_keys_and_public_metrics) {
    NEED_MODEL(f);
    server_config sc;
    sc.api_keys = {"alpha", "beta-key"};
    {
        served s(f, small_engine(), sc);
        EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "alpha").first, 200);
        EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "beta-key").first, 200);
        EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "gamma").first, 401);
        EXPECT_EQ(s.get("/metrics").first, 401);  // guarded by default
        EXPECT_EQ(s.get("/health").first, 200);
        auto [ms, mb] = s.get("/metrics", "beta-key");
        ASSERT_EQ(ms, 200);
        EXPECT_EQ(metric(mb, "kvserve_http_rejected_total{reason=\"unauthorized\"}"), 2);
    }
    sc.public_metrics = true;
    served s(f, small_engine(), sc);
    EXPECT_EQ(s.get("/metrics").first, 200);
    EXPECT_EQ(s.get("/v1/models").first, 401);
}

// One endless stream holds the only sequence slot, a second request the queue's one place; a
// third is refused at once with 503, Retry-After and OpenAI's error, and /health says so.
TEST(server_limits, queue_full_is_503_with_retry_after) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.max_seqs = 1;
    ec.max_queued = 1;
    server_config sc;
    sc.retry_after = 3;
    served s(f, ec, sc);
    std::atomic<bool> streaming{false}, release{false};
    std::thread holder([&] { stream_until_released(s, endless_completion(), streaming, release); });
    while (!streaming) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::thread waiter([&] { EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2)).first, 200); });
    while (s.eng->stats().waiting < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));

    auto [hs, hb] = s.get("/health");
    EXPECT_EQ(hs, 503);
    EXPECT_EQ(json::parse(hb)["status"], "overloaded");
    auto c = s.client();
    auto r = c->Post("/v1/completions", greedy_completion("Hi", 2).dump(), "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 503);
    EXPECT_EQ(r->get_header_value("Retry-After"), "3");
    json b = json::parse(r->body);
    EXPECT_EQ(b["error"]["type"], "server_error");
    EXPECT_EQ(b["error"]["code"], "server_overloaded");
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_http_rejected_total{reason=\"queue_full\"}"), 1);
    release = true;
    holder.join();
    waiter.join();
    EXPECT_TRUE(wait_idle(s));
    EXPECT_EQ(s.get("/health").first, 200);
}

TEST(server_limits, request_timeout_ends_a_whole_request) {
    NEED_MODEL(f);
    server_config sc;
    sc.request_timeout = 0.3;
    served s(f, small_engine(), sc);
    auto [st, b] = s.post("/v1/completions", endless_completion());
    EXPECT_EQ(st, 504) << b.dump();
    EXPECT_EQ(b["error"]["code"], "timeout");
    ASSERT_TRUE(wait_idle(s)) << "pages still used after the timeout";
    EXPECT_EQ(s.eng->stats().sched.requests_cancelled, 1);
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_http_request_timeouts_total"), 1);
    // A request that ends in time is not touched.
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 4)).first, 200);
}

TEST(server_limits, request_timeout_ends_a_stream_with_an_error_event) {
    NEED_MODEL(f);
    server_config sc;
    // Long enough for tokens to stream first even on a loaded machine under a sanitizer.
    sc.request_timeout = 1.5;
    served s(f, small_engine(), sc);
    sse_result r = post_stream(s, "/v1/completions", endless_completion());
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(r.done);
    ASSERT_FALSE(r.chunks.empty());
    EXPECT_EQ(r.chunks.back()["error"]["code"], "timeout") << r.chunks.back().dump();
    EXPECT_GT(r.chunks.size(), 2u);  // tokens came before the timeout
    ASSERT_TRUE(wait_idle(s));
    EXPECT_EQ(s.eng->stats().sched.requests_cancelled, 1);
}

TEST(server_limits, body_over_the_limit_is_413) {
    NEED_MODEL(f);
    server_config sc;
    sc.max_body_bytes = 4096;
    served s(f, small_engine(), sc);
    auto [st, b] = s.post("/v1/completions", greedy_completion(std::string(8000, 'a'), 2));
    EXPECT_EQ(st, 413);
    EXPECT_EQ(b["error"]["type"], "invalid_request_error") << b.dump();
    EXPECT_NE(b["error"]["message"].get<std::string>().find("4096"), std::string::npos);
    EXPECT_EQ(s.post("/v1/completions", greedy_completion(std::string(1000, 'a'), 2)).first, 200);
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_http_rejected_total{reason=\"body_too_large\"}"), 1);
}

// A client that sends a byte every 150 ms never trips cpp-httplib's per-read timeout, but the
// whole request must arrive within read_timeout: the server closes the connection, in the
// headers and in the body alike, and goes on serving others.
TEST(server_limits, slow_client_is_disconnected) {
    NEED_MODEL(f);
    server_config sc;
    sc.read_timeout = 1.0;
    served s(f, small_engine(), sc);
    const std::string heads[] = {
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",  // trickled header
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"prompt\": \"",
    };
    for (const std::string& head : heads) {
        const int fd = connect_loopback(s.port);
        ASSERT_GE(fd, 0);
        ASSERT_TRUE(send_all(fd, head));
        bool closed = false;
        for (int i = 0; i < 60 && !closed; ++i) {  // 9 s of trickling at most
            std::this_thread::sleep_for(std::chrono::milliseconds(150));
            closed = peer_closed(fd) || !send_all(fd, "a");
        }
        EXPECT_TRUE(closed) << "a trickling client kept its connection: " << head.substr(0, 20);
        ::close(fd);
        EXPECT_EQ(s.get("/health").first, 200);
    }
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_http_read_timeouts_total"), 2);
}

// The client of a non-streamed request goes away: its request is cancelled and its pages
// freed, rather than running to max_tokens.
TEST(server_limits, non_stream_disconnect_cancels) {
    NEED_MODEL(f);
    served s(f);
    const int fd = connect_loopback(s.port);
    ASSERT_GE(fd, 0);
    const std::string body = endless_completion().dump();
    ASSERT_TRUE(send_all(fd, "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
                                 std::to_string(body.size()) + "\r\n\r\n" + body));
    while (s.eng->stats().sched.generated_tokens < 20) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    ::close(fd);
    ASSERT_TRUE(wait_idle(s)) << "the request kept running after its client left";
    EXPECT_EQ(s.eng->stats().sched.requests_cancelled, 1);
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_http_client_disconnects_total"), 1);
}

TEST(server_limits, malformed_http_gets_an_openai_error) {
    NEED_MODEL(f);
    served s(f);
    const int fd = connect_loopback(s.port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(send_all(fd, "NOT A REQUEST\r\n\r\n"));
    const std::string resp = read_until_close(fd, 5000);
    ::close(fd);
    ASSERT_EQ(resp.rfind("HTTP/1.1 400", 0), 0u) << resp;
    const json b = json::parse(resp.substr(resp.find("\r\n\r\n") + 4), nullptr, false);
    ASSERT_TRUE(b.is_object()) << resp;
    EXPECT_EQ(b["error"]["type"], "invalid_request_error");
}

TEST(server_limits, debug_kv_route) {
    NEED_MODEL(f);
    {
        served s(f);
        EXPECT_EQ(s.get("/debug/kv").first, 404);  // off by default
    }
    server_config sc;
    sc.debug_routes = true;
    served s(f, small_engine(), sc);
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 8)).first, 200);
    auto [st, body] = s.get("/debug/kv");
    ASSERT_EQ(st, 200);
    const json b = json::parse(body);
    EXPECT_EQ(b["integrity"], "ok");
    EXPECT_EQ(b["pages_used"], 0);
    EXPECT_EQ(b["pages_total"], s.eng->stats().kv_pages_total);
}
