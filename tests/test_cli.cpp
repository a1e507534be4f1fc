// The kvserve binary as a user runs it: generation, perplexity, tokenize, and clear usage
// errors (exit 2) for bad flags and missing files, never a crash.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "test_util.h"

using kvs::test::kvserve_binary;
using kvs::test::run_command;

namespace {
std::string q(const std::string& s) { return "'" + s + "'"; }
}  // namespace

TEST(Cli, RunGreedyStreamsKnownContinuation) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    int rc = run_command(kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 40 --temp 0 -t 2", &out);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("Once upon a time, there was a little girl named Lily. She loved to play outside in the park."),
              std::string::npos)
        << out;
    EXPECT_NE(out.find("prompt:"), std::string::npos);
    EXPECT_NE(out.find("tokens/s"), std::string::npos);
    EXPECT_NE(out.find("load time"), std::string::npos);
}

TEST(Cli, RunIsReproducibleWithASeed) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string a, b;
    // Only stdout (the text): the timing lines on stderr differ from run to run.
    const std::string cmd = "(" + kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 30 --temp 1 --seed 7 2>/dev/null)";
    ASSERT_EQ(run_command(cmd, &a), 0);
    ASSERT_EQ(run_command(cmd, &b), 0);
    EXPECT_EQ(a, b);
}

TEST(Cli, BadFlagsAndMissingFilesAreUsageErrors) {
    std::string out;
    EXPECT_EQ(run_command(kvserve_binary() + " run --no-such-flag", &out), 2) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " run -m /nonexistent/model.gguf", &out), 2) << out;
    EXPECT_NE(out.find("-m PATH"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " run -t 0", &out), 2) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " frobnicate", &out), 2) << out;
    EXPECT_NE(out.find("unknown command"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary(), &out), 2) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " perplexity -m /nonexistent.gguf -f /nonexistent.txt", &out), 2) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " help", &out), 0) << out;
    for (const char* cmd : {"run", "perplexity", "tokenize"}) EXPECT_NE(out.find(cmd), std::string::npos) << out;
}

TEST(Cli, MalformedModelIsARuntimeErrorWithAMessage) {
    std::string path = kvs::test::temp_dir() + "/garbage.gguf";
    std::ofstream(path) << "GGUF this is not really a model";
    std::string out;
    int rc = run_command(kvserve_binary() + " run -m " + q(path), &out);
    EXPECT_EQ(rc, 1) << out;
    EXPECT_NE(out.find("garbage.gguf"), std::string::npos) << out;
}

TEST(Cli, BadSamplingParameterIsNamed) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    EXPECT_EQ(run_command(kvserve_binary() + " run -m " + q(model) + " --top-p 1.5", &out), 2) << out;
    EXPECT_NE(out.find("top_p"), std::string::npos) << out;
}

TEST(Cli, TokenizePrintsIds) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string with_bos, without;
    ASSERT_EQ(run_command(kvserve_binary() + " tokenize -m " + q(model) + " -p 'Once upon a time'", &with_bos), 0);
    ASSERT_EQ(run_command(kvserve_binary() + " tokenize -m " + q(model) + " -p 'Once upon a time' --no-bos", &without), 0);
    EXPECT_EQ(with_bos.rfind("1 ", 0), 0u) << with_bos;
    EXPECT_EQ("1 " + without, with_bos);
}

TEST(Cli, TokenizeWorksOnVocabularyOnlyFile) {
    KVS_SKIP_IF_MISSING(vocab, "vocab/ggml-vocab-gpt-2.gguf");
    std::string out;
    ASSERT_EQ(run_command(kvserve_binary() + " tokenize -m " + q(vocab) + " -p 'Hello world' --no-bos", &out), 0) << out;
    EXPECT_EQ(out, "15496 995\n");  // GPT-2's ids for "Hello" and " world"
}

