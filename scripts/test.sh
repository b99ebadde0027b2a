#!/usr/bin/env bash
# Sets up, builds and runs every CPU test (C++ and Python): the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j2
# The Python package: built into a virtual environment (CPU backend: the tests need no GPU) and
# tested against the program just built.
scripts/python.sh --test --cpu-only
