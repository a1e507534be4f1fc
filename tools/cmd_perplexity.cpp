// kvserve perplexity: llama-perplexity's convention, so figures are comparable. The text is
// tokenized once (with BOS); it is cut into chunks of n_ctx tokens, each chunk starts with BOS
// and is evaluated from an empty cache, and only the second half of each chunk is scored
// (every scored token sees at least n_ctx/2 tokens of context).
//
// --stream N: StreamingLLM's protocol instead. One stream of BOS followed by the text's tokens,
// cut to N tokens, is fed through one sequence under the KV policy (-b tokens per forward
// pass); every token after the first is predicted from the cache state its policy leaves, and
// the result is exp(mean NLL) over those N - 1 predictions. The perplexity of each --stretch
// tokens is printed as it goes, so a trend over the stream shows.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "command.h"
#include "common.h"
#include "model/forward_state.h"
#include "model/language_model.h"
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

struct nll_sum {
    double sum = 0, sum2 = 0;
    int64_t count = 0;
    void add(double nll) {
        sum += nll;
        sum2 += nll * nll;
        ++count;
    }
    double ppl() const { return std::exp(sum / double(std::max<int64_t>(1, count))); }
    // Standard error of the perplexity (delta method, as llama-perplexity reports it).
    double ppl_error() const {
        const double mean = sum / double(std::max<int64_t>(1, count));
        const double var = std::max(0.0, sum2 / double(std::max<int64_t>(1, count)) - mean * mean);
        return ppl() * std::sqrt(var / double(std::max<int64_t>(1, count - 1)));
    }
};

