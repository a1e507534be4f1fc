// The kvserve binary as a user runs it: generation, perplexity, tokenize, and clear usage
// errors (exit 2) for bad flags and missing files, never a crash.
#include <gtest/gtest.h>

#include <fstream>

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
