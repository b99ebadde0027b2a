"""Train the embedded demo model end to end: T5 (frozen random) -> VAE -> STDiT3.

    python3 tools/train/train.py --out DIR [--device cuda] [iteration counts, see --help]

Writes Hugging Face-layout model directories that `stdit convert` reads, and a log:

    DIR/t5/   config.json, model.safetensors, spiece.model   T5-v1.1 encoder, recipe weights
    DIR/vae/  config.json, model.safetensors                 Open-Sora VAE v1.2 structure
    DIR/dit/  config.json, model.safetensors                 STDiT3 (EMA weights)
    DIR/train_log.txt, DIR/train_args.json

Stages (docs/DEMO_MODEL.md):
  1. T5: frozen, splitmix64-v1 recipe weights (demo_models.t5_state_dict).
  2. VAE, as an autoencoder on rendered clips (dataset.py):
       a. the 2D VAE alone on frames;
       b. 2D + temporal VAE together on whole 17-frame clips;
     L1 + MSE on pixels (object pixels weighted --obj-w times), with --colour-w the L1 of the
     objects' mean colour, MSE between the temporal VAE's
     output and its input (2D latents), and a small KL on both posteriors (sampled while
     training; the engine uses the means).
     Then the latent scale/shift: per-channel std/mean of the encoded clips (bf16-representable).
  3. STDiT3 with Open-Sora 1.2's rectified-flow objective (RFLOW.training_losses):
       t = sigmoid(N(0, 1)) * 1000, then timestep_transform for the clip's size and length;
       x_t = (1 - t/1000) x_0 + (t/1000) noise; loss = MSE(model(x_t, t)[:, :4], x_0 - noise);
     x_0 = the VAE latents ((z - shift) / scale) of pre-rendered clips; captions prepared as
     `stdit generate` does (" aesthetic score: 6.5." appended, cleaned, T5), fps 24, height and
     width the clip's; captions dropped to the null embedding (y_embedding, fixed) with p = 0.1.
     EMA of the weights (decay 0.999 after warm-up) is what is written. --t-uniform-frac F draws
     a share F of each batch at uniform t instead (Open-Sora's shift pushes t down at 128 px, so
     the first sampling steps, near t = 1000, are otherwise rarely trained).

--resume DIR keeps DIR's VAE (stage 2 skipped) and starts the STDiT3 from DIR's weights.

Everything is seeded (--seed); the iteration counts, not the wall clock, decide the result
(--max-seconds only stops a stage early as a safety net, and the log says so).
"""

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset as D  # noqa: E402
import demo_models as M  # noqa: E402
import pipeline as PL  # noqa: E402  (tools/reference, on sys.path via demo_models)
import vae as V  # noqa: E402

warnings.filterwarnings("ignore", message="To copy construct from a tensor")

LOG = None
T_START = time.time()


def log(*a):
    s = "[%7.1f s] " % (time.time() - T_START) + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        LOG.write(s + "\n")
        LOG.flush()


def device_ctx(dev):
    """Tensors the reference code makes without a device (sinusoids, RoPE positions, positional
    embeddings) land on `dev` (torch >= 2.0); on the CPU nothing is needed."""
    if dev.type != "cpu" and hasattr(torch, "device") and hasattr(torch.device, "__enter__"):
        return dev
    return contextlib.nullcontext()


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def lr_at(step, total, base, warmup):
    if step < warmup:
        return base * (step + 1) / warmup
    decay_from = int(total * 0.75)
    if step < decay_from:
        return base
    return base * (1.0 - 0.9 * (step - decay_from) / max(1, total - decay_from))


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------

def posterior(moments):
    mean, logvar = moments.chunk(2, dim=1)
    logvar = logvar.clamp(-30.0, 20.0)
    z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
    return z, kl


def pixel_loss(rec, target, w):
    """L1 + MSE, weighted per pixel by w (broadcast over channels), normalised by the weights."""
    d = rec - target
    return ((d.abs() + d * d) * w).mean() / w.mean()


