#!/usr/bin/env bash
# Sets up (Debian packages), builds, fuzzes the GGUF parser for a bounded time, then runs
# every test. Usage: scripts/test.sh [ctest args...]   (KVSERVE_FUZZ_SECONDS=0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
fuzz_seconds=${KVSERVE_FUZZ_SECONDS:-30}
if [ "$fuzz_seconds" -gt 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi
build_dir=${KVSERVE_BUILD_DIR:-build}
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)" "$@"
