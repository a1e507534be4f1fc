#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, coverage-instrumented libraries) into
# build-fuzz/ and runs fuzz_gguf for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]     (default 60 s)
#
# Seeds: the tiny hand-made files under fuzz/corpus/ plus the first 64 KiB of every GGUF in the
# shared fixture folder ($KVSERVE_SHARED, default ../shared beside the checkout), copied into a
# temporary corpus directory so the checkout is never written to. Crash reproducers land in
# build-fuzz/artifacts/; rerun one with  build-fuzz/fuzz_gguf build-fuzz/artifacts/crash-...
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${KVSERVE_SHARED:-$root/../shared}"
build="$root/build-fuzz"

if ! command -v clang++ >/dev/null; then
    echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2
    exit 2
fi

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKVSERVE_FUZZ=ON -DKVSERVE_TESTS=OFF -DKVSERVE_BENCH=OFF -DKVSERVE_WERROR=OFF >/dev/null
cmake --build "$build" --target fuzz_gguf -j"$(nproc)"

corpus="$(mktemp -d "${TMPDIR:-/tmp}/kvserve-fuzz-corpus.XXXXXX")"
trap 'rm -rf "$corpus"' EXIT
cp "$root"/fuzz/corpus/*.gguf "$corpus"/ 2>/dev/null || true
n_shared=0
for f in "$shared"/models/*.gguf "$shared"/vocab/*.gguf; do
    [ -f "$f" ] || continue
    head -c 65536 "$f" > "$corpus/shared-$(basename "$f")"
    n_shared=$((n_shared + 1))
done
echo "fuzz.sh: corpus has $(ls "$corpus" | wc -l) seeds ($n_shared from $shared); running ${seconds}s"

mkdir -p "$build/artifacts"
export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
"$build/fuzz_gguf" "$corpus" -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$build/artifacts/" "$@"