def colour_loss(rec, target, w):
    """L1 between the mean colours of each frame's object pixels (where w > 1) in `rec` and
    `target` ([N, 3, H, W]); objects are ~3 % of a frame, so a pixel loss barely sees a hue shift."""
    m = (w > 1).to(rec.dtype)
    n = m.sum((2, 3)).clamp(min=1.0)
    return (((rec - target) * m).sum((2, 3)) / n).abs().mean()


def vae_step_2d(vae, frames, w, kl_w, colour_w=0.0):
    """frames [N, 3, H, W], pixel weights w [N, 1, H, W] -> loss terms of the 2D VAE alone."""
    sp = vae.spatial_vae.module
    z, kl = posterior(sp.quant_conv(sp.encoder(frames)))
    rec = sp.decode(z)
    pix = pixel_loss(rec, frames, w)
    col = colour_loss(rec, frames, w)
    return pix + colour_w * col + kl_w * kl, {"pix": pix, "col": col, "kl2": kl}


def vae_step_full(vae, x, w, kl_w, lat_w, colour_w=0.0):
    """x [B, 3, F, H, W] (one temporal chunk), pixel weights w [B, 1, F, H, W] -> loss terms of
    2D + temporal VAE together, wired as vae.py's encode/decode but with sampled posteriors."""
    sp, tv = vae.spatial_vae.module, vae.temporal_vae
    b, c, t, h, w_ = x.shape
    frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w_)
    z2, kl2 = posterior(sp.quant_conv(sp.encoder(frames)))
    xz = (z2 * V.SCALING_FACTOR_2D).reshape(b, t, *z2.shape[1:]).permute(0, 2, 1, 3, 4)
    p = tv.front_pad(t)
    zt, klt = posterior(tv.quant_conv(tv.encoder(F.pad(xz, (0, 0, 0, 0, p, 0)))))
    xz_rec = tv.decode(zt, t)  # [b, 4, t, h/8, w/8]
    lat = F.mse_loss(xz_rec, xz.detach()) / (xz.detach().var() + 1e-6)
    rec = sp.decode(xz_rec.permute(0, 2, 1, 3, 4).reshape(b * t, *xz_rec.shape[1:2], *xz_rec.shape[3:])
                    / V.SCALING_FACTOR_2D)
    w2 = w.permute(0, 2, 1, 3, 4).reshape(b * t, 1, h, w_)
    pix = pixel_loss(rec, frames, w2)
    col = colour_loss(rec, frames, w2)
    return (pix + colour_w * col + lat_w * lat + kl_w * (kl2 + klt),
            {"pix": pix, "col": col, "lat": lat, "kl2": kl2, "klt": klt})


