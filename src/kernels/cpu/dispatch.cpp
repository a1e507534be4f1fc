// Run-time instruction-set dispatch: picks the widest kernel table the CPU can run, unless a
// test or benchmark overrides it. Compiled for baseline x86-64 (no wide ISA flags).
#include <atomic>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "kernels/cpu/isa.h"
#include "kernels/cpu/ops.h"

namespace kvs::cpu {

namespace {

const detail::kernel_table* table_of(isa i) {
    switch (i) {
        case isa::scalar: return detail::kernels_scalar();
        case isa::avx2: return detail::kernels_avx2();
        case isa::avx512: return detail::kernels_avx512();
    }
    return nullptr;
}

// The CPU (and OS, via XCR0, which __builtin_cpu_supports checks) can run the path's flags
// exactly as CMake compiles them (KVSERVE_AVX2_FLAGS / KVSERVE_AVX512_FLAGS).
bool cpu_can_run(isa i) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                __builtin_cpu_supports("f16c");
    switch (i) {
        case isa::scalar: return true;
        case isa::avx2: return avx2;
        case isa::avx512:
            return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                   __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16");
    }
    return false;
#else
    return i == isa::scalar;
#endif
}

}  // namespace

bool cpu_has_avx512_fp16() {
#if defined(__x86_64__) || defined(__i386__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    // CPUID.(EAX=7, ECX=0):EDX bit 23; zmm state enabled by the OS is implied by AVX-512F.
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    __builtin_cpu_init();
    return (d >> 23 & 1u) && __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

namespace {

isa best_supported() {
    if (isa_supported(isa::avx512)) return isa::avx512;
    if (isa_supported(isa::avx2)) return isa::avx2;
    return isa::scalar;
}

std::atomic<int>& active_slot() {
    static std::atomic<int> slot{int(best_supported())};
    return slot;
}

}  // namespace

const char* isa_name(isa i) {
    switch (i) {
        case isa::scalar: return "scalar";
        case isa::avx2: return "avx2";
        case isa::avx512: return "avx512";
    }
    return "unknown";
}

bool isa_compiled(isa i) { return table_of(i) != nullptr; }

bool isa_supported(isa i) { return isa_compiled(i) && cpu_can_run(i); }

isa isa_active() { return isa(active_slot().load(std::memory_order_relaxed)); }

void isa_override(isa i) {
    if (isa_supported(i)) active_slot().store(int(i), std::memory_order_relaxed);
}

void isa_reset() { active_slot().store(int(best_supported()), std::memory_order_relaxed); }

namespace detail {

const kernel_table& active_kernels() { return *table_of(isa_active()); }

const interleaved_kernel_table& active_interleaved_kernels() {
    const interleaved_kernel_table* t = isa_active() == isa::avx512 ? interleaved_kernels_avx512() : nullptr;
    return t ? *t : *interleaved_kernels_scalar();
}

const bf16dot_kernel_table* active_bf16dot_kernels() {
    return isa_active() == isa::avx512 ? bf16dot_kernels_avx512() : nullptr;
}

}  // namespace detail

}  // namespace kvs::cpu
