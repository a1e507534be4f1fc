// The OpenAI-compatible HTTP server over the real stories260K model, spoken to over real HTTP
// on 127.0.0.1 (ephemeral ports only): every route, greedy golden text, streaming vs
// non-streaming, usage, stop strings, n > 1, logprobs shapes, error codes (400/401/404/503),
// cancellation of a client that disconnects mid-stream, a bounded concurrent soak with no
// leaked KV pages, graceful drain, and the kvserve serve binary's signal handling.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "model/llama.h"
#include "sched/engine.h"
#include "server/chat_prompt.h"
#include "server/http.h"
#include "kv/kv_cache.h"
#include "server/http_server.h"
#include "server_fixture.h"
#include "stories_fixture.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

using namespace kvs;
using json = nlohmann::json;

namespace {

const char* const k_golden = ", there was a little girl named Lily. She loved to play outside in the park.";

using namespace kvs::test;

}  // namespace

TEST(server, health_models_metrics_tokenize) {
    NEED_MODEL(f);
    served s(f);
    auto [hs, hb] = s.get("/health");
    EXPECT_EQ(hs, 200);
    EXPECT_EQ(json::parse(hb)["status"], "ready");

    auto [ms, mb] = s.get("/v1/models");
    ASSERT_EQ(ms, 200);
    json models = json::parse(mb);
    EXPECT_EQ(models["object"], "list");
    ASSERT_EQ(models["data"].size(), 1u);
    EXPECT_EQ(models["data"][0]["id"], "stories");
    EXPECT_EQ(models["data"][0]["object"], "model");
    EXPECT_EQ(s.get("/v1/models/stories").first, 200);
    EXPECT_EQ(s.get("/v1/models/gpt-4").first, 404);

    auto [ts, tb] = s.post("/tokenize", {{"content", "Once upon a time"}, {"add_special", true}});
    ASSERT_EQ(ts, 200);
    std::vector<int32_t> expect = f->tok->encode("Once upon a time", true, true);
    EXPECT_EQ(tb["tokens"].get<std::vector<int32_t>>(), expect);
    auto [ts2, tb2] = s.post("/tokenize", {{"content", "Once upon a time"}});
    EXPECT_EQ(tb2["tokens"].size(), expect.size() - 1);  // add_special defaults to false
    auto [ds, db] = s.post("/detokenize", {{"tokens", tb2["tokens"]}});
    ASSERT_EQ(ds, 200);
    EXPECT_EQ(db["content"], "Once upon a time");
    EXPECT_EQ(s.post("/detokenize", {{"tokens", {1, 99999}}}).first, 400);
    EXPECT_EQ(s.post("/tokenize", {{"text", "x"}}).first, 400);

    auto [xs, xb] = s.get("/metrics");
    ASSERT_EQ(xs, 200);
    EXPECT_EQ(metric(xb, "kvserve_kv_pages_total"), double(s.eng->stats().kv_pages_total));
    EXPECT_EQ(metric(xb, "kvserve_kv_bytes_per_token"), 1280);  // stories260K's F32 weights: an f32 cache
    EXPECT_EQ(metric(xb, "kvserve_kv_bytes_used"), 0);
    EXPECT_EQ(metric(xb, "kvserve_kv_pages_used"), 0);
    EXPECT_EQ(metric(xb, "kvserve_requests_running"), 0);
    EXPECT_GE(metric(xb, "kvserve_generation_tokens_total"), 0);
    EXPECT_NE(xb.find("# TYPE kvserve_prompt_tokens_total counter"), std::string::npos);
    EXPECT_NE(xb.find("kvserve_http_requests_total{code=\"200\"}"), std::string::npos);
}

