// Paged attention per KV format, TinyLlama-1.1B geometry (32 query heads, 4 KV heads, head
// size 64, pages of 16): one decode row or a block of prefill rows at the end of a context of
// n_kv tokens. Args: n_kv, rows, threads, format (0 f32, 1 f16, 2 bf16, 3 q8_0, 4 q4_0, 5 kivi2,
// 6 kivi4: KIVI pages of G = 32 tokens, every page packed), layers.
//
// `layers` > 1 cycles through that many separate caches, one per layer as the forward pass
// does: with 22 layers at 4096 tokens the K/V no longer fit in the last-level cache
// (22 × 8 MB in f32), so the kernel streams them from DRAM, as it must inside the model.
// layers = 1 is the cache-resident figure (the same 8 MB every call). head_major: the KV
// cache's layout (1) or page-major pages (0), where each KV head reads a short run of every page.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/kv_quant.h"

namespace {

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

constexpr kvs::dtype formats[] = {kvs::dtype::f32, kvs::dtype::f16, kvs::dtype::bf16, kvs::dtype::q8_0, kvs::dtype::q4_0};
constexpr int32_t kivi_bits_of_format[] = {0, 0, 0, 0, 0, 2, 4};

void bm_attention_kv(benchmark::State& state) {
    const int64_t n_kv = state.range(0), rows = state.range(1);
    const int32_t kivi = kivi_bits_of_format[state.range(3)];
    const kvs::dtype type = kivi ? kvs::dtype::f32 : formats[state.range(3)];
    const int64_t layers = state.range(4);
    const bool head_major = state.range(6) != 0;
    const int64_t n_kv_head = state.range(5), n_head = 8 * n_kv_head, hd = 64, ps = kivi ? 32 : 16;
    const int64_t n_pages = (n_kv + ps - 1) / ps;
    const kvs::cpu::kv_page_layout lay{type, n_kv_head, ps, hd, std::nullopt, kivi};
    std::vector<float> kr = pseudo_random(n_kv_head * hd, 3), vr = pseudo_random(n_kv_head * hd, 4);
    std::vector<std::vector<uint8_t>> k(static_cast<size_t>(layers)), v(static_cast<size_t>(layers));
    for (int64_t l = 0; l < layers; ++l) {
        k[size_t(l)].resize(size_t(n_pages) * lay.k_page_bytes());
        v[size_t(l)].resize(size_t(n_pages) * lay.v_page_bytes());
        const kvs::cpu::paged_kv_view kv{k[size_t(l)].data(), v[size_t(l)].data(), n_kv_head, ps, hd, type, head_major ? n_pages : 0, std::nullopt, kivi};
        std::vector<float> kp(size_t(ps * hd)), vp(size_t(ps * hd));  // KIVI: one head's page, (ps, hd)
        for (int64_t p = 0; p < n_pages; ++p)
            for (int64_t r = 0; r < ps; ++r) {
                for (auto& x : kr) x = x * 0.999f + 0.001f * float(r);
                if (kivi) {
                    for (int64_t h = 0; h < n_kv_head; ++h) {
                        std::copy_n(kr.data() + h * hd, hd, kp.data() + r * hd);
                        std::copy_n(vr.data() + h * hd, hd, vp.data() + r * hd);
                        if (r + 1 < ps) continue;
                        kvs::cpu::kivi_quantize_k(lay, kp.data(), const_cast<uint8_t*>(kv.k_block(p, h)));
                        kvs::cpu::kivi_quantize_v(lay, vp.data(), const_cast<uint8_t*>(kv.v_block(p, h)));
                    }
                    continue;
                }
                kvs::cpu::kv_store_row(lay, k[size_t(l)].data() + size_t(p) * kv.k_page_stride(), v[size_t(l)].data() + size_t(p) * kv.v_page_stride(),
                                       kv.k_head_stride(), kv.v_head_stride(), r, kr.data(), vr.data());
            }
    }
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
    std::vector<float> o(size_t(rows * n_head * hd)), lse(size_t(rows * n_head));
    kvs::thread_pool pool(int(state.range(2)));
    int64_t l = 0;
    for (auto _ : state) {
        const kvs::cpu::paged_kv_view kv{k[size_t(l)].data(), v[size_t(l)].data(), n_kv_head, ps, hd, type, head_major ? n_pages : 0, std::nullopt, kivi};
        kvs::cpu::attention_paged(b, kv, o.data(), lse.data(), pool);
        benchmark::ClobberMemory();
        l = (l + 1) % layers;
    }
    double macs = 0;
    for (int64_t r = 0; r < rows; ++r) macs += 2.0 * double(q_len[size_t(r)]) * double(n_head * hd);
    state.counters["GFLOP/s"] = benchmark::Counter(2.0 * macs * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
    state.counters["KV_GB/s"] = benchmark::Counter(double(n_pages) * double(lay.k_page_bytes() + lay.v_page_bytes()) * 1e-9,
                                                   benchmark::Counter::kIsIterationInvariantRate);
    state.SetLabel((kivi ? "kivi" + std::to_string(kivi) : std::string(kvs::dtype_name(type))) + (head_major ? " head-major" : " page-major"));
}
BENCHMARK(bm_attention_kv)
    ->ArgNames({"n_kv", "rows", "threads", "fmt", "layers", "kv_heads", "head_major"})
    ->ArgsProduct({{4096}, {1}, {1, 2}, {0, 1, 2}, {1, 22}, {4}, {0, 1}})
    ->ArgsProduct({{4096}, {64}, {1}, {0, 1, 2}, {1}, {4}, {1}})
    // Decode at depth 16,384 per format, cache-resident (1 layer) and streamed from DRAM (22).
    ->ArgsProduct({{16384}, {1}, {1, 2}, {2, 3, 4, 5, 6}, {1, 22}, {4}, {1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
