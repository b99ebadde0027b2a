"""Stage 2c of the demo-model recipe: fine-tune the VAE's decoders with the encoders frozen.

    python3 tools/train/finetune_decoder.py --ckpt DIR --out DIR2 [--iters 800] [--device cpu]

DIR holds train.py's output (t5/, vae/, dit/); DIR2 gets the same with vae/ replaced. Only the
temporal VAE's post_quant_conv + decoder and the 2D VAE's post_quant_conv + decoder change, so the
latent space, the latent scale/shift and hence the trained STDiT3 stay valid.

Why: in stage 2 the objects cover ~3 % of the pixels, so a plain pixel loss teaches the
background well and object colours badly (a white ball came back orange). Here the loss weighs
object pixels `--obj-w` times (L1 + MSE), on latents of a fixed pool of rendered clips (the
encoder's posterior means, what the engine decodes), with a little Gaussian noise on the latents
(`--z-noise`, in units of the normalised latent) so the decoder tolerates the denoiser's errors.
Each step decodes `--clips` clips through the temporal decoder and `--frames` random frames of
each through the 2D decoder. Seeded; runs on a CPU in tens of minutes.
"""

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset as D  # noqa: E402
import demo_models as M  # noqa: E402
import pipeline as PL  # noqa: E402
import vae as V  # noqa: E402
import train as TR  # noqa: E402  (its log() and colour_loss)
from train import colour_loss, log  # noqa: E402


