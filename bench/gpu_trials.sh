#!/usr/bin/env bash
# The GPU runs of the changes on trial (each off by default until these runs decide), in one call:
# - fp8: the MLP's hidden activations written as fc2's e4m3 operand by fc1's epilogue (policy
#   fp8_hidden, STDIT_CUDA_FP8_HIDDEN=1) and the fused FP8 GEMM's fast-accumulation schedules
#   (STDIT_CUDA_FP8_GEMM_SCHEDULE=2/3/4);
# - bf16 spatial attention: one in 4 or one in 2 of the softmax's exponentials on the FMA pipe
#   (STDIT_CUDA_ATTN_EXP_SPLIT=4/2).
# Order: the checks (fp8 ops and fixtures with schedules 0 and 2; the attention ops and the STDiT3
# fixtures with each split), then `stdit bench` with the variants alternated between bf16 runs
# (the same binary), the per-op timings (CudaPerf.RealShapes: every schedule called directly), and
# the 30-step 480p fp8 quality gate with fc2 quantized through the hidden path.
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: bench/gpu_trials.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
T=build-cuda/tests/gpu/stdit_gpu_tests
S=build-cuda/stdit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
check() {  # check NAME FILTER ENV...
  local name=$1 filter=$2; shift 2
  echo "== check: $name =="
  env "$@" STDIT_GPU_NO_PERF=1 $T --gtest_brief=1 --gtest_filter="$filter" || rc=1
}
check "fp8, fused GEMM schedule 0" 'CudaOps.Fp8*:CudaStdit3Fp8.*:CudaMemoryPlan.*'
check "fp8, fused GEMM schedule 2" 'CudaOps.Fp8*:CudaStdit3Fp8.*' STDIT_CUDA_FP8_GEMM_SCHEDULE=2
check "attention, exponential split 4" 'CudaOps.Attention*:CudaOps.NanPropagates:CudaStdit3*' STDIT_CUDA_ATTN_EXP_SPLIT=4
check "attention, exponential split 2" 'CudaOps.Attention*:CudaOps.NanPropagates:CudaStdit3*' STDIT_CUDA_ATTN_EXP_SPLIT=2
B=(bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 2 --no-t5 --no-vae)
K=(--precision fp8 --steps 2 --fp8-keep proj,q,cross_proj)
run() {  # run NAME ENV... COMMAND...
  local name=$1; shift
  echo "== stdit bench: $name =="
  env "$@" || rc=1
}
run "bf16" $S "${B[@]}" --precision bf16
run "bf16, exponential split 4" STDIT_CUDA_ATTN_EXP_SPLIT=4 $S "${B[@]}" --precision bf16
run "fp8, fc2 quantized, hidden e4m3" STDIT_CUDA_FP8_HIDDEN=1 $S "${B[@]}" "${K[@]}"
run "fp8, fc2 quantized, hidden bf16 + pass" $S "${B[@]}" "${K[@]}"
run "fp8, default keep list" $S "${B[@]}" --precision fp8 --steps 2
run "bf16, exponential split 2" STDIT_CUDA_ATTN_EXP_SPLIT=2 $S "${B[@]}" --precision bf16
for s in 2 3 4; do
  run "fp8, fc2 quantized, hidden e4m3, schedule $s" STDIT_CUDA_FP8_HIDDEN=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=$s $S "${B[@]}" "${K[@]}"
done
run "bf16 again" $S "${B[@]}" --precision bf16
echo "== per-op timings =="
$T --gtest_filter=CudaPerf.RealShapes || rc=1
echo "== fp8 quality gate, fc2 quantized, hidden e4m3 =="
STDIT_CUDA_FP8_HIDDEN=1 $S bench --backend cuda --precision fp8 --fp8-keep proj,q,cross_proj --preset 480p-4s --iters 1 \
  --no-t5 --steps 30 || rc=1
exit $rc
