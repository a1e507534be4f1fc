// kvserve perplexity: llama-perplexity's convention, so figures are comparable. The text is
// tokenized once (with BOS); it is cut into chunks of n_ctx tokens, each chunk starts with BOS
// and is evaluated from an empty cache, and only the second half of each chunk is scored
// (every scored token sees at least n_ctx/2 tokens of context).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "command.h"
#include "common.h"
#include "model/llama.h"
#include "model/session.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

// -log p(target) from raw logits, in float64.
double nll_of(const float* logits, int64_t n_vocab, int32_t target) {
    double mx = logits[0];
    for (int64_t i = 1; i < n_vocab; ++i) mx = std::max(mx, double(logits[i]));
    double sum = 0;
    for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(double(logits[i]) - mx);
    return std::log(sum) + mx - double(logits[target]);
}

int cmd_perplexity(int argc, char** argv) {
    CLI::App app("Perplexity of a model on a text file (llama-perplexity's method)", "kvserve perplexity");
    std::string model_path = default_model_path(), text_path;
    int64_t n_ctx = 512, n_batch = 512, max_chunks = -1;
    int threads = default_threads();
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-f,--file", text_path, "text file to score")->required();
    app.add_option("-c,--ctx-size", n_ctx, "tokens per chunk")->check(CLI::Range(int64_t(4), int64_t(1) << 20))->capture_default_str();
    app.add_option("-b,--batch-size", n_batch, "tokens per forward pass")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--chunks", max_chunks, "score at most this many chunks (-1 = all)")->capture_default_str();
    app.add_option("-t,--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;

    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    std::ifstream in(text_path, std::ios::binary);
    if (!in) {
        std::fprintf(stderr, "kvserve perplexity: cannot read text file '%s'\n", text_path.c_str());
        return 2;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();

    auto model = llama_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", tok.message().c_str());
        return 1;
    }
    const llama_model& m = *model.value();
    const int64_t n_vocab = m.hparams().n_vocab;
    const bool add_bos = tok.value()->add_bos() && tok.value()->bos() >= 0;
    std::vector<int32_t> tokens = tok.value()->encode(text, add_bos, false);
    const int64_t n_chunks_all = int64_t(tokens.size()) / n_ctx;
    const int64_t n_chunks = max_chunks < 0 ? n_chunks_all : std::min(max_chunks, n_chunks_all);
    if (n_chunks < 1) {
        std::fprintf(stderr, "kvserve perplexity: the text has %zu tokens; at least %lld (one chunk of -c) are needed\n",
                     tokens.size(), (long long)n_ctx);
        return 2;
    }
    const int64_t first = n_ctx / 2;
    thread_pool pool(threads);
    session_params sp;
    if (!resolve_kv_type(kvt, "perplexity", &sp.kv_type)) return 2;
    sp.n_ctx = n_ctx;
    sp.n_batch = n_batch;
    sp.max_logit_rows = std::min(n_batch, n_ctx);
    auto s = session::create(m, pool, sp);
    if (!s) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", s.message().c_str());
        return 1;
    }
    std::fprintf(stderr, "perplexity: %zu tokens, %lld chunks of %lld, scoring the last %lld tokens of each\n", tokens.size(),
                 (long long)n_chunks, (long long)n_ctx, (long long)(n_ctx - 1 - first));
    auto t0 = std::chrono::steady_clock::now();
    double sum = 0, sum2 = 0;
    int64_t count = 0;
    std::vector<float> logits;
    std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
    for (int64_t c = 0; c < n_chunks; ++c) {
        std::copy(tokens.begin() + c * n_ctx, tokens.begin() + (c + 1) * n_ctx, chunk.begin());
        if (add_bos) chunk[0] = tok.value()->bos();
        s.value()->reset();
        // Logits of rows [first, n_ctx - 1) predict tokens first+1 .. n_ctx-1.
        if (status st = s.value()->eval(chunk.data(), n_ctx, first, &logits); !st) {
            std::fprintf(stderr, "kvserve perplexity: %s\n", st.message().c_str());
            return 1;
        }
        for (int64_t j = first; j < n_ctx - 1; ++j) {
            const double nll = nll_of(logits.data() + (j - first) * n_vocab, n_vocab, chunk[size_t(j + 1)]);
            sum += nll;
            sum2 += nll * nll;
            ++count;
        }
        std::printf("[%lld]%.4f%s", (long long)(c + 1), std::exp(sum / double(count)), (c + 1) % 8 == 0 ? "\n" : ",");
        std::fflush(stdout);
    }
    const double mean = sum / double(count);
    const double var = std::max(0.0, sum2 / double(count) - mean * mean);
    const double se_mean = std::sqrt(var / double(std::max<int64_t>(1, count - 1)));
    const double ppl = std::exp(mean);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, ppl * se_mean);
    std::fprintf(stderr, "%lld tokens scored in %.2f s (%.1f tokens/s evaluated)\n", (long long)count, secs,
                 double(n_chunks * n_ctx) / std::max(secs, 1e-9));
    return 0;
}

}  // namespace

KVS_COMMAND("perplexity", "perplexity of a model on a text file", cmd_perplexity);

}  // namespace kvs::tools
