#include "server/http_server.h"

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <set>
#include <thread>

#include <sys/socket.h>

#include <nlohmann/json.hpp>

#include "model/forward_state.h"
#include "model/language_model.h"
#include "sched/engine.h"
#include "server/api_keys.h"
#include "server/chat_prompt.h"
#include "server/connection_watchdog.h"
#include "server/embeddings.h"
#include "server/http.h"
#include "server/metrics.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "tokenizer/tokenizer.h"

namespace kvs {

using json = nlohmann::json;

std::string default_model_name(const language_model& model, const std::string& path) {
    auto name = model.file().get_string_opt("general.name");
    if (name && name.value() && !name.value()->empty()) return *name.value();
    std::string stem = std::filesystem::path(path).filename().string();
    if (stem.size() > 5 && stem.ends_with(".gguf")) stem.resize(stem.size() - 5);
    return stem.empty() ? "model" : stem;
}

namespace {

// Pending connections the kernel queues for the accept loop (capped by net.core.somaxconn).
constexpr int listen_backlog = SOMAXCONN;

constexpr const char* k_json_type = "application/json";

// An idle keep-alive connection is closed after this long without a new request.
constexpr int k_keep_alive_seconds = 2;

void send_json(httplib::Response& res, int code, const json& body) {
    res.status = code;
    res.set_content(dump_json(body), k_json_type);
}

void send_error(httplib::Response& res, const api_error& e) {
    res.status = e.http_status;
    res.set_content(api_error_body(e), k_json_type);
}

// The request parameter an engine validation message is about ("" when none fits).
std::string param_of_engine_message(const std::string& msg, api_endpoint ep) {
    const std::string prompt_field = ep == api_endpoint::chat ? "messages" : "prompt";
    if (msg.find("plus max_tokens") != std::string::npos) return "max_tokens";
    if (msg.starts_with("the prompt") || msg.starts_with("prompt token")) return prompt_field;
    if (msg.starts_with("top_logprobs")) return ep == api_endpoint::chat ? "top_logprobs" : "logprobs";
    static const char* const names[] = {"n", "min_tokens", "max_tokens", "temperature", "top_p", "min_p", "top_k",
                                        "presence_penalty", "frequency_penalty"};
    const std::string first = msg.substr(0, msg.find(' '));
    for (const char* n : names)
        if (first == n) return n;
    if (first == "repeat_penalty") return "repetition_penalty";
    if (first == "kv_policy") return "kv_policy";
    if (first == "speculative") return "speculative";
    if (msg.starts_with("beam search") || msg.starts_with("the beam width")) return "best_of";
    return "";
}

api_error shutting_down_error() {
    return {503, "the server is shutting down", "", "server_error", "service_unavailable"};
}

api_error timeout_error(double seconds) {
    return {504, strfmt("the request did not finish within the server's request timeout (%g s)", seconds), "", "server_error", "timeout"};
}

// The message of an error cpp-httplib answers by itself (no handler ran).
std::string http_error_message(int status, const httplib::Request& req) {
    switch (status) {
        case 400: return "malformed HTTP request";
        case 413: return "the request body is larger than the server accepts";
        case 414: return "the request URI is too long";
        case 416: return "the requested range is not satisfiable";
        default: return strfmt("HTTP error %d for %s %s", status, req.method.c_str(), req.path.c_str());
    }
}

// The JSON body (keys in the request's order), or a 400 naming where it fails to parse.
std::optional<api_error> parse_body(const httplib::Request& req, nlohmann::ordered_json* out) {
    try {
        *out = nlohmann::ordered_json::parse(req.body);
    } catch (const nlohmann::ordered_json::parse_error& e) {
        return api_error::invalid(std::string("invalid JSON in the request body: ") + e.what());
    }
    if (!out->is_object()) return api_error::invalid("the request body must be a JSON object");
    return std::nullopt;
}

// One streamed response: what the content provider needs between calls.
struct stream_job {
    std::shared_ptr<request_stream> stream;
    response_meta meta;
    openai_request req;
    std::vector<stream_choice_state> choices;
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    std::string peer;  // connection_watchdog key
};

std::string peer_of(const httplib::Request& req) { return connection_watchdog::peer_key(req.remote_addr, req.remote_port); }

}  // namespace

struct http_server::impl {
    impl(const language_model& m, const tokenizer& t, engine& e, const server_config& c) : model(m), tok(t), eng(e), cfg(c) {}

