#!/usr/bin/env bash
# Sets up (Debian packages), builds, fuzzes every input parser for a bounded time, runs every
# test, then the sanitizer stages (scripts/sanitize.sh), and prints each stage's wall time.
#
#   scripts/test.sh [ctest args...]      (ctest args go to every ctest run)
#   KVSERVE_FUZZ_SECONDS=N               seconds per fuzz target (default 20; 0 skips fuzzing)
#   KVSERVE_SANITIZE_STAGES="asan tsan"  sanitizer stages to run (the default; "" skips them)
set -euo pipefail
cd "$(dirname "$0")/.."

times=()
stage() {  # stage NAME COMMAND...: runs COMMAND and records its wall time under NAME
    local name="$1" t0=$SECONDS
    shift
    echo "test.sh: stage $name"
    "$@"
    times+=("$(printf '%-8s %5d s' "$name" $((SECONDS - t0)))")
}
report() {
    echo "test.sh: stage times (${SECONDS} s in all):"
    for t in "${times[@]}"; do echo "  $t"; done
}
trap report EXIT

stage build scripts/setup.sh
fuzz_seconds=${KVSERVE_FUZZ_SECONDS:-20}
if [ "$fuzz_seconds" -gt 0 ]; then
  stage fuzz scripts/fuzz.sh "$fuzz_seconds"
fi
build_dir=${KVSERVE_BUILD_DIR:-build}
stage test ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
for s in ${KVSERVE_SANITIZE_STAGES-asan tsan}; do
  stage "$s" scripts/sanitize.sh "$s" "$@"
done
