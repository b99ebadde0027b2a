#!/usr/bin/env bash
# Builds the libFuzzer harnesses of fuzz/ with clang and runs them (docs/RELIABILITY.md).
#
#   scripts/fuzz.sh --ci               replay every seed corpus, then fuzz each harness 15 s
#                                      (about 2-3 minutes in all); exit 1 on any finding
#   scripts/fuzz.sh --long N [h...]    fuzz each harness (or the ones named) for N seconds
#   scripts/fuzz.sh --build            only build
#
# Harnesses: safetensors torch_bin config checkpoint_dir prompt tokenizer media engine.
# Environment: CXX (default clang++-14), FUZZ_BUILD (default build-fuzz), FUZZ_CI_SECONDS (15),
# FUZZ_JOBS (parallel fuzzing processes per harness in --long mode, default 1).
# New corpus entries go to $FUZZ_BUILD/corpus/<h> (not committed); findings (crash-*, leak-*,
# timeout-*, oom-*) to $FUZZ_BUILD/artifacts/<h>/, logs to $FUZZ_BUILD/logs/<h>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=${FUZZ_BUILD:-build-fuzz}
CXX=${CXX:-clang++-14}
ALL=(safetensors torch_bin config checkpoint_dir prompt tokenizer media engine)
# Harnesses with a known open finding outside the fuzz work's scope: replayed and fuzzed only when
# named explicitly. engine: open_engine lets nlohmann::json::type_error escape for a config.json
# whose "format"/"format_version"/"dtype" has the wrong JSON type (see docs/RELIABILITY.md).
# Remove a name from here once its fix is in.
KNOWN_OPEN=${FUZZ_KNOWN_OPEN-}

mode=${1:---ci}
shift || true
secs=${FUZZ_CI_SECONDS:-15}
if [[ $mode == --long ]]; then
  secs=${1:?usage: scripts/fuzz.sh --long SECONDS [harness...]}
  shift
elif [[ $mode != --ci && $mode != --build ]]; then
  sed -n '2,16p' "$0"
  exit 2
fi
if [[ $# -gt 0 ]]; then
  harnesses=("$@")
else
  harnesses=()
  for h in "${ALL[@]}"; do
    [[ " $KNOWN_OPEN " == *" $h "* ]] && { echo "fuzz: skipping $h (known open finding; FUZZ_KNOWN_OPEN)"; continue; }
    harnesses+=("$h")
  done
fi

command -v "$CXX" >/dev/null || { echo "fuzz: $CXX not found (apt install clang-14 libclang-rt-14-dev)"; exit 1; }
if [[ ! -f $BUILD/build.ninja ]]; then
  CXX=$CXX cmake -S fuzz -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE= >/dev/null
fi
targets=()
for h in "${harnesses[@]}"; do targets+=("fuzz_$h"); done
ninja -C "$BUILD" "${targets[@]}"
[[ $mode == --build ]] && exit 0

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
jobs=${FUZZ_JOBS:-1}
failed=()
for h in "${harnesses[@]}"; do
  mkdir -p "$BUILD/corpus/$h" "$BUILD/artifacts/$h" "$BUILD/logs" "$BUILD/tmp"
  log=$ROOT/$BUILD/logs/$h.log
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$ROOT/$BUILD/artifacts/$h/")
  [[ $jobs -gt 1 ]] && args+=(-fork="$jobs" -ignore_crashes=0)
  echo "fuzz: $h (${secs}s)"
  set +e
  (cd "$BUILD/tmp" && TMPDIR=$ROOT/$BUILD/tmp "$ROOT/$BUILD/fuzz_$h" "${args[@]}" \
      "$ROOT/$BUILD/corpus/$h" "$ROOT/fuzz/corpus/$h") >"$log" 2>&1
  rc=$?
  set -e
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss_mb' "$log" | sed "s/^/  /" || true
  if [[ $rc -ne 0 ]]; then
    failed+=("$h")
    echo "fuzz: FINDING in $h (exit $rc); log $log, artifacts in $BUILD/artifacts/$h/"
    grep -E 'FINDING|ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -20 | sed "s/^/  /"
  fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: findings in: ${failed[*]}"
  exit 1
fi
echo "fuzz: no findings (${harnesses[*]})"
