#!/usr/bin/env bash
# fp8 on one GPU, in one call (first made on an H100, docs/PERF.md): the fp8 op and model checks
# against the CPU emulation (the fused GEMM and the unfused path), the per-GEMM timings (bf16, fp8
# unfused, fp8 fused in both schedules, called directly), then `stdit bench` in bf16, fp8 unfused,
# fp8 fused (schedules 0 and 1) and bf16 again, the same binary, one after the other; last the
# fp8 quality gate (the sampling loop in fp8 and bf16, latents' error, decoded videos' PSNR) with
# the fused GEMM.
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: bench/gpu_fp8.sh [--steps 30]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=30
[[ ${1:-} == --steps ]] && steps=$2
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== fp8 checks (ops, codes, fused and unfused GEMMs, STDiT3 fixture a) =="
scripts/gpu_check.sh --no-perf --gtest_filter='CudaOps.Fp8*:CudaStdit3Fp8.*:CudaMemoryPlan.*'
rc=$?
echo "== per-GEMM timings =="
build-cuda/tests/gpu/stdit_gpu_tests --gtest_filter='CudaPerf.RealShapes' | grep -E "linear|fp8" || rc=1
B=(bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 3 --no-t5 --no-vae)
run() {  # run NAME ENV... -- ARGS...
  local name=$1; shift
  echo "== stdit bench: $name =="
  env "$@" || rc=1
}
run "bf16" build-cuda/stdit "${B[@]}" --precision bf16
run "fp8 unfused" STDIT_CUDA_FP8_GEMM=0 build-cuda/stdit "${B[@]}" --precision fp8 --steps 2
run "fp8 fused, schedule 0" STDIT_CUDA_FP8_GEMM=1 build-cuda/stdit "${B[@]}" --precision fp8 --steps 2
run "fp8 fused, schedule 1" STDIT_CUDA_FP8_GEMM=1 STDIT_CUDA_FP8_GEMM_SCHEDULE=1 build-cuda/stdit "${B[@]}" --precision fp8 --steps 2
run "bf16 again" build-cuda/stdit "${B[@]}" --precision bf16
echo "== fp8 quality gate, fused =="
STDIT_CUDA_FP8_GEMM=1 build-cuda/stdit bench --backend cuda --precision fp8 --preset 480p-4s --preset 720p-4s \
  --iters 1 --no-t5 --steps "$steps" --json bench_fp8.json || rc=1
exit $rc
