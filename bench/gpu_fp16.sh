#!/usr/bin/env bash
# One device call that checks and times --precision fp16 (docs/NUMERICS.md "fp16"): the whole GPU
# check with its [fp16] cases and the op registry's fp16 mode (NO_CHECK=1: not); fp16's 30-step
# quality gate at 240p (fp16 and bf16 against f32 from the same noise, decoded); `stdit bench` at
# 720p 4s and 480p 4s in fp16 against bf16 with the same kernels (--kernels portable: fp16 has no
# Hopper-only kernels) and bf16's default; a whole 720p 4s video in fp16 (one `stdit generate` process,
# timed from the shell). Each part starts only while LIMIT seconds (default 570) leave it room;
# logs go to $OUT (default bench_out/).
#
# Expects build-cuda/ as scripts/gpu_check.sh does. Usage: [LIMIT=seconds] [NO_CHECK=1] bench/gpu_fp16.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
if [ -z "${NO_CHECK:-}" ]; then
  echo "== GPU check ($(left) s left) =="
  timeout 200 scripts/gpu_check.sh --no-perf > "$OUT/check.log" 2>&1 || rc=1
  grep -E "fp16|FAIL|over|within|exit|PASSED" "$OUT/check.log" | grep -vE "^\s*$" | cut -c1-160 | tail -60
fi
run() {  # run NAME COMMAND...: the step times here, the whole output in $OUT/bench.log
  local name=$1; shift
  [ "$(left)" -lt 40 ] && { echo "== stdit bench: $name: skipped (time)"; return; }
  echo "== stdit bench: $name ($(left) s left) =="
  echo "== $name ==" >> "$OUT/bench.log"
  "$@" > "$OUT/run.log" 2>&1 || rc=1
  cat "$OUT/run.log" >> "$OUT/bench.log"
  grep -E "ms/step|quality|error|execution policy" "$OUT/run.log" | cut -c1-220
}
# The gate runs the loop in f32 too (CUDA cores: ~20 s a 720p step on an H100), so at 240p here and
# over one step in the timing runs (--steps 1).
run "fp16 quality gate, 240p 30 steps" timeout 200 $S bench --backend cuda --precision fp16 --preset 240p-4s --iters 1 --no-t5 --steps 30
B=(bench --backend cuda --preset 720p-4s --iters 3 --no-t5 --no-vae)
run "720p bf16 portable" $S "${B[@]}" --precision bf16 --kernels portable
run "720p fp16" $S "${B[@]}" --precision fp16 --steps 1
run "720p bf16" $S "${B[@]}" --precision bf16
run "720p bf16 portable, again" $S "${B[@]}" --precision bf16 --kernels portable
B4=(bench --backend cuda --preset 480p-4s --iters 3 --no-t5 --no-vae)
run "480p bf16 portable" $S "${B4[@]}" --precision bf16 --kernels portable
run "480p fp16" $S "${B4[@]}" --precision fp16 --steps 1
if [ "$(left)" -gt 100 ]; then
  echo "== whole 720p 4s video, fp16 ($(left) s left) =="
  e=/tmp/stdit_engine_bf16
  { time $S convert --synthetic -o $e; } > "$OUT/convert.log" 2>&1 || rc=1
  tail -2 "$OUT/convert.log"
  { time timeout $(( $(left) - 10 )) $S generate "a beautiful waterfall" -e $e --backend cuda --resolution 720p \
      --num-frames 4s --precision fp16 --out-dir /tmp/stdit_whole_fp16 -v; } > "$OUT/whole_fp16.log" 2>&1 || rc=1
  grep -E "^time:|execution policy|peak|error|real" "$OUT/whole_fp16.log" | cut -c1-250
fi
echo "done in $(( $(date +%s) - t0 )) s"
exit $rc
