#!/usr/bin/env bash
# Copies the shared libraries a binary needs into a folder, except the C runtime (libc, libm,
# libpthread, libdl, librt, the loader) and CUDA's own (/usr/local/cuda*), which the GPU machine
# has. scripts/gpu_check.sh puts that folder first on LD_LIBRARY_PATH, so a binary built here runs
# on a machine without OpenBLAS, libgomp, ...
#
# Usage: scripts/collect_libs.sh BINARY DEST_DIR      (e.g. build-cuda/tests/gpu/stdit_gpu_tests build-cuda/libs)
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 BINARY DEST_DIR" >&2
  exit 2
fi
bin=$1
dest=$2
[ -x "$bin" ] || { echo "collect_libs: $bin is not an executable" >&2; exit 2; }
if ldd "$bin" | grep -q "not found"; then
  echo "collect_libs: $bin has unresolved libraries here:" >&2
  ldd "$bin" | grep "not found" >&2
  exit 1
fi
mkdir -p "$dest"
rm -f "$dest"/*.so "$dest"/*.so.*  # stale copies from an earlier build
n=0
while read -r name path; do
  case "$path" in /usr/local/cuda*) continue ;; esac
  case "$name" in
    libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux*) continue ;;
  esac
  cp -L "$path" "$dest/$name"
  n=$((n + 1))
done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}')
echo "collect_libs: $n libraries in $dest ($(du -sh "$dest" | cut -f1))"
