#!/usr/bin/env bash
# Configures and builds stdit (Release) into build/. CUDA is used when nvcc is found.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
ninja -C build