TEST(Cli, PerplexityOnTinyStories) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    KVS_SKIP_IF_MISSING(text, "text/tinystories-valid.txt");
    std::string out;
    ASSERT_EQ(run_command(kvserve_binary() + " perplexity -m " + q(model) + " -f " + q(text) + " -c 128 --chunks 4", &out), 0) << out;
    auto at = out.find("PPL = ");
    ASSERT_NE(at, std::string::npos) << out;
    double ppl = std::stod(out.substr(at + 6));
    EXPECT_GT(ppl, 1.0);
    EXPECT_LT(ppl, 10.0) << "a correct stories260K scores low single digits on TinyStories";
}

TEST(Cli, PerplexityNeedsAtLeastOneChunk) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string path = kvs::test::temp_dir() + "/short.txt";
    std::ofstream(path) << "Once upon a time.";
    std::string out;
    EXPECT_EQ(run_command(kvserve_binary() + " perplexity -m " + q(model) + " -f " + q(path) + " -c 256", &out), 2) << out;
    EXPECT_NE(out.find("at least"), std::string::npos) << out;
}

TEST(Cli, QuantizeToQ4KMAndRun) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    // stories260K's rows (64, 172) are no multiple of 256: every matrix takes the fallback types,
    // and the file still says Q4_K_M.
    std::string out = kvs::test::temp_dir() + "/stories-q4_k_m.gguf", text;
    ASSERT_EQ(run_command(kvserve_binary() + " quantize " + q(model) + " " + q(out) + " q4_k_m", &text), 0) << text;
    EXPECT_NE(text.find("q8_0"), std::string::npos) << text;
    ASSERT_EQ(run_command(kvserve_binary() + " inspect " + q(out), &text), 0) << text;
    EXPECT_NE(text.find("general.file_type"), std::string::npos) << text;
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(out) + " -p 'Once upon a time' -n 8 --temp 0", &text), 0) << text;
    EXPECT_NE(text.find("Once upon a time"), std::string::npos) << text;
    EXPECT_EQ(run_command(kvserve_binary() + " quantize --help", &text), 0) << text;
    EXPECT_NE(text.find("q4_k_m"), std::string::npos) << text;
    EXPECT_EQ(run_command(kvserve_binary() + " synth --help", &text), 0) << text;
    EXPECT_NE(text.find("q4_k_m"), std::string::npos) << text;
}

// A bad --kv-policy is a usage error naming the problem, on every command that takes one.
TEST(Cli, BadKvPolicyIsAUsageErrorEverywhere) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    KVS_SKIP_IF_MISSING(text, "text/tinystories-valid.txt");
    const std::string m = " -m " + q(model);
    for (const std::string& cmd : {"run" + m + " -p hi -n 4", "perplexity" + m + " -f " + q(text) + " --stream 64",
                                   "bench" + m + " -p 0 -n 4 -r 1 --no-bandwidth-probe", "serve" + m + " --port 0"}) {
        for (const char* bad : {"streaming:size=8", "window:size=-3", "nope"}) {
            std::string out;
            const int rc = run_command(kvserve_binary() + " " + cmd + " --kv-policy " + q(bad), &out);
            EXPECT_EQ(rc, 2) << cmd << " --kv-policy " << bad << "\n" << out;
            EXPECT_NE(out.find("--kv-policy"), std::string::npos) << out;
        }
    }
}

// run past the context under StreamingLLM, reporting the KV bytes held; bench rows carry them.
// --kv-type auto (the default) follows the model's weights (F32 here); an explicit format or
// llama.cpp's -ctk/-ctv aliases override it; K and V must agree.
TEST(Cli, KvTypeAutoAndExplicitFormats) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    for (auto [flags, bytes] : {std::pair<const char*, const char*>{"", "1280 bytes per token"}, {"--kv-type auto", "1280 bytes per token"},
                                {"--kv-type f16", "640 bytes per token"}, {"--cache-type-k bf16 --cache-type-v bf16", "640 bytes per token"},
                                // Per head and token: 8 codes + an f16 scale (q8_0), 4 + 2 (q4_0), 4 + 2 + 2 (q4_1).
                                {"--kv-type q8_0", "400 bytes per token"}, {"--cache-type-k q4_0 --cache-type-v q4_0", "240 bytes per token"},
                                {"--kv-type Q4_1", "320 bytes per token"}}) {
        ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 4 --temp 0 " + flags, &out), 0) << out;
        EXPECT_NE(out.find(bytes), std::string::npos) << flags << "\n" << out;
    }
    // K and V in different formats: K f32 (auto: 8 x 4 bytes) + V q4_0 (6 bytes) per head and token.
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 4 --temp 0 --cache-type-v q4_0", &out), 0) << out;
    EXPECT_NE(out.find("760 bytes per token"), std::string::npos) << out;
    // K bf16 (16) + V q8_0 (10): --kv-type sets both, --cache-type-k overrides K.
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 4 --temp 0 --kv-type q8_0 -ctk bf16", &out), 0) << out;
    EXPECT_NE(out.find("520 bytes per token"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " run -m " + q(model) + " -p x -n 1 --cache-type-k f16 --cache-type-v auto", &out), 2) << out;
    EXPECT_NE(out.find("V cannot be 'auto'"), std::string::npos) << out;
    EXPECT_NE(run_command(kvserve_binary() + " run -m " + q(model) + " -p x -n 1 --kv-type q5_k", &out), 0) << out;
}

