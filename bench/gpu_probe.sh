#!/usr/bin/env bash
# One device call (docs/PERF.md, "Built, not yet run on a GPU: temporal attention's blocks, and a
# probe of where the GEMMs' time goes"), in this order:
#  1. the temporal attention kernel's trial switches (STDIT_CUDA_SHORT_HEADS, STDIT_CUDA_SHORT_SPLIT):
#     the attention checks under each, then 720p 4s bf16 steps per switch against the default, with
#     the card's SM clock, power and throttle reasons sampled every 100 ms (is the step held at the
#     power limit?); the same sampling over an fp8 step;
#  2. PyTorch's bf16 products at 8192^3 and at the block GEMMs' shapes (216,000 rows) on this card;
#  3. the ops alone at 8 frames (28,800 rows, the usual table) and at 60 frames (216,000 rows: a
#     720p 4s model call's CFG batch): whether the rows alone slow the GEMMs;
#  4. a whole 720p 4s video from an fp8 engine (graphs on, the default), and the device peak of a
#     720p 16s request (2 steps) with graphs on.
# Each part starts only while LIMIT seconds (default 570) leave it room; logs go to $OUT.
# Built here and carried as scripts/pack_gpu.sh packs it (unpacked first on the GPU machine).
# Usage: [LIMIT=seconds] [NO_SHORT=1] [NO_WHOLE=1] bench/gpu_probe.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. bench/gpu_env.sh
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.max.sm --format=csv,noheader
smi() {  # smi FILE: sample clocks and power in the background until killed
  nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv,noheader -lms 100 > "$1" 2>&1 &
  echo $!
}
summary() {  # summary FILE: SM clock and power over the samples with the SM clock above 1 GHz
  python3 - "$1" <<'EOF'
import sys, statistics as st
rows = [l.split(', ') for l in open(sys.argv[1]) if l.count(',') >= 5]
busy = [r for r in rows if float(r[1].split()[0]) > 1000 and float(r[3].split()[0]) > 200]
if not busy: print("  no busy samples"); sys.exit()
clk = [float(r[1].split()[0]) for r in busy]; pw = [float(r[3].split()[0]) for r in busy]
reasons = {}
for r in busy: reasons[r[5].strip()] = reasons.get(r[5].strip(), 0) + 1
print(f"  {len(busy)} busy samples: SM clock median {st.median(clk):.0f} MHz (min {min(clk):.0f}, max {max(clk):.0f}),"
      f" power median {st.median(pw):.0f} W (max {max(pw):.0f}); throttle reasons {reasons}")
EOF
}
if [ -z "${NO_SHORT:-}" ]; then
  # The temporal (short) attention kernel's trial switches: heads per block, v in a second group.
  echo "== short kernel: attention checks per switch ($(left) s left) =="
  for cfg in "2 0" "1 0" "4 1" "1 1"; do
    set -- $cfg
    STDIT_CUDA_SHORT_HEADS=$1 STDIT_CUDA_SHORT_SPLIT=$2 timeout 40 $T --gtest_filter='CudaOps.Attention*' \
      > "$OUT/short_check_$1_$2.log" 2>&1 && r=pass || { r=FAIL; rc=1; }
    echo "  heads $1 split $2: $r ($(grep -cE '^\[       OK' "$OUT/short_check_$1_$2.log") tests ok)"
  done
  echo "== short kernel: 720p 4s bf16 step per switch, clocks sampled ($(left) s left) =="
  pid=$(smi "$OUT/smi_bf16.csv")
  for cfg in "4 0" "2 0" "1 0" "4 1" "1 1" "4 0"; do
    set -- $cfg
    [ "$(left)" -lt 200 ] && { echo "  heads $1 split $2: skipped (time)"; continue; }
    STDIT_CUDA_SHORT_HEADS=$1 STDIT_CUDA_SHORT_SPLIT=$2 $S bench --backend cuda --preset 720p-4s --iters 3 \
      --no-t5 --no-vae > "$OUT/short_$1_$2.log" 2>&1 || rc=1
    echo "  heads $1 split $2: $(grep -E 'ms/step|error' "$OUT/short_$1_$2.log" | head -2 | cut -c1-160)"
  done
  kill $pid; wait $pid 2>/dev/null
  summary "$OUT/smi_bf16.csv"
