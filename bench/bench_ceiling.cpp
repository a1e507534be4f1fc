// The arithmetic ceiling of this CPU for the matmul kernels: how many multiply-accumulates per
// second the vector units retire when nothing else limits them, measured with register-only
// instruction loops (no memory traffic) on every thread at once, so the all-core clock applies.
//
//   bench_ceiling [threads=2] [seconds per loop=0.5]
//
// Loops (AVX-512, each of 16 independent accumulator chains, 512-bit registers):
//   vpdpbusd            int8 dot products alone: 64 MACs per instruction (q4_0/q8_0 × q8 rows)
//   vpdpbusd + fma+mul  8 vpdpbusd per 1 vfmadd + 1 vmulps, the mix a block-scaled int8 kernel
//                       needs: every 32-element block dot is converted and scaled by the product
//                       of the weight and activation block scales (dw · dx), then accumulated
//   vpdpbusd + fma      8 vpdpbusd per 1 vfmadd (a format whose activation scale is per row)
//   vdpbf16ps           bf16 pair dot products: 32 MACs per instruction (f16/bf16 weights)
//   vfmadd231ps         f32 FMA: 16 MACs per instruction
// The clock is estimated from a chain of dependent integer adds (one per cycle), so "per cycle"
// figures are relative to that estimate. Prints per-thread and total G MAC/s and, for the
// TinyLlama-1.1B matmuls (0.968 G MAC per token), the token-forwards per second each rate
// allows. Speed in this file is a property of the machine, not of kvserve's kernels: compare
// a kernel's GFLOP/s (bench_kernels) with 2 × the matching figure here.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

#if defined(__x86_64__)

// 1,000 iterations of 4 dependent adds: 4,000 cycles.
__attribute__((noinline)) void add_chain(long iters) {
    long a = 0;
    for (long i = 0; i < iters; ++i)
        asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(a));
}

#define KVS_ZMM_CLOBBERS                                                                                  \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", \
        "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23",    \
        "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

#define KVS_DP8(a)                              \
    "vpdpbusd %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define KVS_DPBUSD_16                                                                                          \
    KVS_DP8(0) KVS_DP8(1) KVS_DP8(2) KVS_DP8(3) KVS_DP8(4) KVS_DP8(5) KVS_DP8(6) KVS_DP8(7) KVS_DP8(8) KVS_DP8(9) \
        KVS_DP8(10) KVS_DP8(11) KVS_DP8(12) KVS_DP8(13) KVS_DP8(14) KVS_DP8(15)
#define KVS_BF(a) "vdpbf16ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"
#define KVS_FMA(a) "vfmadd231ps %%zmm30, %%zmm31, %%zmm" #a "\n\t"

struct loop {
    const char* name;
    double macs_per_iter;  // multiply-accumulates one iteration retires
    void (*body)(long);
};

__attribute__((target("avx512f,avx512vnni"), noinline)) void dpbusd_only(long n) {
    for (long i = 0; i < n; ++i) asm volatile(KVS_DPBUSD_16 ::: KVS_ZMM_CLOBBERS);
}
__attribute__((target("avx512f,avx512vnni"), noinline)) void dpbusd_fma_mul(long n) {
    for (long i = 0; i < n; ++i)
        asm volatile(KVS_DPBUSD_16 "vmulps %%zmm30, %%zmm31, %%zmm16\n\t"
                                   "vmulps %%zmm31, %%zmm30, %%zmm17\n\t"
                                   "vfmadd231ps %%zmm16, %%zmm31, %%zmm18\n\t"
                                   "vfmadd231ps %%zmm17, %%zmm30, %%zmm19\n\t" ::
                                       : KVS_ZMM_CLOBBERS);
}
__attribute__((target("avx512f,avx512vnni"), noinline)) void dpbusd_fma(long n) {
    for (long i = 0; i < n; ++i)
        asm volatile(KVS_DPBUSD_16 "vfmadd231ps %%zmm30, %%zmm31, %%zmm18\n\t"
                                   "vfmadd231ps %%zmm31, %%zmm30, %%zmm19\n\t" ::
                                       : KVS_ZMM_CLOBBERS);
}
__attribute__((target("avx512f,avx512bf16"), noinline)) void dpbf16_only(long n) {
    for (long i = 0; i < n; ++i)
        asm volatile(KVS_BF(0) KVS_BF(1) KVS_BF(2) KVS_BF(3) KVS_BF(4) KVS_BF(5) KVS_BF(6) KVS_BF(7) KVS_BF(8)
                         KVS_BF(9) KVS_BF(10) KVS_BF(11) KVS_BF(12) KVS_BF(13) KVS_BF(14) KVS_BF(15) ::
                             : KVS_ZMM_CLOBBERS);
}
__attribute__((target("avx512f"), noinline)) void fma_only(long n) {
    for (long i = 0; i < n; ++i)
        asm volatile(KVS_FMA(0) KVS_FMA(1) KVS_FMA(2) KVS_FMA(3) KVS_FMA(4) KVS_FMA(5) KVS_FMA(6) KVS_FMA(7)
                         KVS_FMA(8) KVS_FMA(9) KVS_FMA(10) KVS_FMA(11) KVS_FMA(12) KVS_FMA(13) KVS_FMA(14)
                             KVS_FMA(15) ::
                                 : KVS_ZMM_CLOBBERS);
}