// A server on a q8_0 cache: /metrics reports its bytes per token (per head and token, 8 codes and
// an f16 scale: 400 bytes for stories260K against 1,280 for f32), greedy completions are
// deterministic across requests and through the prefix cache.
TEST(server, quantized_kv_cache) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.kv_type = dtype::q8_0;
    served s(f, ec);
    auto [xs, xb] = s.get("/metrics");
    ASSERT_EQ(xs, 200);
    EXPECT_EQ(metric(xb, "kvserve_kv_bytes_per_token"), 400);
    const json req = {{"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 24}};
    auto [st, body] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << body.dump();
    auto [st2, body2] = s.post("/v1/completions", req);  // the prompt now comes from the prefix cache
    ASSERT_EQ(st2, 200) << body2.dump();
    EXPECT_EQ(body2["choices"][0]["text"], body["choices"][0]["text"]);
    EXPECT_EQ(body["usage"]["completion_tokens"], 24);
}

// A server on a KIVI cache (groups of 8 tokens, residual 16, so these short requests age pages):
// /metrics reports the packed bytes per token and the packed pages, greedy completions are
// deterministic across requests and through the prefix cache, and every page comes back.
TEST(server, kivi_cache) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.kivi = kivi_config{2, 8, 16};
    served s(f, ec);
    auto [xs, xb] = s.get("/metrics");
    ASSERT_EQ(xs, 200);
    // Per (layer, head) and token: 4 bytes of K codes, 32 / 8 of K parameters, 4 of V codes, 4 of V's.
    EXPECT_EQ(metric(xb, "kvserve_kv_bytes_per_token"), 16 * 20);
    EXPECT_GT(metric(xb, "kvserve_kv_packed_pages_total"), 0);
    const json req = {{"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 48}};
    auto [st, body] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << body.dump();
    auto [st2, body2] = s.post("/v1/completions", req);  // the prompt now comes from the prefix cache
    ASSERT_EQ(st2, 200) << body2.dump();
    EXPECT_EQ(body2["choices"][0]["text"], body["choices"][0]["text"]);
    EXPECT_EQ(body["usage"]["completion_tokens"], 48);
    EXPECT_TRUE(s.eng->check_integrity()) << s.eng->check_integrity().message();
    auto [ys, yb] = s.get("/metrics");
    ASSERT_EQ(ys, 200);
    EXPECT_EQ(metric(yb, "kvserve_kv_pages_used"), 0);  // nothing runs
}

TEST(server, completion_greedy_golden_and_usage) {
    NEED_MODEL(f);
    served s(f);
    auto [st, body] = s.post("/v1/completions", {{"model", "stories"}, {"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 20}});
    ASSERT_EQ(st, 200) << body.dump();
    EXPECT_EQ(body["object"], "text_completion");
    EXPECT_EQ(body["model"], "stories");
    EXPECT_EQ(body["id"].get<std::string>().rfind("cmpl-", 0), 0u);
    ASSERT_EQ(body["choices"].size(), 1u);
    const std::string text = body["choices"][0]["text"];
    EXPECT_EQ(text.rfind(", there was a little girl named Lily.", 0), 0u) << text;
    EXPECT_EQ(std::string(k_golden).rfind(text, 0), 0u) << text;
    EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
    EXPECT_TRUE(body["choices"][0]["logprobs"].is_null());
    const int64_t n_prompt = int64_t(f->tok->encode("Once upon a time", true, true).size());
    EXPECT_EQ(body["usage"]["prompt_tokens"], n_prompt);
    EXPECT_EQ(body["usage"]["completion_tokens"], 20);
    EXPECT_EQ(body["usage"]["total_tokens"], n_prompt + 20);

    // Token-id prompts (flat and nested) give the same text; the model field may be omitted.
    std::vector<int32_t> ids = f->tok->encode("Once upon a time", true, true);
    auto [st2, b2] = s.post("/v1/completions", {{"prompt", ids}, {"temperature", 0}, {"max_tokens", 20}});
    ASSERT_EQ(st2, 200);
    EXPECT_EQ(b2["choices"][0]["text"], text);
    auto [st3, b3] = s.post("/v1/completions", {{"prompt", json::array({"Once upon a time"})}, {"temperature", 0}, {"max_tokens", 20}});
    ASSERT_EQ(st3, 200);
    EXPECT_EQ(b3["choices"][0]["text"], text);
    // echo puts the prompt first.
    auto [st4, b4] = s.post("/v1/completions", {{"prompt", "Once upon a time"}, {"temperature", 0}, {"max_tokens", 20}, {"echo", true}});
    EXPECT_EQ(b4["choices"][0]["text"], "Once upon a time" + text);
}

TEST(server, stream_matches_non_stream) {
    NEED_MODEL(f);
    served s(f);
    json req = greedy_completion("Once upon a time", 24);
    auto [st, whole] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200);
    req["stream_options"] = {{"include_usage", true}};
    sse_result r = post_stream(s, "/v1/completions", req);
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(r.done);
    ASSERT_GE(r.chunks.size(), 3u);
    std::map<int, std::string> finish;
    EXPECT_EQ(stream_texts(r, &finish)[0], whole["choices"][0]["text"].get<std::string>());
    EXPECT_EQ(finish[0], "length");
    for (size_t i = 0; i + 1 < r.chunks.size(); ++i) {
        EXPECT_EQ(r.chunks[i]["object"], "text_completion");
        EXPECT_EQ(r.chunks[i]["id"], r.chunks[0]["id"]);
        EXPECT_TRUE(r.chunks[i]["usage"].is_null());
    }
    const json& last = r.chunks.back();
    EXPECT_TRUE(last["choices"].empty());
    EXPECT_EQ(last["usage"]["prompt_tokens"], whole["usage"]["prompt_tokens"]);
    EXPECT_EQ(last["usage"]["completion_tokens"], whole["usage"]["completion_tokens"]);
    EXPECT_EQ(last["usage"]["total_tokens"], whole["usage"]["total_tokens"]);

    // Without include_usage no chunk carries usage.
    req.erase("stream_options");
    sse_result r2 = post_stream(s, "/v1/completions", req);
    for (const json& c : r2.chunks) EXPECT_FALSE(c.contains("usage"));
    EXPECT_EQ(stream_texts(r2)[0], whole["choices"][0]["text"].get<std::string>());
}

// A prompt sent twice: the second reuses the first one's full KV pages (prefix cache), which
// usage reports as cached_tokens; afterwards the pages are cached, not used.
TEST(server, prefix_cache_in_usage_and_metrics) {
    NEED_MODEL(f);
    served s(f);
    std::string prompt;
    for (int i = 0; i < 6; ++i) prompt += "Once upon a time, there was a little girl named Lily. ";
    auto [st1, b1] = s.post("/v1/completions", greedy_completion(prompt, 4));
    ASSERT_EQ(st1, 200);
    EXPECT_EQ(b1["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    auto [st2, b2] = s.post("/v1/completions", greedy_completion(prompt, 4));
    ASSERT_EQ(st2, 200);
    const int64_t cached = b2["usage"]["prompt_tokens_details"]["cached_tokens"];
    const int64_t n_prompt = b2["usage"]["prompt_tokens"];
    EXPECT_GT(cached, 0);
    EXPECT_LT(cached, n_prompt);
    EXPECT_EQ(cached % 16, 0);
    EXPECT_EQ(b2["choices"][0]["text"], b1["choices"][0]["text"]);
    ASSERT_TRUE(wait_idle(s));
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_kv_pages_used"), 0);
    EXPECT_GT(metric(mb, "kvserve_kv_pages_cached"), 0);
    EXPECT_EQ(metric(mb, "kvserve_kv_pages_free") + metric(mb, "kvserve_kv_pages_cached"), metric(mb, "kvserve_kv_pages_total"));
    EXPECT_EQ(metric(mb, "kvserve_prefix_cache_hit_tokens_total"), double(cached));

    // Another tenant's salt shares nothing; the same salt again hits its own entry.
    json salted = greedy_completion(prompt, 4);
    salted["cache_salt"] = "tenant-b";
    auto [st3, b3] = s.post("/v1/completions", salted);
    ASSERT_EQ(st3, 200);
    EXPECT_EQ(b3["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    auto [st4, b4] = s.post("/v1/completions", salted);
    ASSERT_EQ(st4, 200);
    EXPECT_EQ(b4["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
    EXPECT_EQ(b4["choices"][0]["text"], b1["choices"][0]["text"]);
    salted["cache_salt"] = 5;
    auto [st5, b5] = s.post("/v1/completions", salted);
    EXPECT_EQ(st5, 400);
    EXPECT_EQ(b5["error"]["param"], "cache_salt");
}

TEST(server, stop_strings_and_finish_reasons) {
    NEED_MODEL(f);
    served s(f);
    json req = greedy_completion("Once upon a time", 40);
    req["stop"] = "Lily";
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200);
    EXPECT_EQ(b["choices"][0]["text"], ", there was a little girl named ");
    EXPECT_EQ(b["choices"][0]["finish_reason"], "stop");
    req["stop"] = {"park", "girl"};
    auto [st2, b2] = s.post("/v1/completions", req);
    EXPECT_EQ(b2["choices"][0]["text"], ", there was a little ");
    EXPECT_EQ(b2["choices"][0]["finish_reason"], "stop");
    sse_result r = post_stream(s, "/v1/completions", req);
    std::map<int, std::string> finish;
    EXPECT_EQ(stream_texts(r, &finish)[0], ", there was a little ");
    EXPECT_EQ(finish[0], "stop");

    auto [st3, b3] = s.post("/v1/completions", greedy_completion("Once upon a time", 3));
    EXPECT_EQ(b3["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(b3["usage"]["completion_tokens"], 3);
}

TEST(server, n_greater_than_one) {
    NEED_MODEL(f);
    served s(f);
    json req = {{"prompt", "Once upon a time"}, {"temperature", 0.9}, {"seed", 1234}, {"max_tokens", 16}, {"n", 3}};
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    ASSERT_EQ(b["choices"].size(), 3u);
    std::map<int, std::string> whole;
    for (const json& ch : b["choices"]) whole[ch["index"].get<int>()] = ch["text"];
    EXPECT_EQ(whole.size(), 3u);
    EXPECT_EQ(b["usage"]["completion_tokens"], 48);
    EXPECT_FALSE(whole[0] == whole[1] && whole[1] == whole[2]) << "three samples came out identical";

    // Same seed, streamed: the same three texts, each chunk tagged with its index.
    sse_result r = post_stream(s, "/v1/completions", req);
    ASSERT_TRUE(r.done);
    std::map<int, std::string> finish;
    EXPECT_EQ(stream_texts(r, &finish), whole);
    EXPECT_EQ(finish.size(), 3u);

    // Chat with n = 2: two role openers, two finishes.
    json chat = {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}}, {"max_tokens", 6}, {"n", 2}, {"seed", 7}};
    sse_result rc = post_stream(s, "/v1/chat/completions", chat);
    int roles = 0;
    for (const json& c : rc.chunks)
        for (const json& ch : c["choices"])
            if (ch["delta"].contains("role")) ++roles;
    EXPECT_EQ(roles, 2);
    std::map<int, std::string> cf;
    stream_texts(rc, &cf);
    EXPECT_EQ(cf.size(), 2u);
}

TEST(server, logprobs_shapes) {
    NEED_MODEL(f);
    served s(f);
    json req = greedy_completion("Once upon a time", 8);
    req["logprobs"] = 3;
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    const json& lp = b["choices"][0]["logprobs"];
    ASSERT_TRUE(lp.is_object()) << b.dump();
    ASSERT_EQ(lp["tokens"].size(), 8u);
    ASSERT_EQ(lp["token_logprobs"].size(), 8u);
    ASSERT_EQ(lp["top_logprobs"].size(), 8u);
    ASSERT_EQ(lp["text_offset"].size(), 8u);
    std::string joined;
    for (size_t i = 0; i < 8; ++i) {
        const double chosen = lp["token_logprobs"][i];
        EXPECT_LE(chosen, 0.0);
        const json& top = lp["top_logprobs"][i];
        EXPECT_GE(top.size(), 1u);
        EXPECT_LE(top.size(), 3u);
        double best = -1e9;
        for (auto& [k, v] : top.items()) best = std::max(best, v.get<double>());
        EXPECT_NEAR(chosen, best, 1e-5);  // greedy: the chosen token is the most likely
        EXPECT_EQ(lp["text_offset"][i], int64_t(joined.size()));
        joined += lp["tokens"][i].get<std::string>();
    }
    EXPECT_EQ(joined, b["choices"][0]["text"]);

    // Streamed completions carry the same logprobs chunk by chunk.
    sse_result r = post_stream(s, "/v1/completions", req);
    std::vector<double> streamed;
    for (const json& c : r.chunks)
        for (const json& ch : c["choices"])
            if (ch["logprobs"].is_object())
                for (const json& x : ch["logprobs"]["token_logprobs"]) streamed.push_back(x);
    ASSERT_EQ(streamed.size(), 8u);
    for (size_t i = 0; i < 8; ++i) EXPECT_NEAR(streamed[i], lp["token_logprobs"][i].get<double>(), 1e-6);

    // Chat: logprobs true + top_logprobs 2.
    json chat = {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"temperature", 0}, {"max_tokens", 5}, {"logprobs", true}, {"top_logprobs", 2}};
    auto [cs, cb] = s.post("/v1/chat/completions", chat);
    ASSERT_EQ(cs, 200) << cb.dump();
    const json& content = cb["choices"][0]["logprobs"]["content"];
    ASSERT_EQ(content.size(), 5u);
    for (const json& t : content) {
        EXPECT_TRUE(t["token"].is_string());
        EXPECT_LE(t["logprob"].get<double>(), 0.0);
        EXPECT_TRUE(t["bytes"].is_array());
        ASSERT_EQ(t["top_logprobs"].size(), 2u);
        EXPECT_GE(t["top_logprobs"][0]["logprob"].get<double>(), t["top_logprobs"][1]["logprob"].get<double>());
        EXPECT_NEAR(t["logprob"].get<double>(), t["top_logprobs"][0]["logprob"].get<double>(), 1e-5);
    }
    // Without logprobs: null.
    chat.erase("logprobs");
    chat.erase("top_logprobs");
    EXPECT_TRUE(s.post("/v1/chat/completions", chat).second["choices"][0]["logprobs"].is_null());
}

TEST(server, chat_default_template) {
    NEED_MODEL(f);
    served s(f);
    json msgs = {{{"role", "system"}, {"content", "You tell stories."}}, {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Once upon"}}, {{"type", "text"}, {"text", " a time"}}}}}};
    json req = {{"messages", msgs}, {"temperature", 0}, {"max_tokens", 10}};
    auto [st, b] = s.post("/v1/chat/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["object"], "chat.completion");
    EXPECT_EQ(b["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
    EXPECT_EQ(b["choices"][0]["message"]["role"], "assistant");
    EXPECT_TRUE(b["choices"][0]["message"]["content"].is_string());
    EXPECT_EQ(b["choices"][0]["finish_reason"], "length");
    // The prompt is the documented ChatML-like default, BOS first.
    nlohmann::ordered_json flat = {{{"role", "system"}, {"content", "You tell stories."}}, {{"role", "user"}, {"content", "Once upon a time"}}};
    const std::string text = render_default_chat(flat, true);
    EXPECT_EQ(text, "<|im_start|>system\nYou tell stories.<|im_end|>\n<|im_start|>user\nOnce upon a time<|im_end|>\n<|im_start|>assistant\n");
    EXPECT_EQ(b["usage"]["prompt_tokens"], int64_t(f->tok->encode(text, true, true).size()));
    EXPECT_EQ(b["usage"]["completion_tokens"], 10);

    // Streaming gives the same content.
    sse_result r = post_stream(s, "/v1/chat/completions", req);
    ASSERT_TRUE(r.done);
    EXPECT_EQ(r.chunks[0]["object"], "chat.completion.chunk");
    EXPECT_EQ(r.chunks[0]["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(stream_texts(r)[0], b["choices"][0]["message"]["content"].get<std::string>());

    // Message errors name "messages".
    auto [e1, eb1] = s.post("/v1/chat/completions", {{"messages", json::array()}});
    EXPECT_EQ(e1, 400);
    EXPECT_EQ(eb1["error"]["param"], "messages");
    auto [e2, eb2] = s.post("/v1/chat/completions", {{"messages", {{{"content", "no role"}}}}});
    EXPECT_EQ(e2, 400);
    EXPECT_EQ(eb2["error"]["param"], "messages");
    auto [e3, eb3] = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 2}});
    EXPECT_EQ(e3, 400);
    EXPECT_EQ(eb3["error"]["param"], "top_logprobs");
}

static std::string read_text(const std::string& path) {
    std::string out;
    if (FILE* f = std::fopen(path.c_str(), "rb")) {
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
        std::fclose(f);
    }
    return out;
}

// A template injected through server_config: it renders the prompt (BOS written by the
// template is not doubled) and its failures are 400s that name the problem.
TEST(server, chat_injected_template) {
    NEED_MODEL(f);
    server_config sc;
    sc.chat_template =
        "{{ bos_token }}{% for m in messages %}"
        "{% if m.role == 'system' and not allow_system | default(true) %}{{ raise_exception('system messages are not supported') }}{% endif %}"
        "[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";
    served s(f, small_engine(), sc);
    json req = {{"messages", {{{"role", "system"}, {"content", "Be brief."}}, {{"role", "user"}, {"content", "Once upon a time"}}}},
                {"temperature", 0},
                {"max_tokens", 4}};
    auto [st, b] = s.post("/v1/chat/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    const std::string bos = f->tok->text_of(f->tok->bos());
    const std::string text = bos + "[system] Be brief.\n[user] Once upon a time\n[assistant]";
    const std::vector<int32_t> expect = f->tok->encode(text, false, true);
    ASSERT_EQ(expect[0], f->tok->bos());
    EXPECT_EQ(b["usage"]["prompt_tokens"], int64_t(expect.size()));

    // raise_exception() in the template: 400 with the template's message.
    req["chat_template_kwargs"] = {{"allow_system", false}};
    auto [e1, eb1] = s.post("/v1/chat/completions", req);
    EXPECT_EQ(e1, 400);
    EXPECT_EQ(eb1["error"]["param"], "messages");
    EXPECT_NE(eb1["error"]["message"].get<std::string>().find("system messages are not supported"), std::string::npos) << eb1.dump();
    req["chat_template_kwargs"] = "no";
    EXPECT_EQ(s.post("/v1/chat/completions", req).second["error"]["param"], "chat_template_kwargs");
}

TEST(server, chat_template_that_does_not_parse) {
    NEED_MODEL(f);
    server_config sc;
    sc.chat_template = "{% for m in messages %}{{ m.content }";
    served s(f, small_engine(), sc);
    auto [st, b] = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}});
    EXPECT_EQ(st, 400);
    EXPECT_NE(b["error"]["message"].get<std::string>().find("chat template"), std::string::npos) << b.dump();
    // Completions are unaffected.
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2)).first, 200);
}

TEST(server, chat_real_template_qwen) {
    NEED_MODEL(f);
    KVS_SKIP_IF_MISSING(path, "templates/Qwen-Qwen2.5-7B-Instruct.jinja");
    server_config sc;
    sc.chat_template = read_text(path);
    ASSERT_FALSE(sc.chat_template.empty());
    served s(f, small_engine(), sc);
    auto [st, b] = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 3}});
    ASSERT_EQ(st, 200) << b.dump();
    const std::string text =
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    EXPECT_EQ(b["usage"]["prompt_tokens"], int64_t(f->tok->encode(text, true, true).size()));
    // Tools reach the template (its tool preamble lengthens the prompt).
    json tools = {{{"type", "function"}, {"function", {{"name", "get_weather"}, {"description", "Weather"}, {"parameters", {{"type", "object"}}}}}}};
    auto [st2, b2] = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "Hi"}}}}, {"max_tokens", 3}, {"tools", tools}});
    ASSERT_EQ(st2, 200) << b2.dump();
    EXPECT_GT(b2["usage"]["prompt_tokens"].get<int64_t>(), b["usage"]["prompt_tokens"].get<int64_t>());
}

