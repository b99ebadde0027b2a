#!/usr/bin/env bash
# `stdit` as several processes under mpirun (issue: processes and hosts), on the CPU backend and
# the embedded demo model: tensor parallel, CFG-parallel and both over processes give the bytes
# the same split gives as threads of one process (--gpus N --backend cpu; both sum the ranks'
# partials in rank order), and a one-step run equals the unsplit model within 1e-5; context
# parallelism (alone, with CFG-parallel, with TP, with frozen frames) equals the unsplit model
# within 1e-5 at one step (the trained demo model amplifies rounding differences over steps at
# cfg 7: 1e-6 after one step, 2e-4 after three, for TP and CP alike); a bad split is one error
# line from rank 0; a rank that fails mid-run ends every rank; the VAE decode split over the
# processes (one chunk each) gives the bytes of one decode; Ctrl-C at mpirun stops every process;
# `mpirun … stdit bench` times the splits (rank 0 reports, the split equals one device); rank files
# of two conversions, or processes opening different engines, are one error before anything loads.
# Usage: mpi.sh STDIT MPIRUN WORKDIR CASE   (prints "ok CASE" or "FAIL [CASE]: ...")
set -uo pipefail
S=$1
MPIRUN=$2
W=$3
CASE=$4
rm -rf "$W" && mkdir -p "$W" && cd "$W" || exit 1
# One BLAS/OpenMP thread per rank in both modes: GEMM blocking depends on the thread count.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
M=("$MPIRUN" --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS -x OMP_WAIT_POLICY)
P="a red ball moving to the right"
FAST=(--steps 3 --backend cpu -q)
die() { echo "FAIL [$CASE]: $*" >&2; exit 1; }
same() { "$S" compare "$1" "$2" --tol "$3" >cmp.log 2>&1 || die "$1 vs $2: $(tail -1 cmp.log)"; }
# split N [flags]: the same generate as N processes and as N threads; latents and mp4 identical.
split() {
  local n=$1
  shift
  timeout 300 "${M[@]}" -n "$n" "$S" generate "$P" "${FAST[@]}" "$@" --save-latents p.safetensors -o p.mp4 \
    >p.out 2>p.err || die "mpirun -n $n $*: exit $? $(cat p.err)"
  "$S" generate "$P" "${FAST[@]}" --gpus "$n" "$@" --save-latents t.safetensors -o t.mp4 >t.out 2>t.err ||
    die "--gpus $n $*: $(cat t.err)"
  same p.safetensors t.safetensors 0
  cmp -s p.mp4 t.mp4 || die "mpirun -n $n $*: the mp4 differs from the threads' one"
  [[ $(grep -c "Saved to" p.out) -eq 1 ]] || die "mpirun -n $n: expected one 'Saved to' (rank 0 writes), got: $(cat p.out)"
}
case $CASE in
  tp2) split 2 --tp 2
       # one step: the split equals the whole model within 1e-5 (more steps at cfg 7 amplify rounding)
       timeout 300 "${M[@]}" -n 2 "$S" generate "$P" --steps 1 --backend cpu -q --tp 2 --save-latents p1.safetensors \
         --out-dir o >/dev/null 2>p1.err || die "one step: $(cat p1.err)"
       "$S" generate "$P" --steps 1 --backend cpu -q --save-latents s1.safetensors --out-dir o >/dev/null 2>&1
       same p1.safetensors s1.safetensors 1e-5
       # fp8: each token's amax reduced over the processes (MPI) as over the threads: the same bytes.
       # (Not compared with one process: on the trained demo model fp8 turns the f32 sum order's
       # 1e-6 into percents, as one process with 2 threads instead of 1 does; docs/NUMERICS.md.)
       rm -f p.mp4 t.mp4 p.safetensors t.safetensors
       split 2 --tp 2 --precision fp8 --fp8-keep none ;;
  cfg2) split 2 ;;
  vae_split)  # 34 frames = two VAE chunks, split over 2 and 3 processes: the bytes of one decode
    "$S" generate "$P" --steps 2 --backend cpu -q --num-frames 34 --save-latents z.safetensors --out-dir o >/dev/null 2>&1 ||
      die "latents"
    "$S" generate --decode-only z.safetensors --backend cpu -q -o one.mp4 >/dev/null 2>&1 || die "one decode"
    for n in 2 3; do
      timeout 300 "${M[@]}" -n $n "$S" generate --decode-only z.safetensors --backend cpu -q -o split$n.mp4 >/dev/null \
        2>d.err || die "mpirun -n $n decode: $(cat d.err)"
      cmp -s one.mp4 split$n.mp4 || die "the decode split over $n processes differs from one decode"
    done ;;
  cp_threads)  # context parallelism as processes and as threads: the same bytes
    FAST=(--steps 2 --backend cpu -q --num-frames 34)
    split 4 --cp 2 --tp 2 ;;
  cfg_tp4) split 4 --tp 2 --cfg-parallel ;;
  cp2|cp_cfg4|cp_tp4|cp_i2v)
    # Context parallelism changes no sum, only which rank holds which frames / tokens: one step
    # (34 frames: 10 latent frames, 64 tokens per frame) equals the unsplit model within 1e-5.
    args=(generate "$P" --num-frames 34 --steps 1 --backend cpu -q)
    case $CASE in
      cp2) n=2 split_args=(--cp 2) ;;
      cp_cfg4) n=4 split_args=(--cp 2 --cfg-parallel) ;;
      cp_tp4) n=4 split_args=(--cp 2 --tp 2) ;;
      cp_i2v) n=2 split_args=(--cp 2)  # frozen frames 0 and 7 (the t0 branch) on both ranks' slices
              args+=(--image "$(dirname "$S")/../tests/data/conditioning/ref.png" --align 0 --mask-strategy "0;0,0,0,7,1,0") ;;
    esac
    timeout 300 "${M[@]}" -n $n "$S" "${args[@]}" "${split_args[@]}" --save-latents p.safetensors --out-dir o >/dev/null \
      2>p.err || die "mpirun -n $n ${split_args[*]}: $(cat p.err)"
    "$S" "${args[@]}" --save-latents s.safetensors --out-dir o >/dev/null 2>&1 || die "one process failed"
    same p.safetensors s.safetensors 1e-5 ;;
  cp_cache)  # step caching decides on the whole x (before the split): the unsplit model's schedule
    A=(generate "$P" --num-frames 34 --steps 20 --backend cpu --cache teacache:0.5 --out-dir o)
    timeout 300 "${M[@]}" -n 2 "$S" "${A[@]}" --cp 2 --save-latents p.safetensors >p.out 2>p.err || die "$(cat p.err)"
    "$S" "${A[@]}" --gpus 2 --cp 2 --save-latents t.safetensors >t.out 2>t.err || die "$(cat t.err)"
    "$S" "${A[@]}" --save-latents s.safetensors >s.out 2>s.err || die "$(cat s.err)"
    same p.safetensors t.safetensors 0
    sp=$(grep -o "schedule .*" p.err) ss=$(grep -o "schedule .*" s.err)
    [[ -n $sp && $sp == "$ss" && $sp == *C* ]] || die "schedules: '$sp' vs one process '$ss'" ;;
  cp_bad)
    timeout 120 "${M[@]}" -n 2 "$S" generate "$P" "${FAST[@]}" --cp 2 >b.out 2>b.err && die "--cp 2 of 5 latent frames succeeded"
    [[ $(grep -c "^error: " b.err) -eq 1 ]] || die "expected one error line: $(cat b.err)"
    grep -q "^error: --cp 2 must divide the latent frames (5)" b.err || die "unexpected error: $(grep '^error' b.err)" ;;
  bad_split)
    timeout 120 "${M[@]}" -n 3 "$S" generate "$P" "${FAST[@]}" --tp 2 >b.out 2>b.err && die "mpirun -n 3 --tp 2 succeeded"
    n=$(grep -c "^error: " b.err)
    [[ $n -eq 1 ]] || die "expected one error line, got $n: $(cat b.err)"
    grep -q "^error: mpirun -n 3 must equal --tp 2" b.err || die "unexpected error: $(grep '^error' b.err)" ;;
  sigint)
    # Ctrl-C at mpirun: every process stops at the same step (agreed), the finished video is kept,
    # no temporary file is left, nothing hangs.
    "${M[@]}" -n 2 "$S" generate "$P" --steps 30 --backend cpu --tp 2 --num-samples 3 --out-dir o >s.out 2>s.err &
    pid=$!
    for _ in $(seq 1 600); do
      grep -q "Saved to" s.out 2>/dev/null && break
      sleep 0.1
    done
    kill -INT $pid
    for _ in $(seq 1 300); do
      kill -0 $pid 2>/dev/null || break
      sleep 0.1
    done
    kill -0 $pid 2>/dev/null && { kill -KILL $pid; die "mpirun still running 30 s after SIGINT"; }
    wait $pid && die "expected a non-zero exit after SIGINT"
    grep -q "interrupted: 1 of 3 videos saved" s.err || die "no 'interrupted' line from rank 0: $(cat s.err)"
    [[ $(grep -c "interrupted:" s.err) -eq 1 ]] || die "expected one 'interrupted' line (rank 0): $(cat s.err)"
    [[ $(ls o | grep -c '\.mp4$') -eq 1 ]] || die "expected the one finished video: $(ls o)"
    [[ -z $(find o -name '*.tmp.*') ]] || die "temporary files left: $(ls o)" ;;
  rank_fails)
    # An engine converted with --tp 2 whose rank 1 shard is damaged: rank 1 fails while loading,
    # rank 0 would wait for it in the first all-reduce; the whole job must end, with rank 1's error.
    "$S" convert --dit "$(dirname "$S")/../models/tiny/dit" --vae "$(dirname "$S")/../models/tiny/vae" \
      --t5 "$(dirname "$S")/../models/tiny/t5" --tp 2 -o eng -q >/dev/null 2>c.err || die "convert: $(cat c.err)"
    # keep the header (what opening the engine reads on every rank), cut the tensor data
    n=$(od -An -t u8 -N 8 eng/dit/rank1.safetensors | tr -d ' ')
    head -c $((8 + n + 64)) eng/dit/rank1.safetensors >cut && mv cut eng/dit/rank1.safetensors
    timeout 120 "${M[@]}" -n 2 "$S" generate "$P" "${FAST[@]}" -e eng --tp 2 >f.out 2>f.err
    rc=$?
    [[ $rc -ne 0 && $rc -ne 124 ]] || die "expected a non-zero exit without a hang, got $rc: $(cat f.err)"
    grep -q "^error: process 1: .*rank1.safetensors" f.err || die "no error from process 1: $(cat f.err)" ;;
  mixed_shards)
    # Two conversions with --tp 2 of other weights (bf16, f32); the first engine's rank 1 file
    # replaced by the second's: one error line naming the file, before any model loads (processes
    # and threads alike). Converting the same weights again writes the same files.
    T=$(dirname "$S")/../models/tiny
    for e in a:bf16 a2:bf16 b:f32; do
      "$S" convert --dit "$T/dit" --vae "$T/vae" --t5 "$T/t5" --tp 2 --dtype "${e#*:}" -o "eng_${e%%:*}" -q >/dev/null \
        2>c.err || die "convert: $(cat c.err)"
    done
    for r in 0 1; do
      cmp -s eng_a/dit/rank$r.safetensors eng_a2/dit/rank$r.safetensors || die "converting again changed rank$r.safetensors"
    done
    cp eng_b/dit/rank1.safetensors eng_a/dit/rank1.safetensors
    timeout 120 "${M[@]}" -n 2 "$S" generate "$P" "${FAST[@]}" -e eng_a --tp 2 >m.out 2>m.err && die "mixed shards ran"
    [[ $(grep -c "^error: " m.err) -eq 1 ]] || die "expected one error line: $(cat m.err)"
    grep -q "^error: eng_a/dit/rank1.safetensors holds other weights than eng_a/dit/rank0.safetensors" m.err ||
      die "unexpected error: $(grep '^error' m.err)"
    "$S" generate "$P" "${FAST[@]}" -e eng_a --gpus 2 --tp 2 >t.out 2>t.err && die "mixed shards ran as threads"
    grep -q "^error: eng_a/dit/rank1.safetensors holds other weights" t.err || die "threads: $(cat t.err)"
    # the engine as converted runs
    timeout 120 "${M[@]}" -n 2 "$S" generate "$P" "${FAST[@]}" -e eng_b --tp 2 --out-dir o >/dev/null 2>b.err ||
      die "one conversion's shards: $(cat b.err)"
    # processes opening different engines (as two hosts with different copies would): one error
    "$S" convert --dit "$T/dit" --vae "$T/vae" --t5 "$T/t5" --dtype bf16 -o eng_c -q >/dev/null 2>c.err || die "convert c"
    "$S" convert --dit "$T/dit" --vae "$T/vae" --t5 "$T/t5" --dtype f32 -o eng_d -q >/dev/null 2>c.err || die "convert d"
    timeout 120 "${M[@]}" -n 1 "$S" generate "$P" "${FAST[@]}" -e eng_d --cfg-parallel : -n 1 "$S" generate "$P" "${FAST[@]}" \
      -e eng_c --cfg-parallel >d.out 2>d.err && die "two different engines ran"
    [[ $(grep -c "^error: " d.err) -eq 1 ]] || die "expected one error line: $(cat d.err)"
    grep -q "^error: process 1: the engine eng_c here (identity [0-9a-f]*) is not process 0's" d.err ||
      die "unexpected error: $(grep '^error' d.err)" ;;
  bench)
    # `mpirun … stdit bench`: the denoiser split over the processes (the demo model's sizes,
    # synthetic weights) against one device, rank 0 alone reporting; TP 2, then CFG x CP 2.
    B=(bench --backend cpu --dit "$(dirname "$S")/../models/tiny/dit" --preset 144p-34 --no-t5 --no-vae --iters 1)
    within() {  # a timing line: its relative error against one device is a number <= 1e-5
      local err=${1##*rel err vs one device }
      [[ $err =~ ^[0-9.]+([eE][-+]?[0-9]+)?$ ]] || die "$2: rel err '$err' is not a number"
      awk -v e="$err" 'BEGIN { exit !(e + 0 <= 1e-5) }' || die "$2: rel err $err over 1e-5"
    }
    check_bench() {  # n, split flags, the split's name as printed
      local n=$1 name=$3
      timeout 300 "${M[@]}" -n "$n" "$S" "${B[@]}" $2 --json b.json >b.out 2>b.err || die "mpirun -n $n bench $2: $(cat b.err)"
      local line
      line=$(grep "$name, $n processes: " b.out) || die "no timing line for $name: $(cat b.out)"
      [[ $(grep -c "one device: " b.out) -eq 1 ]] || die "expected one baseline line (rank 0 reports): $(cat b.out)"
      within "$line" "$name"
      grep -q '"speedup"' b.json || die "no JSON results: $(cat b.json)"
    }
    check_bench 2 "--tp 2" "tensor parallel 2"
    check_bench 4 "--cp 2 --cfg-parallel" "CFG-parallel x context parallel 2"
    # The same splits as threads of one process: CFG-parallel, CP 2, and both.
    timeout 300 "$S" "${B[@]}" --cp 2 --cfg-parallel >t.out 2>t.err || die "bench as threads: $(cat t.err)"
    for name in "CFG-parallel on 2 devices" "context parallel 2, 2 devices" "CFG-parallel x context parallel 2, 4 devices"; do
      line=$(grep "$name: " t.out) || die "threads: no timing line for $name: $(cat t.out)"
      within "$line" "threads, $name"
    done ;;
  bench_bad)
    timeout 120 "${M[@]}" -n 3 "$S" bench --backend cpu --tp 2 --no-t5 >b.out 2>b.err && die "mpirun -n 3 bench --tp 2 succeeded"
    [[ $(grep -c "^error: " b.err) -eq 1 ]] || die "expected one error line: $(cat b.err)"
    grep -q "^error: bench under mpirun: 3 processes for --tp 2 x --cp 1: run mpirun -n 2" b.err ||
      die "unexpected error: $(grep '^error' b.err)" ;;
  *) die "unknown case" ;;
esac
echo "ok $CASE"
