#!/usr/bin/env bash
# Installs every Debian package that building and testing stdit needs. Idempotent.
# Usage: scripts/setup.sh [--reference]   (--reference also installs python3-torch for tools/reference)
set -euo pipefail
pkgs=(cmake ninja-build g++ ccache pkg-config
      nlohmann-json3-dev libcli11-dev libopenblas-dev libgtest-dev libomp-dev
      libsentencepiece-dev libicu-dev
      libavformat-dev libavcodec-dev libswscale-dev libavutil-dev libpng-dev
      libcpp-httplib-dev libsqlite3-dev libpq-dev postgresql chromium
      clang-14 libclang-rt-14-dev
      openmpi-bin libopenmpi-dev python3-pip unzip)
if [[ "${1:-}" == "--reference" ]]; then pkgs+=(python3-torch python3-numpy python3-sentencepiece python3-pil); fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi
# CUTLASS 3 headers for the fp8 precision's fused GEMM (src/backend/cuda/cuda.cmake): the pinned
# nvidia-cutlass wheel from PyPI, its include/ unpacked into /opt/cutlass-4.2.0.0. Only where nvcc
# is (a CPU-only build does not use them).
cutlass=/opt/cutlass-4.2.0.0
if { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; } && [ ! -f "$cutlass/include/cutlass/cutlass.h" ]; then
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check nvidia-cutlass==4.2.0.0 -d "$tmp"
  unzip -q "$tmp"/nvidia_cutlass-4.2.0.0-*.whl 'cutlass_library/source/include/*' -d "$tmp"
  $SUDO mkdir -p "$cutlass"
  $SUDO rm -rf "$cutlass/include"
  $SUDO mv "$tmp/cutlass_library/source/include" "$cutlass/include"
  rm -rf "$tmp"
  echo "setup: CUTLASS headers in $cutlass/include"
fi