// KIVI: bytes per packed token and what a sequence holds (its old pages packed, the residual in
// the model's float format), and the flag errors.
TEST(Cli, KiviBytesAndFlags) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    const std::string run = kvserve_binary() + " run -m " + q(model) + " -p 'Once upon a time' -n 200 --temp 0 ";
    // Per (layer, KV head) and token, head_dim 8: 2-bit K codes (2 bytes, rows padded to 4),
    // K's per-channel f16 scale and min over a group of 32 tokens (32 bytes / 32), V's codes (4)
    // and its f16 scale and min per token (4): 13 bytes, x 20 (layer, head) pairs. 205 tokens:
    // 7 pages of 32, the 2 older than the residual of 128 packed (2 x 32 x 260 bytes), 5 f32
    // pages (5 x 32 x 1,280).
    ASSERT_EQ(run_command(run + "--kv-type kivi2", &out), 0) << out;
    EXPECT_NE(out.find("kivi2 (G 32, R 128, residual f32), 221440 bytes held at the end (7 pages)"), std::string::npos) << out;
    EXPECT_NE(out.find("260 bytes per token"), std::string::npos) << out;
    // G 16: K's parameters cost 32 / 16 bytes per token; R 32 packs 10 of 13 pages.
    ASSERT_EQ(run_command(run + "-ctk kivi4 -ctv kivi4 --kivi-group 16 --kivi-residual 32", &out), 0) << out;
    EXPECT_NE(out.find("kivi4 (G 16, R 32, residual f32), 106240 bytes held at the end (13 pages)"), std::string::npos) << out;
    EXPECT_NE(out.find("280 bytes per token"), std::string::npos) << out;
    ASSERT_EQ(run_command(run + "--kv-type kivi2 -ctk bf16", &out), 0) << out;
    EXPECT_NE(out.find("residual bf16"), std::string::npos) << out;
    for (auto [flags, message] : {std::pair<const char*, const char*>{"-ctk kivi2", "KIVI quantizes K and V together"},
                                  {"--kv-type kivi2 -ctv q8_0", "V cannot take another format"},
                                  {"--kv-type kivi2 -ctk q4_0", "residual pages take a float format"},
                                  {"--kv-type kivi2 --kivi-group 3", "multiple of its group"},
                                  {"--kv-type kivi2 --kv-policy h2o:heavy=8,recent=8", "does not combine"}}) {
        EXPECT_NE(run_command(run + flags, &out), 0) << flags << "\n" << out;
        EXPECT_NE(out.find(message), std::string::npos) << flags << "\n" << out;
    }
}

