// Kernel benchmarks: matmul GEMV (decode, m = 1) and GEMM (prefill, m = 64) per weight dtype
// at TinyLlama-1.1B shapes, and a streaming-read probe of memory bandwidth.
//
// Counters: GB/s = weight bytes read per second (what bounds GEMV); GFLOP/s = 2·m·n_in·n_out
// per second; of_stream = GEMV GB/s as a fraction of the streaming probe measured in the
// same run with the same thread count (this machine is shared: compare ratios, not runs).
//
// Note: the weights of one shape (4.6 to 46 MB) may partly sit in a large L3, so GEMV can
// exceed DRAM bandwidth on small shapes; the probe reads 256 MB to measure DRAM itself.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <iterator>
#include <string>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/bandwidth.h"
#include "kernels/cpu/interleave.h"
#include "kernels/cpu/ops.h"

namespace {

using kvs::dtype;

// Weight formats: dtype and layout (x16 = interleaved16, as loaders repack q4_0/q8_0/f16/bf16/q4_K/q5_K/q6_K).
struct bench_format {
    dtype type;
    bool interleaved;
};
constexpr bench_format bench_formats[] = {{dtype::f32, false},  {dtype::f16, false},  {dtype::bf16, false},
                                          {dtype::q8_0, false}, {dtype::q4_0, false}, {dtype::q4_1, false},
                                          {dtype::q8_0, true},  {dtype::q4_0, true},  {dtype::f16, true},
                                          {dtype::bf16, true},  {dtype::q4_k, false}, {dtype::q5_k, false},
                                          {dtype::q6_k, false}, {dtype::q4_k, true},  {dtype::q6_k, true},
                                          {dtype::q5_k, true}};
struct shape {
    int64_t n_out, n_in;
};
// TinyLlama-1.1B: attention projections, FFN gate/up, FFN down, LM head (larger than the
// last-level cache: decode streams it from DRAM).
constexpr shape bench_shapes[] = {{2048, 2048}, {5632, 2048}, {2048, 5632}, {32000, 2048}};

kvs::thread_pool& pool_of(int n_threads) {
    static std::map<int, std::unique_ptr<kvs::thread_pool>> pools;
    auto& p = pools[n_threads];
    if (!p) p = std::make_unique<kvs::thread_pool>(n_threads);
    return *p;
}

// Deterministic values in [-1, 1) (xorshift), so runs are comparable.
std::vector<float> pseudo_random(int64_t n, uint64_t seed) {
    std::vector<float> v(static_cast<size_t>(n));
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
    for (auto& f : v) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        f = float(int64_t(s >> 40) - (int64_t(1) << 23)) * 0x1p-23f;
    }
    return v;
}

struct weight_set {
    std::vector<uint8_t> bytes;  // (n_out, row_bytes)
    kvs::cpu::weight_view view;
};

const weight_set& weights_of(bench_format fmt, shape s) {
    const dtype t = fmt.type;
    static std::map<std::tuple<int, bool, int64_t, int64_t>, weight_set> cache;
    auto key = std::make_tuple(int(t), fmt.interleaved, s.n_out, s.n_in);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
    // Only one weight set lives at a time: benchmarks run shape by shape.
    cache.clear();
    weight_set& w = cache[key];
    std::vector<float> f = pseudo_random(s.n_out * s.n_in, 1);
    const size_t row_bytes = kvs::dtype_row_bytes(t, s.n_in);
    w.bytes.resize(size_t(s.n_out) * row_bytes);
    for (int64_t o = 0; o < s.n_out; ++o) {
        kvs::quantize_row(t, f.data() + o * s.n_in, w.bytes.data() + size_t(o) * row_bytes, s.n_in);
    }
    w.view = {w.bytes.data(), t, s.n_out, s.n_in};
    if (fmt.interleaved) {
        std::vector<uint8_t> packed(w.bytes.size());
        kvs::cpu::interleave(w.view, packed.data(), 0, s.n_out);
        w.bytes.swap(packed);
        w.view.data = w.bytes.data();
        w.view.layout = kvs::cpu::weight_layout::interleaved16;
    }
    return w;
}

// ---- memory bandwidth probe -------------------------------------------------------------------

// The shared probe (kernels/cpu/bandwidth.h), measured once per thread count.
double stream_gbps(int n_threads) {
    static std::map<int, double> measured;
    auto it = measured.find(n_threads);
    if (it != measured.end()) return it->second;
    return measured[n_threads] = kvs::cpu::measure_read_bandwidth(pool_of(n_threads), size_t(256) << 20, 5);
}

void bm_stream_read(benchmark::State& state) {
    const int n_threads = int(state.range(0));
    double gbps = 0;
    for (auto _ : state) gbps = kvs::cpu::measure_read_bandwidth(pool_of(n_threads), size_t(256) << 20, 1);
    state.counters["GB/s"] = gbps;
}
BENCHMARK(bm_stream_read)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- matmul ---------------------------------------------------------------------------------------
// Args: dtype index, shape index, m, threads.

