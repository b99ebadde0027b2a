#!/usr/bin/env python3
"""PyTorch baseline for `stdit bench`: our reference STDiT3 (tools/reference/stdit3.py, written
from the spec like Open-Sora's eager code) in bf16 on the GPU, attention through PyTorch's
scaled_dot_product_attention (flash/cuDNN kernels, as Open-Sora's flash-attn path), same shapes
and FLOP model as `stdit bench`. Prints one line per preset: ms per denoiser call (CFG batch 2).

Run on the GPU machine: python3 bench/torch_baseline.py [--presets 240p-2s 480p-4s 720p-4s]
"""
import argparse
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "reference"))
import stdit3 as ref  # noqa: E402

RES = {"144p": (144, 256), "240p": (240, 426), "360p": (360, 640), "480p": (480, 854), "720p": (720, 1280)}
DUR = {"2s": 51, "4s": 102, "8s": 204, "16s": 408}


def latent_frames(F_):
    return 5 * (F_ // 17) + ((F_ % 17) + 3) // 4


def flops(T, S, C=1152, depth=28):
    B, N = 2, T * S
    return 2 * 14 * C * C * 2 * depth * B * N + depth * 4 * B * T * S * S * C + depth * 4 * B * S * T * T * C


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["240p-2s", "480p-4s", "720p-4s"])
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    torch.set_default_device("cuda")
    ref.attention = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    cfg = ref.STDiT3Config()  # real sizes
    model = ref.STDiT3(cfg).to(torch.bfloat16).eval()
    print("torch %s, %s, STDiT3-XL/2 bf16, %d params" % (torch.__version__, torch.cuda.get_device_name(),
                                                          sum(p.numel() for p in model.parameters())))
    for preset in a.presets:
        r, d = preset.split("-")
        H, W = RES[r]
        F_ = DUR.get(d) or int(d)
        T, h, w = latent_frames(F_), H // 8, W // 8
        S = ((h + 1) // 2) * ((w + 1) // 2)
        x = torch.randn(2, 4, T, h, w, dtype=torch.bfloat16)
        t = torch.full((2,), 900.0, dtype=torch.bfloat16)
        y = torch.randn(2, 1, 300, 4096, dtype=torch.bfloat16)
        mask = torch.zeros(1, 300, dtype=torch.long)
        mask[:, :40] = 1
        kw = dict(mask=mask, fps=torch.tensor([24.0]), height=torch.tensor([float(H)]), width=torch.tensor([float(W)]))
        # autocast: the reference keeps some embeddings in f32 (as Open-Sora upcasts them); matmuls
        # run in bf16 as in Open-Sora's bf16 inference.
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, t, y, **kw)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(a.iters):
                model(x, t, y, **kw)
            e1.record()
            torch.cuda.synchronize()
        ms = e0.elapsed_time(e1) / a.iters
        print("torch-baseline %-8s %dx%d %d frames tokens/sample %d: %.1f ms/step, %.1f TFLOP/s, peak %.1f GiB"
              % (preset, W, H, F_, T * S, ms, flops(T, S) / (ms * 1e-3) / 1e12,
                 torch.cuda.max_memory_allocated() / 2**30))


if __name__ == "__main__":
    main()