fi
for prec in fp8; do
  extra=(); [ $prec = fp8 ] && extra=(--precision fp8 --steps 1)
  echo "== 720p 4s $prec step, clocks sampled ($(left) s left) =="
  pid=$(smi "$OUT/smi_$prec.csv")
  $S bench --backend cuda --preset 720p-4s --iters 3 --no-t5 --no-vae "${extra[@]}" > "$OUT/bench_$prec.log" 2>&1 || rc=1
  kill $pid; wait $pid 2>/dev/null
  grep -E "ms/step|error" "$OUT/bench_$prec.log" | cut -c1-200
  summary "$OUT/smi_$prec.csv"
done
echo "== PyTorch's bf16 matrix products on this card (the ceiling a GEMM of the card reaches) =="
timeout 90 python3 - <<'PY' 2>&1 | tail -8 || rc=1
import torch
def rate(m, n, k, reps=20):
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16); b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(3): a @ b.t()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ts = []
    for _ in range(5):
        e0.record()
        for _ in range(reps): a @ b.t()
        e1.record(); torch.cuda.synchronize(); ts.append(e0.elapsed_time(e1) / reps)
    ts.sort(); t = ts[len(ts) // 2]
    print(f"  [{m},{k}] x [{n},{k}]^T: {t:.3f} ms, {2 * m * n * k / t / 1e9:.0f} TFLOP/s")
rate(8192, 8192, 8192)
for n, k, what in [(3456, 1152, "qkv"), (4608, 1152, "fc1"), (1152, 4608, "fc2"), (1152, 1152, "proj")]:
    print(f"  {what}:", end=""); rate(216000, n, k, reps=5)
PY
for f in 8 60; do
  [ "$(left)" -lt 120 ] && { echo "== perf $f frames: skipped (time)"; continue; }
  echo "== ops alone, $f frames ($(left) s left) =="
  pid=$(smi "$OUT/smi_ops$f.csv")
  STDIT_PERF_FRAMES=$f timeout 150 $T --gtest_filter=CudaPerf.RealShapes > "$OUT/perf$f.log" 2>&1 || rc=1
  kill $pid; wait $pid 2>/dev/null
  grep -E "linear|attention\[bf16\] spatial|FAIL" "$OUT/perf$f.log" | cut -c1-160
  summary "$OUT/smi_ops$f.csv"
done
if [ -z "${NO_WHOLE:-}" ]; then
  e8=/tmp/stdit_engine_fp8
  if [ "$(left)" -gt 110 ]; then
    $S convert --synthetic --dtype fp8 -o $e8 > "$OUT/convert8.log" 2>&1 || rc=1
    echo "== whole 720p 4s video, fp8 engine, graphs on ($(left) s left) =="
    { time timeout $(( $(left) - 10 )) $S generate "a beautiful waterfall" -e $e8 --backend cuda \
        --resolution 720p --num-frames 4s --out-dir /tmp/stdit_whole8 -v; } > "$OUT/whole8.log" 2>&1 || rc=1
    grep -E "^time:|peak|error|real|execution policy" "$OUT/whole8.log" | cut -c1-250
  fi
  if [ "$(left)" -gt 80 ]; then
    echo "== 720p 16s, 2 steps, fp8 engine, graphs on ($(left) s left) =="
    { time timeout $(( $(left) - 5 )) $S generate "a beautiful waterfall" -e $e8 --backend cuda \
        --resolution 720p --num-frames 16s --steps 2 --out-dir /tmp/stdit_whole16 -v; } > "$OUT/whole16.log" 2>&1 || rc=1
    grep -E "^time:|peak|error|real" "$OUT/whole16.log" | cut -c1-250
  fi
fi
echo "done in $(( $(date +%s) - t0 )) s"
exit $rc