// Runs `body` on `threads` threads at once for about `seconds`; returns iterations per second
// per thread (the slowest thread's).
double rate(void (*body)(long), int threads, double seconds) {
    long n = 1 << 16;
    for (;;) {  // calibrate on one thread
        const double t0 = now();
        body(n);
        const double dt = now() - t0;
        if (dt > seconds / 8) {
            n = long(double(n) * seconds / dt);
            break;
        }
        n *= 4;
    }
    std::vector<double> per_thread(size_t(threads), 0.0);
    std::atomic<int> ready{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] {
            ready.fetch_add(1);
            while (ready.load() < threads) {
            }
            const double t0 = now();
            body(n);
            per_thread[size_t(t)] = double(n) / (now() - t0);
        });
    for (auto& th : pool) th.join();
    double slowest = per_thread[0];
    for (double r : per_thread) slowest = r < slowest ? r : slowest;
    return slowest;
}

#endif

}  // namespace

int main(int argc, char** argv) {
#if defined(__x86_64__)
    const int threads = argc > 1 ? std::atoi(argv[1]) : 2;
    const double seconds = argc > 2 ? std::atof(argv[2]) : 0.5;
    if (threads < 1 || seconds <= 0) {
        std::fprintf(stderr, "usage: bench_ceiling [threads >= 1] [seconds > 0]\n");
        return 2;
    }
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("avx512bf16")) {
        std::printf("bench_ceiling: this CPU lacks AVX-512 VNNI/BF16; nothing to measure\n");
        return 0;
    }
    // Clock: 4 dependent adds per iteration retire at one per cycle.
    const double hz = 4.0 * rate(add_chain, threads, seconds);
    const loop loops[] = {
        {"vpdpbusd", 16 * 64.0, dpbusd_only},
        {"vpdpbusd + fma+mul (1 each per 8)", 16 * 64.0, dpbusd_fma_mul},
        {"vpdpbusd + fma (1 per 8)", 16 * 64.0, dpbusd_fma},
        {"vdpbf16ps", 16 * 32.0, dpbf16_only},
        {"vfmadd231ps", 16 * 16.0, fma_only},
    };
    constexpr double tinyllama_macs_per_token = 0.968e9;  // 22 layers × 44.0 M weights
    std::printf("clock ~%.2f GHz (dependent-add estimate), %d thread(s)\n\n", hz / 1e9, threads);
    std::printf("| loop | MACs/cycle/thread | G MAC/s/thread | G MAC/s total | TinyLlama tokens/s |\n");
    std::printf("| --- | ---: | ---: | ---: | ---: |\n");
    for (const loop& l : loops) {
        const double per_thread = rate(l.body, threads, seconds) * l.macs_per_iter;
        std::printf("| %s | %.1f | %.1f | %.1f | %.0f |\n", l.name, per_thread / hz, per_thread / 1e9,
                    per_thread * threads / 1e9, per_thread * threads / tinyllama_macs_per_token);
    }
    return 0;
#else
    (void)argc;
    (void)argv;
    std::printf("bench_ceiling: x86-64 only\n");
    return 0;
#endif
}
