# Sourced by the bench/gpu_*.sh scripts (from the repository root): the time budget left() of
# LIMIT seconds (default 570) since sourcing, $OUT (default bench_out/) made, build-cuda's
# libraries on the library path, S = the stdit binary, T = the GPU test binary, rc = 0.
t0=$(date +%s)
left() { echo $(( ${LIMIT:-570} - ($(date +%s) - t0) )); }
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/build-cuda/libs:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export STDIT_TEST_DATA="$PWD/tests/data"
S=build-cuda/stdit
T=build-cuda/tests/gpu/stdit_gpu_tests
rc=0