TEST(server, error_codes) {
    NEED_MODEL(f);
    served s(f);
    // Unknown route and unknown model: 404 in OpenAI's error shape.
    auto [r404, b404] = s.post("/v1/nothing", {{"prompt", "x"}});
    EXPECT_EQ(r404, 404);
    EXPECT_TRUE(b404["error"]["message"].is_string());
    auto [m404, mb404] = s.post("/v1/completions", {{"model", "gpt-4"}, {"prompt", "x"}});
    EXPECT_EQ(m404, 404);
    EXPECT_EQ(mb404["error"]["param"], "model");
    EXPECT_EQ(mb404["error"]["code"], "model_not_found");
    // Invalid JSON.
    auto [j400, jb400] = s.post_raw("/v1/completions", "{\"prompt\": \"x\",");
    EXPECT_EQ(j400, 400);
    EXPECT_EQ(jb400["error"]["type"], "invalid_request_error");
    EXPECT_EQ(s.post_raw("/v1/chat/completions", "[1, 2]").first, 400);
    // Wrong types and ranges name the parameter.
    const std::vector<std::pair<json, std::string>> bad = {
        {{{"prompt", "x"}, {"max_tokens", "ten"}}, "max_tokens"},
        {{{"prompt", "x"}, {"max_tokens", 0}}, "max_tokens"},
        {{{"prompt", "x"}, {"temperature", "hot"}}, "temperature"},
        {{{"prompt", "x"}, {"top_p", 1.5}}, "top_p"},
        {{{"prompt", "x"}, {"top_k", 2.5}}, "top_k"},
        {{{"prompt", "x"}, {"min_p", -1}}, "min_p"},
        {{{"prompt", "x"}, {"presence_penalty", 3}}, "presence_penalty"},
        {{{"prompt", "x"}, {"frequency_penalty", true}}, "frequency_penalty"},
        {{{"prompt", "x"}, {"repetition_penalty", 0}}, "repetition_penalty"},
        {{{"prompt", "x"}, {"seed", "s"}}, "seed"},
        {{{"prompt", "x"}, {"stop", 5}}, "stop"},
        {{{"prompt", "x"}, {"stop", {"a", ""}}}, "stop"},
        {{{"prompt", "x"}, {"n", 0}}, "n"},
        {{{"prompt", "x"}, {"n", 1000}}, "n"},
        {{{"prompt", "x"}, {"logprobs", true}}, "logprobs"},
        {{{"prompt", "x"}, {"logprobs", 50}}, "logprobs"},
        {{{"prompt", "x"}, {"stream", "yes"}}, "stream"},
        {{{"prompt", "x"}, {"stream", true}, {"stream_options", {{"include_usage", 1}}}}, "stream_options"},
        {{{"prompt", "x"}, {"ignore_eos", 1}}, "ignore_eos"},
        {{{"prompt", "x"}, {"min_tokens", -1}}, "min_tokens"},
        {{{"prompt", "x"}, {"model", 5}}, "model"},
        {{{"prompt", 5}}, "prompt"},
        {{{"prompt", {"a", "b"}}}, "prompt"},
        {{{"prompt", json::array()}}, "prompt"},
        {{{"prompt", {1, 100000}}}, "prompt"},
        {{{"max_tokens", 5}}, "prompt"},
    };
    for (const auto& [body, param] : bad) {
        auto [code, b] = s.post("/v1/completions", body);
        EXPECT_EQ(code, 400) << body.dump();
        EXPECT_EQ(b["error"]["param"], param) << body.dump() << " -> " << b.dump();
        EXPECT_EQ(b["error"]["type"], "invalid_request_error");
        EXPECT_TRUE(b["error"]["code"].is_null());
    }
    // Unknown fields are ignored; nulls mean defaults.
    EXPECT_EQ(s.post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"user", "me"}, {"best_of", nullptr}, {"temperature", nullptr}}).first, 200);
}

