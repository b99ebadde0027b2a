#!/usr/bin/env bash
# Sets up, builds and runs the main job on the embedded tiny model: the README's first command.
# (Until `stdit generate` lands, the main job is one STDiT3 forward call.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
mkdir -p out
./build/stdit forward dit --model tests/data/stdit3_a \
  --inputs tests/data/stdit3_a/inputs.safetensors --output out/forward_dit.safetensors
./build/stdit inspect out/forward_dit.safetensors