    const language_model& model;
    const tokenizer& tok;
    engine& eng;
    server_config cfg;
    std::string name;                 // the served model id
    std::unique_ptr<chat_prompt> chat;
    httplib::Server svr;
    server_metrics metrics;
    connection_watchdog watchdog;
    int port = -1;
    socket_t listen_fd = INVALID_SOCKET;  // the listening socket, seen by the socket options hook

    std::mutex mu;
    std::condition_variable cv;       // active reached 0, run() returned
    bool stopping = false, run_started = false, run_returned = false;
    std::set<std::shared_ptr<request_stream>> active;  // accepted, response not yet written

    void setup_routes();
    bool authorized(const httplib::Request& req) const;
    httplib::Server::Handler route(httplib::Server::Handler h);
    std::chrono::steady_clock::time_point deadline_from_now() const;
    void send_overloaded(httplib::Response& res, const std::string& message);
    json debug_kv() const;
    void handle_generate(const httplib::Request& req, httplib::Response& res, api_endpoint ep);
    std::optional<api_error> build_request(const nlohmann::ordered_json& body, api_endpoint ep, openai_request* r);
    void respond_whole(const httplib::Request& req, httplib::Response& res, const openai_request& r, const std::shared_ptr<request_stream>& s,
                       std::chrono::steady_clock::time_point deadline);
    void respond_stream(const httplib::Request& req, httplib::Response& res, openai_request r, std::shared_ptr<request_stream> s,
                        std::chrono::steady_clock::time_point deadline);
    bool write_stream(stream_job& job, httplib::DataSink& sink);
    void handle_tokenize(const httplib::Request& req, httplib::Response& res);
    void handle_embeddings(const httplib::Request& req, httplib::Response& res);
    void handle_detokenize(const httplib::Request& req, httplib::Response& res);
    json model_card() const;

    void begin(const std::shared_ptr<request_stream>& s) {
        std::lock_guard<std::mutex> l(mu);
        active.insert(s);
    }
    void end(const std::shared_ptr<request_stream>& s) {
        {
            std::lock_guard<std::mutex> l(mu);
            active.erase(s);
        }
        cv.notify_all();
    }
    bool is_stopping() {
        std::lock_guard<std::mutex> l(mu);
        return stopping;
    }
};

bool http_server::impl::authorized(const httplib::Request& req) const {
    if (cfg.api_keys.empty() || req.path == "/health") return true;
    if (cfg.public_metrics && req.path == "/metrics") return true;
    const std::string h = req.get_header_value("Authorization");
    const std::string prefix = "Bearer ";
    if (h.size() <= prefix.size() || h.compare(0, prefix.size(), prefix) != 0) return false;
    return api_key_matches(cfg.api_keys, std::string_view(h).substr(prefix.size()));
}

// A route's handler runs once the whole request has been read: from then on the connection
// has no read deadline (the logger hands it back after the response).
httplib::Server::Handler http_server::impl::route(httplib::Server::Handler h) {
    return [this, h = std::move(h)](const httplib::Request& req, httplib::Response& res) {
        watchdog.handler_started(peer_of(req));
        h(req, res);
    };
}

std::chrono::steady_clock::time_point http_server::impl::deadline_from_now() const {
    if (cfg.request_timeout <= 0) return std::chrono::steady_clock::time_point::max();
    return std::chrono::steady_clock::now() +
           std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(cfg.request_timeout));
}

void http_server::impl::send_overloaded(httplib::Response& res, const std::string& message) {
    metrics.count_rejected("queue_full");
    res.set_header("Retry-After", std::to_string(std::max(1, cfg.retry_after)));
    send_error(res, {503, message + "; retry later", "", "server_error", "server_overloaded"});
}

json http_server::impl::debug_kv() const {
    const status integrity = eng.check_integrity();
    const engine_stats st = eng.stats();
    json groups = json::array();
    for (const kv_group_stats& g : st.kv_groups)
        groups.push_back({{"name", g.name}, {"layers", g.n_layer}, {"window", g.window}, {"pages_total", g.pages_total},
                          {"pages_used", g.pages_used}, {"page_bytes", g.page_bytes}});
    return {{"integrity", integrity ? "ok" : integrity.message()},
            {"pages_total", st.kv_pages_total},
            {"pages_used", st.kv_pages_used},
            {"pages_cached", st.kv_pages_cached},
            {"pages_free", st.kv_pages_total - st.kv_pages_used - st.kv_pages_cached},
            {"groups", groups},
            {"running", st.running},
            {"waiting", st.waiting},
            {"open_connections", watchdog.open_connections()}};
}

