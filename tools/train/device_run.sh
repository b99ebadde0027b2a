#!/usr/bin/env bash
# One training call on the GPU machine (the `run` tool of this workplace), from the repository
# root; everything comes back under $OUT: the logs, and the checkpoints as ckpt.tar.part-* pieces
# of at most 15 MB (`cat ckpt.tar.part-* | tar xf -` gives demo/{t5,vae,dit}).
#
#   tools/train/device_run.sh scratch [SECONDS]       the whole recipe from scratch, with the fixes
#                                                     found in run 1 (docs/DEMO_MODEL.md): object
#                                                     pixels weighted 10x in the VAE loss, 30 % of
#                                                     each DiT batch at uniform t
#   tools/train/device_run.sh resume [SECONDS] [DIR]  keep DIR's VAE and continue its STDiT3 (DIR
#                                                     holds vae/ and dit/, default out/demo_run1;
#                                                     pass it in `carry`)
#
# SECONDS (default 480) bounds the training; leave ~40 s of the call for packing and transfer.
set -uo pipefail
mode=${1:-scratch}
budget=${2:-480}
from=${3:-out/demo_run1}
out=${OUT:-/tmp/out}
work=/tmp/demo
rm -rf "$work" && mkdir -p "$work" "$out"
export PYTHONUNBUFFERED=1
case "$mode" in
  scratch)
    timeout "$budget" python3 tools/train/train.py --out "$work" --obj-w 10 --t-uniform-frac 0.3 \
      --vae-2d-iters 1500 --vae-iters 1200 --clips 20000 --dit-iters 4500 --dit-batch 128 --dit-lr 4e-4 \
      --max-seconds-vae-2d 85 --max-seconds-vae 95 --max-seconds-dit $((budget - 260)) --save-every-s 60
    ;;
  resume)
    timeout "$budget" python3 tools/train/train.py --out "$work" --resume "$from" --clips 20000 \
      --dit-iters 6000 --dit-batch 128 --dit-lr 2e-4 --t-uniform-frac 0.3 \
      --max-seconds-dit $((budget - 80)) --save-every-s 60
    ;;
  *) echo "usage: $0 scratch|resume [SECONDS] [DIR]" >&2; exit 2 ;;
esac
echo "training exit status $?"
cp "$work"/*log.txt "$work"/train_args.json "$out"/ 2>/dev/null
tar cf - -C "$(dirname "$work")" "$(basename "$work")" | split -b 15000000 - "$out/ckpt.tar.part-"
ls -la "$out"