TEST(server, prompt_over_context_is_400) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.n_ctx = 64;
    served s(f, ec);
    std::string long_prompt;
    for (int i = 0; i < 80; ++i) long_prompt += "Once upon a time ";
    auto [st, b] = s.post("/v1/completions", {{"prompt", long_prompt}, {"max_tokens", 4}});
    EXPECT_EQ(st, 400);
    EXPECT_EQ(b["error"]["param"], "prompt");
    EXPECT_NE(b["error"]["message"].get<std::string>().find("context length is 64"), std::string::npos) << b.dump();
    auto [st2, b2] = s.post("/v1/completions", {{"prompt", "Once upon a time"}, {"max_tokens", 100}});
    EXPECT_EQ(st2, 400);
    EXPECT_EQ(b2["error"]["param"], "max_tokens");
    json chat = {{"messages", {{{"role", "user"}, {"content", long_prompt}}}}};
    auto [st3, b3] = s.post("/v1/chat/completions", chat);
    EXPECT_EQ(st3, 400);
    EXPECT_EQ(b3["error"]["param"], "messages");
}

TEST(server, api_key) {
    NEED_MODEL(f);
    server_config sc;
    sc.api_keys = {"sekrit"};
    served s(f, small_engine(), sc);
    EXPECT_EQ(s.get("/health").first, 200);  // always open
    auto [st, b] = s.post("/v1/completions", greedy_completion("Hi", 2));
    EXPECT_EQ(st, 401);
    EXPECT_EQ(b["error"]["type"], "authentication_error");
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "wrong").first, 401);
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "sekri").first, 401);
    EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2), "sekrit").first, 200);
    EXPECT_EQ(s.get("/v1/models").first, 401);
    EXPECT_EQ(s.get("/v1/models", "sekrit").first, 200);
    EXPECT_EQ(s.get("/metrics").first, 401);
    EXPECT_EQ(s.post("/tokenize", {{"content", "x"}}).first, 401);
}

