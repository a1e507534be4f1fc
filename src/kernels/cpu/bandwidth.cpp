#include "kernels/cpu/bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

namespace kvs::cpu {

namespace {

// Sums the buffer in 64 chunks spread over the pool; four independent accumulators per chunk
// keep the loads in flight. The sum is returned so the reads cannot be optimized away.
uint64_t stream_sum(const std::vector<uint64_t>& buf, thread_pool& pool) {
    constexpr int64_t n_chunks = 64;
    const size_t per = buf.size() / n_chunks / 4 * 4;
    std::vector<uint64_t> partial(size_t(n_chunks), 0);
    pool.run(n_chunks, [&](int64_t c, int) {
        const uint64_t* p = buf.data() + size_t(c) * per;
        uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (size_t i = 0; i < per; i += 4) {
            a0 += p[i];
            a1 += p[i + 1];
            a2 += p[i + 2];
            a3 += p[i + 3];
        }
        partial[size_t(c)] = a0 + a1 + a2 + a3;
    });
    uint64_t s = 0;
    for (uint64_t v : partial) s += v;
    return s;
}

}  // namespace

double measure_read_bandwidth(thread_pool& pool, size_t bytes, int reps) {
    std::vector<uint64_t> buf(bytes / sizeof(uint64_t));
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;  // touch every page
    volatile uint64_t sink = stream_sum(buf, pool);      // warm up
    double best = 0;
    for (int r = 0; r < std::max(1, reps); ++r) {
        auto t0 = std::chrono::steady_clock::now();
        sink = sink + stream_sum(buf, pool);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        best = std::max(best, double(buf.size() * sizeof(uint64_t)) / s * 1e-9);
    }
    (void)sink;
    return best;
}

}  // namespace kvs::cpu