@torch.no_grad()
def colour_report(vae, a, dev, seed=4321, n=24):
    """Mean object-colour error (RGB 0-255, Euclidean) of reconstructed single-object clips."""
    rng = np.random.default_rng(seed)
    specs = []
    while len(specs) < n:
        s = D.sample_spec(rng, a.frames)
        if len(s["objects"]) == 1:
            specs.append(s)
    x = D.render(specs, a.size, a.frames, dev)
    y = torch.cat([vae.decode(vae.encode(x[i:i + 4]), a.frames) for i in range(0, n, 4)])
    errs, hits = [], 0
    for s, fx, fy in zip(specs, D.to_uint8(x), D.to_uint8(y)):
        want = D.object_track(fx)["rgb"]
        got = D.object_track(fy)["rgb"]
        errs.append(float(np.sqrt(((want - got) ** 2).sum())) if np.isfinite(got).all() else 441.0)
        hits += int(np.isfinite(got).all() and D.nearest_colour(got) == s["objects"][0]["colour"])
    mse = float(((y.clamp(-1, 1) - x) ** 2).mean())
    return float(np.mean(errs)), hits, n, 10 * np.log10(4.0 / mse)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--pool", type=int, default=480, help="clips encoded once")
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames-per-clip", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--obj-w", type=float, default=10.0)
    ap.add_argument("--colour-w", type=float, default=0.0, help="weight of the objects' mean-colour L1 (train.py)")
    ap.add_argument("--z-noise", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--max-seconds", type=float, default=0, help="stop the steps early after N s (logged)")
    ap.add_argument("--report-clips", type=int, default=24, help="clips for the before/after colour report")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    for part in ("t5", "dit"):  # carried over unchanged (train.py rewrites t5 from its recipe anyway)
        if os.path.abspath(a.ckpt) != os.path.abspath(a.out) and os.path.isdir(os.path.join(a.ckpt, part)):
            shutil.copytree(os.path.join(a.ckpt, part), os.path.join(a.out, part), dirs_exist_ok=True)
    os.makedirs(os.path.join(a.out, "vae"), exist_ok=True)
    TR.LOG = open(os.path.join(a.out, "finetune_log.txt"), "a")
    log("decoder fine-tuning: torch %s, args %s" % (torch.__version__, json.dumps(vars(a))))
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    vae = PL.load_vae(os.path.join(a.ckpt, "vae")).to(dev)
    sp, tv = vae.spatial_vae.module, vae.temporal_vae
    train = list(tv.post_quant_conv.parameters()) + list(tv.decoder.parameters()) + \
        list(sp.post_quant_conv.parameters()) + list(sp.decoder.parameters())
    for p in vae.parameters():
        p.requires_grad_(False)
    for p in train:
        p.requires_grad_(True)
    log("trainable: %d of %d parameters" % (sum(p.numel() for p in train), sum(p.numel() for p in vae.parameters())))
    err, hits, n, psnr = colour_report(vae, a, dev, n=a.report_clips)
    log("before: object colour error %.1f, nearest colour right %d/%d, PSNR %.2f dB" % (err, hits, n, psnr))

    specs = D.sample_specs(a.seed + 1, a.pool, a.frames)
    t0 = time.time()
    vae.eval()
    mbs = vae.spatial_vae.mbs
    vae.spatial_vae.mbs = 1 << 30
    with torch.no_grad():
        z = torch.cat([vae.encode(D.render(specs[i:i + 8], a.size, a.frames, dev)) for i in range(0, a.pool, 8)])
    vae.spatial_vae.mbs = mbs
    log("pool: %d clips encoded in %.1f s" % (a.pool, time.time() - t0))

    opt = torch.optim.AdamW(train, lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
    t0 = time.time()
    acc, step = 0.0, 0
    for step in range(a.iters):
        lr = a.lr * min(1.0, (step + 1) / 50) * (1.0 if step < 0.75 * a.iters else 0.3)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(a.pool, size=a.clips, replace=False)
        sub = [specs[i] for i in idx]
        x = D.render(sub, a.size, a.frames, dev)  # [B, 3, F, S, S]
        zi = z[torch.as_tensor(idx, device=dev)]
        zi = zi + a.z_noise * torch.randn_like(zi)
        xz = tv.decode(zi * vae.scale + vae.shift, a.frames)  # [B, 4, F, h, w]
        fi = torch.as_tensor(np.stack([rng.choice(a.frames, a.frames_per_clip, replace=False) for _ in idx]), device=dev)
        b = torch.arange(a.clips, device=dev)[:, None]
        lat = xz.permute(0, 2, 1, 3, 4)[b, fi].reshape(-1, *xz.shape[1:2], *xz.shape[3:])  # [B*k, 4, h, w]
        tgt = x.permute(0, 2, 1, 3, 4)[b, fi].reshape(-1, 3, a.size, a.size)
        w = D.pixel_weight(x, sub, a.obj_w).permute(0, 2, 1, 3, 4)[b, fi].reshape(-1, 1, a.size, a.size)
        rec = sp.decode(lat / V.SCALING_FACTOR_2D)
        d = rec - tgt
        loss = ((d.abs() + d * d) * w).mean() / w.mean()
        if a.colour_w:
            loss = loss + a.colour_w * colour_loss(rec, tgt, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(train, 1.0)
        opt.step()
        acc = acc + loss.detach()  # read only when logged (no GPU sync per step)
        if (step + 1) % a.log_every == 0 or step + 1 == a.iters:
            log("step %4d/%d  weighted loss %.5f  lr %.1e  (%.2f s/it)" % (step + 1, a.iters, float(acc) / a.log_every, lr,
                                                                           (time.time() - t0) / (step + 1)))
            acc = 0.0
        if (step + 1) % 200 == 0 or step + 1 == a.iters:
            M.write_vae(vae, os.path.join(a.out, "vae"), {"decoder_finetune_steps": str(step + 1)})
        if a.max_seconds and time.time() - t0 > a.max_seconds:
            log("time budget %.0f s reached after %d steps (asked %d)" % (a.max_seconds, step + 1, a.iters))
            break
    vae.eval()
    err, hits, n, psnr = colour_report(vae, a, dev, n=a.report_clips)
    log("after: object colour error %.1f, nearest colour right %d/%d, PSNR %.2f dB" % (err, hits, n, psnr))
    M.write_vae(vae, os.path.join(a.out, "vae"), {"decoder_finetune_steps": str(step + 1)})
    log("wrote %s" % os.path.join(a.out, "vae"))


if __name__ == "__main__":
    main()