void bm_matmul(benchmark::State& state) {
    const bench_format fmt = bench_formats[state.range(0)];
    const dtype t = fmt.type;
    const shape s = bench_shapes[state.range(1)];
    const int64_t m = state.range(2);
    const int n_threads = int(state.range(3));
    const weight_set& w = weights_of(fmt, s);
    std::vector<float> x = pseudo_random(m * s.n_in, 2);
    std::vector<float> y(size_t(m * s.n_out));
    kvs::thread_pool& pool = pool_of(n_threads);
    const double stream = m == 1 ? stream_gbps(n_threads) : 0.0;
    state.SetLabel(std::string(kvs::dtype_name(t)) + (fmt.interleaved ? "x16 " : " ") + std::to_string(s.n_out) + "x" +
                   std::to_string(s.n_in) + " isa=" + kvs::cpu::isa_name(kvs::cpu::isa_active()));
    kvs::cpu::matmul(w.view, x.data(), m, y.data(), pool);  // warm up
    for (auto _ : state) {
        kvs::cpu::matmul(w.view, x.data(), m, y.data(), pool);
        benchmark::ClobberMemory();
    }
    const double bytes = double(w.bytes.size());
    const double flops = 2.0 * double(m) * double(s.n_in) * double(s.n_out);
    state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    if (m == 1) {
        state.counters["of_stream"] =
            benchmark::Counter(bytes * 1e-9 / stream, benchmark::Counter::kIsIterationInvariantRate);
    }
}

void matmul_args(benchmark::internal::Benchmark* b) {
    b->ArgNames({"dtype", "shape", "m", "threads"});
    for (int64_t si = 0; si < int64_t(std::size(bench_shapes)); ++si)
        for (int64_t di = 0; di < int64_t(std::size(bench_formats)); ++di)
            for (int64_t m : {1, 64})
                for (int64_t th : {1, 2}) b->Args({di, si, m, th});
}
BENCHMARK(bm_matmul)->Apply(matmul_args)->UseRealTime()->Unit(benchmark::kMicrosecond);

// ---- attention ------------------------------------------------------------------------------------
// TinyLlama geometry (32 query heads, 4 KV heads, head_dim 64, pages of 16): one decode row or
// a block of prefill rows at the end of a context of n_kv tokens. Args: n_kv, rows, threads.

void bm_attention(benchmark::State& state) {
    const int64_t n_kv = state.range(0), rows = state.range(1);
    const int64_t n_head = 32, n_kv_head = 4, hd = 64, ps = 16;
    const int64_t n_pages = (n_kv + ps - 1) / ps;
    std::vector<float> k = pseudo_random(n_pages * n_kv_head * ps * hd, 3), v = pseudo_random(n_pages * n_kv_head * ps * hd, 4);
    std::vector<float> q = pseudo_random(rows * n_head * hd, 5);
    std::vector<int32_t> ids(static_cast<size_t>(n_pages)), q_seq(static_cast<size_t>(rows), 0), q_len(static_cast<size_t>(rows));
    for (int64_t i = 0; i < n_pages; ++i) ids[size_t(i)] = int32_t(i);
    for (int64_t r = 0; r < rows; ++r) q_len[size_t(r)] = int32_t(n_kv - rows + 1 + r);
    std::vector<int32_t> indptr = {0, int32_t(n_pages)};
    kvs::cpu::attention_batch b;
    b.n_q = rows;
    b.n_head = n_head;
    b.q = q.data();
    b.q_seq = q_seq.data();
    b.q_kv_len = q_len.data();
    b.page_indptr = indptr.data();
    b.page_ids = ids.data();
    b.scale = 0.125f;
    kvs::cpu::paged_kv_view kv{k.data(), v.data(), n_kv_head, ps, hd, kvs::dtype::f32, 0, std::nullopt};
    std::vector<float> o(size_t(rows * n_head * hd)), lse(size_t(rows * n_head));
    kvs::thread_pool& pool = pool_of(int(state.range(2)));
    for (auto _ : state) {
        kvs::cpu::attention_paged(b, kv, o.data(), lse.data(), pool);
        benchmark::ClobberMemory();
    }
    // Useful multiply-adds: Q·K and P·V over the visible keys of every row and head.
    double macs = 0;
    for (int64_t r = 0; r < rows; ++r) macs += 2.0 * double(q_len[size_t(r)]) * double(n_head * hd);
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["KV_GB/s"] = benchmark::Counter(2.0 * double(n_kv * n_kv_head * hd * 4) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(bm_attention)
    ->ArgNames({"n_kv", "rows", "threads"})
    ->Args({4096, 1, 1})->Args({4096, 1, 2})->Args({4096, 64, 1})->Args({4096, 64, 2})->Args({512, 64, 1})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
