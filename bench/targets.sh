#!/usr/bin/env bash
# Runs the measurements the performance targets are stated in (TinyLlama-1.1B shape, 2 threads)
# and prints them in one place: prompt and generation speed per weight format, long context,
# batched generation, the cascade kernel and, with --serve, the served loads (several minutes).
#
#   bench/targets.sh [--serve] [--formats "q4_0 q8_0 ..."]
#
# Models are synthesized once into $KVS_BENCH_DIR (default /tmp/kvserve-bench); the build is
# build/ unless $KVSERVE_BUILD_DIR says otherwise. The machine should be idle: the figures are
# wall-clock throughput. The load average is printed before every measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${KVSERVE_BUILD_DIR:-build}
dir=${KVS_BENCH_DIR:-/tmp/kvserve-bench}
threads=${KVS_BENCH_THREADS:-2}
formats="q4_0 q8_0 q4_k_m bf16 f16"
serve=0
while [ $# -gt 0 ]; do
  case "$1" in
    --serve) serve=1 ;;
    --formats) formats="$2"; shift ;;
    *) echo "usage: bench/targets.sh [--serve] [--formats \"q4_0 q8_0 ...\"]" >&2; exit 2 ;;
  esac
  shift
done
kvserve="$build/kvserve"
mkdir -p "$dir"
load() { echo "# load: $(cut -d' ' -f1-3 /proc/loadavg)"; }
model() {
  local f="$dir/tinyllama-$1.gguf"
  [ -f "$f" ] || "$kvserve" synth --shape tinyllama-1.1b --dtype "$1" -o "$f" >/dev/null
  echo "$f"
}

echo "## prompt processing and generation (kvserve bench, $threads threads)"
for fmt in $formats; do
  m=$(model "$fmt")
  load
  p=512; [ "$fmt" = f16 ] && p=128,512
  "$kvserve" bench -m "$m" -p "$p" -n 128 -r 3 -t "$threads"
done

echo "## long context (q4_0, depth 0 and 4096)"
load
"$kvserve" bench -m "$(model q4_0)" -p 512 -n 128 -d 0,4096 -r 2 -t "$threads"

echo "## batched generation (q4_0, prompt 128, 32 new tokens per sequence)"
load
"$kvserve" bench batched -m "$(model q4_0)" -p 128 -n 32 -b 1,4,16,32 -t "$threads"
load
"$kvserve" bench batched -m "$(model q4_0)" -p 128 -n 64 -b 16 --long-prompt 2048 -t "$threads"

echo "## cascade attention kernel (32 sequences sharing 2,048 tokens)"
load
"$build/bench_cascade" 32 2048 "$threads" 10

if [ "$serve" = 1 ]; then
  port=${KVS_BENCH_PORT:-8391}
  for variant in "" "--no-prefix-cache"; do
    "$kvserve" serve -m "$(model q4_0)" -t "$threads" --port "$port" $variant >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 150); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.2; done
    if [ -z "$variant" ]; then
      echo "## served load: 48 random requests, 128 in / 32 out, 16 clients"
      load
      "$kvserve" bench serve --port "$port" --num-prompts 48 --input-len 128 --output-len 32 --concurrency 16
    fi
    echo "## shared prefix: 4 groups x 16 questions, S=800 Q=24 O=32, 16 clients ${variant:-(prefix cache on)}"
    load
    "$kvserve" bench serve --port "$port" --dataset shared-prefix --groups 4 --prompts-per-group 16 \
      --system-len 800 --question-len 24 --output-len 32 --concurrency 16
    kill -INT "$pid"; wait "$pid" || true
  done
fi