std::optional<api_error> http_server::impl::build_request(const nlohmann::ordered_json& body, api_endpoint ep, openai_request* r) {
    // An unknown model is a 404, as OpenAI answers; a missing one means the served model.
    if (auto m = body.find("model"); m != body.end() && m->is_string() && m->get_ref<const std::string&>() != name)
        return api_error{404, "the model '" + m->get<std::string>() + "' does not exist (this server serves '" + name + "')",
                         "model", "invalid_request_error", "model_not_found"};
    auto e = ep == api_endpoint::chat ? parse_chat_request(body, r) : parse_completion_request(body, tok, r);
    if (e) return e;
    if (ep == api_endpoint::chat) {
        auto tokens = chat->tokenize(r->messages, r->tools, r->template_kwargs);
        if (!tokens) return api_error::invalid(tokens.message(), "messages");
        r->params.prompt = std::move(tokens.value());
    }
    return std::nullopt;
}

void http_server::impl::handle_generate(const httplib::Request& req, httplib::Response& res, api_endpoint ep) {
    const auto deadline = deadline_from_now();  // the time it waits in the queue counts
    nlohmann::ordered_json body;
    if (auto e = parse_body(req, &body)) return send_error(res, *e);
    openai_request r;
    r.params.policy = cfg.default_policy;  // the request's "kv_policy" overrides it
    r.params.speculative = cfg.default_speculative;  // and its "speculative" this
    if (auto e = build_request(body, ep, &r)) return send_error(res, *e);
    if (is_stopping()) {
        metrics.count_rejected("draining");
        return send_error(res, shutting_down_error());
    }
    auto sub = eng.submit(r.params);
    if (!sub) {
        const status err = sub.error();
        if (err.code() == 503 && is_stopping()) {
            metrics.count_rejected("draining");
            return send_error(res, shutting_down_error());
        }
        if (err.code() == 503) return send_overloaded(res, err.message());
        return send_error(res, api_error::invalid(err.message(), param_of_engine_message(err.message(), ep)));
    }
    std::shared_ptr<request_stream> s = std::move(sub.value());
    begin(s);
    if (r.stream) {
        respond_stream(req, res, std::move(r), std::move(s), deadline);
        return;
    }
    respond_whole(req, res, r, s, deadline);
    end(s);
}

void http_server::impl::respond_whole(const httplib::Request& req, httplib::Response& res, const openai_request& r,
                                      const std::shared_ptr<request_stream>& s, std::chrono::steady_clock::time_point deadline) {
    std::vector<completion_choice> choices(static_cast<size_t>(r.params.n));
    std::string error;
    bool cancelled = false;
    const std::string peer = peer_of(req);
    for (;;) {
        auto ev = s->pop(100);
        if (!ev && s->done()) break;
        if (watchdog.peer_gone(peer)) {
            // Nobody will read the answer: free the pages now rather than at the end.
            s->cancel();
            while (s->pop()) {
            }
            metrics.count_client_disconnect();
            res.status = 499;  // the client closed the connection (nothing is written)
            return;
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            s->cancel();
            while (s->pop()) {
            }
            metrics.count_request_timeout();
            return send_error(res, timeout_error(cfg.request_timeout));
        }
        if (!ev) continue;
        if (ev->index < 0 || ev->index >= r.params.n) continue;
        completion_choice& c = choices[static_cast<size_t>(ev->index)];
        c.text += ev->text;
        for (auto& lp : ev->logprobs) c.logprobs.push_back(std::move(lp));
        if (ev->finish != finish_reason::none) c.finish = ev->finish;
        if (ev->finish == finish_reason::error) error = ev->error;
        if (ev->finish == finish_reason::cancelled) cancelled = true;
    }
    if (!error.empty()) return send_error(res, {500, "generation failed: " + error, "", "server_error", ""});
    if (cancelled) return send_error(res, shutting_down_error());
    const response_meta meta = make_response_meta(r.endpoint, name);
    send_json(res, 200, completion_response(meta, choices, s->usage(), tok, r.params.n_logprobs >= 0, r.echo ? r.prompt_text : ""));
}

