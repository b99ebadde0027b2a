#!/usr/bin/env bash
# fp8 on one GPU, in one call (first made on an H100, docs/PERF.md): the fp8 op
# and model checks against the CPU emulation, then `stdit bench` in bf16 and in fp8 (with the
# quality gate: the sampling loop in fp8 and bf16, latents' error, decoded videos' PSNR) at 480p
# and 720p 4s, the same binary, one after the other.
#
# Expects build-cuda/ as scripts/gpu_check.sh does (stdit and stdit_gpu_tests, libs in
# build-cuda/libs). Usage: bench/gpu_fp8.sh [--steps 30]
set -uo pipefail
cd "$(dirname "$0")/.."
steps=30
[[ ${1:-} == --steps ]] && steps=$2
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "== fp8 checks (ops, codes, STDiT3 fixture a) =="
scripts/gpu_check.sh --no-perf --gtest_filter='CudaOps.Fp8*:CudaStdit3Fp8.*'
rc=$?
for p in bf16 fp8; do
  echo "== stdit bench --precision $p =="
  build-cuda/stdit bench --backend cuda --precision "$p" --preset 480p-4s --preset 720p-4s --iters 5 --no-t5 \
    --steps "$steps" --json "bench_$p.json" || rc=1
done
exit $rc
