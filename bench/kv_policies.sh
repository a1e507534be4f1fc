#!/usr/bin/env bash
# KV policies (window, StreamingLLM, recompute, Quest, H2O) against dense: stream perplexity of stories260K
# over TinyStories at several stream lengths (StreamingLLM's protocol), decode speed of
# StreamingLLM against recompute on the TinyLlama-1.1B shape, and peak RSS of a long streaming
# generation. Figures go to docs/kv-policies.md.
#
#   bench/kv_policies.sh [ppl|speed|rss|quest|quest-speed|all]   (default all)
#
# quest: stream perplexity of Quest and H2O against window and StreamingLLM at budgets of 10/20/50% of
# the stream (QUEST_LENGTHS, default "512 2048"), TinyStories and WikiText-2; quest-speed: Quest
# (budget 2048) against dense decode at QUEST_DEPTHS (default 16384,32768).
#
# Environment: KVSERVE (binary, default build/kvserve), KVSERVE_SHARED (fixtures, default
# ../shared), PPL_LENGTHS (default "512 2048 8192 65536"), RECOMPUTE_MAX and DENSE_MAX (longest
# streams scored under recompute, default 2048, and dense, default 8192: one costs W tokens of
# prefill per token, the other grows quadratically), SPEED_SIZES (default "256 1024 2048"), RSS_TOKENS (default
# "10000 1000000"), SPEED_N and SPEED_REPS (decode tokens and repetitions, default 4 and 2),
# THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${KVSERVE:-build/kvserve}
shared=${KVSERVE_SHARED:-../shared}
model=$shared/models/stories260K.gguf
text=$shared/text/tinystories-valid.txt
threads=${THREADS:-2}
what=${1:-all}

ppl() {
  echo "## stream perplexity: stories260K, TinyStories, f32 KV, -b 512"
  for n in ${PPL_LENGTHS:-512 2048 8192 65536}; do
    for pol in dense window:size=512 streaming:sinks=4,size=508 recompute:size=512; do
      if [[ $pol == recompute* && $n -gt ${RECOMPUTE_MAX:-2048} ]]; then continue; fi
      if [[ $pol == dense && $n -gt ${DENSE_MAX:-8192} ]]; then continue; fi
      start=$(date +%s.%N)
      out=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-policy "$pol" --kv-type f32 -b 512 -t "$threads" 2>&1)
      secs=$(echo "$(date +%s.%N) - $start" | bc)
      echo "N=$n policy=$pol seconds=$secs"
      echo "$out" | grep -E "^\[|Final estimate|KV held" | sed "s/^/  /"
    done
  done
}

speed() {
  local synth=${TMPDIR:-/tmp}/kvserve-tinyllama-q4_0.gguf
  [ -f "$synth" ] || "$bin" synth --shape tinyllama-1.1b --dtype q4_0 -o "$synth" >/dev/null
  echo "## decode: StreamingLLM vs recompute, TinyLlama-1.1B shape, Q4_0, $threads threads"
  for w in ${SPEED_SIZES:-256 1024 2048}; do
    # The stream is past its cache size (depth w): every StreamingLLM step reads S + W slots,
    # every recompute step prefills W tokens. Both in one run, alternating repetitions.
    "$bin" bench -m "$synth" -p 0 -n "${SPEED_N:-4}" -d "$((w + 64))" -r "${SPEED_REPS:-2}" -t "$threads" --no-bandwidth-probe \
      --kv-policy "streaming:sinks=4,size=$((w - 4))" --kv-policy "recompute:size=$w" | grep -v "^| ---\|^| model"
  done
}

rss() {
  echo "## peak RSS of a streaming generation (stories260K, streaming:sinks=4,size=508)"
  for n in ${RSS_TOKENS:-10000 1000000}; do
    /usr/bin/time -f "n=$n peak_rss_kib=%M seconds=%e" "$bin" run -m "$model" -p "Once upon a time" -n "$n" --temp 0.8 --seed 1 \
      -t "$threads" --kv-policy streaming:sinks=4,size=508 2>&1 >/dev/null | grep -E "n=|kv:|generation"
  done
}

quest() {
  echo "## Quest and H2O against window and StreamingLLM at 10/20/50% of the stream (stories260K, f32 KV)"
  for text in "$shared/text/tinystories-valid.txt" "$shared/text/wikitext-2-test.txt"; do
    for n in ${QUEST_LENGTHS:-512 2048}; do
      dense=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-type f32 -b 512 -t "$threads" 2>/dev/null | grep Final)
      echo "$(basename "$text") N=$n dense: $dense"
      for pct in 10 20 50; do
        b=$((n * pct / 100))
        # Quest selects for decode rows only: score it token by token (-b 1).
        q=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-policy "quest:budget=$b" --kv-type f32 -b 1 -t "$threads" 2>/dev/null |
          grep -E "Final|attention mass|KV pages read" | tr '\n' ' ')
        w=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-policy "window:size=$b" --kv-type f32 -b 512 -t "$threads" 2>/dev/null | grep Final)
        s=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-policy "streaming:sinks=4,size=$((b - 4))" --kv-type f32 -b 512 \
          -t "$threads" 2>/dev/null | grep Final)
        # H2O as the paper runs it: half heavy hitters, half recent, one token at a time (-b 1).
        h=$("$bin" perplexity -m "$model" -f "$text" --stream "$n" --kv-policy "h2o:heavy=$((b / 2)),recent=$((b - b / 2))" --kv-type f32 \
          -b 1 -t "$threads" 2>/dev/null | grep -E "Final|attention mass" | tr '\n' ' ')
        echo "  budget=$b ($pct%) window: $w | streaming: $s | quest: $q | h2o: $h"
      done
    done
  done
}

quest_speed() {
  local synth=${TMPDIR:-/tmp}/kvserve-tinyllama-q4_0.gguf
  [ -f "$synth" ] || "$bin" synth --shape tinyllama-1.1b --dtype q4_0 -o "$synth" >/dev/null
  echo "## decode: Quest (budget 2048) vs dense at depth, TinyLlama-1.1B shape, Q4_0, $threads threads"
  "$bin" bench -m "$synth" -p 0 -n "${SPEED_N:-8}" -d "${QUEST_DEPTHS:-16384,32768}" -r 1 -c 33000 -t "$threads" --no-bandwidth-probe \
    --kv-policy dense --kv-policy quest:budget=2048 | grep -v "^| ---\|^| model"
}

case $what in
  ppl) ppl ;;
  speed) speed ;;
  rss) rss ;;
  quest) quest ;;
  quest-speed) quest_speed ;;
  all) ppl; speed; rss; quest; quest_speed ;;
  *) echo "usage: $0 [ppl|speed|rss|quest|quest-speed|all]" >&2; exit 2 ;;
esac
