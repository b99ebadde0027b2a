#!/usr/bin/env bash
# Packs a build-cuda/ build (stdit and the GPU test binary, stripped, with the shared libraries
# they need but CUDA's and the C runtime's: scripts/collect_libs.sh) for the GPU machine, as two
# archives under .device/ (git-ignored): pk_both.tar.xz (the binaries and libs) and icu.tar.xz
# (libicudata, ~30 MB of data that changes only with the build machine: made once). On the GPU
# machine, from the repository root: tar -xJf .device/pk_both.tar.xz && tar -xJf .device/icu.tar.xz,
# then bench/gpu_env.sh or scripts/gpu_check.sh. The two archives and the tracked tree together must
# stay under the device call's 64 MiB: the binaries are mostly their sm_90a kernels, so build with
# -DSTDIT_CUDA_ARCHS=90a-real.
# Usage: scripts/pack_gpu.sh      (after ninja -C build-cuda stdit stdit_gpu_tests)
set -euo pipefail
cd "$(dirname "$0")/.."
st=.device/stage
rm -rf $st && mkdir -p $st/build-cuda/tests/gpu $st/icu/build-cuda/libs $st/l2
cp build-cuda/stdit $st/build-cuda/stdit
cp build-cuda/tests/gpu/stdit_gpu_tests $st/build-cuda/tests/gpu/
strip $st/build-cuda/stdit $st/build-cuda/tests/gpu/stdit_gpu_tests
scripts/collect_libs.sh build-cuda/stdit $st/build-cuda/libs >/dev/null
scripts/collect_libs.sh build-cuda/tests/gpu/stdit_gpu_tests $st/l2 >/dev/null
cp -n $st/l2/* $st/build-cuda/libs/
mv $st/build-cuda/libs/libicudata* $st/icu/build-cuda/libs/ 2>/dev/null || true
XZ_OPT="-9 -T1" tar -C $st -cJf .device/pk_both.tar.xz build-cuda/stdit build-cuda/tests build-cuda/libs
[ -f .device/icu.tar.xz ] || tar -C $st/icu -cJf .device/icu.tar.xz build-cuda
rm -rf $st
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
ls -l .device/*.tar.xz | awk '{printf "%s %.2f MiB\n", $NF, $5 / 1048576}'
echo "with the tracked tree: $(( (tracked + $(stat -c %s .device/pk_both.tar.xz) + $(stat -c %s .device/icu.tar.xz)) / 1048576 )) MiB of the call's 64"
