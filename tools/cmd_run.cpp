// kvserve run: generate text from a prompt, streaming it as it is produced.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>

#include "command.h"
#include "common.h"
#include "model/forward_state.h"
#include "model/language_model.h"
#include "model/session.h"
#include "sampling/sampler.h"
#include "sched/scheduler.h"
#include "tokenizer/tokenizer.h"

namespace kvs::tools {

namespace {

using clock_type = std::chrono::steady_clock;
double seconds_since(clock_type::time_point t0) {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// Generation with speculative decoding: one sequence through the scheduler, which runs the
// draft-and-verify cycles. Prints the text as it comes and the same speed lines as plain
// generation, plus the drafts' acceptance and where the time went.
int run_speculative(const language_model& m, const tokenizer& tk, const language_model* draft, thread_pool& pool,
                    const std::vector<int32_t>& tokens, const session_params& sess, const sampling_params& sp, int64_t n_predict,
                    bool ignore_eos, const speculative_params& spec, double load_s) {
    const int32_t ps = sess.page_size;
    const int64_t n_ctx = sess.n_ctx > 0 ? sess.n_ctx : m.hparams().n_ctx_train;
    const bool bounded = !sess.policy.slides();
    if (bounded && int64_t(tokens.size()) >= n_ctx) {
        std::fprintf(stderr, "kvserve run: the prompt has %zu tokens, the context only %lld\n", tokens.size(), (long long)n_ctx);
        return 2;
    }
    const int64_t want = n_predict >= 0 ? n_predict : (bounded ? n_ctx - int64_t(tokens.size()) : n_ctx);
    const int64_t span = bounded ? n_ctx + k_max_draft_tokens + 1
                                 : std::min<int64_t>(int64_t(tokens.size()) + want, sess.policy.size + sess.policy.sinks + sess.n_batch) +
                                       k_max_draft_tokens + 1;
    const int32_t n_pages = kv_cache::pages_for(span, ps) + 4;
    kv_config geom = m.kv_geometry(ps, n_pages, sess.kv_type.value_or(m.auto_kv_type()));
    auto kv = kv_cache::create(geom);
    if (!kv) {
        std::fprintf(stderr, "kvserve run: %s\n", kv.message().c_str());
        return 1;
    }
    std::unique_ptr<kv_cache> dkv;
    if (draft) {
        auto d = kv_cache::create(draft->kv_geometry(ps, n_pages, sess.kv_type.value_or(draft->auto_kv_type())));
        if (!d) {
            std::fprintf(stderr, "kvserve run: draft model: %s\n", d.message().c_str());
            return 1;
        }
        dkv = std::move(d.value());
    }
    scheduler_config cfg;
    cfg.max_seqs = 1;
    cfg.spec_max_running = 1;
    cfg.prefix_cache = false;
    cfg.n_ctx = n_ctx;
    cfg.max_batch_tokens = sess.n_batch;
    cfg.prefill_chunk = sess.n_batch;
    scheduler sch(m, tk, *kv.value(), pool, cfg, {draft, dkv.get()});
    request_params p;
    p.prompt = tokens;
    p.sampling = sp;
    p.max_tokens = n_predict >= 0 ? std::max<int64_t>(n_predict, 1) : -1;
    p.ignore_eos = ignore_eos;
    p.policy = sess.policy;
    p.speculative = spec;
    auto stream = std::make_shared<request_stream>();
    if (status st = sch.submit(p, stream); !st) {
        std::fprintf(stderr, "kvserve run: %s\n", st.message().c_str());
        return 2;
    }
    auto t_prompt = clock_type::now();
    clock_type::time_point t_first{};
    double prompt_s = 0;
    int64_t n_gen = 0;
    while (!sch.idle()) {
        auto ok = sch.step();
        if (!ok) {
            std::fprintf(stderr, "\nkvserve run: %s\n", ok.message().c_str());
            return 1;
        }
        while (auto ev = stream->pop(0)) {
            if (!ev->error.empty()) {
                std::fprintf(stderr, "\nkvserve run: %s\n", ev->error.c_str());
                return 1;
            }
            if (n_gen == 0 && !ev->tokens.empty()) {
                t_first = clock_type::now();
                prompt_s = std::chrono::duration<double>(t_first - t_prompt).count();
            }
            n_gen += int64_t(ev->tokens.size());
            std::fwrite(ev->text.data(), 1, ev->text.size(), stdout);
            std::fflush(stdout);
        }
    }
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const double gen_s = n_gen > 0 ? seconds_since(t_first) : 0.0;
    const scheduler_metrics& mt = sch.metrics();
    std::fprintf(stderr, "\nload time: %.2f ms\n", load_s * 1e3);
    std::fprintf(stderr, "prompt:    %zu tokens in %.2f ms (%.2f tokens/s, with the first token)\n", tokens.size(), prompt_s * 1e3,
                 double(tokens.size()) / std::max(prompt_s, 1e-9));
    std::fprintf(stderr, "generate:  %lld tokens in %.2f ms (%.2f tokens/s after the first)\n", (long long)n_gen, gen_s * 1e3,
                 double(std::max<int64_t>(0, n_gen - 1)) / std::max(gen_s, 1e-9));
    const double emitted = double(std::max<int64_t>(1, mt.spec_emitted));
    std::fprintf(stderr,
                 "speculate: %s, %lld cycles, %lld of %lld drafts accepted (%.1f%%), %.2f tokens per cycle, draft %.2f ms and "
                 "verify %.2f ms per token\n",
                 spec.exit_layer > 0 ? strfmt("self exit=%d draft=%d", spec.exit_layer, spec.draft_tokens).c_str()
                                     : strfmt("draft model, draft=%d", spec.draft_tokens).c_str(),
                 (long long)mt.spec_cycles, (long long)mt.spec_accepted, (long long)mt.spec_drafted,
                 mt.spec_drafted > 0 ? 100.0 * double(mt.spec_accepted) / double(mt.spec_drafted) : 0.0,
                 mt.spec_cycles > 0 ? double(mt.spec_emitted) / double(mt.spec_cycles) : 0.0, 1e3 * mt.spec_draft_seconds / emitted,
                 1e3 * mt.spec_verify_seconds / emitted);
    std::fprintf(stderr, "kv:        %s, %s, %zu bytes per token\n", sess.policy.spec().c_str(),
                 kv_format_name(geom.type, std::nullopt).c_str(), kv.value()->bytes_per_token());
    return 0;
}

// Beam search: one request of beam_width beams through the scheduler; prints the best
// hypothesis (the others' texts to stderr) once the search is done.
int run_beam_search(const language_model& m, const tokenizer& tk, thread_pool& pool, const std::vector<int32_t>& tokens,
                    const session_params& sess, int64_t n_predict, bool ignore_eos, int32_t width, float length_penalty, int32_t n_best,
                    double load_s) {
    const int32_t ps = sess.page_size;
    const int64_t n_ctx = sess.n_ctx > 0 ? sess.n_ctx : m.hparams().n_ctx_train;
    if (int64_t(tokens.size()) >= n_ctx) {
        std::fprintf(stderr, "kvserve run: the prompt has %zu tokens, the context only %lld\n", tokens.size(), (long long)n_ctx);
        return 2;
    }
    const int64_t gen = n_predict > 0 ? std::min<int64_t>(n_predict, n_ctx - int64_t(tokens.size())) : n_ctx - int64_t(tokens.size());
    const int32_t n_pages = kv_cache::pages_for(int64_t(tokens.size()), ps) + width * (kv_cache::pages_for(gen, ps) + 2);
    auto kv = kv_cache::create(m.kv_geometry(ps, n_pages, sess.kv_type.value_or(m.auto_kv_type())));
    if (!kv) {
        std::fprintf(stderr, "kvserve run: %s\n", kv.message().c_str());
        return 1;
    }
    scheduler_config cfg;
    cfg.max_seqs = std::max(width, 1);
    cfg.max_n = std::max(width, 1);
    cfg.prefix_cache = false;
    cfg.n_ctx = n_ctx;
    cfg.max_batch_tokens = std::max<int64_t>(sess.n_batch, width);
    cfg.prefill_chunk = sess.n_batch;
    scheduler sch(m, tk, *kv.value(), pool, cfg);
    request_params p;
    p.prompt = tokens;
    p.max_tokens = gen;
    p.ignore_eos = ignore_eos;
    p.beam_width = width;
    p.length_penalty = length_penalty;
    p.n = std::min(n_best, width);
    auto stream = std::make_shared<request_stream>();
    if (status st = sch.submit(p, stream); !st) {
        std::fprintf(stderr, "kvserve run: %s\n", st.message().c_str());
        return 2;
    }
    auto t0 = clock_type::now();
    std::vector<request_event> done;
    while (!sch.idle()) {
        auto ok = sch.step();
        if (!ok) {
            std::fprintf(stderr, "\nkvserve run: %s\n", ok.message().c_str());
            return 1;
        }
        while (auto ev = stream->pop(0)) done.push_back(std::move(*ev));
    }
    const double secs = seconds_since(t0);
    std::sort(done.begin(), done.end(), [](const request_event& a, const request_event& b) { return a.index < b.index; });
    if (done.empty()) return 1;
    std::fwrite(done[0].text.data(), 1, done[0].text.size(), stdout);
    std::fputc('\n', stdout);
    for (size_t i = 1; i < done.size(); ++i) std::fprintf(stderr, "\nhypothesis %zu: %s\n", i + 1, done[i].text.c_str());
    const request_usage u = stream->usage();
    std::fprintf(stderr, "\nload time: %.2f ms\n", load_s * 1e3);
    std::fprintf(stderr, "beam search: width %d, length penalty %g, %zu tokens prompt, %lld tokens in the %d best, %.2f ms (%lld forward passes)\n",
                 width, double(length_penalty), tokens.size(), (long long)u.completion_tokens, p.n, secs * 1e3,
                 (long long)sch.metrics().steps);
    return 0;
}

int cmd_run(int argc, char** argv) {
    CLI::App app("Generate text from a prompt with a GGUF model", "kvserve run");
    std::string model_path = default_model_path();
    std::string prompt = "Once upon a time";
    int n_predict = 128, threads = default_threads();
    int64_t n_ctx = 0, n_batch = 512;
    sampling_params sp;
    sp.temperature = 0.8f;
    sp.top_k = 40;
    sp.top_p = 0.95f;
    sp.min_p = 0.05f;
    int64_t seed = -1;
    bool no_bos = false, ignore_eos = false;
    app.add_option("-m,--model", model_path, "GGUF model file")->capture_default_str();
    app.add_option("-p,--prompt", prompt, "prompt text")->capture_default_str();
    app.add_option("-n,--n-predict", n_predict, "tokens to generate (-1 = until end of text or context)")->capture_default_str();
    app.add_option("-t,--threads", threads, "threads")->check(CLI::Range(1, 1024))->capture_default_str();
    app.add_option("-c,--ctx-size", n_ctx, "context length (0 = the model's)")->check(CLI::NonNegativeNumber);
    app.add_option("-b,--batch-size", n_batch, "prompt tokens per forward pass")->check(CLI::Range(int64_t(1), int64_t(1) << 20))->capture_default_str();
    app.add_option("--temp", sp.temperature, "temperature (0 = greedy)")->capture_default_str();
    app.add_option("--top-k", sp.top_k, "top-k (0 = off)")->capture_default_str();
    app.add_option("--top-p", sp.top_p, "top-p (1 = off)")->capture_default_str();
    app.add_option("--min-p", sp.min_p, "min-p (0 = off)")->capture_default_str();
    app.add_option("--repeat-penalty", sp.repeat_penalty, "repeat penalty (1 = off)")->capture_default_str();
    app.add_option("--repeat-last-n", sp.repeat_last_n, "tokens the repeat penalty looks back over")->capture_default_str();
    app.add_option("--presence-penalty", sp.presence_penalty, "presence penalty (0 = off)");
    app.add_option("--frequency-penalty", sp.frequency_penalty, "frequency penalty (0 = off)");
    app.add_option("--seed", seed, "random seed (-1 = random)")->capture_default_str();
    app.add_flag("--no-bos", no_bos, "do not add the BOS token");
    kv_type_option kvt;
    add_kv_type_options(app, kvt);
    std::string policy_spec;
    add_kv_policy_option(app, policy_spec);
    app.add_flag("--ignore-eos", ignore_eos, "keep generating past end-of-text tokens");
    bool no_repack = false;
    app.add_flag("--no-repack", no_repack, no_repack_help);
    speculative_option spec_opt;
    add_speculative_options(app, spec_opt);
    int32_t beam_width = 0, n_best = 1;
    float length_penalty = 1.0f;
    app.add_option("--beam-width", beam_width, "beam search with K beams (prints the best hypothesis once the search is done)")
        ->check(CLI::Range(1, 64));
    app.add_option("--length-penalty", length_penalty, "beam search: hypotheses rank by log-probability / length^A")
        ->check(CLI::Range(-10.0f, 10.0f))
        ->capture_default_str();
    app.add_option("--n-best", n_best, "beam search: hypotheses to print (the others to stderr)")->check(CLI::Range(1, 64))->capture_default_str();
    if (int rc = parse_cli(app, argc, argv); rc >= 0) return rc;

    kv_policy policy;
    if (!resolve_kv_policy(policy_spec, "run", &policy)) return 2;
    speculative_params spec;
    if (!resolve_speculative(spec_opt, "run", &spec)) return 2;
    if (!std::filesystem::exists(model_path)) {
        std::fprintf(stderr, "kvserve run: %s\n", missing_model_help(model_path).c_str());
        return 2;
    }
    auto t_load = clock_type::now();
    auto model = language_model::load(model_path, repack_options(no_repack));
    if (!model) {
        std::fprintf(stderr, "kvserve run: %s\n", model.message().c_str());
        return 1;
    }
    auto tok = tokenizer::from_gguf(model.value()->file());
    if (!tok) {
        std::fprintf(stderr, "kvserve run: %s: %s\n", model_path.c_str(), tok.message().c_str());
        return 1;
    }
    const language_model& m = *model.value();
    const tokenizer& tk = *tok.value();
    if (tk.n_vocab() != m.hparams().n_vocab) {
        std::fprintf(stderr, "kvserve run: vocabulary has %d tokens but the model's output has %lld\n", tk.n_vocab(),
                     (long long)m.hparams().n_vocab);
        return 1;
    }
    sp.n_vocab = m.hparams().n_vocab;
    sp.seed = seed < 0 ? std::random_device{}() : uint64_t(seed);
    auto smp = sampler::create(sp);
    if (!smp) {
        std::fprintf(stderr, "kvserve run: %s\n", smp.message().c_str());
        return 2;
    }
    thread_pool pool(threads);
    session_params sess;
    if (!resolve_kv_type(kvt, "run", &sess.kv_type, &sess.kv_v_type, &sess.kivi)) return 2;
    sess.n_ctx = n_ctx;
    sess.n_batch = n_batch;
    sess.policy = policy;
    if (beam_width > 0) {
        if (spec.on() || policy.kind != kv_policy_kind::dense || sess.kivi.bits) {
            std::fprintf(stderr, "kvserve run: --beam-width runs over a dense cache without speculation or KIVI\n");
            return 2;
        }
        std::vector<int32_t> toks = tk.encode(prompt, !no_bos && tk.add_bos(), false);
        if (toks.empty()) {
            std::fprintf(stderr, "kvserve run: the prompt is empty (and the model has no BOS token)\n");
            return 2;
        }
        std::fputs(prompt.c_str(), stdout);
        std::fflush(stdout);
        return run_beam_search(m, tk, pool, toks, sess, n_predict, ignore_eos, beam_width, length_penalty, n_best, seconds_since(t_load));
    }
    if (spec.on()) {
        if (spec.exit_layer >= m.hparams().n_layer) {
            std::fprintf(stderr, "kvserve run: --self-spec exit=%d: the model has %lld layers (exit in [1, %lld])\n", spec.exit_layer,
                         (long long)m.hparams().n_layer, (long long)m.hparams().n_layer - 1);
            return 2;
        }
        std::unique_ptr<language_model> draft;
        if (!load_draft_model(spec_opt, "run", m, no_repack, &draft)) return 2;
        if (sess.kivi.bits || sess.kv_v_type) {
            std::fprintf(stderr, "kvserve run: speculative decoding runs over one KV format for K and V, not KIVI\n");
            return 2;
        }
        std::vector<int32_t> toks = tk.encode(prompt, !no_bos && tk.add_bos(), false);
        if (toks.empty()) {
            std::fprintf(stderr, "kvserve run: the prompt is empty (and the model has no BOS token)\n");
            return 2;
        }
        std::fputs(prompt.c_str(), stdout);
        std::fflush(stdout);
        return run_speculative(m, tk, draft.get(), pool, toks, sess, smp.value().params(), n_predict, ignore_eos, spec,
                               seconds_since(t_load));
    }
    auto s = session::create(m, pool, sess);
    if (!s) {
        std::fprintf(stderr, "kvserve run: %s\n", s.message().c_str());
        return 1;
    }
    const double load_s = seconds_since(t_load);

    std::vector<int32_t> tokens = tk.encode(prompt, !no_bos && tk.add_bos(), false);
    if (tokens.empty()) {
        std::fprintf(stderr, "kvserve run: the prompt is empty (and the model has no BOS token)\n");
        return 2;
    }
    if (s.value()->bounded_by_ctx() && int64_t(tokens.size()) >= s.value()->n_ctx()) {
        std::fprintf(stderr, "kvserve run: the prompt has %zu tokens, the context only %lld\n", tokens.size(),
                     (long long)s.value()->n_ctx());
        return 2;
    }
    std::fputs(prompt.c_str(), stdout);
    std::fflush(stdout);

    auto t_prompt = clock_type::now();
    if (status st = s.value()->prefill(tokens); !st) {
        std::fprintf(stderr, "\nkvserve run: %s\n", st.message().c_str());
        return 1;
    }
    const double prompt_s = seconds_since(t_prompt);

    detok_stream out(tk);
    // The prompt's text is already printed: continue the stream from its last token.
    out.push(tokens.back());
    out.flush();
    auto t_gen = clock_type::now();
    int64_t n_gen = 0;
    // -1: until the end of text, or of the context where the policy keeps every token.
    const int64_t limit = n_predict >= 0 ? n_predict
                          : s.value()->bounded_by_ctx() ? s.value()->n_ctx() - int64_t(tokens.size())
                                                        : std::numeric_limits<int64_t>::max();
    sampler& sm = smp.value();
    for (; n_gen < limit; ) {
        int32_t next = sm.sample(s.value()->logits(), m.hparams().n_vocab);
        ++n_gen;
        if (!ignore_eos && tk.is_eog(next)) break;
        (void)sm.accept(next);
        std::string piece = out.push(next);
        std::fwrite(piece.data(), 1, piece.size(), stdout);
        std::fflush(stdout);
        if (n_gen >= limit || (s.value()->bounded_by_ctx() && s.value()->n_past() >= s.value()->n_ctx())) break;
        if (status st = s.value()->decode(next); !st) {
            std::fprintf(stderr, "\nkvserve run: %s\n", st.message().c_str());
            return 1;
        }
    }
    std::string tail = out.flush();
    std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const double gen_s = seconds_since(t_gen);
    std::fprintf(stderr, "\nload time: %.2f ms\n", load_s * 1e3);
    std::fprintf(stderr, "prompt:    %zu tokens in %.2f ms (%.2f tokens/s)\n", tokens.size(), prompt_s * 1e3,
                 double(tokens.size()) / std::max(prompt_s, 1e-9));
    std::fprintf(stderr, "generate:  %lld tokens in %.2f ms (%.2f tokens/s)\n", (long long)n_gen, gen_s * 1e3,
                 double(n_gen) / std::max(gen_s, 1e-9));
    const session& ss = *s.value();
    std::fprintf(stderr, "kv:        %s, %s, %zu bytes held at the end (%zu pages), peak %zu bytes (%d pages), %zu bytes per token\n",
                 ss.policy().spec().c_str(), kv_format_name(ss.kv().type(), ss.kv().config().v_type, sess.kivi).c_str(), ss.kv_bytes(),
                 ss.kv().seq_pages(ss.kv_seq()).size(), ss.peak_bytes(), ss.peak_pages(), ss.kv().bytes_per_token());
    if (const kv_groups& gs = ss.kv_group_set(); gs.size() > 1) {  // e.g. yoco: the global and the self-decoder's ring
        std::string line;
        for (size_t g = 0; g < gs.size(); ++g)
            line += strfmt("%s%s %zu bytes (%zu pages, %lld layers%s)", g ? ", " : "", gs.desc(g).name.c_str(), gs.group(g).seq_bytes(ss.kv_seq()),
                           gs.group(g).seq_pages(ss.kv_seq()).size(), (long long)gs.group(g).config().n_layer,
                           gs.desc(g).window > 0 ? strfmt(", window %lld", (long long)gs.desc(g).window).c_str() : "");
        std::fprintf(stderr, "kv groups: %s\n", line.c_str());
    }
    return 0;
}

}  // namespace

KVS_COMMAND("run", "generate text from a prompt", cmd_run);

}  // namespace kvs::tools
