#!/usr/bin/env bash
# The memory plan on a GPU (docs/PERF.md, "Memory plan"): run on the GPU machine from the
# repository root with build-cuda/ (stdit, tests/gpu/stdit_gpu_tests) and build-cuda/libs carried
# (see scripts/gpu_check.sh; a STDIT_MEDIA=OFF build needs libicudata for `generate`).
#  1. the dry run of each fixture's model call against the CUDA backend's own count, in every
#     precision (tests/gpu: CudaMemoryPlan);
#  2. `stdit bench` 480p / 720p 4s: the plan of one real-size call next to what the call held;
#  3. whole 720p videos on a synthetic real-size engine with -v: the plan per stage, --max-memory
#     (a budget that fits, one under the plan: refused before anything loads) and the device's
#     peak, with this build's pool given back between stages; OLD=path/to/stdit adds the same 4 s
#     video made by another build (the one before), for its device peak.
# Usage: scripts/memory_plan_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-cuda/memory_plan}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
bin=build-cuda/stdit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
build-cuda/tests/gpu/stdit_gpu_tests --gtest_filter='CudaMemoryPlan*' > "$out/plan_test.log" 2>&1
echo "CudaMemoryPlan rc $?"; grep -E "plan|FAILED|PASSED" "$out/plan_test.log" | tail -44
$bin bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 1 --no-t5 --no-vae > "$out/bench.log" 2>&1
grep -E "memory plan|ms/step|rror" "$out/bench.log"
eng=${ENGINE:-/tmp/stdit_synthetic_engine}
[ -d "$eng" ] || $bin convert --synthetic -o "$eng" > "$out/convert.log" 2>&1 || { tail -3 "$out/convert.log"; exit 1; }
g() {  # g TAG BINARY generate-flags...
  local tag=$1 b=$2; shift 2
  $b generate "a beautiful waterfall" -e "$eng" --backend cuda --resolution 720p --out-dir "$out/$tag" -v "$@" \
    > "$out/$tag.log" 2>&1
  echo "$tag rc $?"; grep -E "^time:|error|memory plan|memory:|--max-memory" "$out/$tag.log" | cut -c1-400
}
g new4s $bin --num-frames 4s --max-memory 40
[ -n "${OLD:-}" ] && g old4s "$OLD" --num-frames 4s
g refused $bin --num-frames 4s --max-memory 6
g new16s $bin --num-frames 16s --max-memory 22
