#!/usr/bin/env bash
# On the GPU machine, one call: stdit bench's denoiser step, then the peer users would pick,
# Open-Sora v1.2.0's own STDiT3 (eager with SDPA, and torch.compile per block) through the harness
# of ../shared/baseline, at the same shapes. Expects build-cuda/ (scripts/gpu_check.sh) and the
# harness with its vendor folder copied into .baseline/ (a git-ignored folder; its README says how
# to make the vendor folder with `fetch` and make_vendor.sh). Results: $OUT (or ./bench_out).
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/build-cuda/libs:/usr/local/cuda/lib64
timeout 150 build-cuda/stdit bench --backend cuda --preset 480p-4s --preset 720p-4s --iters 5 --no-t5 --no-vae \
  --json "$OUT/ours.json" >"$OUT/ours.log" 2>&1
grep -E "ms/step" "$OUT/ours.log" | cut -c1-200
export PYTHONUNBUFFERED=1
OPENSORA_VENDOR=.baseline/vendor timeout 420 python3 .baseline/bench_opensora.py --stages env,check,eager,compile_regional \
  --cases 480p_4s,720p_4s --variants sdpa_all --compile-cases 720p_4s --iters 5 --tag peer >"$OUT/peer.log" 2>&1
echo "peer rc $?"
tail -25 "$OUT/peer.log"
