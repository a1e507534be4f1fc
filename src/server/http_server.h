// The OpenAI-compatible HTTP server over one engine.
//
// Routes:
//   POST /v1/completions, POST /v1/chat/completions   generation (JSON or SSE when "stream")
//   GET  /v1/models, GET /v1/models/{id}               the one served model
//   GET  /health                                       {"status": "ok"} (503 while draining); never needs a key
//   GET  /metrics                                      Prometheus text (metrics.h)
//   POST /tokenize   {"content", "add_special" = false, "parse_special" = true, "with_pieces" = false} -> {"tokens"}
//   POST /detokenize {"tokens"} -> {"content"}
// Errors use OpenAI's body ({"error": {"message", "type", "param", "code"}}): 400 invalid JSON
// or parameters (the engine's validation included, e.g. a prompt longer than the context),
// 401 missing or wrong key when api_key is set (header "Authorization: Bearer <key>"),
// 404 unknown route or model name (a missing "model" is accepted), 503 queue full or draining,
// 500 when the engine fails a request.
//
// Streaming: "data: <chunk>\n\n" per engine event, then "data: [DONE]\n\n"; while no event
// comes for a second (a queued request, a long prefill) an SSE comment ": keep-alive\n\n" is
// sent. A client that goes away mid-stream is noticed by a failing write (the next token or
// keep-alive) and its request is cancelled, so its KV pages return to the pool at the engine's
// next step.
// A client that drops a non-streamed request is not noticed: that request runs to its end.
//
// Lifecycle: create() -> bind() -> run() (blocks, on any thread) ... shutdown(drain) from
// another thread makes run() return. Contract: the model, tokenizer and engine outlive the
// server; shutdown() and cancel_all() are thread-safe; run() is called at most once.
#pragma once

#include <memory>
#include <string>

#include "core/status.h"
#include "kv/kv_policy.h"

namespace kvs {

class engine;
class llama_model;
class tokenizer;

struct server_config {
    std::string host = "127.0.0.1";
    int port = 8080;             // 0 = a free port chosen by the system (see http_server::port())
    std::string api_key;         // "" = no authentication
    std::string model_name;      // the served model id ("" = default_model_name())
    std::string chat_template;   // Jinja source; "" = the GGUF's tokenizer.chat_template, else the default
    int http_threads = 0;        // request threads; 0 = max_seqs + 8 (a streaming client holds one)
    kv_policy default_policy;    // KV policy of requests that name none (their "kv_policy" field)
};

// The model id to serve: the GGUF's general.name, else the file name without ".gguf".
std::string default_model_name(const llama_model& model, const std::string& path);

class http_server {
public:
    static result<std::unique_ptr<http_server>> create(const llama_model& model, const tokenizer& tok, engine& eng,
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
