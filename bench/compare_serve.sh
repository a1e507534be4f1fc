#!/usr/bin/env bash
# Compares kvserve builds on the served load (48 random requests, 128 prompt / 32 new tokens,
# 16 concurrent clients; TinyLlama-1.1B shape, Q4_0), alternating them so that a machine whose
# speed drifts affects each alike. Every run starts a fresh server on its own port (no prefix
# cache carried over) and uses its own workload seed, the same for every build in that round.
#
#   bench/compare_serve.sh [--rounds N] KVSERVE_BINARY...
#
# The client is the first binary's `kvserve bench serve`. Models: $KVS_BENCH_DIR as in
# targets.sh (default /tmp/kvserve-bench); threads: $KVS_BENCH_THREADS (default 2).
set -euo pipefail
dir=${KVS_BENCH_DIR:-/tmp/kvserve-bench}
threads=${KVS_BENCH_THREADS:-2}
rounds=2
if [ "${1:-}" = "--rounds" ]; then rounds=$2; shift 2; fi
if [ $# -lt 1 ]; then
  echo "usage: bench/compare_serve.sh [--rounds N] KVSERVE_BINARY..." >&2
  exit 2
fi
model="$dir/tinyllama-q4_0.gguf"
mkdir -p "$dir"
[ -f "$model" ] || "$1" synth --shape tinyllama-1.1b --dtype q4_0 -o "$model" >/dev/null
port=${KVS_BENCH_PORT:-8420}
for round in $(seq "$rounds"); do
  for bin in "$@"; do
    port=$((port + 1))
    "$bin" serve -m "$model" -t "$threads" --port "$port" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
    printf '%s round %d: ' "$bin" "$round"
    "$1" bench serve --port "$port" --num-prompts 48 --input-len 128 --output-len 32 --concurrency 16 \
      --seed "$((100 + round))" | awk '/Output token throughput/ {o = $NF} /^TTFT/ {t = $5}
        END {printf "%s output tok/s, median TTFT %s ms\n", o, t}'
    kill -INT "$pid"; wait "$pid" || true
  done
done