bool http_server::impl::write_stream(stream_job& job, httplib::DataSink& sink) {
    using clock = std::chrono::steady_clock;
    auto last_write = clock::now();
    auto write = [&](const std::string& s) {
        last_write = clock::now();
        return sink.write(s.data(), s.size());
    };
    const bool with_lp = job.req.params.n_logprobs >= 0;
    const std::string echo = job.req.echo ? job.req.prompt_text : "";
    for (int32_t i = 0; i < job.req.params.n; ++i) {
        json open = stream_open_chunk(job.meta, i, echo, job.req.include_usage);
        if (!open.is_null() && !write(sse_data(open))) return false;
    }
    for (;;) {
        auto ev = job.stream->pop(100);
        if (!ev && job.stream->done()) break;
        if (clock::now() >= job.deadline) {
            // The final event is the error; the engine frees the pages at its next step.
            job.stream->cancel();
            while (job.stream->pop()) {
            }
            metrics.count_request_timeout();
            if (!write("data: " + api_error_body(timeout_error(cfg.request_timeout)) + "\n\n")) return false;
            return write(sse_done());
        }
        if (!ev) {
            // While nothing comes (queued, long prefill), an SSE comment every second finds out
            // whether the client is still there: writes to a closed connection fail.
            if (!sink.is_writable() || watchdog.peer_gone(job.peer)) return false;
            if (clock::now() - last_write >= std::chrono::seconds(1) && !write(": keep-alive\n\n")) return false;
            continue;
        }
        if (ev->index < 0 || ev->index >= job.req.params.n) continue;
        if (ev->finish == finish_reason::error) {
            const api_error e{500, "generation failed: " + ev->error, "", "server_error", ""};
            if (!write("data: " + api_error_body(e) + "\n\n")) return false;
            continue;
        }
        json chunk = stream_event_chunk(job.meta, *ev, tok, with_lp, job.req.include_usage,
                                        &job.choices[static_cast<size_t>(ev->index)]);
        if (!chunk.is_null() && !write(sse_data(chunk))) return false;
    }
    if (job.req.include_usage && !write(sse_data(stream_usage_chunk(job.meta, job.stream->usage())))) return false;
    return write(sse_done());
}

void http_server::impl::respond_stream(const httplib::Request& req, httplib::Response& res, openai_request r,
                                       std::shared_ptr<request_stream> s, std::chrono::steady_clock::time_point deadline) {
    auto job = std::make_shared<stream_job>();
    job->stream = std::move(s);
    job->deadline = deadline;
    job->peer = peer_of(req);
    job->meta = make_response_meta(r.endpoint, name);
    job->choices.resize(static_cast<size_t>(r.params.n));
    for (auto& c : job->choices) c.text_offset = r.echo ? int64_t(r.prompt_text.size()) : 0;
    job->req = std::move(r);
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job](size_t, httplib::DataSink& sink) {
            if (!write_stream(*job, sink)) {
                if (!job->stream->done()) {
                    job->stream->cancel();  // the client is gone: free its pages
                    metrics.count_client_disconnect();
                }
                return false;
            }
            sink.done();
            return true;
        },
        [this, job](bool) {
            // Runs once the response is over, written or not (also when the provider never ran).
            if (!job->stream->done()) {
                job->stream->cancel();
                metrics.count_client_disconnect();
            }
            end(job->stream);
        });
}

