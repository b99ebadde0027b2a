#!/usr/bin/env bash
# The GPU runs of the changes on trial (each off by default until these runs decide), in one call:
# - fp8: the MLP's hidden activations written as fc2's e4m3 operand by fc1's epilogue (policy
#   fp8_hidden, STDIT_CUDA_FP8_HIDDEN=1) and the fused FP8 GEMM's fast-accumulation schedules
#   (STDIT_CUDA_FP8_GEMM_SCHEDULE=2/3/4);
# - bf16 spatial attention: one in 4 or one in 2 of the softmax's exponentials on the FMA pipe
#   (STDIT_CUDA_ATTN_EXP_SPLIT=4/2).
# In the order of what decides most: the checks (fp8 ops and fixtures with the hidden path, the
# attention ops and STDiT3 fixtures with split 4), `stdit bench` at 720p 4s with the variants
# alternated between bf16 runs (the same binary), the remaining variants and checks, the per-op
# timings (CudaPerf.RealShapes: every schedule called directly) and the 30-step 480p fp8 quality
# gate with fc2 quantized through the hidden path. Each part starts only while LIMIT seconds (default 570:
# one device call) leave it room; logs go to $OUT (default bench_out/).
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: [LIMIT=seconds] bench/gpu_trials.sh
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
left() { echo $(( ${LIMIT:-570} - ($(date +%s) - t0) )); }
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
T=build-cuda/tests/gpu/stdit_gpu_tests
S=build-cuda/stdit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
check() {  # check NAME FILTER ENV...: the summary here, the whole output in $OUT/checks.log
  local name=$1 filter=$2; shift 2
  [ "$(left)" -lt 60 ] && { echo "== check: $name: skipped (time)"; return; }
  echo "== check: $name ($(left) s left) =="
  echo "== $name ==" >> "$OUT/checks.log"
  env "$@" STDIT_GPU_NO_PERF=1 timeout 150 $T --gtest_brief=1 --gtest_filter="$filter" >> "$OUT/checks.log" 2>&1 || rc=1
  tail -3 "$OUT/checks.log"
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
check "fp8, fused GEMM schedule 0, hidden e4m3" 'CudaOps.Fp8*:CudaStdit3Fp8.*:CudaMemoryPlan.*'
check "attention, exponential split 4" 'CudaOps.Attention*:CudaOps.NanPropagates:CudaStdit3*' STDIT_CUDA_ATTN_EXP_SPLIT=4
B=(bench --backend cuda --preset 720p-4s --iters 2 --no-t5 --no-vae)
K=(--precision fp8 --steps 2 --fp8-keep proj,q,cross_proj)
run "bf16" $S "${B[@]}" --precision bf16
run "fp8, fc2 quantized, hidden e4m3" STDIT_CUDA_FP8_HIDDEN=1 $S "${B[@]}" "${K[@]}"
run "fp8, fc2 quantized, hidden e4m3, schedule 2" STDIT_CUDA_FP8_HIDDEN=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=2 $S "${B[@]}" "${K[@]}"
run "bf16, exponential split 4" STDIT_CUDA_ATTN_EXP_SPLIT=4 $S "${B[@]}" --precision bf16
run "fp8, fc2 quantized, hidden bf16 + pass" $S "${B[@]}" "${K[@]}"
run "fp8, default keep list" $S "${B[@]}" --precision fp8 --steps 2
run "fp8, fc2 quantized, hidden e4m3, schedule 3" STDIT_CUDA_FP8_HIDDEN=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=3 $S "${B[@]}" "${K[@]}"
run "bf16 again" $S "${B[@]}" --precision bf16
run "bf16, exponential split 2" STDIT_CUDA_ATTN_EXP_SPLIT=2 $S "${B[@]}" --precision bf16
run "fp8, fc2 quantized, hidden e4m3, schedule 4" STDIT_CUDA_FP8_HIDDEN=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=4 $S "${B[@]}" "${K[@]}"
check "fp8, fused GEMM schedule 2" 'CudaOps.Fp8*:CudaStdit3Fp8.*' STDIT_CUDA_FP8_GEMM_SCHEDULE=2
check "attention, exponential split 2" 'CudaOps.Attention*:CudaOps.NanPropagates:CudaStdit3*' STDIT_CUDA_ATTN_EXP_SPLIT=2
if [ "$(left)" -gt 120 ]; then
  echo "== per-op timings ($(left) s left) =="
  timeout $(( $(left) - 60 )) $T --gtest_filter=CudaPerf.RealShapes > "$OUT/perf.log" 2>&1 || rc=1
  grep -E "linear|schedule|attention spatial" "$OUT/perf.log" | cut -c1-150
fi
run "fp8 quality gate, 480p 30 steps, fc2 quantized, hidden e4m3" STDIT_CUDA_FP8_HIDDEN=1 $S bench --backend cuda \
  --precision fp8 --fp8-keep proj,q,cross_proj --preset 480p-4s --iters 1 --no-t5 --steps 30
echo "done in $(( $(date +%s) - t0 )) s"
exit $rc
