// Cascade vs per-sequence paged attention for decode: B sequences share an L-token prefix
// (TinyLlama-1.1B attention geometry: 32 query heads, 4 KV heads, head size 64, pages of 16)
// and each has 16 tokens of its own. Prints both times and their ratio per KV format, measured
// in one run, and each against per-sequence attention over an f32 cache.
//   bench_cascade [B=32] [L=2048] [threads=2] [reps=20] [formats=f32,f16,bf16] [layers=1]
// layers > 1 times that many calls, each over its own copy of the K/V (the model's layers), so
// the shared prefix is no longer last-level-cache resident (22 layers × 2,048 tokens is 44 MB
// in bf16): the per-sequence path then re-reads the prefix from DRAM once per sequence.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kv/cascade.h"
#include "kv/kv_cache.h"
#include "model/cascade_attention.h"

namespace {

// K and V given as f32 pages stored in a KV format, as the cache stores them.
struct packed {
    std::vector<uint8_t> k, v;
    kvs::cpu::paged_kv_view view;
};
packed pack(const std::vector<float>& k, const std::vector<float>& v, int64_t n_pages, int64_t n_kv, int64_t ps, int64_t hd,
            kvs::dtype type) {
    packed p;
    const kvs::cpu::kv_page_layout lay{type, n_kv, ps, hd, std::nullopt};
    p.k.assign(size_t(n_pages) * lay.k_page_bytes(), 0);
    p.v.assign(size_t(n_pages) * lay.v_page_bytes(), 0);
    p.view = {p.k.data(), p.v.data(), n_kv, ps, hd, type, n_pages, std::nullopt};  // head-major, as the cache
    std::vector<float> kr(size_t(n_kv * hd)), vr(kr.size());
    for (int64_t pg = 0; pg < n_pages; ++pg)
        for (int64_t r = 0; r < ps; ++r) {
            for (int64_t h = 0; h < n_kv; ++h)
                for (int64_t d = 0; d < hd; ++d) {
                    kr[size_t(h * hd + d)] = k[size_t(((pg * n_kv + h) * ps + r) * hd + d)];
                    vr[size_t(h * hd + d)] = v[size_t(((pg * n_kv + h) * ps + r) * hd + d)];
                }
            kvs::cpu::kv_store_row(lay, p.k.data() + size_t(pg) * p.view.k_page_stride(), p.v.data() + size_t(pg) * p.view.v_page_stride(),
                                   p.view.k_head_stride(), p.view.v_head_stride(), r, kr.data(), vr.data());
        }
    return p;
}

}  // namespace

int main(int argc, char** argv) {
    const int64_t B = argc > 1 ? std::atoll(argv[1]) : 32, L = argc > 2 ? std::atoll(argv[2]) : 2048;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 2, reps = argc > 4 ? std::atoi(argv[4]) : 20;
    const int layers = std::max(1, argc > 6 ? std::atoi(argv[6]) : 1);
    const int64_t n_head = 32, n_kv = 4, hd = 64, ps = 16, own = 16;
    const int64_t shared_pages = L / ps, own_pages = own / ps + 1;
    const int64_t n_pages = shared_pages + B * own_pages;
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> k(size_t(n_pages * n_kv * ps * hd)), v(k.size()), q(size_t(B * n_head * hd));
    for (auto& x : k) x = u(rng);
    for (auto& x : v) x = u(rng);
    for (auto& x : q) x = u(rng);
    std::vector<int32_t> indptr = {0}, ids, q_seq, kv_len;
    int32_t next = int32_t(shared_pages);
    for (int64_t s = 0; s < B; ++s) {
        for (int32_t p = 0; p < shared_pages; ++p) ids.push_back(p);
        for (int64_t p = 0; p < own_pages; ++p) ids.push_back(next++);
        indptr.push_back(int32_t(ids.size()));
        q_seq.push_back(int32_t(s));
        kv_len.push_back(int32_t(L + own));
    }
    kvs::cpu::attention_batch b;
    b.n_q = B;
    b.n_head = n_head;
    b.q = q.data();
    b.q_seq = q_seq.data();
    b.q_kv_len = kv_len.data();
    b.page_indptr = indptr.data();
    b.page_ids = ids.data();
    b.scale = 1.0f / std::sqrt(float(hd));
    kvs::thread_pool pool(threads);
    std::vector<float> o(q.size()), lse(size_t(B * n_head));
    auto plan = kvs::plan_cascade(B, q_seq.data(), kv_len.data(), indptr.data(), ids.data(), ps);
    kvs::cascade_plan none;
    kvs::cascade_scratch scratch;
    // Time per layer: all layers, one after the other, as one forward pass runs them.
    auto time_it = [&](const std::vector<packed>& kv, const kvs::cascade_plan& p) {
        for (const packed& l : kv) kvs::attention_with_cascade(b, l.view, p, o.data(), lse.data(), scratch, pool);  // warm up
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            for (const packed& l : kv) kvs::attention_with_cascade(b, l.view, p, o.data(), lse.data(), scratch, pool);
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return best / double(kv.size());
    };
    std::printf("decode attention, %lld sequences sharing a %lld-token prefix (+%lld own), %d threads, best of %d, %d layer%s (time per layer)\n",
                (long long)B, (long long)L, (long long)own, threads, reps, layers, layers > 1 ? "s" : "");
    std::printf("| KV format | per-sequence paged ms | cascade ms | cascade speedup | vs f32 per-sequence |\n| --- | ---: | ---: | ---: | ---: |\n");
    std::stringstream fl(argc > 5 ? argv[5] : "f32,f16,bf16");
    double t_f32 = 0;
    for (std::string name; std::getline(fl, name, ',');) {
        kvs::dtype type;
        if (!kvs::kv_type_from_name(name, &type)) {
            std::fprintf(stderr, "bench_cascade: unknown KV format '%s'\n", name.c_str());
            return 2;
        }
        std::vector<packed> kv;
        for (int l = 0; l < layers; ++l) kv.push_back(pack(k, v, n_pages, n_kv, ps, hd, type));
        const double t_plain = time_it(kv, none), t_cascade = time_it(kv, plan);
        if (type == kvs::dtype::f32) t_f32 = t_plain;
        std::printf("| %s | %.3f | %.3f | %.2fx | %s |\n", name.c_str(), t_plain * 1e3, t_cascade * 1e3, t_plain / t_cascade,
                    t_f32 > 0 ? (std::to_string(t_f32 / t_cascade).substr(0, 5) + "x").c_str() : "-");
    }
    return 0;
}