void http_server::impl::handle_embeddings(const httplib::Request& req, httplib::Response& res) {
    const auto deadline = deadline_from_now();
    nlohmann::ordered_json body;
    if (auto e = parse_body(req, &body)) return send_error(res, *e);
    embedding_request er;
    if (auto e = parse_embedding_request(body, tok, model.hparams().n_embd, &er)) return send_error(res, *e);
    if (is_stopping()) {
        metrics.count_rejected("draining");
        return send_error(res, shutting_down_error());
    }
    // One engine request per input: the scheduler batches them with everything else.
    std::vector<std::shared_ptr<request_stream>> streams;
    auto cancel_all = [&] {
        for (auto& st : streams) {
            st->cancel();
            while (st->pop()) {
            }
            end(st);
        }
    };
    int64_t prompt_tokens = 0;
    for (auto& ids : er.inputs) {
        request_params p;
        prompt_tokens += int64_t(ids.size());
        p.prompt = std::move(ids);
        p.embed = true;
        p.pooling = cfg.pooling;
        auto sub = eng.submit(std::move(p));
        if (!sub) {
            cancel_all();
            const status err = sub.error();
            if (err.code() == 503) return send_overloaded(res, err.message());
            return send_error(res, api_error::invalid(err.message(), "input"));
        }
        begin(sub.value());
        streams.push_back(std::move(sub.value()));
    }
    std::vector<std::vector<float>> vectors(streams.size());
    const std::string peer = peer_of(req);
    for (size_t i = 0; i < streams.size(); ++i) {
        for (;;) {
            auto ev = streams[i]->pop(100);
            if (ev) {
                if (ev->finish == finish_reason::error) {
                    cancel_all();
                    return send_error(res, {500, "embedding failed: " + ev->error, "", "server_error", ""});
                }
                if (ev->finish == finish_reason::cancelled) {
                    cancel_all();
                    return send_error(res, shutting_down_error());
                }
                if (!ev->embedding.empty()) vectors[i] = std::move(ev->embedding);
                continue;
            }
            if (streams[i]->done()) break;
            if (watchdog.peer_gone(peer)) {
                cancel_all();
                metrics.count_client_disconnect();
                res.status = 499;
                return;
            }
            if (std::chrono::steady_clock::now() >= deadline) {
                cancel_all();
                metrics.count_request_timeout();
                return send_error(res, timeout_error(cfg.request_timeout));
            }
        }
    }
    for (auto& st : streams) end(st);
    send_json(res, 200, embedding_response(vectors, er.base64, name, prompt_tokens));
}

void http_server::impl::handle_tokenize(const httplib::Request& req, httplib::Response& res) {
    nlohmann::ordered_json body;
    if (auto e = parse_body(req, &body)) return send_error(res, *e);
    auto content = body.find("content");
    if (content == body.end() || !content->is_string()) return send_error(res, api_error::invalid("content must be a string", "content"));
    bool add_special = false, parse_special = true, with_pieces = false;
    const std::pair<const char*, bool*> flags[] = {{"add_special", &add_special}, {"parse_special", &parse_special}, {"with_pieces", &with_pieces}};
    for (auto [key, flag] : flags) {
        auto it = body.find(key);
        if (it == body.end() || it->is_null()) continue;
        if (!it->is_boolean()) return send_error(res, api_error::invalid(std::string(key) + " must be a boolean", key));
        *flag = it->get<bool>();
    }
    const std::vector<int32_t> ids = tok.encode(content->get_ref<const std::string&>(), add_special && tok.add_bos(), parse_special);
    json tokens = json::array();
    for (int32_t id : ids) {
        if (with_pieces) tokens.push_back({{"id", id}, {"piece", tok.token_to_piece(id, true)}});
        else tokens.push_back(id);
    }
    send_json(res, 200, {{"tokens", std::move(tokens)}});
}

void http_server::impl::handle_detokenize(const httplib::Request& req, httplib::Response& res) {
    nlohmann::ordered_json body;
    if (auto e = parse_body(req, &body)) return send_error(res, *e);
    auto tokens = body.find("tokens");
    if (tokens == body.end() || !tokens->is_array()) return send_error(res, api_error::invalid("tokens must be an array of token ids", "tokens"));
    std::vector<int32_t> ids;
    for (const auto& t : *tokens) {
        if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.n_vocab())
            return send_error(res, api_error::invalid(strfmt("tokens must be token ids in [0, %d), got %s", tok.n_vocab(), dump_json(t).c_str()), "tokens"));
        ids.push_back(int32_t(t.get<int64_t>()));
    }
    send_json(res, 200, {{"content", tok.decode(ids)}});
}

json http_server::impl::model_card() const {
    return {{"id", name},
            {"object", "model"},
            {"created", 0},
            {"owned_by", "kvserve"},
            {"meta", {{"n_ctx", eng.n_ctx()}, {"n_ctx_train", model.hparams().n_ctx_train}, {"n_vocab", tok.n_vocab()}}}};
}

