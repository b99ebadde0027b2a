#!/usr/bin/env bash
# Sets up, builds and runs the main job: one video from a prompt with the embedded demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
./build/stdit generate "a beautiful waterfall" "$@"
