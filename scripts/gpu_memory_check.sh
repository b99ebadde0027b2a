#!/usr/bin/env bash
# Peak device memory as stdit reports it (cudaMemGetInfo sampled every 5 ms by the backend) next to
# nvidia-smi's own samples of the same run, for `stdit generate` (demo engine, whole pipeline) and
# `stdit bench` at 720p 4s (real sizes, synthetic weights). Run on the GPU machine (a STDIT_MEDIA=OFF build: the frames come out as safetensors) from the
# repository root with build-cuda/ and build-cuda/libs carried (see scripts/gpu_check.sh).
# Usage: scripts/gpu_memory_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-cuda/memcheck}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
smi_peak() {  # runs "$@" while nvidia-smi samples memory.used every 50 ms; prints the largest sample
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 50 >"$out/smi.txt" &
  local smi=$!
  "$@"
  local rc=$?
  kill $smi 2>/dev/null
  wait $smi 2>/dev/null
  echo "nvidia-smi peak during the run: $(sort -n "$out/smi.txt" | tail -1) MiB (idle before: $idle MiB)"
  return $rc
}
idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)
smi_peak build-cuda/stdit generate "a red ball moving to the right" --backend cuda --out-dir "$out/gen" 2>&1 |
  tee "$out/generate.log" | grep -E "^time:|nvidia-smi|Saved"
smi_peak build-cuda/stdit bench --backend cuda --preset 720p-4s --iters 1 2>&1 | tee "$out/bench.log" |
  grep -E "720p|nvidia-smi"
