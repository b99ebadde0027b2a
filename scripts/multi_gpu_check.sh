#!/usr/bin/env bash
# Several GPUs, run on a GPU machine with 2 or more devices (nvidia-h100-x2 / -x4 / -x8) from the
# repository root: tensor parallelism (NCCL) and CFG-parallel against one GPU.
#   1. stdit_gpu_tests CudaMultiGpu.*: fixture stdit3_a split over 2 (and 4) GPUs, stdit3_c over 4
#      (and 8), vs the PyTorch reference and one GPU; the same call twice gives identical bytes.
#   2. `stdit generate` with the same seed on 1 GPU, TP 2 (twice), CFG-parallel 2, and with 4+
#      GPUs TP 4 and CFG-parallel x TP 2: latents compared with the one-GPU run; the two TP runs
#      must be byte-identical.
#   2b. context parallel 2 as threads (NCCL all-to-all) and, where mpirun exists, TP 2 and CP 2
#      as two processes (NCCL from an id carried over MPI), 34 frames, against one GPU.
#   3. `stdit bench`: denoiser step at 480p and 720p 4s (real sizes, synthetic weights) on one GPU,
#      TP over all GPUs and CFG-parallel, in one process; errors vs one GPU. With 4+ GPUs also
#      the scaling of 720p 4s and 16s: TP 2/4/8 and CFG-parallel x TP 1/2/4 as the GPUs allow;
#      context parallelism: CP 2 (x CFG-parallel), TP 2 x CP 2, CP 4 x CFG as the GPUs allow;
#      where mpirun exists, the same splits as processes (`mpirun -n N stdit_bench bench`).
#   4. whole 720p 16s videos end to end: one GPU against CP 2 (threads, processes).
#
# Binaries (built on the build machine, carried over): STDIT_GEN (default build-gpu/stdit, a
# -DSTDIT_MEDIA=OFF build), STDIT_GPU_TESTS (build-cuda/tests/gpu/stdit_gpu_tests), STDIT_BENCH
# (build-cuda/stdit_bench); their libraries on LD_LIBRARY_PATH. Engine: STDIT_ENGINE (models/tiny).
# Exit status 0 when every check passed.
set -uo pipefail
cd "$(dirname "$0")/.."
GEN=${STDIT_GEN:-build-gpu/stdit}
TESTS=${STDIT_GPU_TESTS:-build-cuda/tests/gpu/stdit_gpu_tests}
BENCH=${STDIT_BENCH:-build-cuda/stdit_bench}
ENGINE=${STDIT_ENGINE:-models/tiny}
TOL=${STDIT_TP_TOL:-2e-2}  # bf16 policy for whole-pipeline latents vs one GPU
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
export STDIT_TEST_DATA=$PWD/tests/data
n=$(nvidia-smi -L 2>/dev/null | wc -l)
echo "multi_gpu_check: $n GPUs"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
[ "$n" -ge 2 ] || { echo "multi_gpu_check: needs at least 2 GPUs"; exit 2; }
fail=0

echo "== 1. tensor-parallel fixture (NCCL)"
"$TESTS" --gtest_brief=1 --gtest_filter='CudaMultiGpu.*' 2>&1 | grep -v "^\[ *OK\|^\[ RUN" | tail -12
[ "${PIPESTATUS[0]}" -eq 0 ] || fail=1

echo "== 2. generate: same seed on 1 GPU and split"
w=$(mktemp -d)
# TP splits must divide the engine's attention heads (the demo engine has 6: TP 4 and 8 are
# checked on the fixture in step 1 instead, and skipped here with a note).
heads=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['num_heads'])" \
        "$ENGINE/dit/config.json" 2>/dev/null || echo 0)
