#!/usr/bin/env bash
# One device call that checks and times the fp8 defaults against the binary before them:
# fc1's epilogue writing fc2's e4m3 operand (policy fp8_hidden) with fc2 quantized by default, and
# the fused FP8 GEMM's fast accumulation (ping-pong 128 x 128). In the order of what decides most:
# the fp8 checks (default schedule, then the promoted schedule 1), `stdit bench` at 720p 4s with
# the old default's fp8 (the binary OLD, default build-old/stdit, else switches), the new default, the other schedules and
# bf16 alternated (one binary per run), 480p, the per-op timings, the 30-step 480p quality gate
# with the VAE, and a whole 720p 4s video from an fp8 engine (one `stdit generate` process, timed
# from the shell). Each part starts only while LIMIT seconds (default 570: one device call) leave
# it room; logs go to $OUT (default bench_out/).
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: [LIMIT=seconds] [OLD=path] [QUICK=1] [GELU=1] bench/gpu_trials.sh (QUICK: the
# fp8 check, bf16, the new and the old default at 720p and the 30-step gate only; GELU: fc1's GELU
# through the hardware's tanh against the exponential form, checked, timed, and the 30-step gate)
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
OLD=${OLD:-build-old/stdit}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
check() {  # check NAME FILTER ENV...: the summary here, the whole output in $OUT/checks.log
  local name=$1 filter=$2; shift 2
  [ "$(left)" -lt 60 ] && { echo "== check: $name: skipped (time)"; return; }
  echo "== check: $name ($(left) s left) =="
  echo "== $name ==" >> "$OUT/checks.log"
  env "$@" STDIT_GPU_NO_PERF=1 timeout 150 $T --gtest_brief=1 --gtest_filter="$filter" >> "$OUT/checks.log" 2>&1 || rc=1
  grep -E "FAIL|over threshold|PASSED|FAILED" "$OUT/checks.log" | tail -4
}
run() {  # run NAME ENV... COMMAND...: the step times here, the whole output in $OUT/bench.log
  local name=$1; shift
  [ "$(left)" -lt 40 ] && { echo "== stdit bench: $name: skipped (time)"; return; }
  echo "== stdit bench: $name ($(left) s left) =="
  echo "== $name ==" >> "$OUT/bench.log"
  env "$@" > "$OUT/run.log" 2>&1 || rc=1
  cat "$OUT/run.log" >> "$OUT/bench.log"
  grep -E "ms/step|fp8 quality|error" "$OUT/run.log" | cut -c1-200
}
B=(bench --backend cuda --preset 720p-4s --iters 2 --no-t5 --no-vae)
F=(--precision fp8 --steps 2)
GATE=($S bench --backend cuda --precision fp8 --preset 480p-4s --iters 1 --no-t5 --steps 30)
# The default before: the binary before it (OLD), else the same path by switches (fc2 in bf16, the
# promoted schedule).
if [ -x "$OLD" ]; then BEFORE=($OLD "${B[@]}" "${F[@]}"); else
  BEFORE=(STDIT_CUDA_FP8_GEMM_SCHEDULE=1 $S "${B[@]}" "${F[@]}" --fp8-keep proj,q,cross_proj,fc2); fi
if [ -n "${GELU:-}" ]; then  # fc1's GELU through the hardware's tanh (=1, the default) or the exponential (=0)
  check "fp8, tanh GELU" 'CudaOps.Fp8*:CudaStdit3Fp8.*'
  echo "== per-op timings ($(left) s left) =="
  timeout 90 $T --gtest_filter=CudaPerf.RealShapes 2>&1 | grep -E "cutlass fp8 schedule 0 fc1" | cut -c1-150
  for i in 1 2; do
    run "fp8, exponential GELU" STDIT_CUDA_FP8_TANH_GELU=0 $S "${B[@]}" "${F[@]}"
    run "fp8, tanh GELU" STDIT_CUDA_FP8_TANH_GELU=1 $S "${B[@]}" "${F[@]}"
  done
  run "fp8 quality gate, 480p 30 steps, tanh GELU" STDIT_CUDA_FP8_TANH_GELU=1 "${GATE[@]}"
  echo "done in $(( $(date +%s) - t0 )) s"
  exit $rc
fi
check "fp8, default schedule" 'CudaOps.Fp8*:CudaStdit3Fp8.*:CudaMemoryPlan.*'
if [ -n "${QUICK:-}" ]; then  # a short call: the decisive runs only
  run "bf16" $S "${B[@]}" --precision bf16
  run "fp8, new default" $S "${B[@]}" "${F[@]}"
  run "fp8, the default before (fc2 bf16, promoted schedule)" "${BEFORE[@]}"
  run "fp8 quality gate, 480p 30 steps, new default" "${GATE[@]}"
  run "fp8, new default, again" $S "${B[@]}" "${F[@]}"
  echo "done in $(( $(date +%s) - t0 )) s"
  exit $rc
fi
check "fp8, promoted schedule 1" 'CudaOps.Fp8*:CudaStdit3Fp8.*' STDIT_CUDA_FP8_GEMM_SCHEDULE=1
run "bf16" $S "${B[@]}" --precision bf16
run "fp8, the default before (fc2 bf16, promoted schedule)" "${BEFORE[@]}"
run "fp8, new default" $S "${B[@]}" "${F[@]}"
run "fp8, schedule 2 (fast, cooperative 256x128)" STDIT_CUDA_FP8_GEMM_SCHEDULE=2 $S "${B[@]}" "${F[@]}"
run "fp8, hidden off (fc2's input quantized in a pass)" STDIT_CUDA_FP8_HIDDEN=0 $S "${B[@]}" "${F[@]}"
run "fp8, the default before, again" "${BEFORE[@]}"
run "fp8, new default, again" $S "${B[@]}" "${F[@]}"
run "bf16 again" $S "${B[@]}" --precision bf16
B4=(bench --backend cuda --preset 480p-4s --iters 3 --no-t5 --no-vae)
run "480p bf16" $S "${B4[@]}" --precision bf16
run "480p fp8, new default" $S "${B4[@]}" "${F[@]}"
run "480p fp8, the default before" "${BEFORE[@]/720p-4s/480p-4s}"
run "fp8 quality gate, 480p 30 steps, new default" "${GATE[@]}"
if [ "$(left)" -gt 110 ]; then
  echo "== whole 720p 4s video, fp8 engine ($(left) s left) =="
  e8=/tmp/stdit_engine_fp8
  { time $S convert --synthetic --dtype fp8 -o $e8; } > "$OUT/convert.log" 2>&1 || rc=1
  tail -2 "$OUT/convert.log"
  { time timeout $(( $(left) - 10 )) $S generate "a beautiful waterfall" -e $e8 --backend cuda --resolution 720p \
      --num-frames 4s --out-dir /tmp/stdit_whole_fp8 -v; } > "$OUT/whole_fp8.log" 2>&1 || rc=1
  grep -E "^time:|execution policy|peak|error|real" "$OUT/whole_fp8.log" | cut -c1-250
fi
if [ "$(left)" -gt 80 ]; then
  echo "== per-op timings ($(left) s left) =="
  timeout $(( $(left) - 20 )) $T --gtest_filter=CudaPerf.RealShapes > "$OUT/perf.log" 2>&1 || rc=1
  grep -E "fp8" "$OUT/perf.log" | cut -c1-150
fi
echo "done in $(( $(date +%s) - t0 )) s"
exit $rc
