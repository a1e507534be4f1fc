// The OpenAI-compatible HTTP server over one engine.
//
// Routes:
//   POST /v1/completions, POST /v1/chat/completions   generation (JSON or SSE when "stream")
//   GET  /v1/models, GET /v1/models/{id}               the one served model
//   GET  /health    {"status": "ready"} 200; "overloaded" 503 (the wait queue is full);
//                   "draining" 503 (shutting down); never needs a key
//   GET  /metrics   Prometheus text (metrics.h); needs a key when keys are set, unless public_metrics
//   POST /tokenize   {"content", "add_special" = false, "parse_special" = true, "with_pieces" = false} -> {"tokens"}
//   POST /detokenize {"tokens"} -> {"content"}
//   GET  /debug/kv  only with debug_routes: the engine's KV integrity check and page counts
// Errors use OpenAI's body ({"error": {"message", "type", "param", "code"}}): 400 invalid JSON
// or parameters (the engine's validation included, e.g. a prompt longer than the context) or a
// malformed HTTP request, 401 missing or wrong key when keys are set (header "Authorization:
// Bearer <key>"), 404 unknown route or model name (a missing "model" is accepted), 413 a body
// over max_body_bytes, 503 wait queue full (with "Retry-After") or draining, 504 a request over
// request_timeout (as a final SSE error event once streaming has begun), 500 when the engine
// fails a request.
//
// Overload: the engine runs max_seqs sequences and queues at most engine_config::max_queued
// more; a request beyond that is answered 503 at once. Every running or queued request holds an
// HTTP thread (it waits for its tokens), so the default pool has max_seqs + max_queued + 8
// threads: the spare ones answer refusals, /health and /metrics while the rest wait.
// Slow clients: the whole request (headers and body) must arrive within read_timeout seconds of
// the connection's accept (or of its previous response), else the connection is closed
// (connection_watchdog.h); an idle keep-alive connection is closed after 2 s.
//
// Streaming: "data: <chunk>\n\n" per engine event, then "data: [DONE]\n\n"; while no event
// comes for a second (a queued request, a long prefill) an SSE comment ": keep-alive\n\n" is
// sent. A client that goes away mid-stream is noticed by a failing write (the next token or
// keep-alive) and its request is cancelled, so its KV pages return to the pool at the engine's
// next step. A client that drops a non-streamed request is noticed by the watchdog within
// about 0.1 s, and its request is cancelled too.
//
// Lifecycle: create() -> bind() -> run() (blocks, on any thread) ... shutdown(drain) from
// another thread makes run() return. Contract: the model, tokenizer and engine outlive the
// server; shutdown() and cancel_all() are thread-safe; run() is called at most once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "kv/kv_policy.h"
#include "sched/pooling.h"
#include "sched/speculative.h"

namespace kvs {

class engine;
class language_model;
class tokenizer;

struct server_config {
    std::string host = "127.0.0.1";
    int port = 8080;             // 0 = a free port chosen by the system (see http_server::port())
    std::vector<std::string> api_keys;  // accepted keys; empty = no authentication
    bool public_metrics = false;        // /metrics open even when keys are set
    bool debug_routes = false;          // serve GET /debug/kv
    std::string model_name;      // the served model id ("" = default_model_name())
    std::string chat_template;   // Jinja source; "" = the GGUF's tokenizer.chat_template, else the default
    int http_threads = 0;        // request threads; 0 = max_seqs + max_queued + 8 (a request holds one)
    int64_t max_body_bytes = int64_t(16) << 20;  // larger request bodies get 413
    double request_timeout = 0;  // seconds a generation request may wait and run (504); 0 = no limit
    double read_timeout = 10;    // seconds for a whole request to arrive; 0 = no limit
    int retry_after = 1;         // seconds, the Retry-After of a 503
    kv_policy default_policy;    // KV policy of requests that name none (their "kv_policy" field)
    speculative_params default_speculative;  // speculation of requests that name none (their "speculative" field)
    pooling_type pooling = pooling_type::last;  // /v1/embeddings: how token states become a vector (serve --pooling)
};

// The model id to serve: the GGUF's general.name, else the file name without ".gguf".
std::string default_model_name(const language_model& model, const std::string& path);

class http_server {
public:
    static result<std::unique_ptr<http_server>> create(const language_model& model, const tokenizer& tok, engine& eng,
                                                       const server_config& config);
    ~http_server();  // shutdown(false) if still running
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;

    // Binds config.host:config.port and listens (a backlog of SOMAXCONN, so that a burst of
    // clients is queued, not dropped). Error (with the address) when the port is taken.
    status bind();
    int port() const;  // the bound port (after bind())
    const std::string& model_name() const;
    // Serves until shutdown(). Returns at once if shutdown() came first.
    status run();
    // Stops taking generation requests (503 "the server is shutting down"); with drain, waits
    // until every accepted request has finished and its response is written, otherwise cancels
    // them; then stops the listener. Returns when run() has returned (or was never started).
    void shutdown(bool drain);
    // Cancels every in-flight generation request (they end with finish_reason "cancelled").
    void cancel_all();

private:
    struct impl;
    explicit http_server(std::unique_ptr<impl> p);
    std::unique_ptr<impl> impl_;
};

}  // namespace kvs
