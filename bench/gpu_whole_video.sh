#!/usr/bin/env bash
# On the GPU machine: whole videos end to end, each one `stdit generate` process timed from the
# shell (engine load, T5, 30 steps, VAE, frames written), on a real-size engine with synthetic
# weights (`stdit convert --synthetic`), without and with step caching, and in fp8 (the bf16 engine
# quantized at load, and an engine converted with --dtype fp8 under the default precision). Expects a STDIT_MEDIA=OFF
# build in build-cuda/ with its libraries in build-cuda/libs (scripts/gpu_check.sh says how).
# Usage: bench/gpu_whole_video.sh [OUT_DIR]      (logs per run in OUT_DIR, default build-cuda/whole)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-cuda/whole}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/build-cuda/libs:/usr/local/cuda/lib64
N=$PWD/build-cuda/stdit
eng=${STDIT_SYNTHETIC_ENGINE:-/tmp/stdit_synthetic_engine}
eng8=${STDIT_SYNTHETIC_ENGINE_FP8:-/tmp/stdit_synthetic_engine_fp8}
[ -d "$eng" ] || $N convert --synthetic -o "$eng" 2>&1 | tail -1
[ -d "$eng8" ] || $N convert --synthetic --dtype fp8 -o "$eng8" 2>&1 | tail -1
TIMEFORMAT="%R s wall"
run() {  # label, generate args...
  local l=$1 e=$eng; shift
  [[ $l == *fp8engine* ]] && e=$eng8
  echo "== $l"
  { time $N generate "a beautiful waterfall" -e "$e" --backend cuda --out-dir "/tmp/stdit_whole_$l" -v "$@" \
      >"$out/$l.log" 2>&1; } 2>&1
  grep -E "^time:|savings|error|execution policy" "$out/$l.log" | cut -c1-300
}
run v720_none --resolution 720p --num-frames 4s
run v720_tc01 --resolution 720p --num-frames 4s --cache teacache:0.1
run v720_tc02 --resolution 720p --num-frames 4s --cache teacache:0.2
run v480_none --resolution 480p --num-frames 4s
run v480_tc01 --resolution 480p --num-frames 4s --cache teacache:0.1
run v720_fp8 --resolution 720p --num-frames 4s --precision fp8
run v720_fp8engine --resolution 720p --num-frames 4s
