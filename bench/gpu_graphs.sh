#!/usr/bin/env bash
# One device call that checks and times the denoiser's steps as CUDA graphs (policy step_graphs,
# docs/PERF.md "CUDA graphs"): the GPU check (NO_CHECK=1: not; it holds CudaGraphs.*, every model
# fixture and the tiny pipeline with graphs on); `stdit bench` with graphs off (STDIT_CUDA_GRAPHS=0)
# and on, alternated, the same binary, at 240p, 480p and 720p 4s in bf16 and at 720p in fp8; then
# whole 720p 4s bf16 videos (one `stdit generate` process each, timed from the shell), graphs on
# and off.
# Each part starts only while LIMIT seconds (default 570) leave it room; logs go to $OUT
# (default bench_out/).
#
# Expects build-cuda/ as scripts/gpu_check.sh does.
# Usage: [LIMIT=seconds] [NO_CHECK=1] [NO_BENCH=1] [NO_WHOLE=1] bench/gpu_graphs.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== CudaGraphs tests =="
timeout 120 $T --gtest_filter='CudaGraphs.*' 2>&1 \
  | grep -vE "^\[ *(RUN|OK) " | cut -c1-220 | tail -40 || rc=1
if [ -z "${NO_CHECK:-}" ]; then
  echo "== GPU check ($(left) s left) =="
  timeout 220 scripts/gpu_check.sh --no-perf > "$OUT/check.log" 2>&1 || rc=1
  grep -E "CudaGraphs|graph replayed|FAIL|over |within|exit|PASSED|Failure|differ" "$OUT/check.log" | cut -c1-200 | tail -60
fi
run() {  # run NAME GRAPHS(0|1) COMMAND...: the step times here, the whole output in $OUT/bench.log
  local name=$1 graphs=$2; shift 2
  [ "$(left)" -lt 45 ] && { echo "== $name: skipped (time)"; return; }
  echo "== $name, graphs $graphs ($(left) s left) =="
  echo "== $name, graphs $graphs ==" >> "$OUT/bench.log"
  STDIT_CUDA_GRAPHS=$graphs "$@" > "$OUT/run.log" 2>&1 || rc=1
  cat "$OUT/run.log" >> "$OUT/bench.log"
  grep -E "ms/step|error|execution policy" "$OUT/run.log" | cut -c1-240
}
[ -n "${NO_BENCH:-}" ] || {
for p in 240p-4s 480p-4s; do
  B=(bench --backend cuda --preset $p --iters 5 --no-t5 --no-vae)
  run "$p bf16" 0 $S "${B[@]}"
  run "$p bf16" 1 $S "${B[@]}"
done
B=(bench --backend cuda --preset 720p-4s --iters 3 --no-t5 --no-vae)
run "720p-4s bf16" 0 $S "${B[@]}"
run "720p-4s bf16" 1 $S "${B[@]}"
run "720p-4s bf16 again" 0 $S "${B[@]}"
run "720p-4s bf16 again" 1 $S "${B[@]}"
run "720p-4s fp8" 0 $S "${B[@]}" --precision fp8 --steps 1
run "720p-4s fp8" 1 $S "${B[@]}" --precision fp8 --steps 1
}
if [ -z "${NO_WHOLE:-}" ] && [ "$(left)" -gt 150 ]; then
  e=/tmp/stdit_engine_bf16
  { time $S convert --synthetic -o $e; } > "$OUT/convert.log" 2>&1 || rc=1
  tail -2 "$OUT/convert.log"
  for graphs in 1 0; do
    [ "$(left)" -lt 70 ] && { echo "== whole video, graphs $graphs: skipped (time)"; continue; }
    echo "== whole 720p 4s video, bf16, graphs $graphs ($(left) s left) =="
    { time STDIT_CUDA_GRAPHS=$graphs timeout $(( $(left) - 10 )) $S generate "a beautiful waterfall" -e $e --backend cuda \
        --resolution 720p --num-frames 4s --out-dir /tmp/stdit_whole_$graphs -v; } > "$OUT/whole_$graphs.log" 2>&1 || rc=1
    grep -E "^time:|peak|error|real" "$OUT/whole_$graphs.log" | cut -c1-250
  done
fi
echo "done in $(( $(date +%s) - t0 )) s"
exit $rc
