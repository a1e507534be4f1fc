#!/usr/bin/env bash
# Sanitizer test stages: builds kvserve instrumented into its own build folder and runs tests
# under it. Every report fails its test (-fno-sanitize-recover=all, halt_on_error).
#
#   scripts/sanitize.sh asan [ctest args...]
#       AddressSanitizer + UndefinedBehaviorSanitizer (and LeakSanitizer) over the whole ctest
#       suite, in build-asan/.
#   scripts/sanitize.sh tsan [ctest args...]
#       ThreadSanitizer over the tests that run threads, in build-tsan/: all of the scheduler /
#       engine (test_sched, test_yoco) and HTTP server (test_server, test_server_limits,
#       test_server_speculative, test_server_yoco) suites, plus the tests of other suites
#       that run a thread pool or several threads (tsan_tests below). Only the test binaries
#       those need are built.
#
# Compiler: gcc (the ordinary build's compiler, so the sanitized code is the shipped code).
# clang 14 hangs compiling the SIMD kernels (src/kernels/cpu) with -fsanitize=undefined and
# lacks __builtin_cpu_supports("f16c"); gcc 12 builds every file with all three sanitizers.
# Builds are -O1 -g1 (CMakeLists.txt, KVSERVE_SANITIZE) to keep build and run short. Run
# scripts/setup.sh first (packages).
set -euo pipefail
cd "$(dirname "$0")/.."

stage="${1:?usage: scripts/sanitize.sh asan|tsan [ctest args...]}"
shift

# Test binaries whose threaded tests the tsan stage runs, and the regex picking those tests
# (thread pool, split-KV attention and cascade over a pool, generation with threads,
# concurrent tokenization and template rendering).
tsan_suites='^test_(sched|server|server_limits|server_speculative|server_yoco|yoco|deepseek2|server_deepseek2|moe)$'
tsan_suite_bins=(test_sched test_server test_server_limits test_server_speculative test_server_yoco test_yoco test_deepseek2
                 test_server_deepseek2 test_moe)
tsan_more_bins=(test_kernels test_attention test_cascade test_generate test_tokenizer test_chat_template)
tsan_more_regex='^(ThreadPool\.|AttentionMerge\.SplitKv|AttentionPaged\.|.*CascadeAttention\.|Generate\.|all/tok_vocab\.ConcurrentEncode|chat_template\.concurrent)'

configure() {  # $1: build dir, $2: sanitizer
    CC=gcc CXX=g++ cmake -S . -B "$1" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSERVE_SANITIZE="$2" \
        -DKVSERVE_BENCH=OFF -DKVSERVE_WERROR=OFF >/dev/null
}

jobs="$(nproc)"
case "$stage" in
    asan)
        build=build-asan
        configure "$build" asan
        cmake --build "$build" -j "$jobs"
        export ASAN_OPTIONS="${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
        export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
        ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
        ;;
    tsan)
        build=build-tsan
        configure "$build" tsan
        cmake --build "$build" -j "$jobs" --target kvserve "${tsan_suite_bins[@]}" "${tsan_more_bins[@]}"
        export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:suppressions=$PWD/scripts/tsan_suppressions.txt}"
        # gcc 12's ThreadSanitizer cannot map its shadow memory when the kernel randomizes mmap
        # with more than 28 bits (vm.mmap_rnd_bits = 32 on some kernels): run the tests without
        # address randomization there (setarch -R, no root needed). KVSERVE_TSAN_NO_ASLR=1 forces it.
        no_aslr=()
        if [ "${KVSERVE_TSAN_NO_ASLR:-0}" = 1 ] || [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 0)" -gt 28 ]; then
            no_aslr=(setarch "$(uname -m)" -R)
            echo "sanitize.sh: running the tsan tests without address randomization"
        fi
        more_labels="^($(IFS='|'; echo "${tsan_more_bins[*]}"))\$"
        "${no_aslr[@]}" ctest --test-dir "$build" --output-on-failure -j "$jobs" -L "$tsan_suites" "$@"
        "${no_aslr[@]}" ctest --test-dir "$build" --output-on-failure -j "$jobs" -L "$more_labels" -R "$tsan_more_regex" "$@"
        ;;
    *)
        echo "sanitize.sh: unknown stage '$stage' (asan, tsan)" >&2
        exit 2
        ;;
esac
