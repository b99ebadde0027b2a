#!/usr/bin/env bash
# Several GPUs, run on a GPU machine with 2 or more devices (nvidia-h100-x2 / -x4 / -x8) from the
# repository root: tensor parallelism (NCCL) and CFG-parallel against one GPU.
#   1. stdit_gpu_tests CudaMultiGpu.*: fixture stdit3_a split over 2 (and 4) GPUs vs the PyTorch
#      reference and one GPU; the same call twice gives identical bytes.
#   2. `stdit generate` with the same seed on 1 GPU, TP 2 (twice), CFG-parallel 2, and with 4+
#      GPUs TP 4 and CFG-parallel x TP 2: latents compared with the one-GPU run; the two TP runs
#      must be byte-identical.
#   3. `stdit bench`: denoiser step at 480p and 720p 4s (real sizes, synthetic weights) on one GPU,
#      TP over all GPUs and CFG-parallel, in one process; errors vs one GPU.
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

echo "== 3. bench: denoiser step, one GPU vs TP $n vs CFG-parallel"
"$BENCH" bench --backend cuda --preset 480p-4s --preset 720p-4s --no-t5 --no-vae --tp "$n" \
  --cfg-parallel --iters "${STDIT_BENCH_ITERS:-3}" || fail=1
# 4+ GPUs: TP 2 (two GPUs, rows split) and CFG-parallel x TP 2 (four GPUs) too.
[ "$n" -ge 4 ] && { "$BENCH" bench --backend cuda --preset 720p-4s --no-t5 --no-vae --tp 2 \
  --cfg-parallel --iters "${STDIT_BENCH_ITERS:-3}" || fail=1; }

echo "multi_gpu_check: $([ $fail -eq 0 ] && echo "all checks passed" || echo "FAILURES")"
exit $fail