def train_vae(vae, a, dev, rng):
    params = list(vae.parameters())
    opt = torch.optim.AdamW(params, lr=a.vae_lr, betas=(0.9, 0.99), weight_decay=0.0)
    phases = [("2d", a.vae_2d_iters, a.max_seconds_vae_2d, a.vae_2d_iters),
              ("full", a.vae_iters, a.max_seconds_vae, a.vae_stop_at or a.vae_iters)]
    done = {}
    for name, iters, budget, stop_at in phases:
        t0 = time.time()
        acc, n_acc, step = {}, 0, 0
        for step in range(min(iters, stop_at)):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, iters, a.vae_lr, 100)
            if name == "2d":
                specs = D.sample_specs(int(rng.integers(2 ** 62)), a.vae_2d_clips, a.frames)
                clips = D.render(specs, a.size, a.frames, dev)  # [n, 3, F, S, S]
                fi = torch.as_tensor(rng.integers(a.frames, size=(a.vae_2d_clips, a.vae_2d_frames)), device=dev)
                wts = D.pixel_weight(clips, specs, a.obj_w)
                frames = torch.stack([clips[i, :, fi[i]] for i in range(a.vae_2d_clips)])  # [n, 3, k, S, S]
                frames = frames.permute(0, 2, 1, 3, 4).reshape(-1, 3, a.size, a.size)
                wts = torch.stack([wts[i, :, fi[i]] for i in range(a.vae_2d_clips)])
                wts = wts.permute(0, 2, 1, 3, 4).reshape(-1, 1, a.size, a.size)
                loss, parts = vae_step_2d(vae, frames, wts, a.kl_w, a.colour_w)
            else:
                specs = D.sample_specs(int(rng.integers(2 ** 62)), a.vae_clips, a.frames)
                clips = D.render(specs, a.size, a.frames, dev)
                loss, parts = vae_step_full(vae, clips, D.pixel_weight(clips, specs, a.obj_w), a.kl_w, a.lat_w,
                                             a.colour_w)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            for k, v in parts.items():
                acc[k] = acc.get(k, 0.0) + v.detach()
            n_acc += 1
            if (step + 1) % a.log_every == 0 or step + 1 == min(iters, stop_at):
                log("vae %-4s step %5d/%d  " % (name, step + 1, iters)
                    + "  ".join("%s %.5f" % (k, float(v) / n_acc) for k, v in acc.items())
                    + "  (%.3f s/it)" % ((time.time() - t0) / (step + 1)))
                acc, n_acc = {}, 0
            if budget and time.time() - t0 > budget:
                log("vae %s: time budget %.0f s reached after %d steps (asked %d)" % (name, budget, step + 1, iters))
                break
        sync(dev)
        done[name] = step + 1
        log("vae %s: %d steps in %.1f s" % (name, step + 1, time.time() - t0))
    return done


@torch.no_grad()
def encode_clips(vae, specs, a, dev, chunk):
    """Posterior means of the clips, (z - shift) / scale: [n, 4, T, S/8, S/8] float32 on dev."""
    vae.eval()
    mbs = vae.spatial_vae.mbs
    vae.spatial_vae.mbs = 1 << 30  # one 2D call per chunk (only batching changes)
    out = []
    for i in range(0, len(specs), chunk):
        out.append(vae.encode(D.render(specs[i:i + chunk], a.size, a.frames, dev)))
    vae.spatial_vae.mbs = mbs
    return torch.cat(out)


@torch.no_grad()
def vae_recon_report(vae, a, dev, seed):
    """Reconstruction PSNR of 16 fresh clips through the engine's path (encode means, decode)."""
    vae.eval()
    specs = D.sample_specs(seed, 16, a.frames)
    x = D.render(specs, a.size, a.frames, dev)
    z = vae.encode(x)
    y = vae.decode(z, a.frames)
    mse = float(((y.clamp(-1, 1) - x) ** 2).mean())
    psnr = 10 * math.log10(4.0 / max(mse, 1e-12))
    log("vae reconstruction of 16 new clips: PSNR %.2f dB (mse %.6f)" % (psnr, mse))
    return psnr


# ------------------------------------------------------------------------------------------------
# STDiT3
# ------------------------------------------------------------------------------------------------

