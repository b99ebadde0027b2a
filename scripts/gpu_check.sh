#!/usr/bin/env bash
# The CUDA backend check, run on a GPU machine from the repository root: every op against the CPU
# backend, the STDiT3 / T5 / VAE fixtures on the GPU, real-size op timings; ends with the table.
#
# Expects the test binary built on the build machine (cmake -S . -B build-cuda -G Ninja
# -DCMAKE_BUILD_TYPE=Release -DSTDIT_CUDA=ON [-DSTDIT_STATIC_BLAS=ON] && ninja -C build-cuda
# stdit_gpu_tests) and carried over with build-cuda/libs (filled by that build through
# scripts/collect_libs.sh). With STDIT_STATIC_BLAS the two weigh ~39 MB; without it ~54 MB
# (libopenblas.so alone is 36 MB).
#
# Usage: scripts/gpu_check.sh [--no-perf] [gtest flags, e.g. --gtest_filter=CudaOps.*]
# Exit status: the test binary's (0 = every op and fixture within its threshold).
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${STDIT_GPU_TESTS:-build-cuda/tests/gpu/stdit_gpu_tests}
args=()
for a in "$@"; do
  case "$a" in
    --no-perf) export STDIT_GPU_NO_PERF=1 ;;
    *) args+=("$a") ;;
  esac
done
if [ ! -x "$bin" ]; then
  echo "gpu_check: $bin not found. Build it first:" >&2
  echo "  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTDIT_CUDA=ON && ninja -C build-cuda stdit_gpu_tests" >&2
  exit 2
fi
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64:/usr/local/cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
if ldd "$bin" | grep -q "not found"; then
  echo "gpu_check: libraries missing on this machine:" >&2
  ldd "$bin" | grep "not found" >&2
  echo "  (on the build machine: scripts/collect_libs.sh $bin build-cuda/libs, and carry build-cuda/libs)" >&2
  exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader
log=build-cuda/gpu_check.log
"$bin" --gtest_brief=1 ${args[@]+"${args[@]}"} 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
# The op registry (tests/data/ops): every op case in every CUDA mode against the reference's values.
if [ -x build-cuda/stdit ]; then
  build-cuda/stdit ops --backend cuda --cases tests/data/ops/cases.safetensors 2>&1 | tee build-cuda/ops.log | tail -3
  ops_rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] && rc=$ops_rc
fi
echo "gpu_check: exit $rc (full log: $log)"
exit "$rc"
