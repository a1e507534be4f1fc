// Helpers of the server tests: an engine and an http_server on an ephemeral loopback port,
// JSON and SSE clients over real HTTP, Prometheus sample lookup, and waiting for idle.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "sched/engine.h"
#include "server/http.h"
#include "server/http_server.h"
#include "stories_fixture.h"
#include "tokenizer/tokenizer.h"

namespace kvs::test {

using json = nlohmann::json;
using fixture = stories_fixture;

inline engine_config small_engine() {
    engine_config ec;
    ec.threads = 1;
    ec.sched.max_seqs = 16;
    ec.kv_tokens = 16 * 1024;
    return ec;
}

// An engine and a server on 127.0.0.1:<ephemeral>, running on a background thread.
struct served {
    std::unique_ptr<engine> eng;
    std::unique_ptr<http_server> srv;
    std::thread th;
    int port = -1;

    served(const fixture* f, engine_config ec = small_engine(), server_config sc = {}) : served(*f->model, *f->tok, ec, sc) {}
    served(const language_model& model, const tokenizer& tok, engine_config ec = small_engine(), server_config sc = {}) {
        sc.host = "127.0.0.1";
        sc.port = 0;
        if (sc.model_name.empty()) sc.model_name = "stories";
        eng = std::move(engine::create(model, tok, ec).value());
        srv = std::move(http_server::create(model, tok, *eng, sc).value());
        status st = srv->bind();
        EXPECT_TRUE(st) << st.message();
        port = srv->port();
        th = std::thread([this] { EXPECT_TRUE(srv->run()); });
    }
    ~served() {
        srv->shutdown(true);
        th.join();
        srv.reset();
        eng.reset();
    }
    std::unique_ptr<httplib::Client> client() const {
        auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
        c->set_read_timeout(60, 0);
        c->set_write_timeout(10, 0);
        return c;
    }
    // POST a JSON body; returns {status, parsed body (null if not JSON)}.
    std::pair<int, json> post(const std::string& path, const json& body, const std::string& key = "") const {
        return post_raw(path, body.dump(), key);
    }
    std::pair<int, json> post_raw(const std::string& path, const std::string& body, const std::string& key = "") const {
        auto c = client();
        httplib::Headers h;
        if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
        auto r = c->Post(path.c_str(), h, body, "application/json");
        if (!r) return {-1, nullptr};
        return {r->status, json::parse(r->body, nullptr, false)};
    }
    std::pair<int, std::string> get(const std::string& path, const std::string& key = "") const {
        auto c = client();
        httplib::Headers h;
        if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
        auto r = c->Get(path.c_str(), h);
        if (!r) return {-1, ""};
        return {r->status, r->body};
    }
};

// A streamed response: the JSON chunks (in order) and whether "data: [DONE]" ended it.
struct sse_result {
    int status = -1;
    std::vector<json> chunks;
    bool done = false;
};

inline std::vector<std::string> split_events(const std::string& body) {
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < body.size()) {
        size_t end = body.find("\n\n", pos);
        if (end == std::string::npos) break;
        out.push_back(body.substr(pos, end - pos));
        pos = end + 2;
    }
    return out;
}

// Streams a request. stop_after > 0: the client disconnects after that many events.
inline sse_result post_stream(const served& s, const std::string& path, json body, int stop_after = 0) {
    body["stream"] = true;
    auto c = s.client();
    httplib::Request req;
    req.method = "POST";
    req.path = path;
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    std::string buf;
    sse_result out;
    int n_events = 0;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
        buf.append(data, len);
        n_events = int(split_events(buf).size());
        return stop_after <= 0 || n_events < stop_after;
    };
    auto r = c->send(req);
    if (r) out.status = r->status;
    for (const std::string& ev : split_events(buf)) {
        if (ev.rfind(":", 0) == 0) continue;  // an SSE comment (keep-alive)
        EXPECT_EQ(ev.rfind("data: ", 0), 0u) << ev;
        const std::string payload = ev.substr(6);
        if (payload == "[DONE]") {
            out.done = true;
            continue;
        }
        EXPECT_FALSE(out.done) << "data after [DONE]";
        out.chunks.push_back(json::parse(payload, nullptr, false));
        EXPECT_FALSE(out.chunks.back().is_discarded()) << payload;
    }
    return out;
}

// Concatenated text per choice index of a streamed response (completions or chat).
inline std::map<int, std::string> stream_texts(const sse_result& r, std::map<int, std::string>* finish = nullptr) {
    std::map<int, std::string> out;
    for (const json& c : r.chunks) {
        if (!c.is_object() || !c.contains("choices")) {
            ADD_FAILURE() << "not a chunk: " << c.dump();
            continue;
        }
        for (const json& ch : c["choices"]) {
            const int i = ch["index"].get<int>();
            if (ch.contains("text")) out[i] += ch["text"].get<std::string>();
            if (ch.contains("delta") && ch["delta"].contains("content")) out[i] += ch["delta"]["content"].get<std::string>();
            if (finish && !ch["finish_reason"].is_null()) (*finish)[i] = ch["finish_reason"].get<std::string>();
        }
    }
    return out;
}

// The value of one Prometheus sample (-1 when absent).
inline double metric(const std::string& text, const std::string& name) {
    size_t pos = 0;
    while ((pos = text.find(name + " ", pos)) != std::string::npos) {
        if (pos == 0 || text[pos - 1] == '\n') return std::stod(text.substr(pos + name.size() + 1));
        pos += name.size();
    }
    return -1;
}

// Polls engine stats until nothing runs and no page is used (or ~10 s pass).
inline bool wait_idle(const served& s) {
    for (int i = 0; i < 1000; ++i) {
        engine_stats st = s.eng->stats();
        if (st.running == 0 && st.waiting == 0 && st.kv_pages_used == 0) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
}

// Streams a completion request until `release` is set (then disconnects); `streaming` turns
// true with the first bytes. Run it on its own thread to hold a sequence slot.
inline void stream_until_released(const served& s, json req, std::atomic<bool>& streaming, const std::atomic<bool>& release) {
    req["stream"] = true;
    auto c = s.client();
    httplib::Request r;
    r.method = "POST";
    r.path = "/v1/completions";
    r.body = req.dump();
    r.set_header("Content-Type", "application/json");
    r.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
        streaming = true;
        return !release.load();
    };
    c->send(r);
}

inline json greedy_completion(const std::string& prompt, int max_tokens) {
    return {{"prompt", prompt}, {"temperature", 0}, {"max_tokens", max_tokens}};
}

}  // namespace kvs::test