void http_server::impl::setup_routes() {
    svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        if (authorized(req)) return httplib::Server::HandlerResponse::Unhandled;
        metrics.count_rejected("unauthorized");
        send_error(res, {401, "invalid or missing API key (send the header 'Authorization: Bearer <key>')", "", "authentication_error",
                         "invalid_api_key"});
        return httplib::Server::HandlerResponse::Handled;
    });
    // Errors cpp-httplib answers itself (no route, malformed request, body too large) get
    // OpenAI's error body too.
    svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty() || res.status < 400) return httplib::Server::HandlerResponse::Unhandled;
        if (res.status == 404) {
            send_error(res, {404, "no route for " + req.method + " " + req.path, "", "invalid_request_error", "not_found"});
        } else {
            if (res.status == 413) metrics.count_rejected("body_too_large");
            std::string msg = http_error_message(res.status, req);
            if (res.status == 413) msg += strfmt(" (%lld bytes at most)", (long long)cfg.max_body_bytes);
            send_error(res, {res.status, msg, "", res.status >= 500 ? "server_error" : "invalid_request_error", ""});
        }
        return httplib::Server::HandlerResponse::Handled;
    }));
    svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown error";
        try {
            if (ep) std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        send_error(res, {500, "internal error: " + what, "", "server_error", ""});
    });
    svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
        metrics.count_response(res.status);
        watchdog.response_written(peer_of(req));  // the next request on the connection has its read deadline
    });

    svr.Post("/v1/completions", route([this](const httplib::Request& q, httplib::Response& r) { handle_generate(q, r, api_endpoint::completions); }));
    svr.Post("/v1/chat/completions", route([this](const httplib::Request& q, httplib::Response& r) { handle_generate(q, r, api_endpoint::chat); }));
    svr.Get("/v1/models", route([this](const httplib::Request&, httplib::Response& r) {
        send_json(r, 200, {{"object", "list"}, {"data", json::array({model_card()})}});
    }));
    svr.Get("/v1/models/(.+)", route([this](const httplib::Request& q, httplib::Response& r) {
        if (q.matches[1] != name)
            return send_error(r, {404, "the model '" + std::string(q.matches[1]) + "' does not exist", "model", "invalid_request_error", "model_not_found"});
        send_json(r, 200, model_card());
    }));
    svr.Get("/health", route([this](const httplib::Request&, httplib::Response& r) {
        if (is_stopping()) return send_json(r, 503, {{"status", "draining"}});
        const engine_stats st = eng.stats();
        if (st.waiting >= eng.max_queued()) return send_json(r, 503, {{"status", "overloaded"}, {"waiting", st.waiting}});
        send_json(r, 200, {{"status", "ready"}, {"running", st.running}, {"waiting", st.waiting}});
    }));
    svr.Get("/metrics", route([this](const httplib::Request&, httplib::Response& r) {
        r.set_content(metrics.render(eng.stats(), watchdog.read_timeouts()), "text/plain; version=0.0.4");
    }));
    svr.Post("/v1/embeddings", route([this](const httplib::Request& q, httplib::Response& r) { handle_embeddings(q, r); }));
    svr.Post("/tokenize", route([this](const httplib::Request& q, httplib::Response& r) { handle_tokenize(q, r); }));
    svr.Post("/detokenize", route([this](const httplib::Request& q, httplib::Response& r) { handle_detokenize(q, r); }));
    if (cfg.debug_routes) svr.Get("/debug/kv", route([this](const httplib::Request&, httplib::Response& r) { send_json(r, 200, debug_kv()); }));
}

http_server::http_server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