// A second server on a port that is already listening fails to bind with a clear error (no
// SO_REUSEPORT: the kernel must not split the connections between two processes), and the
// first one keeps serving.
TEST(server, port_in_use_is_refused) {
    NEED_MODEL(f);
    served s(f);
    server_config sc;
    sc.host = "127.0.0.1";
    sc.port = s.port;
    auto eng = std::move(engine::create(*f->model, *f->tok, small_engine()).value());
    auto second = std::move(http_server::create(*f->model, *f->tok, *eng, sc).value());
    status st = second->bind();
    ASSERT_FALSE(st);
    EXPECT_NE(st.message().find("address in use"), std::string::npos) << st.message();
    EXPECT_EQ(s.get("/health").first, 200);
}

// A burst of clients connecting before the accept loop runs is queued, not dropped:
// cpp-httplib's own backlog of 5 would leave all but 6 of them unconnected (the kernel drops
// their handshakes), and under load such connections stalled or were reset.
TEST(server, burst_of_connections_is_queued) {
    NEED_MODEL(f);
    constexpr int n = 32;
    server_config sc;
    sc.host = "127.0.0.1";
    sc.port = 0;
    auto eng = std::move(engine::create(*f->model, *f->tok, small_engine()).value());
    auto srv = std::move(http_server::create(*f->model, *f->tok, *eng, sc).value());
    ASSERT_TRUE(srv->bind());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(srv->port()));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        ASSERT_GE(fd, 0);
        const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
        ASSERT_TRUE(rc == 0 || errno == EINPROGRESS);
        fds.push_back(fd);
    }
    // Nobody accepts yet: a connection completes only if the listen queue holds it. A dropped
    // handshake is retried after 1 s and dropped again, so 3 s tells the two apart.
    int connected = 0;
    for (int fd : fds) {
        pollfd p{fd, POLLOUT, 0};
        int err = -1;
        socklen_t len = sizeof(err);
        if (::poll(&p, 1, connected == 0 ? 3000 : 100) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
            err == 0)
            ++connected;
    }
    EXPECT_EQ(connected, n);
    std::thread th([&] { EXPECT_TRUE(srv->run()); });
    int answered = 0;
    for (int fd : fds) {
        const int flags = ::fcntl(fd, F_GETFL);
        ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
        timeval tv{30, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        const std::string get = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        if (::send(fd, get.data(), get.size(), MSG_NOSIGNAL) == ssize_t(get.size())) {
            char buf[64] = {};
            const ssize_t got = ::recv(fd, buf, sizeof(buf) - 1, 0);
            if (got > 0 && std::string(buf, size_t(got)).rfind("HTTP/1.1 200", 0) == 0) ++answered;
        }
        ::close(fd);
    }
    EXPECT_EQ(answered, n);
    srv->shutdown(true);
    th.join();
}

