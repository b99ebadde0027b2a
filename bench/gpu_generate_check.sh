#!/usr/bin/env bash
# On the GPU machine: `stdit generate` end to end with the embedded tiny engine on the GPU (twice)
# and on the CPU, then: identical bytes for the two GPU runs, latent error and per-frame PSNR of
# GPU vs CPU. Expects a STDIT_MEDIA=OFF build (frames come out as safetensors) in build-cuda/ with its
# libraries in build-cuda/libs (see scripts/gpu_check.sh), or STDIT=path/to/stdit.
set -euo pipefail
repo=$PWD
S=$(realpath "${STDIT:-build-cuda/stdit}")
export LD_LIBRARY_PATH=$(dirname "$S")/libs:/usr/local/cuda/lib64:/usr/local/cuda/lib
mkdir -p /tmp/w && cd /tmp/w
for run in cuda1 cuda2 cpu; do
  be=${run%[0-9]}
  /usr/bin/time -f "$run: %e s wall" $S generate "a beautiful waterfall" -e "$repo/models/tiny" --backend "$be" \
    --out-dir $run --save-latents $run/lat.safetensors -q
done
cmp cuda1/sample_0000.frames.safetensors cuda2/sample_0000.frames.safetensors && echo "GPU twice: identical frame bytes"
cmp cuda1/lat.safetensors cuda2/lat.safetensors && echo "GPU twice: identical latent bytes"
$S compare cuda1/lat.safetensors cpu/lat.safetensors --tol 1 || true
python3 - <<'PY'
import numpy as np
from safetensors.numpy import load_file
a = load_file("cuda1/sample_0000.frames.safetensors")["frames"].astype(np.float64)
b = load_file("cpu/sample_0000.frames.safetensors")["frames"].astype(np.float64)
mse = ((a - b) ** 2).reshape(a.shape[0], -1).mean(1)
psnr = [99.0 if m == 0 else 10 * np.log10(255 ** 2 / m) for m in mse]
print("GPU vs CPU frames %s: per-frame PSNR min %.2f dB, mean %.2f dB, max abs diff %d"
      % (a.shape, min(psnr), float(np.mean(psnr)), int(np.abs(a - b).max())))
PY