TEST(Cli, StreamingRunPastTheContextAndBenchKvBytes) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    int rc = run_command(kvserve_binary() + " run -m " + q(model) +
                             " -p 'Once upon a time' -n 700 -c 128 --temp 0.8 --kv-policy streaming:sinks=4,size=60", &out);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("generate:  700 tokens"), std::string::npos) << out;
    // 1 sink page + 4 window pages + 1 = 6 pages of 16 tokens at 1,280 bytes per token (the
    // model's weights are F32, so the default `auto` cache is f32).
    EXPECT_NE(out.find("(6 pages)"), std::string::npos) << out;
    EXPECT_NE(out.find("1280 bytes per token"), std::string::npos) << out;
    rc = run_command(kvserve_binary() + " bench -m " + q(model) +
                         " -p 0 -n 8 -d 200 -c 64 -r 1 -o json --no-bandwidth-probe --kv-policy streaming:sinks=4,size=28"
                         " --kv-policy window:size=32 2>/dev/null", &out);
    ASSERT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("\"kv_policy\": \"streaming:sinks=4,size=28\""), std::string::npos) << out;
    EXPECT_NE(out.find("\"kv_policy\": \"window:size=32\""), std::string::npos) << out;
    // After 208 tokens the next row reads 181..208 (streaming: the sink page + pages 11, 12) or
    // 177..208 (window: pages 11, 12); an f32 page of stories260K is 16 x 1,280 bytes.
    EXPECT_NE(out.find("\"kv_bytes\": 61440"), std::string::npos) << out;
    EXPECT_NE(out.find("\"kv_bytes\": 40960"), std::string::npos) << out;
}

// The server's fault and load harness on a small plan: mixed requests, disconnects, bursts over
// the queue and refused requests all answered as they should be, no page leaked, exit 0.
TEST(Cli, BenchSoakSmallPlanPasses) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    const int rc = run_command(kvserve_binary() + " bench soak -m " + q(model) + " --requests 600 --clients 6 --seed 3 -t 1", &out);
    EXPECT_EQ(rc, 0) << out;
    EXPECT_NE(out.find("end state: idle; pages used 0"), std::string::npos) << out;
    EXPECT_NE(out.find("integrity \"ok\""), std::string::npos) << out;
    EXPECT_NE(out.find("\nPASS"), std::string::npos) << out;
    EXPECT_EQ(out.find("FAIL"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " bench soak --requests 0", &out), 2) << out;
}

TEST(Cli, BenchEmbedOrdersGiveTheSameVectors) {
    KVS_SKIP_IF_MISSING(model, "models/stories260K.gguf");
    std::string out;
    const int rc = run_command(kvserve_binary() + " bench embed -m " + q(model) + " -N 12 --max-len 300 --max-batch-tokens 256 --max-seqs 4 -r 1 -t 2", &out);
    EXPECT_EQ(rc, 0) << out;
    for (const char* order : {"arrival (first-come)", "shortest first", "longest first"}) EXPECT_NE(out.find(order), std::string::npos) << out;
    EXPECT_NE(out.find("largest difference between the orders' vectors: 0\n"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " bench embed -m " + q(model) + " --min-len 100 --max-len 10", &out), 2) << out;
    EXPECT_NE(out.find("--min-len"), std::string::npos) << out;
    EXPECT_EQ(run_command(kvserve_binary() + " bench embed -m " + q(model) + " --max-len 100000", &out), 2) << out;
}

// A yoco model from synth: run and bench report the KV of each group (the global K/V grows with
// the tokens, the self-decoder's ring stays within its window).
TEST(Cli, YocoRunAndBenchReportKvPerGroup) {
    const std::string path = kvs::test::temp_dir() + "/cli-yoco-tiny.gguf";
    std::string out;
    // synth borrows stories260K's vocabulary from the fixtures, wherever the test runs from.
    KVS_SKIP_IF_MISSING(vocab, "models/stories260K.gguf");
    ASSERT_EQ(run_command(kvserve_binary() + " synth --shape yoco-tiny --dtype f32 --vocab " + q(vocab) + " -o " + q(path), &out), 0) << out;
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello' -n 60 --ignore-eos --temp 0 -t 2", &out), 0) << out;
    // 64 tokens: 4 pages of 16 in the global group; the 32-token window needs at most 3.
    EXPECT_NE(out.find("kv groups: global 16384 bytes (4 pages, 1 layers), self "), std::string::npos) << out;
    EXPECT_NE(out.find("window 32)"), std::string::npos) << out;
    ASSERT_EQ(run_command("(" + kvserve_binary() + " bench -m " + q(path) + " -p 0 -n 4 -d 200 -r 1 -t 1 -o json 2>/dev/null)", &out), 0) << out;
    const auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << out;
    ASSERT_TRUE(j.is_array() && !j.empty()) << out;
    const auto& g = j[0]["kv_bytes_by_group"];
    ASSERT_TRUE(g.is_object()) << out;
    EXPECT_GT(g["global"].get<int64_t>(), 0);
    EXPECT_GT(g["self"].get<int64_t>(), 0);
    EXPECT_EQ(g["global"].get<int64_t>() + g["self"].get<int64_t>(), j[0]["kv_bytes"].get<int64_t>()) << out;
}