result<std::unique_ptr<http_server>> http_server::create(const language_model& model, const tokenizer& tok, engine& eng,
                                                         const server_config& config) {
    auto p = std::make_unique<impl>(model, tok, eng, config);
    p->name = config.model_name.empty() ? default_model_name(model, "") : config.model_name;
    std::string source = config.chat_template;
    if (source.empty()) {
        auto t = model.file().get_string_opt("tokenizer.chat_template");
        if (t && t.value()) source = *t.value();
    }
    p->chat = chat_prompt::create(source, tok);
    if (config.max_body_bytes < 1) return status::error("the largest request body must be at least 1 byte");
    if (config.request_timeout < 0 || config.read_timeout < 0) return status::error("timeouts cannot be negative");
    const int threads = config.http_threads > 0 ? config.http_threads : eng.config().max_seqs + eng.max_queued() + 8;
    p->svr.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
    // SO_REUSEADDR only: a restarted server may bind over connections in TIME_WAIT, but a second
    // server on a port already listening must fail. cpp-httplib's default adds SO_REUSEPORT,
    // with which the kernel would silently split the connections between both processes.
    p->svr.set_socket_options([raw = p.get()](socket_t sock) {
        int yes = 1;
        ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
        raw->listen_fd = sock;
    });
    p->svr.set_keep_alive_timeout(k_keep_alive_seconds);
    p->svr.set_payload_max_length(size_t(config.max_body_bytes));
    p->setup_routes();
    return std::unique_ptr<http_server>(new http_server(std::move(p)));
}

http_server::~http_server() {
    bool running;
    {
        std::lock_guard<std::mutex> l(impl_->mu);
        running = impl_->run_started && !impl_->run_returned;
    }
    if (running) shutdown(false);
}

status http_server::bind() {
    const server_config& c = impl_->cfg;
    if (c.port < 0 || c.port > 65535) return status::error(strfmt("port %d is out of range", c.port));
    int port = c.port == 0 ? impl_->svr.bind_to_any_port(c.host) : (impl_->svr.bind_to_port(c.host, c.port) ? c.port : -1);
    if (port <= 0) return status::error(strfmt("cannot listen on %s:%d (address in use or not available)", c.host.c_str(), c.port));
    impl_->port = port;
    // cpp-httplib listens with a backlog of 5: when more clients than that connect at once (a
    // burst of requests), the kernel drops their handshakes until the accept loop catches up,
    // and connections stall for a SYN retransmit or are reset. Listening again on the same
    // socket raises the backlog (to net.core.somaxconn at most).
    if (impl_->listen_fd != INVALID_SOCKET && ::listen(impl_->listen_fd, listen_backlog) != 0)
        return status::error(strfmt("cannot listen on %s:%d with a backlog of %d", c.host.c_str(), port, listen_backlog));
    return status::ok();
}

int http_server::port() const { return impl_->port; }
const std::string& http_server::model_name() const { return impl_->name; }

status http_server::run() {
    if (impl_->port < 0) return status::error("http_server::run() before a successful bind()");
    {
        std::lock_guard<std::mutex> l(impl_->mu);
        if (impl_->run_started) return status::error("http_server::run() called twice");
        impl_->run_started = true;
        if (impl_->stopping) impl_->run_returned = true;
    }
    bool ok = true;
    if (!impl_->run_returned) {
        impl_->watchdog.start(int(impl_->listen_fd), impl_->port, impl_->cfg.read_timeout, double(k_keep_alive_seconds));
        ok = impl_->svr.listen_after_bind();
        impl_->watchdog.stop();
    }
    {
        std::lock_guard<std::mutex> l(impl_->mu);
        impl_->run_returned = true;
    }
    impl_->cv.notify_all();
    // listen_after_bind() reports false when stop() closed the socket: that is a normal end.
    if (!ok && !impl_->is_stopping()) return status::error("the HTTP listener failed");
    return status::ok();
}

void http_server::cancel_all() {
    std::lock_guard<std::mutex> l(impl_->mu);
    for (const auto& s : impl_->active) s->cancel();
}

void http_server::shutdown(bool drain) {
    impl& p = *impl_;
    {
        std::lock_guard<std::mutex> l(p.mu);
        p.stopping = true;
    }
    p.eng.shutdown(drain);  // refuses new requests; with drain, waits for the accepted ones
    if (!drain) cancel_all();
    {
        std::unique_lock<std::mutex> l(p.mu);
        p.cv.wait(l, [&] { return p.active.empty(); });  // responses written (or abandoned)
    }
    // stop() only acts on a listening server: repeat until run() has returned.
    for (;;) {
        {
            std::lock_guard<std::mutex> l(p.mu);
            if (!p.run_started || p.run_returned) break;
        }
        p.svr.stop();
        std::unique_lock<std::mutex> l(p.mu);
        p.cv.wait_for(l, std::chrono::milliseconds(20), [&] { return p.run_returned; });
    }
}

}  // namespace kvs
