// Speculative decoding over the OpenAI-compatible server (stories260K, real HTTP on 127.0.0.1):
// the "speculative" request field with self-speculation and a draft model gives greedy text
// identical to plain decoding, streamed and not, for completions and chat; usage counts the
// emitted tokens; /metrics reports the cycles, drafts and acceptance; bad values are 400s
// naming "speculative"; and `kvserve serve` takes the speculation options.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "sched/engine.h"
#include "server/http_server.h"
#include "server_fixture.h"
#include "stories_fixture.h"
#include "test_util.h"

using namespace kvs;
using namespace kvs::test;

namespace {

const json k_self_spec = {{"exit_layer", 2}, {"draft_tokens", 4}};

json greedy(const std::string& prompt, int max_tokens) {
    json r = greedy_completion(prompt, max_tokens);
    r["ignore_eos"] = true;
    return r;
}

json chat(const std::string& content, int max_tokens) {
    return {{"messages", {{{"role", "user"}, {"content", content}}}}, {"temperature", 0}, {"max_tokens", max_tokens}, {"ignore_eos", true}};
}

// The spec_* samples of /metrics.
struct spec_sample {
    double cycles, drafted, accepted, emitted, ratio;
};

spec_sample spec_metrics(const served& s) {
    auto [st, text] = s.get("/metrics");
    EXPECT_EQ(st, 200);
    return {metric(text, "kvserve_spec_cycles_total"), metric(text, "kvserve_spec_draft_tokens_total"),
            metric(text, "kvserve_spec_accepted_tokens_total"), metric(text, "kvserve_spec_emitted_tokens_total"),
            metric(text, "kvserve_spec_acceptance_ratio")};
}

}  // namespace