// One long streamed request holds the only sequence slot; a second waits (the queue's one
// place); a third is refused with 503.
TEST(server, queue_full_is_503) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.max_seqs = 1;
    ec.max_queued = 1;
    served s(f, ec);
    std::atomic<bool> first_streaming{false}, release{false};
    std::thread holder([&] {  // disconnects once the test is done
        stream_until_released(s, {{"prompt", "Once upon a time"}, {"max_tokens", 2000}, {"ignore_eos", true}, {"temperature", 0}},
                              first_streaming, release);
    });
    while (!first_streaming) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // While the holder streams, a second request takes the queue's one place.
    std::thread waiter([&] { EXPECT_EQ(s.post("/v1/completions", greedy_completion("Hi", 2)).first, 200); });
    bool saw_waiting = false;
    for (int i = 0; i < 5000 && !saw_waiting; ++i) {
        saw_waiting = s.eng->stats().waiting >= 1;
        if (!saw_waiting) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    auto [st, b] = s.post("/v1/completions", greedy_completion("Hi", 2));
    const bool holder_running = s.eng->stats().sched.requests_finished == 0;
    release = true;
    holder.join();
    waiter.join();
    if (!saw_waiting || !holder_running) GTEST_SKIP() << "the long request finished before the queue filled (machine too fast?)";
    EXPECT_EQ(st, 503) << b.dump();
    EXPECT_EQ(b["error"]["type"], "server_error");
    EXPECT_TRUE(wait_idle(s));
}

TEST(server, disconnect_mid_stream_cancels) {
    NEED_MODEL(f);
    served s(f);
    json req = {{"prompt", "Once upon a time"}, {"max_tokens", 1800}, {"ignore_eos", true}, {"temperature", 0}};
    sse_result r = post_stream(s, "/v1/completions", req, 4);
    EXPECT_FALSE(r.done);
    EXPECT_GE(r.chunks.size(), 3u);
    ASSERT_TRUE(wait_idle(s)) << "pages still used after the client left";
    engine_stats st = s.eng->stats();
    EXPECT_EQ(st.sched.requests_cancelled, 1);
    EXPECT_EQ(st.sched.requests_finished, 0);
    EXPECT_LT(st.sched.generated_tokens, 1800);
    auto [ms, mb] = s.get("/metrics");
    EXPECT_EQ(metric(mb, "kvserve_kv_pages_used"), 0);
    EXPECT_EQ(metric(mb, "kvserve_requests_cancelled_total"), 1);
}

// 8 clients x 6 requests (stream or not, completions or chat, n 1 or 2) against a pool too
// small for all of them (preemption by recompute happens): every request succeeds and no KV
// page is left in use.
static void run_soak(const fixture* f, int32_t max_seqs) {
    engine_config ec = small_engine();
    ec.sched.max_seqs = max_seqs;
    ec.kv_tokens = 2048;
    ec.sched.max_batch_tokens = 256;
    ec.sched.prefill_chunk = 32;
    served s(f, ec);
    const int n_clients = 8, n_each = 6;
    std::atomic<int> ok{0}, bad{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < n_clients; ++c) {
        clients.emplace_back([&, c] {
            std::mt19937 rng(uint32_t(c) * 7919u + 1);
            for (int i = 0; i < n_each; ++i) {
                const bool chat = rng() % 3 == 0, stream = rng() % 2 == 0;
                const int n = 1 + int(rng() % 2), max_tokens = 8 + int(rng() % 120);
                json req = {{"max_tokens", max_tokens}, {"n", n}, {"seed", int(rng() % 1000)}, {"temperature", (rng() % 2) ? 0.0 : 0.8}};
                if (chat) req["messages"] = {{{"role", "user"}, {"content", "Tell me about a cat number " + std::to_string(i)}}};
                else req["prompt"] = "Once upon a time, story " + std::to_string(c * 100 + i);
                const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
                bool good;
                if (stream) {
                    sse_result r = post_stream(s, path, req);
                    std::map<int, std::string> finish;
                    stream_texts(r, &finish);
                    good = r.status == 200 && r.done && int(finish.size()) == n;
                } else {
                    auto [st, b] = s.post(path, req);
                    good = st == 200 && b.is_object() && int(b["choices"].size()) == n &&
                           b["usage"]["completion_tokens"].get<int>() <= n * max_tokens;
                    if (!good) ADD_FAILURE() << st << " " << b.dump();
                }
                (good ? ok : bad)++;
            }
        });
    }
    for (auto& t : clients) t.join();
    EXPECT_EQ(ok.load(), n_clients * n_each);
    EXPECT_EQ(bad.load(), 0);
    ASSERT_TRUE(wait_idle(s));
    engine_stats st = s.eng->stats();
    EXPECT_EQ(st.kv_pages_used, 0);
    EXPECT_EQ(st.sched.requests_finished, n_clients * n_each);
    EXPECT_EQ(st.sched.requests_cancelled, 0);
}

