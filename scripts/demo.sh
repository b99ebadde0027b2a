#!/usr/bin/env bash
# Sets up, builds and runs the main job: one video from a prompt with the embedded demo model
# (models/tiny, 128x128 px, 17 frames; docs/DEMO_MODEL.md), plus a frame-grid preview PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
./build/stdit generate "a red ball moving to the right" --preview "$@"
