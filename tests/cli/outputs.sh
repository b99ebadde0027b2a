#!/usr/bin/env bash
# `stdit generate` with real processes, signals and files (issue: outputs never lost, the error
# contract, metadata that reproduces each file). Usage: outputs.sh STDIT WORKDIR [CASE...]
# Runs on the embedded demo model (CPU). Each case prints "ok CASE" or fails with a reason.
set -uo pipefail
S=$1
W=$2
shift 2
CASES=("$@")
rm -rf "$W" && mkdir -p "$W" && cd "$W" || exit 1
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
FAST=(--steps 2 --backend cpu -q)

die() { echo "FAIL [$CASE]: $*" >&2; exit 1; }
want() { [[ ${#CASES[@]} -eq 0 ]] || [[ " ${CASES[*]} " == *" $1 "* ]]; }
# No temporary file, no empty placeholder left under $1.
clean_dir() {
  local left
  left=$(find "$1" \( -name '*.tmp.*' -o \( -size 0 ! -name 'exists.*' \( -name '*.mp4' -o -name '*.png' -o -name '*.safetensors' \) \) \) -print)
  [[ -z $left ]] || die "left behind in $1: $left"
}
tag() { "$S" inspect "$1" | sed -n "s/^  metadata $2 = //p"; }
# Starts generate in the background; waits until stdout shows $1 (a line), then sends signal $2.
signal_after() {
  local line=$1 sig=$2
  shift 2
  "$S" generate "$@" >run.out 2>run.err &
  local pid=$!
  for _ in $(seq 1 600); do
    grep -q "$line" run.out run.err 2>/dev/null && break
    sleep 0.05
  done
  kill "-$sig" "$pid"
  wait "$pid"
  RC=$?
}

CASE=concurrent
if want $CASE; then
  # Four processes into one directory: four files, each with its own prompt.
  pids=()
  for c in red green blue orange; do
    "$S" generate "a $c ball moving to the right" "${FAST[@]}" --out-dir same >"$c.out" 2>"$c.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || die "a process failed: $(cat ./*.err)"; done
  n=$(ls same/*.mp4 | wc -l)
  [[ $n -eq 4 ]] || die "expected 4 videos, got $n: $(ls same)"
  prompts=$(for f in same/*.mp4; do tag "$f" prompt; done | sort | tr '\n' '|')
  [[ $prompts == "a blue ball moving to the right|a green ball moving to the right|a orange ball moving to the right|a red ball moving to the right|" ]] ||
    die "prompts in the files: $prompts"
  for c in red green blue orange; do  # each process reports the file that holds its prompt
    f=$(sed -n 's/^Saved to //p' "$c.out")
    [[ $(tag "$f" prompt) == "a $c ball moving to the right" ]] || die "$c.out names $f, which holds another prompt"
  done
  clean_dir same
  echo "ok $CASE"
fi

CASE=sigint
if want $CASE; then
  # Ctrl-C while the second of three videos is denoised: the first stays, nothing else is left.
  signal_after "Saved to" INT "a red ball" "a blue ball" "a green ball" --steps 40 --backend cpu --out-dir int
  [[ $RC -eq 130 ]] || die "exit status $RC, expected 130; $(cat run.err)"
  grep -q "interrupted: 1 of 3 videos saved" run.err || die "no 'interrupted: 1 of 3 videos saved' in: $(tail -3 run.err)"
  [[ $(ls int) == "sample_0000.mp4" ]] || die "directory holds: $(ls int)"
  [[ $(tag int/sample_0000.mp4 prompt) == "a red ball" ]] || die "the kept video is not the first prompt's"
  clean_dir int
  echo "ok $CASE"
fi

CASE=sigterm
if want $CASE; then
  # SIGTERM during the first video's denoising: nothing saved, nothing left, status 130.
  mkdir term
  signal_after "denoise" TERM "a red ball" --steps 200 --backend cpu --save-latents term/lat.safetensors -o term/one.mp4
  [[ $RC -eq 130 ]] || die "exit status $RC, expected 130; $(cat run.err)"
  grep -q "interrupted: 0 of 1 videos saved" run.err || die "no 'interrupted: 0 of 1' in: $(tail -3 run.err)"
  [[ -z $(ls -A term) ]] || die "left: $(ls -A term)"
  echo "ok $CASE"
fi

CASE=sigint_twice
if want $CASE; then
  # A second Ctrl-C ends the process at once; the reservation and temporaries still go.
  "$S" generate "a red ball" --steps 400 --backend cpu -o twice.mp4 >run.out 2>run.err &
  pid=$!
  for _ in $(seq 1 600); do grep -q "denoise" run.err 2>/dev/null && break; sleep 0.05; done
  [[ -e twice.mp4 ]] || die "the -o name was not reserved while the video is made"
  kill -INT $pid; kill -INT $pid
  wait $pid
  RC=$?
  [[ $RC -eq 130 ]] || die "exit status $RC, expected 130"
  [[ ! -e twice.mp4 ]] || die "the empty reservation twice.mp4 was left"
  clean_dir .
  echo "ok $CASE"
fi

CASE=check_first
if want $CASE; then
  mkdir -p ro && chmod 555 ro
  touch exists.mp4 exists.safetensors
  fails() {  # expected message, then generate's arguments: exit 1, one error line, no output dir
    local msg=$1
    shift
    "$S" generate "$@" >run.out 2>run.err
    local rc=$?
    [[ $rc -eq 1 ]] || die "generate $*: exit $rc, expected 1"
    grep -q "^error: .*$msg" run.err || die "generate $*: expected 'error: ...$msg', got: $(cat run.err)"
    [[ $(grep -c "^error: " run.err) -eq 1 ]] || die "generate $*: more than one error line"
    ! grep -q "denoise\|decode" run.err || die "generate $*: work started before the check"
  }
  fails "exists; stdit never overwrites" "a red ball" -o exists.mp4
  [[ ! -s exists.mp4 ]] || die "exists.mp4 was touched"
  fails "exists; stdit never overwrites" "a red ball" --save-latents exists.safetensors
  fails "name must end in .mp4" "a red ball" -o clip.png
  fails "name must end in .png" "a red ball" --num-frames 1 -o still.mp4
  if [[ $(id -u) -ne 0 ]]; then
    fails "is not writable" "a red ball" -o ro/clip.mp4
    fails "is not writable" "a red ball" --save-latents ro/lat.safetensors
  fi
  fails "does not exist" "a red ball" -o nodir/clip.mp4
  fails "unknown camera motion 'dolly'" "a red ball" --camera-motion dolly
  fails "names one output" "a red ball" "a blue ball" -o two.mp4
  fails "seed must be -1" "a red ball" --seed -2
  [[ ! -e sample_outputs ]] || die "sample_outputs/ was created"
  chmod 755 ro
  echo "ok $CASE"
fi

CASE=errors
if want $CASE; then
  cli_fails() {  # expected message, then the program's arguments
    local msg=$1
    shift
    "$S" "$@" >run.out 2>run.err
    local rc=$?
    [[ $rc -eq 1 ]] || die "stdit $*: exit $rc, expected 1"
    grep -q "^error: .*$msg" run.err || die "stdit $*: expected 'error: ...$msg', got: $(cat run.err)"
  }
  cli_fails "unknown command 'frobnicate'" frobnicate
  cli_fails "no command given" -v
  cli_fails "steps" generate x --steps abc
  cli_fails "frobnicate" generate x --frobnicate
  cli_fails "required" convert --dit a
  "$S" --help >/dev/null 2>&1 || die "--help must exit 0"
  "$S" generate --help >/dev/null 2>&1 || die "generate --help must exit 0"
  echo "ok $CASE"
fi

CASE=from
if want $CASE; then
  # The metadata reproduces the file: same bytes from --from on the same backend.
  "$S" generate "a blue square moving up" "${FAST[@]}" --seed -1 --noise-index 3 --camera-motion "pan left" -o a.mp4 >run.out 2>run.err ||
    die "generate failed: $(cat run.err)"
  seed=$(tag a.mp4 seed)
  [[ $seed =~ ^[0-9]+$ && $seed != 18446744073709551615 ]] || die "random seed not recorded: '$seed'"
  rec=$(tag a.mp4 stdit)
  for k in '"noise_index":3' '"camera_motion":"pan left"' '"prompt_encoded":"a blue square moving up aesthetic score: 6.5. camera motion: pan left."' \
           '"engine_id":' '"backend":"cpu"' '"precision":"f32"' '"program":"stdit' '"steps":2' '"fps":24.0'; do
    [[ $rec == *"$k"* ]] || die "record lacks $k: $rec"
  done
  "$S" generate --from a.mp4 -o b.mp4 -q >/dev/null 2>run.err || die "--from failed: $(cat run.err)"
  cmp -s a.mp4 b.mp4 || die "--from a.mp4 made different bytes"
  "$S" generate "a red ball" --steps 2 --backend cpu --num-frames 1 -W 100 -H 60 -o a.png >/dev/null 2>run.err || die "png: $(cat run.err)"
  grep -q "96x56 px (size condition 100x60" run.err || die "header does not give the real size: $(head -3 run.err)"
  grep -q "fps condition is 120" run.err || die "header does not give the image fps condition"
  [[ $("$S" inspect a.png | head -1) == *"96x56"* ]] || die "a.png is not 96x56"
  "$S" generate --from a.png -o b.png -q >/dev/null 2>run.err || die "--from png failed: $(cat run.err)"
  cmp -s a.png b.png || die "--from a.png made different bytes"
  # A latents file: its videos again, and --decode-only takes its settings (contradicting flags refused).
  "$S" generate "a red ball" "a green ball" "${FAST[@]}" --batch-size 2 --out-dir L --save-latents L/lat.safetensors >/dev/null 2>run.err ||
    die "latents: $(cat run.err)"
  "$S" generate --from L/lat.safetensors --out-dir L2 -q >/dev/null 2>run.err || die "--from latents: $(cat run.err)"
  cmp -s L/sample_0001.mp4 L2/sample_0001.mp4 || die "--from latents made different bytes"
  "$S" generate --decode-only L/lat.safetensors --num-frames 1 --out-dir L3 >/dev/null 2>run.err
  [[ $? -eq 1 ]] && grep -q "^error: .*contradicts\|^error: .*do not fit" run.err || die "contradicting --num-frames accepted: $(cat run.err)"
  "$S" generate --decode-only L/lat.safetensors -o one.mp4 >/dev/null 2>run.err
  [[ $? -eq 1 ]] && grep -q "names one output" run.err || die "-o with two latents accepted: $(cat run.err)"
  "$S" generate --decode-only L/lat.safetensors --out-dir L3 -q >/dev/null 2>run.err || die "decode-only: $(cat run.err)"
  [[ $(tag L3/sample_0001.mp4 prompt) == "a green ball" ]] || die "decode-only output lacks the prompt"
  cmp -s <("$S" inspect L/sample_0001.mp4 | tail -n +2) <("$S" inspect L3/sample_0001.mp4 | tail -n +2) ||
    die "decode-only output differs from the original video"
  clean_dir .
  echo "ok $CASE"
fi

CASE=fp8
if want $CASE; then
  # --precision fp8 (the CPU emulation) quantizes at load what `convert --dtype fp8` stores: the same
  # latents; the record brings fp8 and --fp8-keep back for --from; bad requests are one error line.
  T=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/models/tiny
  "$S" convert --dit "$T/dit" --vae "$T/vae" --t5 "$T/t5" --dtype fp8 -o e8 >run.out 2>run.err || die "convert: $(cat run.err)"
  grep -q '"dtype": "fp8"' e8/config.json || die "engine config lacks dtype fp8"
  listing=$("$S" inspect e8/dit/model.safetensors)
  grep -q "spatial_blocks.0.mlp.fc1.weight  *F8_E4M3  *\[768, 192\]" <<<"$listing" &&
    grep -q "spatial_blocks.0.mlp.fc1.weight_scale  *F32  *\[768\]" <<<"$listing" ||
    die "no e4m3 weight with row scales in the fp8 engine: $(head <<<"$listing")"
  "$S" generate "a red ball moving left" "${FAST[@]}" --precision fp8 --save-latents a.safetensors -o a.mp4 2>run.err ||
    die "fp8 at load: $(cat run.err)"
  "$S" generate "a red ball moving left" "${FAST[@]}" -e e8 --precision fp8 --save-latents b.safetensors -o b.mp4 2>run.err ||
    die "fp8 engine: $(cat run.err)"
  "$S" compare a.safetensors b.safetensors --tol 0 >run.out 2>&1 || die "fp8 engine != fp8 at load: $(cat run.out)"
  "$S" generate "a red ball moving left" "${FAST[@]}" --save-latents c.safetensors -o c.mp4 2>run.err || die "f32: $(cat run.err)"
  "$S" compare a.safetensors c.safetensors --tol 1e-4 >run.out 2>&1 && die "fp8 latents equal f32's"
  "$S" generate "a red ball moving left" "${FAST[@]}" --precision fp8 --fp8-keep fc2,first:1 -o k.mp4 2>run.err ||
    die "fp8-keep: $(cat run.err)"
  rec=$(tag k.mp4 stdit)
  [[ $rec == *'"precision":"fp8"'* && $rec == *'"fp8_keep":"fc2,first:1"'* ]] || die "record: $rec"
  "$S" generate --from k.mp4 -o k2.mp4 -q >/dev/null 2>run.err || die "--from fp8: $(cat run.err)"
  cmp -s k.mp4 k2.mp4 || die "--from k.mp4 made different bytes"
  "$S" generate x --fp8-keep qkv >run.out 2>run.err
  [[ $? -eq 1 ]] && grep -q "^error: --fp8-keep needs --precision fp8" run.err || die "keep without fp8: $(cat run.err)"
  # An fp8 engine under auto: fp8 where FP8 tensor cores are; the CPU runs it in f32, so a keep
  # list without --precision fp8 is refused with the reason (the engine's dtype reached the policy).
  "$S" generate x -e e8 --backend cpu --fp8-keep qkv >run.out 2>run.err
  [[ $? -eq 1 ]] && grep -q "^error: --fp8-keep needs --precision fp8 (the CPU runs an fp8 engine in f32" run.err ||
    die "keep on an fp8 engine: $(cat run.err)"
  "$S" generate x --backend cpu --precision fp8 --fp8-keep fc3 >run.out 2>run.err
  [[ $? -eq 1 ]] && grep -q "^error: --fp8-keep: 'fc3'" run.err || die "bad keep: $(cat run.err)"
  # fp16 is a GPU precision: the CPU refuses it with the reason, before anything is written.
  "$S" generate x --backend cpu --precision fp16 -o h.mp4 >run.out 2>run.err
  [[ $? -eq 1 && ! -e h.mp4 ]] && grep -q "^error: the CPU backend computes in f32 (or emulates fp8) only; --precision fp16 needs a GPU" run.err ||
    die "fp16 on the CPU: $(cat run.err)"
  "$S" convert --dit "$T/dit" --vae "$T/vae" --t5 "$T/t5" --dtype fp4 -o e4 >run.out 2>run.err
  [[ $? -eq 1 && ! -e e4 ]] && grep -q "^error: --dtype must be bf16, f16, f32 or fp8" run.err || die "fp4: $(cat run.err)"
  clean_dir .
  echo "ok $CASE"
fi