TEST(server, concurrent_soak_leaks_no_pages) {
    NEED_MODEL(f);
    run_soak(f, 16);  // room for every sequence of the 8 clients (n <= 2)
}

// Fewer sequence slots than the clients' sequences: admission must reserve slots for the
// siblings that n > 1 parents (admitted in the same step, or still prefilling) will fork.
TEST(server, concurrent_soak_fewer_slots_than_sequences) {
    NEED_MODEL(f);
    run_soak(f, 6);
}

// shutdown(true) lets an in-flight stream finish, refuses new work, then run() returns.
TEST(server, graceful_drain) {
    NEED_MODEL(f);
    auto s = std::make_unique<served>(f);
    std::atomic<int> events{0};
    sse_result r;
    std::thread streamer([&] {
        json req = {{"prompt", "Once upon a time"}, {"max_tokens", 300}, {"ignore_eos", true}, {"temperature", 0}, {"stream", true}};
        auto c = s->client();
        httplib::Request q;
        q.method = "POST";
        q.path = "/v1/completions";
        q.body = req.dump();
        q.set_header("Content-Type", "application/json");
        std::string buf;
        q.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
            buf.append(d, n);
            events = int(split_events(buf).size());
            return true;
        };
        auto res = c->send(q);
        r.status = res ? res->status : -1;
        r.done = buf.find("data: [DONE]\n\n") != std::string::npos;
        std::map<int, std::string> fin;
        for (const std::string& e : split_events(buf))
            if (e.rfind("data: {", 0) == 0) r.chunks.push_back(json::parse(e.substr(6)));
    });
    while (events < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::thread stopper([&] { s->srv->shutdown(true); });
    // While draining, new generation requests are refused (or the listener is already gone).
    // Wait until the drain has begun (/health says so) rather than for a fixed time.
    for (int i = 0; i < 5000; ++i) {
        auto [hs, hb] = s->get("/health");
        if (hs != 200) {
            if (hs == 503) {
                EXPECT_EQ(json::parse(hb)["status"], "draining");
            }
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    auto [st, b] = s->post("/v1/completions", greedy_completion("Hi", 2));
    EXPECT_TRUE(st == 503 || st == -1) << st;
    stopper.join();
    streamer.join();
    EXPECT_EQ(r.status, 200);
    EXPECT_TRUE(r.done);
    std::map<int, std::string> finish;
    stream_texts(r, &finish);
    EXPECT_EQ(finish[0], "length");
    EXPECT_EQ(s->eng->stats().sched.generated_tokens, 300);
    EXPECT_EQ(s->eng->stats().kv_pages_used, 0);
    s.reset();  // shutdown again in the destructor: idempotent
}

TEST(server, serve_binary_exits_cleanly_on_sigterm) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    const std::string bin = test::kvserve_binary();
    if (FILE* f = std::fopen(bin.c_str(), "rb")) std::fclose(f);
    else GTEST_SKIP() << "the kvserve binary " << bin << " is not built";
    std::string out;
    ASSERT_EQ(test::run_command(bin + " serve --no-such-flag", &out), 2) << out;
    EXPECT_EQ(test::run_command(bin + " serve --api-key-file /nonexistent/keys", &out), 2) << out;
    EXPECT_NE(out.find("cannot read the API key file"), std::string::npos) << out;
    EXPECT_EQ(test::run_command(bin + " serve --max-body 0", &out), 2) << out;
    EXPECT_EQ(test::run_command(bin + " serve --max-body lots", &out), 2) << out;
    EXPECT_EQ(test::run_command(bin + " serve --request-timeout -1", &out), 2) << out;
    EXPECT_EQ(test::run_command(bin + " serve --max-queue 0", &out), 2) << out;
    const std::string dir = test::temp_dir();
    const std::string log = dir + "/serve.log", script = dir + "/serve.sh", keys = dir + "/keys";
    {
        FILE* f = std::fopen(keys.c_str(), "w");
        ASSERT_TRUE(f);
        std::fputs("# two keys\nfirst-key\nsecond-key\n", f);
        std::fclose(f);
        EXPECT_EQ(test::run_command(bin + " serve --api-key-file '" + dir + "'", &out), 2) << out;  // a folder
        FILE* e = std::fopen((dir + "/empty").c_str(), "w");
        ASSERT_TRUE(e);
        std::fclose(e);
        EXPECT_EQ(test::run_command(bin + " serve --api-key-file '" + dir + "/empty'", &out), 2) << out;
        EXPECT_NE(out.find("holds no key"), std::string::npos) << out;
    }
    {
        FILE* f = std::fopen(script.c_str(), "w");
        ASSERT_TRUE(f);
        std::fprintf(f,
                     "KVSERVE_API_KEY=third-key '%s' serve -m '%s' --host 127.0.0.1 --port 0 -t 1 --max-seqs 2 --max-queue 8 "
                     "--api-key-file '%s' --max-body 1m --request-timeout 30 2>'%s' &\n"
                     "pid=$!\n"
                     "for i in $(seq 1 200); do grep -q 'listening on' '%s' && break; sleep 0.05; done\n"
                     "kill -TERM $pid\n"
                     "wait $pid\n"
                     "echo rc=$?\n"
                     "cat '%s'\n",
                     bin.c_str(), model.c_str(), keys.c_str(), log.c_str(), log.c_str(), log.c_str());
        std::fclose(f);
    }
    ASSERT_EQ(test::run_command("bash '" + script + "'", &out), 0) << out;
    EXPECT_NE(out.find("listening on http://127.0.0.1:"), std::string::npos) << out;
    EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
    EXPECT_NE(out.find("stopped"), std::string::npos) << out;
    EXPECT_NE(out.find("queue 8, request timeout 30s, read timeout 10s, body 1048576 bytes at most, 3 API key(s)"), std::string::npos) << out;
}

// ---- KV policies over the API ---------------------------------------------------------------

TEST(server, kv_policy_per_request) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.n_ctx = 64;
    served s(f, ec);
    json ok = greedy_completion("Once upon a time", 100);
    ok["ignore_eos"] = true;
    // Dense: 100 new tokens do not fit a context of 64; StreamingLLM runs past it.
    auto [d_st, d_b] = s.post("/v1/completions", ok);
    EXPECT_EQ(d_st, 400);
    EXPECT_EQ(d_b["error"]["param"], "max_tokens");
    ok["kv_policy"] = "streaming:sinks=4,size=28";
    auto [st, b] = s.post("/v1/completions", ok);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["usage"]["completion_tokens"], 100);
    EXPECT_EQ(b["choices"][0]["finish_reason"], "length");
    // Bad specs are 400s naming the field, whether the parser or the engine refuses them.
    for (json bad : {json("streaming:size=8"), json("window:size=0"), json("lru:size=4"), json(7), json("h2o:heavy=4,recent=4"), json("quest:budget=64")}) {
        json req = greedy_completion("Once upon a time", 4);
        req["kv_policy"] = bad;
        auto [e, eb] = s.post("/v1/completions", req);
        EXPECT_EQ(e, 400) << bad.dump();
        EXPECT_EQ(eb["error"]["param"], "kv_policy") << eb.dump();
        auto [ce, ceb] = s.post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"kv_policy", bad}});
        EXPECT_EQ(ce, 400) << bad.dump();
        EXPECT_EQ(ceb["error"]["param"], "kv_policy") << ceb.dump();
    }
    EXPECT_TRUE(wait_idle(s));
}

