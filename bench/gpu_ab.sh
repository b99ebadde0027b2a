#!/usr/bin/env bash
# One GPU call: this build's denoiser step against another binary (the build before a change),
# interleaved new / old / new, plus this build with STDIT_CUDA_GEMM_TUNE=1 (cuBLASLt algorithms
# timed per shape) and with --kernels portable (what Ampere/Ada run), at 480p and 720p 4s.
# Expects build-cuda/stdit and its libs (scripts/gpu_check.sh); OLD: the other stdit binary.
# Usage: bench/gpu_ab.sh OLD_STDIT [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/gpu_ab.sh OLD_STDIT [OUT_DIR]}
out=${2:-${OUT:-$PWD/bench_out}}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
new=build-cuda/stdit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
b() { local bin=$1; shift; timeout 90 "$bin" bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 3 --no-t5 --no-vae "$@"; }
{
  echo "== new"; b "$new" --json "$out/b_new1.json"
  echo "== old"; b "$old" --json "$out/b_old.json"
  echo "== new, STDIT_CUDA_GEMM_TUNE=1"; STDIT_CUDA_GEMM_TUNE=1 b "$new" --json "$out/b_tune.json"
  echo "== new"; b "$new" --json "$out/b_new2.json"
  echo "== new --kernels portable"; b "$new" --kernels portable --json "$out/b_portable.json"
} >"$out/ab.log" 2>&1
grep -E "^==|ms/step|kernels|rror" "$out/ab.log" | cut -c1-200
