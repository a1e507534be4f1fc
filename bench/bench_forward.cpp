// Where one forward pass spends its time: decode (and a short prefill) of a real model file,
// timed per stage of the layer with the thread CPU clock at one thread (so a shared, loaded
// machine does not inflate the figures) and wall clock per token. The stages are the spans
// between the forward pass's named tensors (tensor hook), summed over layers:
//   qkv      attn_norm → Vcur     Q/K/V matmuls, bias, RoPE
//   attn     Vcur → kqv_out       KV write, attention
//   wo       kqv_out → attn_out   output projection
//   ffn      ffn_norm → ffn_out   gate/up, SwiGLU, down
//   norms    residual adds and RMSNorms; head: final norm and LM head
// Model: $KVS_BENCH_MODEL (default /tmp/tinyllama-q4_0.gguf); skipped if absent.
// Depth: $KVS_BENCH_DEPTH tokens in the cache before the timed decode (default 0).
// KV format: $KVS_BENCH_KV (f32, f16, bf16; default the cache's default).
// Tokens per timed forward: $KVS_BENCH_TOKENS (default 1 = decode; e.g. 64 = prefill chunks);
// the figures are per forward pass and per token.
#include <benchmark/benchmark.h>

#include <time.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "core/thread_pool.h"
#include "model/llama.h"
#include "kv/kv_cache.h"
#include "model/batch.h"

namespace {

double thread_cpu_s() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

const char* stage_after(const char* name) {
    // The stage that ends at the dump point `name`.
    static const std::map<std::string, const char*> m = {
        {"attn_norm", "norms"}, {"Qcur", "qkv"},   {"Kcur", "qkv"},       {"Vcur", "qkv"},
        {"kqv_out", "attn"},    {"attn_out", "wo"}, {"ffn_inp", "norms"},  {"ffn_norm", "norms"},
        {"ffn_out", "ffn"},     {"l_out", "norms"}, {"result_norm", "head"}, {"result_output", "head"}};
    auto it = m.find(name);
    return it == m.end() ? "other" : it->second;
}

void bm_forward_profile(benchmark::State& state) {
    const char* env = std::getenv("KVS_BENCH_MODEL");
    const std::string path = env ? env : "/tmp/tinyllama-q4_0.gguf";
    const char* denv = std::getenv("KVS_BENCH_DEPTH");
    const int64_t depth = denv ? std::atoll(denv) : 0;
    const char* tenv = std::getenv("KVS_BENCH_TOKENS");
    const int64_t n_step = std::max<int64_t>(1, tenv ? std::atoll(tenv) : 1);
    auto m = kvs::llama_model::load(path);
    if (!m) {
        state.SkipWithError(("no model: " + path).c_str());
        return;
    }
    const kvs::llama_model& model = *m.value();
    kvs::thread_pool pool(int(state.range(0)));
    std::vector<int32_t> toks(size_t(depth + 64));
    for (size_t i = 0; i < toks.size(); ++i) toks[i] = int32_t(1 + (i * 7919) % size_t(model.hparams().n_vocab - 1));
    // Decode through the model directly so a hook can see the stages.
    std::map<std::string, double> stage_s;
    double last = 0;
    kvs::tensor_hook hook = [&](const char* name, int64_t, const float*, int64_t, int64_t) {
        const double now = thread_cpu_s();
        stage_s[stage_after(name)] += now - last;
        last = now;
    };
    kvs::dtype kv_type = kvs::kv_default_type;
    if (const char* kt = std::getenv("KVS_BENCH_KV"); kt && !kvs::kv_type_from_name(kt, &kv_type)) {
        state.SkipWithError("KVS_BENCH_KV: unknown KV format");
        return;
    }
    auto kv = kvs::kv_cache::create(model.kv_geometry(16, int32_t((depth + 256) / 16 + 1 + 1000 * n_step / 16), kv_type));
    if (!kv) {
        state.SkipWithError(kv.message().c_str());
        return;
    }
    kvs::kv_cache& cache = *kv.value();
    const int32_t seq = cache.seq_add();
    kvs::forward_state st(model, std::max<int64_t>(64, n_step), 1);
    int64_t pos = 0;
    auto step = [&](int64_t n, bool timed) {
        cache.seq_reserve(seq, pos + n);
        kvs::batch b;
        for (int64_t i = 0; i < n; ++i) b.add(toks[size_t(pos % int64_t(toks.size()))], int32_t(pos + i), seq, i == n - 1);
        last = thread_cpu_s();
        (void)model.forward(b, cache, st, pool, timed ? hook : kvs::tensor_hook());
        pos += n;
    };
    // Depth: fill the cache in chunks of 64 (untimed).
    while (pos < depth) step(std::min<int64_t>(64, depth - pos), false);
    int64_t n_tok = 0;
    const double cpu0 = thread_cpu_s();
    for (auto _ : state) {
        if (pos + n_step > depth + 1000 * n_step) {  // keep the depth: rewind the sequence
            cache.seq_remove(seq);
            state.SkipWithError("ran out of cache");
            break;
        }
        step(n_step, true);
        n_tok += n_step;
    }
    const double cpu = thread_cpu_s() - cpu0;
    double total = 0;
    for (auto& [k, v] : stage_s) total += v;
    for (auto& [k, v] : stage_s) state.counters[k + "_ms"] = 1e3 * v / double(n_tok);  // per token
    state.counters["cpu_ms_per_tok"] = 1e3 * cpu / double(n_tok);
    state.counters["tok_per_cpu_s"] = double(n_tok) / cpu;
    state.counters["staged_ms"] = 1e3 * total / double(n_tok);
    state.SetLabel(path + " depth " + std::to_string(depth) + " kv " + kvs::dtype_name(kv_type));
}
BENCHMARK(bm_forward_profile)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