def train_dit(dit, lat, emb, masks, cap_idx, a, dev):
    N = lat.shape[0]
    L = emb.shape[1]
    params = [p for p in dit.parameters() if p.requires_grad]
    dit.rope.freqs.requires_grad_(False)
    params = [p for p in params if p is not dit.rope.freqs]
    opt = torch.optim.AdamW(params, lr=a.dit_lr, betas=(0.9, 0.999), weight_decay=0.0)
    ema = copy.deepcopy(dit).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    ema_p = [p for p in ema.parameters()]
    src_p = [p for p in dit.parameters()]
    gen = torch.Generator(device="cpu").manual_seed(a.seed + 303)
    y_null = dit.y_embedder.y_embedding[:L].detach()  # [L, Cc], fixed
    fps = torch.tensor([M.FPS], device=dev)
    hw = torch.tensor([float(a.size)])  # CPU: the model reads it with float()
    nf = torch.full((a.dit_batch,), float(a.frames))
    hh = torch.full((a.dit_batch,), float(a.size))
    t0 = time.time()
    acc, n_acc, step = torch.zeros((), device=dev), 0, 0
    last_save = time.time()
    dit.train()
    for step in range(min(a.dit_iters, a.dit_stop_at or a.dit_iters)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.dit_iters, a.dit_lr, 250)
        B = a.dit_batch
        idx = torch.randint(N, (B,), generator=gen).to(dev)
        drop = (torch.rand(B, generator=gen) < a.caption_dropout).to(dev)
        t = torch.sigmoid(torch.randn(B, generator=gen)) * PL.NUM_TIMESTEPS  # logit-normal
        t = PL.timestep_transform(t, hh, hh, nf)
        if a.t_uniform_frac > 0:  # optional: part of the batch at uniform t (covers t near 1000)
            u = torch.rand(B, generator=gen) < a.t_uniform_frac
            t = torch.where(u, torch.rand(B, generator=gen) * PL.NUM_TIMESTEPS, t)
        t = t.to(dev)
        x0 = lat[idx]
        ci = cap_idx[idx]
        y = torch.where(drop[:, None, None], y_null[None], emb[ci])[:, None]  # [B, 1, L, Cc]
        m = masks[ci]
        noise = torch.randn_like(x0)
        tt = (t / PL.NUM_TIMESTEPS)[:, None, None, None, None]
        xt = (1 - tt) * x0 + tt * noise
        with device_ctx(dev):
            out = dit(xt, t, y, mask=m, fps=fps, height=hw, width=hw)
        loss = F.mse_loss(out[:, :4], x0 - noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema_decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_p, d)
            torch._foreach_add_(ema_p, src_p, alpha=1.0 - d)
        acc += loss.detach()
        n_acc += 1
        if (step + 1) % a.log_every == 0 or step + 1 == min(a.dit_iters, a.dit_stop_at or a.dit_iters):
            log("dit step %6d/%d  loss %.5f  lr %.2e  (%.4f s/it)"
                % (step + 1, a.dit_iters, float(acc) / n_acc, opt.param_groups[0]["lr"], (time.time() - t0) / (step + 1)))
            acc.zero_()
            n_acc = 0
        if a.save_every_s and time.time() - last_save > a.save_every_s:
            M.write_dit(ema, os.path.join(a.out, "dit"), {"note": "partial: step %d" % (step + 1)})
            last_save = time.time()
        if a.max_seconds_dit and time.time() - t0 > a.max_seconds_dit:
            log("dit: time budget %.0f s reached after %d steps (asked %d)" % (a.max_seconds_dit, step + 1, a.dit_iters))
            break
    sync(dev)
    log("dit: %d steps in %.1f s" % (step + 1, time.time() - t0))
    return ema, step + 1


@torch.no_grad()
def dit_eval_loss(model, lat, emb, masks, cap_idx, a, dev, n=512, seed=7):
    """RF loss of `model` at fixed t values, n fixed (clip, noise) pairs each."""
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    N = lat.shape[0]
    out = {}
    hw = torch.tensor([float(a.size)])
    fps = torch.tensor([M.FPS], device=dev)
    for tv in (50, 200, 400, 600, 800, 950, 1000):
        idx = torch.randint(N, (n,), generator=gen).to(dev)
        x0 = lat[idx]
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.full((n,), float(tv), device=dev)
        xt = (1 - tv / 1000) * x0 + (tv / 1000) * noise
        with device_ctx(dev):
            o = model(xt, t, emb[cap_idx[idx]][:, None], mask=masks[cap_idx[idx]], fps=fps, height=hw, width=hw)
        out[tv] = float(F.mse_loss(o[:, :4], x0 - noise))
    return out


# ------------------------------------------------------------------------------------------------