// An endless chat: a streamed chat completion under StreamingLLM runs far past the context
// length, ends cleanly, and gives its pages back.
TEST(server, streaming_chat_runs_past_the_context) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.n_ctx = 64;
    served s(f, ec);
    json req = {{"messages", {{{"role", "user"}, {"content", "Tell me a story."}}}},
                {"temperature", 0},
                {"max_tokens", 300},
                {"ignore_eos", true},
                {"kv_policy", "streaming:sinks=4,size=28"},
                {"stream_options", {{"include_usage", true}}}};
    sse_result r = post_stream(s, "/v1/chat/completions", req);
    ASSERT_EQ(r.status, 200);
    ASSERT_TRUE(r.done);
    std::map<int, std::string> finish;
    const std::string text = stream_texts(r, &finish)[0];
    EXPECT_EQ(finish[0], "length");
    EXPECT_FALSE(text.empty());
    ASSERT_FALSE(r.chunks.empty());
    EXPECT_EQ(r.chunks.back()["usage"]["completion_tokens"], 300);
    EXPECT_TRUE(wait_idle(s));
    // The same text without streaming.
    req.erase("stream_options");
    auto [st, b] = s.post("/v1/chat/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["choices"][0]["message"]["content"], text);
}

// A server-wide default policy applies to requests that name none; metrics count pages by policy.
TEST(server, kv_policy_default_and_metrics) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.sched.n_ctx = 64;
    server_config sc;
    sc.default_policy = kv_policy::parse("window:size=32").value();
    served s(f, ec, sc);
    // Long enough (far past n_ctx, which only a window allows) that the poller samples the
    // gauge while the request runs, however fast the machine.
    json req = greedy_completion("Once upon a time", 1500);
    req["ignore_eos"] = true;
    std::atomic<bool> done{false};
    double window_pages = -1;
    std::thread poller([&] {
        while (!done) {
            auto [mst, text] = s.get("/metrics");
            const double v = metric(text, "kvserve_kv_pages_by_policy{policy=\"window\"}");
            window_pages = std::max(window_pages, v);
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    });
    auto [st, b] = s.post("/v1/completions", req);
    done = true;
    poller.join();
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["usage"]["completion_tokens"], 1500);
    EXPECT_GT(window_pages, 0);
    EXPECT_LE(window_pages, kv_cache::policy_page_bound(sc.default_policy, 1, ec.page_size));
    req["kv_policy"] = "dense";  // the request's field wins
    auto [dst, db] = s.post("/v1/completions", req);
    EXPECT_EQ(dst, 400);
    EXPECT_EQ(db["error"]["param"], "max_tokens");
}

// Concurrent requests under different policies share batches and get what each gets alone.
TEST(server, mixed_policies_in_one_batch) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.kv_type = dtype::f32;
    ec.key_bounds = true;    // quest requests need them
    ec.token_scores = true;  // and h2o requests these
    served s(f, ec);
    const char* specs[] = {"dense", "window:size=12", "streaming:sinks=2,size=10", "recompute:size=12", "streaming:sinks=4,size=16",
                           "quest:budget=16", "quest:budget=32", "h2o:heavy=6,recent=6", "h2o:heavy=4,recent=16"};
    auto request = [](const char* spec) {
        json r = greedy_completion("Lily and Tom went to the park", 40);
        r["ignore_eos"] = true;
        r["kv_policy"] = spec;
        return r;
    };
    std::vector<std::string> alone;
    for (const char* spec : specs) {
        auto [st, b] = s.post("/v1/completions", request(spec));
        ASSERT_EQ(st, 200) << b.dump();
        alone.push_back(b["choices"][0]["text"].get<std::string>());
    }
    std::vector<std::string> together(std::size(specs));
    std::vector<std::thread> clients;
    for (size_t i = 0; i < std::size(specs); ++i)
        clients.emplace_back([&, i] {
            auto [st, b] = s.post("/v1/completions", request(specs[i]));
            EXPECT_EQ(st, 200) << b.dump();
            if (st == 200) together[i] = b["choices"][0]["text"].get<std::string>();
        });
    for (auto& c : clients) c.join();
    for (size_t i = 0; i < std::size(specs); ++i) EXPECT_EQ(together[i], alone[i]) << specs[i];
    EXPECT_NE(alone[0], alone[1]);
    EXPECT_NE(alone[0], alone[5]);  // a one-page Quest budget changes the text
    EXPECT_NE(alone[0], alone[7]);  // so does a budget of 12 H2O slots
    EXPECT_TRUE(wait_idle(s));
    EXPECT_TRUE(s.eng->check_integrity());
}