// Greedy completions with self-speculation (exit after layer 2, 4 drafts per cycle): the text
// of plain decoding, token for token, whole and streamed, with the right usage; the metrics
// count the cycles.
TEST(server_speculative, greedy_completion_is_the_plain_text) {
    NEED_MODEL(f);
    served s(f);
    const json plain_req = greedy("Once upon a time", 40);
    auto [pst, plain] = s.post("/v1/completions", plain_req);
    ASSERT_EQ(pst, 200) << plain.dump();
    const std::string text = plain["choices"][0]["text"];
    ASSERT_FALSE(text.empty());
    const spec_sample before = spec_metrics(s);
    EXPECT_EQ(before.cycles, 0) << "a request without speculation ran cycles";
    EXPECT_EQ(before.drafted, 0);
    EXPECT_EQ(before.ratio, 0) << "no drafts: the ratio is 0";

    json req = plain_req;
    req["speculative"] = k_self_spec;
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["choices"][0]["text"], text);
    EXPECT_EQ(b["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(b["usage"]["completion_tokens"], 40);
    EXPECT_EQ(b["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    EXPECT_EQ(b["usage"]["total_tokens"], plain["usage"]["total_tokens"]);
    const spec_sample one = spec_metrics(s);
    EXPECT_GT(one.cycles, 0);
    EXPECT_GT(one.drafted, 0);
    EXPECT_LE(one.accepted, one.drafted);
    // Each cycle emits its accepted drafts and one token of the target's (fewer when the
    // request's last tokens cut it short), all within the request's 40.
    EXPECT_LE(one.emitted, one.accepted + one.cycles);
    EXPECT_GE(one.emitted, one.cycles);
    EXPECT_LE(one.emitted, 40);

    req["stream_options"] = {{"include_usage", true}};
    sse_result r = post_stream(s, "/v1/completions", req);
    ASSERT_EQ(r.status, 200);
    EXPECT_TRUE(r.done);
    ASSERT_FALSE(r.chunks.empty());
    std::map<int, std::string> finish;
    EXPECT_EQ(stream_texts(r, &finish)[0], text);
    EXPECT_EQ(finish[0], "length");
    const json& last = r.chunks.back();
    EXPECT_TRUE(last["choices"].empty());
    EXPECT_EQ(last["usage"]["prompt_tokens"], plain["usage"]["prompt_tokens"]);
    EXPECT_EQ(last["usage"]["completion_tokens"], 40);
    EXPECT_EQ(last["usage"]["total_tokens"], plain["usage"]["total_tokens"]);

    auto [mst, m] = s.get("/metrics");
    ASSERT_EQ(mst, 200);
    const double cycles = metric(m, "kvserve_spec_cycles_total"), drafted = metric(m, "kvserve_spec_draft_tokens_total"),
                 accepted = metric(m, "kvserve_spec_accepted_tokens_total");
    EXPECT_GT(cycles, one.cycles) << "the streamed request speculated too";
    EXPECT_GT(drafted, one.drafted);
    EXPECT_GE(accepted, 0);
    EXPECT_LE(accepted, drafted);
    EXPECT_NEAR(metric(m, "kvserve_spec_acceptance_ratio"), accepted / drafted, 1e-12);
    EXPECT_GE(metric(m, "kvserve_spec_emitted_tokens_total"), cycles);
    EXPECT_GT(metric(m, "kvserve_spec_draft_seconds_total"), 0);
    EXPECT_GT(metric(m, "kvserve_spec_verify_seconds_total"), 0);
    for (const char* name : {"kvserve_spec_cycles_total", "kvserve_spec_draft_tokens_total", "kvserve_spec_accepted_tokens_total",
                             "kvserve_spec_emitted_tokens_total", "kvserve_spec_draft_seconds_total", "kvserve_spec_verify_seconds_total"})
        EXPECT_NE(m.find(std::string("# TYPE ") + name + " counter"), std::string::npos) << name;
    EXPECT_NE(m.find("# TYPE kvserve_spec_acceptance_ratio gauge"), std::string::npos);
    EXPECT_EQ(metric(m, "kvserve_draft_kv_pages_total"), -1) << "no draft model, no draft pool gauges";
    EXPECT_EQ(metric(m, "kvserve_draft_kv_pages_used"), -1);
    EXPECT_TRUE(wait_idle(s));
    EXPECT_TRUE(s.eng->check_integrity()) << s.eng->check_integrity().message();
}

// Chat completions with speculation: the plain text, whole and streamed.
TEST(server_speculative, chat_is_the_plain_text) {
    NEED_MODEL(f);
    served s(f);
    json req = chat("Tell me a story about a cat.", 32);
    auto [pst, plain] = s.post("/v1/chat/completions", req);
    ASSERT_EQ(pst, 200) << plain.dump();
    const std::string text = plain["choices"][0]["message"]["content"];
    ASSERT_FALSE(text.empty());
    req["speculative"] = {{"exit_layer", 1}, {"draft_tokens", 3}};
    auto [st, b] = s.post("/v1/chat/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["choices"][0]["message"]["content"], text);
    EXPECT_EQ(b["usage"]["completion_tokens"], 32);
    req["stream_options"] = {{"include_usage", true}};
    sse_result r = post_stream(s, "/v1/chat/completions", req);
    ASSERT_EQ(r.status, 200);
    EXPECT_TRUE(r.done);
    EXPECT_EQ(stream_texts(r)[0], text);
    ASSERT_FALSE(r.chunks.empty());
    EXPECT_EQ(r.chunks.back()["usage"]["completion_tokens"], 32);
    EXPECT_GT(spec_metrics(s).cycles, 0);
    EXPECT_TRUE(wait_idle(s));
}

// Bad speculation is a 400 naming "speculative", whether the request parser or the engine
// (exit layer past the model, no draft model, a policy that cannot roll drafts back) refuses it;
// draft_tokens 0 and false mean no speculation.
TEST(server_speculative, bad_values_are_400s) {
    NEED_MODEL(f);
    served s(f);
    const std::vector<std::pair<json, std::string>> bad = {
        {{{"draft_tokens", 17}, {"exit_layer", 2}}, "draft_tokens"},
        {{{"draft_tokens", 4}, {"exit_layer", 99}}, "exit_layer"},
        {{{"draft_tokens", 4}, {"exit_layer", 0}}, "draft model"},
        {{{"draft_tokens", 4}}, "draft model"},
        {{{"exit_layer", 2}}, "draft_tokens"},
        {"yes", "speculative"},
        {{{"draft_tokens", 4}, {"exit_layer", 2}, {"min_draft_p", 1.5}}, "min_draft_p"},
    };
    for (const auto& [spec, says] : bad) {
        json req = greedy("Once upon a time", 8);
        req["speculative"] = spec;
        auto [st, b] = s.post("/v1/completions", req);
        EXPECT_EQ(st, 400) << spec.dump();
        EXPECT_EQ(b["error"]["param"], "speculative") << spec.dump() << " -> " << b.dump();
        EXPECT_EQ(b["error"]["type"], "invalid_request_error");
        EXPECT_NE(b["error"]["message"].get<std::string>().find(says), std::string::npos) << b.dump();
        json c = chat("hi", 8);
        c["speculative"] = spec;
        auto [cst, cb] = s.post("/v1/chat/completions", c);
        EXPECT_EQ(cst, 400) << spec.dump();
        EXPECT_EQ(cb["error"]["param"], "speculative") << spec.dump() << " -> " << cb.dump();
    }
    // A policy whose windows would keep the rejected drafts.
    json rec = greedy("Once upon a time", 8);
    rec["speculative"] = k_self_spec;
    rec["kv_policy"] = "recompute:size=16";
    auto [rst, rb] = s.post("/v1/completions", rec);
    EXPECT_EQ(rst, 400);
    EXPECT_EQ(rb["error"]["param"], "speculative") << rb.dump();
    EXPECT_NE(rb["error"]["message"].get<std::string>().find("recompute"), std::string::npos) << rb.dump();
    // Off, not errors.
    for (const json& off : {json{{"draft_tokens", 0}, {"exit_layer", 2}}, json{{"draft_tokens", 0}, {"exit_layer", 99}}, json(false)}) {
        json req = greedy("Once upon a time", 8);
        req["speculative"] = off;
        auto [st, b] = s.post("/v1/completions", req);
        EXPECT_EQ(st, 200) << off.dump() << " -> " << b.dump();
        EXPECT_EQ(b["usage"]["completion_tokens"], 8);
    }
    EXPECT_EQ(spec_metrics(s).cycles, 0) << "nothing here speculated";
    EXPECT_TRUE(wait_idle(s));
}

// A server with a draft model (the target itself, so every greedy draft is accepted) and
// speculation on by default: requests that name none speculate with it and give the plain
// text; "speculative": false opts out; the draft pool's gauges appear and its pages come back.
TEST(server_speculative, draft_model_and_server_default) {
    NEED_MODEL(f);
    engine_config ec = small_engine();
    ec.draft_model = f->model.get();
    server_config sc;
    sc.default_speculative = speculative_params{4, 0, 0.0f};
    served s(f, ec, sc);
    json req = greedy("Lily and Tom went to the park", 40);
    req["speculative"] = false;
    auto [pst, plain] = s.post("/v1/completions", req);
    ASSERT_EQ(pst, 200) << plain.dump();
    EXPECT_EQ(spec_metrics(s).cycles, 0) << "speculative false still speculated";
    req.erase("speculative");
    auto [st, b] = s.post("/v1/completions", req);
    ASSERT_EQ(st, 200) << b.dump();
    EXPECT_EQ(b["choices"][0]["text"], plain["choices"][0]["text"]);
    EXPECT_EQ(b["usage"]["completion_tokens"], 40);
    const spec_sample m = spec_metrics(s);
    EXPECT_GT(m.cycles, 0) << "the server's default did not apply";
    EXPECT_GT(m.drafted, 0);
    EXPECT_EQ(m.accepted, m.drafted) << "the target drafting for itself";
    EXPECT_EQ(m.ratio, 1);
    // A request's own speculation overrides the default (self-speculation on this server too).
    req["speculative"] = k_self_spec;
    auto [sst, sb] = s.post("/v1/completions", req);
    ASSERT_EQ(sst, 200) << sb.dump();
    EXPECT_EQ(sb["choices"][0]["text"], plain["choices"][0]["text"]);
    EXPECT_GT(spec_metrics(s).cycles, m.cycles);
    EXPECT_TRUE(wait_idle(s));
    auto [xs, x] = s.get("/metrics");
    ASSERT_EQ(xs, 200);
    EXPECT_EQ(metric(x, "kvserve_draft_kv_pages_total"), double(s.eng->stats().draft_kv_pages_total));
    EXPECT_GT(metric(x, "kvserve_draft_kv_pages_total"), 0);
    EXPECT_EQ(metric(x, "kvserve_draft_kv_pages_used"), 0);
    EXPECT_NE(x.find("# TYPE kvserve_draft_kv_pages_used gauge"), std::string::npos);
    EXPECT_TRUE(s.eng->check_integrity()) << s.eng->check_integrity().message();
}

// `kvserve serve`: bad speculation options exit 2 before serving; a good one is named in the
// start-up line.
TEST(server_speculative, serve_binary_options) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    const std::string bin = kvserve_binary();
    if (FILE* fp = std::fopen(bin.c_str(), "rb")) std::fclose(fp);
    else GTEST_SKIP() << "the kvserve binary " << bin << " is not built";
    const std::string m = " -m '" + model + "'";
    std::string out;
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"--self-spec draft=4", "exit"},
        {"--self-spec exit=2,draft=17", "--self-spec"},
        {"--self-spec exit=9,draft=4", "layers"},
        {"--self-spec exit=2,draft=4 --kv-policy recompute:size=16", "recompute"},
        {"--self-spec exit=2,draft=4 --model-draft '" + model + "'", "exclude"},
        {"--model-draft /nonexistent/draft.gguf", "not found"},
        {"--spec-max-running -1", "spec-max-running"},
        {"--draft-tokens 0", "draft-tokens"},
    };
    for (const auto& [args, says] : bad) {
        EXPECT_EQ(run_command(bin + " serve" + m + " --port 0 " + args, &out), 2) << args << ": " << out;
        EXPECT_NE(out.find(says), std::string::npos) << args << ": " << out;
    }
    // Serve with self-speculation, then with a draft model (the model itself), stopping each
    // once it listens.
    const std::string dir = temp_dir();
    const std::string script = dir + "/serve_spec.sh";
    {
        FILE* fp = std::fopen(script.c_str(), "w");
        ASSERT_TRUE(fp);
        std::fprintf(fp,
                     "for args in '--self-spec exit=2,draft=4' '--model-draft %s --draft-tokens 3 --spec-max-running 1'; do\n"
                     "  log='%s/serve.log'; : > \"$log\"\n"
                     "  '%s' serve -m '%s' --host 127.0.0.1 --port 0 -t 1 --max-seqs 2 $args 2>\"$log\" &\n"
                     "  pid=$!\n"
                     "  for i in $(seq 1 200); do grep -q 'listening on' \"$log\" && break; sleep 0.05; done\n"
                     "  kill -TERM $pid; wait $pid; echo rc=$?\n"
                     "  cat \"$log\"\n"
                     "done\n",
                     model.c_str(), dir.c_str(), bin.c_str(), model.c_str());
        std::fclose(fp);
    }
    ASSERT_EQ(run_command("bash '" + script + "'", &out), 0) << out;
    EXPECT_NE(out.find("speculation exit=2,draft=4 while at most 2 sequences run"), std::string::npos) << out;
    EXPECT_NE(out.find("speculation draft=3 with the draft model " + model + " while at most 1 sequence runs"), std::string::npos) << out;
    size_t n_ok = 0;
    for (size_t pos = 0; (pos = out.find("rc=0", pos)) != std::string::npos; ++pos) ++n_ok;
    EXPECT_EQ(n_ok, 2u) << out;
}