def main():
    global LOG
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda or cpu")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--size", type=int, default=128, help="clip height = width, pixels")
    ap.add_argument("--frames", type=int, default=17, help="clip length (17 = one temporal-VAE chunk)")
    ap.add_argument("--vae-2d-iters", type=int, default=1500)
    ap.add_argument("--vae-2d-clips", type=int, default=16)
    ap.add_argument("--vae-2d-frames", type=int, default=4, help="frames taken from each clip")
    ap.add_argument("--vae-iters", type=int, default=1500)
    ap.add_argument("--vae-clips", type=int, default=6)
    ap.add_argument("--vae-lr", type=float, default=5e-4)
    ap.add_argument("--kl-w", type=float, default=1e-4)
    ap.add_argument("--lat-w", type=float, default=0.1)
    ap.add_argument("--obj-w", type=float, default=1.0,
                    help="VAE pixel-loss weight of object pixels (1: plain L1 + MSE; the shipped model used 10)")
    ap.add_argument("--colour-w", type=float, default=0.0,
                    help="weight of the objects' mean-colour L1 in the VAE loss (needs --obj-w > 1 to find the objects)")
    ap.add_argument("--clips", type=int, default=24000, help="clips encoded once for the DiT")
    ap.add_argument("--encode-chunk", type=int, default=96)
    ap.add_argument("--dit-iters", type=int, default=6000)
    ap.add_argument("--dit-batch", type=int, default=256)
    ap.add_argument("--dit-lr", type=float, default=5e-4)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--caption-dropout", type=float, default=0.1)
    ap.add_argument("--t-uniform-frac", type=float, default=0.0,
                    help="share of each DiT batch drawn at uniform t instead of Open-Sora's logit-normal + shift")
    ap.add_argument("--resume", help="a previous run's output: keep its VAE, start the DiT from its weights")
    ap.add_argument("--vae-stop-at", type=int, default=0, help="end stage 2b after N steps (schedule of --vae-iters)")
    ap.add_argument("--dit-stop-at", type=int, default=0, help="end the DiT after N steps (schedule of --dit-iters)")
    ap.add_argument("--max-seconds-vae-2d", type=float, default=0)
    ap.add_argument("--max-seconds-vae", type=float, default=0)
    ap.add_argument("--max-seconds-dit", type=float, default=0)
    ap.add_argument("--save-every-s", type=float, default=0, help="also write the EMA DiT every N s")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    LOG = open(os.path.join(a.out, "train_log.txt"), "a")
    with open(os.path.join(a.out, "train_args.json"), "w") as f:
        json.dump(vars(a), f, indent=2)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                       ("cpu" if a.device == "auto" else a.device))
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    log("stdit demo-model training: torch %s, numpy %s, python %s, device %s%s"
        % (torch.__version__, np.__version__, platform.python_version(), dev,
           (" (" + torch.cuda.get_device_name(0) + ")") if dev.type == "cuda" else ""))
    log("args " + json.dumps(vars(a)))

    # ---- 0. self-checks
    err = M.check_batched_text_path()
    log("check: batched caption path == reference STDiT3 (max rel diff %.2e)" % err)
    tok = M.CaptionTokenizer()
    if tok.check([s["caption"] for s in D.sample_specs(a.seed + 99, 200, a.frames)]):
        log("check: cached caption ids == text_prep (clean + tokenize) on 200 captions")
    else:
        log("no sentencepiece here: caption ids from caption_word_ids.json (checked where it was made)")

    # ---- 1. T5 (frozen, recipe weights)
    t5 = M.build_t5()
    M.write_t5(t5, os.path.join(a.out, "t5"), {"recipe": "splitmix64-v1", "seed": str(M.T5_SEED)})
    t5 = t5.to(dev)
    log("t5: %d parameters (frozen, splitmix64-v1 seed %d)" % (sum(p.numel() for p in t5.parameters()), M.T5_SEED))

    # ---- 2. VAE (or the one of an earlier run, with --resume)
    if a.resume:
        vae = PL.load_vae(os.path.join(a.resume, "vae")).to(dev).eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        vae_steps = {"2d": 0, "full": 0}
        log("vae: from %s (scale %s, shift %s); not trained here" % (
            a.resume, vae.scale.reshape(-1).tolist(), vae.shift.reshape(-1).tolist()))
        psnr = vae_recon_report(vae, a, dev, a.seed + 13)
        if os.path.abspath(a.resume) != os.path.abspath(a.out):
            M.write_vae(vae, os.path.join(a.out, "vae"), {"from": a.resume})
    else:
        torch.manual_seed(a.seed + 1)
        vae = M.build_vae().to(dev).train()
        log("vae: %d parameters" % sum(p.numel() for p in vae.parameters()))
        rng = np.random.default_rng(a.seed + 11)
        vae_steps = train_vae(vae, a, dev, rng)
        vae.eval()
        for p in vae.parameters():
            p.requires_grad_(False)
        stat_specs = D.sample_specs(a.seed + 12, 512, a.frames)
        z = encode_clips(vae, stat_specs, a, dev, a.encode_chunk)  # scale 1, shift 0: raw means
        mean = z.mean(dim=(0, 2, 3, 4)).tolist()
        std = z.std(dim=(0, 2, 3, 4)).tolist()
        shift = [M.bf16_round(v) for v in mean]
        scale = [M.bf16_round(v) for v in std]
        M.set_vae_norm(vae, scale, shift)
        log("vae latents: mean %s std %s -> shift %s scale %s" % (
            ["%.4f" % v for v in mean], ["%.4f" % v for v in std], shift, scale))
        psnr = vae_recon_report(vae, a, dev, a.seed + 13)
        M.write_vae(vae, os.path.join(a.out, "vae"),
                    {"steps_2d": str(vae_steps["2d"]), "steps_full": str(vae_steps["full"])})

    # ---- 3. DiT data: latents of pre-rendered clips, caption embeddings
    t0 = time.time()
    specs = D.sample_specs(a.seed + 21, a.clips, a.frames)
    caps = sorted({s["caption"] for s in specs})
    cap_of = {c: i for i, c in enumerate(caps)}
    cap_idx = torch.tensor([cap_of[s["caption"]] for s in specs], dtype=torch.int64).to(dev)
    ids, masks = tok.batch(caps)
    L = int(masks.sum(1).max())
    ids, masks = ids[:, :L].to(dev), masks[:, :L].to(dev)
    with torch.no_grad(), device_ctx(dev):
        emb = torch.cat([t5(ids[i:i + 1024], masks[i:i + 1024]) for i in range(0, len(caps), 1024)])
    log("captions: %d clips, %d distinct captions, at most %d tokens, T5 in %.1f s" % (len(specs), len(caps), L, time.time() - t0))
    t0 = time.time()
    lat = encode_clips(vae, specs, a, dev, a.encode_chunk)
    sync(dev)
    log("latents: %s in %.1f s, mean %.4f std %.4f" % (list(lat.shape), time.time() - t0, float(lat.mean()), float(lat.std())))
    del specs

    # ---- 4. STDiT3
    torch.manual_seed(a.seed + 31)
    dit = M.build_dit()
    if a.resume:  # continue from an earlier run's (EMA) weights; fresh optimizer and schedule
        dit = PL.load_dit(os.path.join(a.resume, "dit"))
        log("dit: initialised from %s" % os.path.join(a.resume, "dit"))
    dit = M.to_train_dit(dit).to(dev)
    log("dit: %d parameters, config %s" % (sum(p.numel() for p in dit.parameters()), json.dumps(M.DIT_CFG)))
    ema, dit_steps = train_dit(dit, lat, emb, masks, cap_idx, a, dev)
    ev = dit_eval_loss(ema, lat, emb, masks, cap_idx, a, dev)
    log("dit EMA loss by t on training clips: " + "  ".join("t=%d %.4f" % kv for kv in ev.items()))
    M.write_dit(M.to_ref_dit(ema.cpu()), os.path.join(a.out, "dit"), {"steps": str(dit_steps)})
    log("done: vae %s steps, dit %d steps, vae PSNR %.2f dB; wrote %s" % (vae_steps, dit_steps, psnr, a.out))


if __name__ == "__main__":
    main()
