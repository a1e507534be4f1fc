#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan+UBSan, coverage-instrumented libraries) into
# build-fuzz/ and runs each for a bounded time, one after another. A finding fails the script.
#
#   scripts/fuzz.sh [SECONDS] [extra libFuzzer flags...]
#       SECONDS per target (default $KVSERVE_FUZZ_SECONDS, else 20)
#   KVSERVE_FUZZ_TARGETS="gguf tokenizer"   run only these (default: all of them)
#
# Targets (fuzz/fuzz_<name>.cpp): gguf (GGUF reader), llama2c (checkpoint and tokenizer
# importer), tokenizer (encode/decode round trips on every shared vocabulary), chat_template
# (Jinja lexer/parser/evaluator), openai_request (request bodies of /v1/completions and
# /v1/chat/completions), spec (--kv-policy, dtype, weight-format and shape names).
#
# Seeds: fuzz/corpus/<name>/ (small, committed) plus, from the shared fixture folder
# ($KVSERVE_SHARED, default ../shared beside the checkout), the first 64 KiB of every GGUF
# (gguf), the llama2.c tokenizer files (llama2c) and the shipped chat templates
# (chat_template). They are copied into a temporary corpus per target, so the checkout is never
# written to. Crash reproducers land in build-fuzz/artifacts/<name>/; rerun one with
#   build-fuzz/fuzz_<name> build-fuzz/artifacts/<name>/crash-...
set -euo pipefail

seconds="${1:-${KVSERVE_FUZZ_SECONDS:-20}}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="${KVSERVE_SHARED:-$root/../shared}"
export KVSERVE_SHARED="$shared"  # the tokenizer and request targets load vocabularies from it
build="$root/build-fuzz"
targets=(${KVSERVE_FUZZ_TARGETS:-gguf llama2c tokenizer chat_template openai_request spec})

if ! command -v clang++ >/dev/null; then
    echo "fuzz.sh: clang++ not found (apt-get install clang)" >&2
    exit 2
fi

CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DKVSERVE_FUZZ=ON -DKVSERVE_TESTS=OFF -DKVSERVE_BENCH=OFF -DKVSERVE_WERROR=OFF >/dev/null
cmake --build "$build" --target "${targets[@]/#/fuzz_}" -j"$(nproc)"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/kvserve-fuzz.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

# Extra seeds from the shared folder for target $1 into directory $2.
shared_seeds() {
    local f
    case "$1" in
        gguf)
            for f in "$shared"/models/*.gguf "$shared"/vocab/*.gguf; do
                [ -f "$f" ] && head -c 65536 "$f" > "$2/shared-$(basename "$f")"
            done ;;
        llama2c)  # byte 1 selects the tokenizer parser, then the claimed vocabulary size
            for f in "$shared"/models/*.bin; do
                [ -f "$f" ] || continue
                [ "$(stat -c %s "$f")" -le 65536 ] || continue  # tokenizers, not checkpoints
                { printf '\x01\x00\x02\x00\x00'; cat "$f"; } > "$2/shared-$(basename "$f")"
            done ;;
        chat_template)
            for f in "$shared"/templates/*.jinja; do
                [ -f "$f" ] && cp "$f" "$2/shared-$(basename "$f")"
            done ;;
    esac
    return 0
}

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"
for t in "${targets[@]}"; do
    corpus="$tmp/$t"
    mkdir -p "$corpus" "$build/artifacts/$t"
    cp "$root/fuzz/corpus/$t/"* "$corpus/" 2>/dev/null || true
    shared_seeds "$t" "$corpus"
    max_len=4096
    [ "$t" = gguf ] && max_len=65536
    [ "$t" = chat_template ] && max_len=16384
    echo "fuzz.sh: fuzz_$t: $(ls "$corpus" | wc -l) seeds, ${seconds}s"
    set +e +o pipefail
    "$build/fuzz_$t" "$corpus" -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=2048 \
        -timeout=10 -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" "$@" 2>&1 |
        grep -v -e '^#[0-9]*.*\(NEW\|REDUCE\|pulse\)' -e 'NEW_FUNC' -e '" # Uses: '  # progress hidden
    status=${PIPESTATUS[0]}
    set -e -o pipefail
    if [ "$status" -ne 0 ]; then
        echo "fuzz.sh: fuzz_$t found a problem (exit $status; see above and $build/artifacts/$t/)" >&2
        exit 1
    fi
done
