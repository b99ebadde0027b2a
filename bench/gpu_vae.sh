#!/usr/bin/env bash
# The VAE decode in bf16 on channels-last tensors (policy vae_bf16) against the f32 decode, on the
# GPU machine from the repository root with build-cuda/stdit and build-cuda/libs carried:
#  1. `stdit bench` at 480p 4s (with the op profile: where the time goes) and 720p 4s: the bf16
#     decode's time, the f32 decode of the same latents in the same process, the PSNR gate;
#  2. whole 720p 4s videos (`stdit generate` on a `stdit convert --synthetic` engine) with it and
#     with STDIT_CUDA_VAE_BF16=0, alternated.
# Usage: bench/gpu_vae.sh [OUT_DIR]   (logs in OUT_DIR, default build-cuda/vae)
set -uo pipefail
cd "$(dirname "$0")/.."
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
O=${1:-build-cuda/vae}; mkdir -p "$O"
b=build-cuda/stdit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
STDIT_CUDA_CONV_PROFILE=1 timeout 150 $b bench --backend cuda --preset 480p-4s --iters 1 --no-t5 --steps 1 > "$O/p480.log" 2>&1
echo "480p (op profile on) rc $?"; grep -E "VAE" "$O/p480.log" | cut -c1-250
grep "cuda profile" "$O/p480.log" | grep -E "_cl|conv3d|group_norm|upsample|attention \[" | sort -t: -k2 -n -r | head -16 | cut -c1-200
timeout 150 $b bench --backend cuda --preset 720p-4s --iters 1 --no-t5 --steps 1 > "$O/b720.log" 2>&1
echo "720p rc $?"; grep -E "VAE|rror" "$O/b720.log" | cut -c1-300
TIMEFORMAT="%R s wall"
[ -d /tmp/e16 ] || timeout 90 $b convert --synthetic -o /tmp/e16 > /dev/null 2>&1
for v in on off on; do
  echo "== vae_bf16 $v"
  if [ $v = off ]; then export STDIT_CUDA_VAE_BF16=0; else unset STDIT_CUDA_VAE_BF16; fi
  { time timeout 150 $b generate "a beautiful waterfall" -e /tmp/e16 --backend cuda --resolution 720p --num-frames 4s --out-dir /tmp/v_$v > "$O/v_$v.log" 2>&1; } 2>&1
  grep -E "^time:|error" "$O/v_$v.log" | cut -c1-300; rm -rf /tmp/v_$v
done
