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
      openmpi-bin libopenmpi-dev)
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
