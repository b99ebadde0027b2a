#!/usr/bin/env bash
# fp8's MLP hidden activations written as fc2's e4m3 operand by fc1's epilogue (policy fp8_hidden,
# Backend::product_dtype) and the fast-accumulation schedules of the fused FP8 GEMM, in one call:
# the fp8 op checks (schedules 0 and 2: the product's scales and codes against the CPU emulation),
# then `stdit bench` with fc2 quantized (--fp8-keep proj,q,cross_proj) with the hidden activations
# in e4m3 (STDIT_CUDA_FP8_HIDDEN=1) and in bf16 (the default), the default keep list, schedule 2, bf16 around
# them (the same binary, one after the other), then the 30-step 480p quality gate with fc2 quantized.
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: bench/gpu_fp8_hidden.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
rc=0
for s in 0 2; do
  echo "== fp8 checks, fused GEMM schedule $s =="
  STDIT_CUDA_FP8_GEMM_SCHEDULE=$s STDIT_GPU_NO_PERF=1 build-cuda/tests/gpu/stdit_gpu_tests --gtest_brief=1 \
    --gtest_filter='CudaOps.Fp8*:CudaStdit3Fp8.*' || rc=1
done
B=(bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 2 --no-t5 --no-vae)
K=(--precision fp8 --steps 2 --fp8-keep proj,q,cross_proj)
run() {  # run NAME ENV... -- ARGS...
  local name=$1; shift
  echo "== stdit bench: $name =="
  env "$@" || rc=1
}
run "bf16" build-cuda/stdit "${B[@]}" --precision bf16
run "fp8, fc2 quantized, hidden e4m3" STDIT_CUDA_FP8_HIDDEN=1 build-cuda/stdit "${B[@]}" "${K[@]}"
run "fp8, fc2 quantized, hidden bf16 + pass" build-cuda/stdit "${B[@]}" "${K[@]}"
run "fp8, default keep list" build-cuda/stdit "${B[@]}" --precision fp8 --steps 2
run "fp8, fc2 quantized, hidden e4m3, schedule 2" STDIT_CUDA_FP8_HIDDEN=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=2 build-cuda/stdit "${B[@]}" "${K[@]}"
run "bf16 again" build-cuda/stdit "${B[@]}" --precision bf16
echo "== fp8 quality gate, fc2 quantized =="
STDIT_CUDA_FP8_HIDDEN=1 build-cuda/stdit bench --backend cuda --precision fp8 --fp8-keep proj,q,cross_proj --preset 480p-4s --iters 1 \
  --no-t5 --steps 30 || rc=1
exit $rc
