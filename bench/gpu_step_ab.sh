#!/usr/bin/env bash
# One GPU call: the denoiser step of two stdit binaries alternated (new / old / new / old / new in
# bf16, new / old / new in fp8) at 480p and 720p 4s — how a change is measured against the build
# before it (docs/PERF.md), since cards of one kind differ by a few percent between calls. With
# OLD given as "env:NAME=VALUE", the "old" runs are the new binary under that switch (e.g.
# env:STDIT_CUDA_BF16_GEMM=0). Expects the binaries' libraries in build-cuda/libs
# (scripts/gpu_check.sh says how).
# Usage: bench/gpu_step_ab.sh OLD_STDIT|env:NAME=VALUE [NEW_STDIT] [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
old=${1:?usage: bench/gpu_step_ab.sh OLD_STDIT|env:NAME=VALUE [NEW_STDIT] [OUT_DIR]}
new=${2:-build-cuda/stdit}
out=${3:-${OUT:-$PWD/bench_out}}
mkdir -p "$out"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
run() {  # new|old, extra bench arguments...
  local who=$1; shift
  local bin=$new envs=()
  if [ "$who" = old ]; then
    if [[ $old == env:* ]]; then envs=("${old#env:}"); else bin=$old; fi
  fi
  env "${envs[@]}" timeout 90 "$bin" bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 3 --no-t5 \
    --no-vae "$@"
}
{
  for who in new old new old new; do echo "== $who bf16"; run $who; done
  for who in new old new; do echo "== $who fp8"; run $who --precision fp8 --steps 2; done
} >"$out/step_ab.log" 2>&1
grep -E "^==|ms/step|latents|rror" "$out/step_ab.log" | cut -c1-200