fits() { [ "$heads" -gt 0 ] && [ $((heads % $1)) -eq 0 ]; }
runs=("one:--gpus 1" "tp2:--gpus 2 --tp 2" "tp2again:--gpus 2 --tp 2" "cfg2:--gpus 2 --cfg-parallel")
want=()
if [ "$n" -ge 4 ]; then want+=("tp4:4:--gpus 4 --tp 4" "cfg2tp2:2:--gpus 4 --tp 2 --cfg-parallel"); fi
if [ "$n" -ge 8 ]; then want+=("tp8:8:--gpus 8 --tp 8" "cfg2tp4:4:--gpus 8 --tp 4 --cfg-parallel"); fi
for r in "${want[@]+"${want[@]}"}"; do
  name=${r%%:*}; rest=${r#*:}; tp=${rest%%:*}
  if fits "$tp"; then runs+=("$name:${rest#*:}"); else echo "  $name: skipped (TP $tp does not divide the engine's $heads heads)"; fi
done
for r in "${runs[@]}"; do
  name=${r%%:*}
  # shellcheck disable=SC2086
  if ! /usr/bin/time -f "  $name: %e s" "$GEN" generate "a red ball moving to the right" -e "$ENGINE" \
      --backend cuda ${r#*:} --out-dir "$w/$name" --save-latents "$w/$name.safetensors" -q; then
    echo "  $name: FAILED"
    fail=1
  fi
done
if cmp -s "$w/tp2.safetensors" "$w/tp2again.safetensors"; then
  echo "  TP 2 twice: identical latent bytes"
else
  echo "  TP 2 twice: latents DIFFER"
  fail=1
fi
for r in "${runs[@]}"; do
  name=${r%%:*}
  [ "$name" = one ] && continue
  [ -f "$w/$name.safetensors" ] || continue
  echo "  $name vs one GPU:"
  "$GEN" compare "$w/$name.safetensors" "$w/one.safetensors" --tol "$TOL" | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
done

echo "== 2b. context parallel (NCCL all-to-all) and processes (mpirun, NCCL from an MPI-carried id)"
# 34 frames: 10 latent frames and 64 tokens per frame, both divisible by 2.
cp_runs=("one34:--gpus 1" "cp2:--gpus 2 --cp 2")
for r in "${cp_runs[@]}"; do
  name=${r%%:*}
  # shellcheck disable=SC2086
  "$GEN" generate "a red ball moving to the right" -e "$ENGINE" --num-frames 34 --backend cuda ${r#*:} \
    --out-dir "$w/$name" --save-latents "$w/$name.safetensors" -q || { echo "  $name: FAILED"; fail=1; }
done
if command -v mpirun >/dev/null; then
  for r in "mp_tp2:--tp 2" "mp_cp2:--cp 2"; do
    name=${r%%:*}
    # shellcheck disable=SC2086
    mpirun --allow-run-as-root -n 2 "$GEN" generate "a red ball moving to the right" -e "$ENGINE" --num-frames 34 \
      ${r#*:} --out-dir "$w/$name" --save-latents "$w/$name.safetensors" -q || { echo "  $name: FAILED"; fail=1; }
  done
else
  echo "  mpirun not on this machine: the process runs are skipped (carry OpenMPI to make them)"
fi
for name in cp2 mp_tp2 mp_cp2; do
  [ -f "$w/$name.safetensors" ] || continue
  echo "  $name vs one GPU (34 frames):"
  "$GEN" compare "$w/$name.safetensors" "$w/one34.safetensors" --tol "$TOL" | sed 's/^/    /'
  [ "${PIPESTATUS[0]}" -eq 0 ] || fail=1
done

# The bench prints each split's output error against the one-GPU call of the same real-size
# model ("rel err vs one device E"); every E must stay within BENCH_TOL (bf16 policy; seen <= 1.2e-3).
BENCH_TOL=${STDIT_BENCH_TOL:-1e-2}
bench() {
  local out
  out=$("$BENCH" bench --backend cuda --no-t5 --no-vae --iters "${STDIT_BENCH_ITERS:-3}" "$@" 2>&1)
  local rc=$?
  echo "$out"
  [ $rc -eq 0 ] || { echo "  bench: exit $rc"; fail=1; }
  errors_within "$out" || fail=1
}
# Every "rel err vs one device E" line of a bench's output: E a number within BENCH_TOL.
errors_within() {
  echo "$1" | awk -v tol="$BENCH_TOL" '/rel err vs one device/ {
        if ($NF !~ /^[0-9.]+([eE][-+]?[0-9]+)?$/ || $NF + 0 > tol + 0) {
          print "  bench: error " $NF " above " tol; bad = 1 } }
        END { exit bad }'
}

echo "== 3. bench: denoiser step, one GPU vs TP $n vs CFG-parallel"
bench --preset 480p-4s --preset 720p-4s --tp "$n" --cfg-parallel
# fp8: each token's amax reduced over the ranks (NCCL max), so TP's codes are one GPU's; its
# output error against the one-GPU fp8 call stays within the same tolerance.
echo "== 3a. bench: fp8, one GPU vs TP 2"
bench --preset 480p-4s --tp 2 --precision fp8 --fp8-keep none --steps 1
# 4+ GPUs: the scaling of the 720p 4s and 16s step over 1, 2, 4 (and 8) GPUs, each run with its
# one-GPU baseline: TP 2 and CFG-parallel (2 GPUs), TP 4 and CFG-parallel x TP 2 (4), TP 8 and
# CFG-parallel x TP 4 (8).
if [ "$n" -ge 4 ]; then
  for tp in 2 4 8; do
    [ "$tp" -le "$n" ] || continue
    echo "== 3b. scaling: --tp $tp --cfg-parallel"
    bench --preset 720p-4s --preset 720p-16s --tp "$tp" --cfg-parallel
  done
fi

# Context parallelism (issue targets: CP 2 at 720p 4s >= 1.9x per step; CFG x CP 2 on 4 GPUs
# >= 3.7x), each with its one-GPU baseline in the same run; with 4+ GPUs also TP 2 x CP 2 and,
# with 8, CP 4 x CFG and TP 2 x CP 2 x CFG (720p 4s has 30 latent frames: CP 4 does not divide
# them, so its 16s preset is the one timed).
echo "== 3c. context parallel: --cp 2 (and x CFG-parallel where the GPUs allow)"
bench --preset 720p-4s --preset 720p-16s --cp 2 --cfg-parallel
if [ "$n" -ge 4 ]; then
  echo "== 3d. TP 2 x CP 2"
  bench --preset 720p-4s --preset 720p-16s --tp 2 --cp 2
fi
if [ "$n" -ge 8 ]; then
  echo "== 3e. CP 4 x CFG-parallel; TP 2 x CP 2 x CFG-parallel"
  bench --preset 720p-16s --cp 4 --cfg-parallel
  bench --preset 720p-4s --preset 720p-16s --tp 2 --cp 2 --cfg-parallel
fi

# Processes against threads (issue target: the process mode not slower): the same splits under
# mpirun, one process per GPU, each run with its one-GPU baseline (rank 0's GPU alone).
if command -v mpirun >/dev/null; then
  mpibench() {  # processes, then the bench's split flags
    local np=$1
    shift
    local out
    out=$(mpirun --allow-run-as-root -n "$np" -x NCCL_NVLS_ENABLE "$BENCH" bench --backend cuda --no-t5 --no-vae \
      --iters "${STDIT_BENCH_ITERS:-3}" "$@" 2>&1)
    local rc=$?
    echo "$out"
    [ $rc -eq 0 ] || { echo "  mpirun bench: exit $rc"; fail=1; }
    errors_within "$out" || fail=1
  }
  echo "== 3f. processes (mpirun): CP 2 and TP 2 on 2 processes"
  mpibench 2 --preset 720p-4s --preset 720p-16s --cp 2
  mpibench 2 --preset 720p-4s --tp 2
  if [ "$n" -ge 4 ]; then
    echo "== 3g. processes (mpirun): CFG-parallel x CP 2, TP 2 x CP 2 on 4 processes"
    mpibench 4 --preset 720p-4s --preset 720p-16s --cp 2 --cfg-parallel
    mpibench 4 --preset 720p-4s --tp 2 --cp 2
  fi
else
  echo "== 3f. processes: mpirun not on this machine (carry OpenMPI to time the process mode)"
fi

# Whole videos end to end (issue target: 720p 16s on 2 GPUs >= 1.9x one GPU): one `stdit generate`
# process per run, timed from the shell, on a real-size synthetic engine (`convert --synthetic`),
# one GPU against CP 2 (threads, and processes where mpirun exists); its "time:" line splits the
# stages. STDIT_WHOLE=0 skips this part (about 6 minutes on H100s).
if [ "${STDIT_WHOLE:-1}" != 0 ]; then
  echo "== 4. whole 720p 16s video: one GPU against CP 2"
  eng=${STDIT_SYNTH_ENGINE:-$w/synth}
  [ -d "$eng" ] || "$GEN" convert --synthetic -o "$eng" -q || { echo "  convert --synthetic: FAILED"; fail=1; }
  whole() {  # name, the launcher (words), then generate's split flags
    local name=$1 launcher=$2
    shift 2
    local t0
    t0=$(date +%s.%N)
    # shellcheck disable=SC2086
    $launcher generate "a beautiful waterfall" -e "$eng" --backend cuda --resolution 720p --num-frames 16s --seed 3 \
      "$@" --out-dir "$w/w_$name" >"$w/w_$name.log" 2>&1 || { echo "  $name: FAILED ($(tail -1 "$w/w_$name.log"))"; fail=1; }
    echo "  $name: $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s wall", b - a }'); $(grep "^time:" "$w/w_$name.log")"
    rm -rf "$w/w_$name"
  }
  whole one "$GEN"
  whole cp2 "$GEN" --gpus 2 --cp 2
  if command -v mpirun >/dev/null; then whole mp_cp2 "mpirun --allow-run-as-root -n 2 -x NCCL_NVLS_ENABLE $GEN" --cp 2; fi
fi

echo "multi_gpu_check: $([ $fail -eq 0 ] && echo "all checks passed" || echo "FAILURES")"
exit $fail