// A deepseek2 model from synth: run, bench and perplexity work on it, and bench reports the
// latent cache beside a per-head K/V cache of the same model.
TEST(Cli, DeepSeek2RunBenchPerplexity) {
    const std::string path = kvs::test::temp_dir() + "/cli-ds2-tiny.gguf";
    std::string out;
    KVS_SKIP_IF_MISSING(vocab, "models/stories260K.gguf");
    KVS_SKIP_IF_MISSING(text, "text/tinystories-valid.txt");
    ASSERT_EQ(run_command(kvserve_binary() + " synth --shape deepseek-v2-tiny --dtype q8_0 --vocab " + q(vocab) + " -o " + q(path), &out), 0) << out;
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello' -n 20 --ignore-eos --temp 0 -t 2 --kv-type f32", &out), 0) << out;
    // 3 layers of one latent entry (32 + 8 f32 values): 480 bytes per token.
    EXPECT_NE(out.find("480 bytes per token"), std::string::npos) << out;
    ASSERT_EQ(run_command(kvserve_binary() + " bench -m " + q(path) + " -p 32 -n 4 -r 1 -t 1 --kv-type f32", &out), 0) << out;
    EXPECT_NE(out.find("kv: latent cache of 40 values per token and layer (f32, 480 bytes per token over 3 layers); "
                       "a per-head K/V cache holds 160 values per token and layer (4.0x the latent)"),
              std::string::npos)
        << out;
    ASSERT_EQ(run_command("(" + kvserve_binary() + " bench -m " + q(path) + " -p 0 -n 2 -r 1 -t 1 -o json 2>/dev/null)", &out), 0) << out;
    const auto j = nlohmann::json::parse(out, nullptr, false);
    ASSERT_TRUE(j.is_array() && !j.empty()) << out;
    EXPECT_EQ(j[0]["kv_latent_values"], 40) << out;
    EXPECT_EQ(j[0]["kv_per_head_values"], 160) << out;
    // Decode streams 2 of the 8 routed experts' weights.
    EXPECT_LT(j[0]["decode_weight_bytes"].get<int64_t>(), j[0]["model_size"].get<int64_t>()) << out;
    ASSERT_EQ(run_command(kvserve_binary() + " perplexity -m " + q(path) + " -f " + q(text) + " -c 64 --chunks 2 -t 2", &out), 0) << out;
    EXPECT_NE(out.find("Final estimate: PPL = "), std::string::npos) << out;
    // H2O and Quest over the latent cache.
    for (const char* pol : {"h2o:heavy=8,recent=8", "quest:budget=8"})
        EXPECT_EQ(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello there, little one' -n 12 --ignore-eos --kv-policy " + pol, &out), 0)
            << pol << " " << out;
    // What deepseek2 does not run is an error that says so, not a crash.
    EXPECT_NE(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello' -n 4 --kv-type kivi2", &out), 0) << out;
    EXPECT_NE(out.find("KIVI"), std::string::npos) << out;
    // StreamingLLM over the latent cache: past the context at constant memory.
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello' -n 100 -c 32 --ignore-eos --temp 0 --kv-policy streaming:sinks=4,size=16", &out), 0) << out;
    // 16-bit latent pages: half the bytes.
    ASSERT_EQ(run_command(kvserve_binary() + " run -m " + q(path) + " -p 'hello' -n 4 --kv-type bf16", &out), 0) << out;
    EXPECT_NE(out.find("240 bytes per token"), std::string::npos) << out;
}
