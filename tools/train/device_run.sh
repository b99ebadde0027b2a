#!/usr/bin/env bash
# One training call on the GPU machine (the `run` tool of this workplace), from the repository
# root; everything comes back under $OUT: the logs, and the checkpoints as ckpt.tar.part-* pieces
# of at most 15 MB (`cat ckpt.tar.part-* | tar xf -` gives demo/{t5,vae,dit}).
#
#   tools/train/device_run.sh scratch [SECONDS]       the whole recipe from scratch, with the fixes
#                                                     found in run 1 (docs/DEMO_MODEL.md): object
#                                                     pixels weighted 10x and their mean colour in the
#                                                     VAE loss, 40 % of each DiT batch at uniform t
#   tools/train/device_run.sh resume [SECONDS] [DIR]  keep DIR's VAE and continue its STDiT3 (DIR
#                                                     holds vae/ and dit/, default out/demo_run1;
#                                                     pass it in `carry`)
#   tools/train/device_run.sh decoder [SECONDS] [DIR] fine-tune DIR's VAE decoders only (encoders
#                                                     frozen, so DIR's STDiT3 stays valid), object
#                                                     pixels and their mean colour weighted
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
    timeout "$budget" python3 tools/train/train.py --out "$work" --obj-w 10 --colour-w 1 --t-uniform-frac 0.4 \
      --vae-2d-iters 3000 --vae-iters 2500 --clips 20000 --dit-iters 8000 --dit-batch 128 --dit-lr 4e-4 \
      --max-seconds-vae-2d 170 --max-seconds-vae 230 --max-seconds-dit $((budget - 490)) --save-every-s 60
    ;;
  resume)
    timeout "$budget" python3 tools/train/train.py --out "$work" --resume "$from" --clips 20000 \
      --dit-iters ${DIT_ITERS:-6500} --dit-batch 128 --dit-lr ${DIT_LR:-2e-4} --t-uniform-frac 0.4 \
      --max-seconds-dit $((budget - 80)) --save-every-s 60
    ;;
  decoder)
    timeout "$budget" python3 tools/train/finetune_decoder.py --ckpt "$from" --out "$work" --device cuda \
      --pool 2000 --iters 4000 --clips 8 --lr 2e-4 --obj-w 10 --colour-w 1 --report-clips 96 --log-every 200 \
      --max-seconds $((budget - 90))
    ;;
  *) echo "usage: $0 scratch|resume|decoder [SECONDS] [DIR]" >&2; exit 2 ;;
esac
echo "training exit status $?"
cp "$work"/*log.txt "$work"/train_args.json "$out"/ 2>/dev/null
tar cf - -C "$(dirname "$work")" "$(basename "$work")" | split -b 15000000 - "$out/ckpt.tar.part-"
ls -la "$out"