// --stream: see the file comment.
int stream_perplexity(const language_model& m, thread_pool& pool, std::vector<int32_t> tokens, int64_t n_stream, int64_t n_batch,
                      int64_t stretch, std::optional<dtype> kv_type, std::optional<dtype> kv_v_type, const kivi_config& kivi,
                      const kv_policy& policy) {
    const int64_t n_vocab = m.hparams().n_vocab;
    if (int64_t(tokens.size()) < n_stream) {
        std::fprintf(stderr, "kvserve perplexity: the text has %zu tokens, fewer than the stream's %lld\n", tokens.size(),
                     (long long)n_stream);
        return 2;
    }
    tokens.resize(size_t(n_stream));
    session_params sp;
    sp.kv_type = kv_type;
    sp.kv_v_type = kv_v_type;
    sp.kivi = kivi;
    sp.policy = policy;
    sp.n_batch = n_batch;
    sp.max_logit_rows = n_batch;
    if (!policy.slides() && policy.kind != kv_policy_kind::recompute) {
        // A policy that keeps every token needs one context of the whole stream.
        sp.n_ctx = n_stream;
        if (n_stream > m.hparams().n_ctx_train)
            std::fprintf(stderr, "perplexity: warning: the stream (%lld tokens) is longer than the model's training context (%lld)\n",
                         (long long)n_stream, (long long)m.hparams().n_ctx_train);
    }
    auto s = session::create(m, pool, sp);
    if (!s) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", s.message().c_str());
        return 1;
    }
    if (policy.kind == kv_policy_kind::quest) s.value()->set_quest_mass(true);
    if (policy.kind == kv_policy_kind::h2o) s.value()->set_h2o_mass(true);
    std::fprintf(stderr, "perplexity: one stream of %lld tokens under %s, %lld tokens per pass, perplexity per %lld tokens\n",
                 (long long)n_stream, policy.spec().c_str(), (long long)n_batch, (long long)stretch);
    auto t0 = std::chrono::steady_clock::now();
    nll_sum all, part;
    int64_t n_parts = 0;
    std::vector<float> logits;
    for (int64_t start = 0; start + 1 < n_stream; start += n_batch) {
        // Rows [start, end) predict tokens start+1 .. end (the last token predicts nothing).
        const int64_t end = std::min(start + n_batch, n_stream - 1);
        if (status st = s.value()->eval(tokens.data() + start, end - start, 0, &logits); !st) {
            std::fprintf(stderr, "kvserve perplexity: %s\n", st.message().c_str());
            return 1;
        }
        for (int64_t j = start; j < end; ++j) {
            const double nll = nll_of(logits.data() + (j - start) * n_vocab, n_vocab, tokens[size_t(j + 1)]);
            all.add(nll);
            part.add(nll);
            if (part.count == stretch || j + 2 == n_stream) {
                ++n_parts;
                std::printf("[%lld]%.4f%s", (long long)n_parts, part.ppl(), n_parts % 8 == 0 ? "\n" : ",");
                std::fflush(stdout);
                part = nll_sum{};
            }
        }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", all.ppl(), all.ppl_error());
    if (policy.kind == kv_policy_kind::quest) {
        // Mean share of the dense attention mass on the pages Quest read, per layer (2 on).
        const auto& sum = s.value()->state().quest_mass_sum();
        const auto& cnt = s.value()->state().quest_mass_count();
        std::string line;
        for (size_t l = 0; l < sum.size(); ++l)
            if (cnt[l] > 0) line += strfmt(" L%zu %.4f", l, sum[l] / double(cnt[l]));
        std::printf("attention mass kept per layer (Quest decode rows):%s\n", line.empty() ? " none (every row within the budget)" : line.c_str());
        const int64_t dense = s.value()->state().quest_pages_dense();
        if (dense > 0)
            std::printf("KV pages read by Quest rows (layers 2+): %.1f%% of dense\n",
                        100.0 * double(s.value()->state().quest_pages_read()) / double(dense));
    }
    if (policy.kind == kv_policy_kind::h2o) {
        // Mean share of the dense attention mass (over every past token) on the tokens H2O kept.
        const auto& sum = s.value()->state().h2o_mass().sum();
        const auto& cnt = s.value()->state().h2o_mass().count();
        std::string line;
        for (size_t l = 0; l < sum.size(); ++l)
            if (cnt[l] > 0) line += strfmt(" L%zu %.4f", l, sum[l] / double(cnt[l]));
        std::printf("attention mass kept per layer (H2O rows):%s\n", line.c_str());
    }
    const size_t page_bytes = s.value()->kv().config().page_bytes();
    std::fprintf(stderr, "%lld tokens predicted in %.2f s (%.1f tokens/s); KV held at most %d pages (%zu bytes)\n",
                 (long long)all.count, secs, double(all.count) / std::max(secs, 1e-9), s.value()->peak_pages(),
                 size_t(s.value()->peak_pages()) * page_bytes);
    return 0;
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
    std::string policy_spec;
    add_kv_policy_option(app, policy_spec);
    int64_t n_stream = 0, stretch = 8192;
    auto* stream_opt = app.add_option("--stream", n_stream, "score one stream of N tokens under the KV policy (StreamingLLM's protocol)")
                           ->check(CLI::Range(int64_t(2), int64_t(1) << 30));
    app.add_option("--stretch", stretch, "with --stream: print the perplexity of every this many tokens")
        ->check(CLI::Range(int64_t(1), int64_t(1) << 30))->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;
    kv_policy policy;
    if (!resolve_kv_policy(policy_spec, "perplexity", &policy)) return 2;
    if (!stream_opt->count() && !policy.is_dense()) {
        std::fprintf(stderr, "kvserve perplexity: --kv-policy applies to --stream mode (chunks of -c are scored densely)\n");
        return 2;
    }

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

    auto model = language_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve perplexity: %s\n", tok.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    const int64_t n_vocab = m.hparams().n_vocab;
    const bool add_bos = tok.value()->add_bos() && tok.value()->bos() >= 0;
    std::vector<int32_t> tokens = tok.value()->encode(text, add_bos, false);
    if (stream_opt->count()) {
        thread_pool pool(threads);
        std::optional<dtype> kv_type, kv_v_type;
        kivi_config kivi;
        if (!resolve_kv_type(kvt, "perplexity", &kv_type, &kv_v_type, &kivi)) return 2;
        return stream_perplexity(m, pool, std::move(tokens), n_stream, n_batch, stretch, kv_type, kv_v_type, kivi, policy);
    }
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
    if (!resolve_kv_type(kvt, "perplexity", &sp.kv_type, &sp.kv_v_type, &sp.kivi)) return 2;
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
