// Cascade vs per-sequence paged attention for decode: B sequences share an L-token prefix
// (TinyLlama-1.1B attention geometry: 32 query heads, 4 KV heads, head size 64, pages of 16)
// and each has 16 tokens of its own. Prints both times and their ratio, measured in one run.
//   bench_cascade [B=32] [L=2048] [threads=2] [reps=20]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "kv/cascade.h"
#include "model/cascade_attention.h"

int main(int argc, char** argv) {
    const int64_t B = argc > 1 ? std::atoll(argv[1]) : 32, L = argc > 2 ? std::atoll(argv[2]) : 2048;
    const int threads = argc > 3 ? std::atoi(argv[3]) : 2, reps = argc > 4 ? std::atoi(argv[4]) : 20;
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
    kvs::cpu::paged_kv_view kv{k.data(), v.data(), n_kv, ps, hd};
    kvs::thread_pool pool(threads);
    std::vector<float> o(q.size()), lse(size_t(B * n_head));
    auto plan = kvs::plan_cascade(B, q_seq.data(), kv_len.data(), indptr.data(), ids.data(), ps);
    kvs::cascade_plan none;
    kvs::cascade_scratch scratch;
    auto time_it = [&](const kvs::cascade_plan& p) {
        kvs::attention_with_cascade(b, kv, p, o.data(), lse.data(), scratch, pool);  // warm up
        double best = 1e30;
        for (int r = 0; r < reps; ++r) {
            auto t0 = std::chrono::steady_clock::now();
            kvs::attention_with_cascade(b, kv, p, o.data(), lse.data(), scratch, pool);
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return best;
    };
    const double t_plain = time_it(none), t_cascade = time_it(plan);
    std::printf("decode attention, %lld sequences sharing a %lld-token prefix (+%lld own), %d threads, best of %d\n",
                (long long)B, (long long)L, (long long)own, threads, reps);
    std::printf("  per-sequence paged: %8.3f ms\n  cascade:            %8.3f ms\n  speedup:            %8.2fx\n", t_plain * 1e3,
                t_cascade * 1e3, t_plain / t_cascade);
    return 0;
}
