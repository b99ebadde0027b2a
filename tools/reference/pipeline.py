"""Independent PyTorch reference of Open-Sora 1.2 text-to-video, end to end (CPU, float32).

Written from shared/spec/architecture.md §1 and §8 and seed_system.md §11/§15, and checked
against Open-Sora v1.2.0 (`scripts/inference.py`, `opensora/schedulers/rf/__init__.py`
`RFLOW.sample`, `rectified_flow.py` `timestep_transform`, `opensora/utils/inference_utils.py`
`prepare_multi_resolution_info` / `apply_mask_strategy`, `opensora/datasets/utils.py`
`save_sample`). It only wires together the existing reference pieces:

    text_prep.py  append_scores + clean (ftfy_lite) + HF-Unigram tokenize to 300
    t5.py         T5 encoder                               -> y_cond [P, 1, 300, Cc]
    stdit3.py     STDiT3 denoiser (y_null = its y_embedding)
    vae.py        Open-Sora VAE v1.2 decode
    philox.py     the engine's noise convention (step noise when a step re-noises frames)

Conditioning (references, mask strategies, loops) is conditioning.py, built on rflow_sample.

What `generate()` does, for P prompts and given initial noise z [P, 4, T, Hl, Wl]:

    text     prepared_p = clean(append_scores(prompt_p, aes, flow, camera_motion), ftfy_lite)
             ids, mask [P, 300] int64 (mask 1 on the text tokens and EOS)
             y_cond = T5(ids, mask)[:, None]                       [P, 1, 300, Cc]
             y_null = dit.y_embedder.y_embedding[None, None] x P    [P, 1, 300, Cc]
             y = cat([y_cond, y_null])                              [2P, 1, 300, Cc]
    scalars  height, width, num_frames, fps: float32 tensors [P] (as prepare_multi_resolution_info;
             fps = 120 when num_frames == 1). The model uses only the first entry of height/width.
    times    t_i = float32((1 - i/steps) * 1000) (the product is a Python double), i = 0..steps-1,
             then t'_i = timestep_transform(t_i) (float32 tensors, see below)
    loop     x_mask_i = (1000 * mask_frames >= t'_i)  [P, T], with mask_frames = 1.0 (no references),
             i.e. True unless t'_i > 1000 (see NOTE below);  repeated to [2P, T]
             x0 = z
             add = x_mask_i & ~noise_added  (noise_added starts as mask_frames == 1)
             if add.any():  eps = step_noise(i);  tp = 1 - t'_i / 1000  (t'/1000 then 1 - ., float32)
                            z = where(add, tp * x0 + (1 - tp) * eps, x0)   per frame
             noise_added = x_mask_i
             pred  = dit(cat([z, z]), cat([t'_i, t'_i]), y, mask, x_mask, fps, height, width)[:, 0:4]
             cond, uncond = pred[:P], pred[P:]
             v  = uncond + cfg * (cond - uncond)
             dt = (t'_i - t'_{i+1}) / 1000   (i < steps-1),   t'_last / 1000  (last step)
             z  = z + v * dt
             z  = where(x_mask_i, z, x0)
    decode   video = vae.decode(z, num_frames)  [P, 3, F, H, W] float32, not clamped
    frames   uint8 [P, F, H, W, 3] = save_sample's conversion (`to_uint8`)

timestep_transform (float32 throughout; every line one rounded float32 op, in this order):

    tau   = t / 1000
    res   = height * width
    rs    = sqrt(res / 262144)
    n     = 1                      if num_frames == 1
            floor(num_frames / 17) * 5   otherwise   (torch float floor_divide, then * 5)
    rt    = sqrt(n / 1)
    ratio = (rs * rt) * 1.0
    new   = (ratio * tau) / (1 + ((ratio - 1) * tau))
    t'    = new * 1000

NOTE (Open-Sora behaviour reproduced here): the sampler always has a frame mask (all 1.0 for
text-to-video), so x_mask = (1000.0 >= t'_i). For ratio >= 1, t'_0 is exactly 1000 in float32
(ratio - 1 and 1 + (ratio - 1) are exact), so x_mask is all True and the noise-adding branch
never fires for text-to-video. For ratio < 1 (tiny sizes, e.g. 144p images, 24x40 with F = 1
or F = 34) t'_0 can round to 1000.0001: then x_mask is all False at step 0, the model uses the
t0 (timestep 0) modulation everywhere, the step leaves z unchanged AND resets noise_added to
all False, so step 1 re-noises every frame: z = tp * z + (1 - tp) * eps with fresh noise eps
and tp = 1 - t'_1 / 1000 (Open-Sora's add_noise). Such runs need a step_noise source (Open-Sora
draws randn_like at every step and uses it only then). 24x40 with F = 17 has t'_0 = 999.99988:
no quirk. For 2 <= num_frames <= 16, n = 0, ratio = 0 and t'_0 = 0/0 = NaN in Open-Sora.
With references (conditioning.py) frames with mask value m < 1 are frozen (z kept) while
t'_i > 1000 m and re-noised once at the first step with t'_i <= 1000 m (m = 0: frozen throughout).

Usage:
    from pipeline import generate
    out = generate(["a red ball"], noise, 24, 40, 17, steps=3, cfg_scale=7.0,
                   dit_dir=..., t5_dir=..., vae_dir=..., record={})
"""

import json
import math
import os
import sys
from collections import OrderedDict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import text_prep  # noqa: E402
from safetensors_io import load_torch  # noqa: E402
from stdit3 import STDiT3, STDiT3Config, rope_default_freqs  # noqa: E402
from t5 import T5Config  # noqa: E402
from t5 import load_model as t5_load_model  # noqa: E402
from vae import load_model as vae_load_model  # noqa: E402

NUM_TIMESTEPS = 1000
IMG_FPS = 120  # fps used as the model condition when num_frames == 1
BASE_RESOLUTION = 512 * 512
BASE_NUM_FRAMES = 1


# ----------------------------------------------------------------------------------------------
# Loading the three models from their directories
# ----------------------------------------------------------------------------------------------

def load_dit(dit_dir):
    """STDiT3 from a HF-layout dir: config.json + model.safetensors (rope.freqs optional)."""
    with open(os.path.join(dit_dir, "config.json")) as f:
        cfg = STDiT3Config.from_hf_dict(json.load(f))
    sd = load_torch(os.path.join(dit_dir, "model.safetensors"))
    if "rope.freqs" not in sd:
        sd["rope.freqs"] = rope_default_freqs(cfg.head_dim)
    model = STDiT3(cfg)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_t5(t5_dir):
    """T5 encoder from a HF dir: config.json + model.safetensors or sharded *.safetensors + index."""
    cfg = T5Config.from_json(os.path.join(t5_dir, "config.json"))
    index = os.path.join(t5_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    sd = OrderedDict()
    for name in files:
        sd.update(load_torch(os.path.join(t5_dir, name)))
    return t5_load_model(cfg, sd)


def load_vae(vae_dir):
    return vae_load_model(vae_dir)


# ----------------------------------------------------------------------------------------------
# Text
# ----------------------------------------------------------------------------------------------

def prepare_text(prompts, aes=6.5, flow=None, camera_motion=None, sp=None, ftfy_lite=True):
    """Score suffixes, double clean, HF-Unigram tokenisation to 300.

    Returns (texts, input_ids [P, 300] int64, mask [P, 300] int64)."""
    sp = sp or text_prep.load_sp()
    texts, ids, masks = [], [], []
    for p in prompts:
        cleaned = text_prep.clean(text_prep.append_scores(p, aes, flow, camera_motion), ftfy_lite)
        tok = text_prep.tokenize(cleaned, sp)
        texts.append(cleaned)
        ids.append(tok["input_ids"])
        masks.append(tok["attention_mask"])
    return texts, torch.tensor(ids, dtype=torch.int64), torch.tensor(masks, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# RFLOW
# ----------------------------------------------------------------------------------------------

def timestep_transform(t, height, width, num_frames, num_timesteps=NUM_TIMESTEPS, scale=1.0):
    """Open-Sora 1.2 `timestep_transform`; all arguments float32 tensors of the same shape."""
    t = t / num_timesteps
    resolution = height * width
    ratio_space = (resolution / BASE_RESOLUTION).sqrt()
    if num_frames[0] == 1:
        n = torch.ones_like(num_frames)
    else:
        n = torch.div(num_frames, 17, rounding_mode="floor") * 5  # == num_frames // 17 * 5
    ratio_time = (n / BASE_NUM_FRAMES).sqrt()
    ratio = ratio_space * ratio_time * scale
    new_t = ratio * t / (1 + (ratio - 1) * t)
    return new_t * num_timesteps


def transform_ratio(height, width, num_frames):
    """The float32 `ratio` of timestep_transform (for reports)."""
    f = lambda v: torch.tensor([float(v)], dtype=torch.float32)  # noqa: E731
    h, w, n = f(height), f(width), f(num_frames)
    rs = (h * w / BASE_RESOLUTION).sqrt()
    nn_ = torch.ones_like(n) if float(num_frames) == 1 else torch.div(n, 17, rounding_mode="floor") * 5
    return float((rs * (nn_ / BASE_NUM_FRAMES).sqrt() * 1.0)[0])


def sampling_timesteps(steps, P, height, width, num_frames, use_transform=True):
    """List of `steps` float32 tensors [P]: t'_0 .. t'_{steps-1}."""
    f = lambda v: torch.tensor([float(v)] * P, dtype=torch.float32)  # noqa: E731
    ts = [(1.0 - i / steps) * NUM_TIMESTEPS for i in range(steps)]  # Python doubles
    ts = [torch.tensor([t] * P, dtype=torch.float32) for t in ts]
    if use_transform:
        ts = [timestep_transform(t, f(height), f(width), f(num_frames)) for t in ts]
    return ts


def add_noise(x0, eps, t):
    """Open-Sora RFlowScheduler.add_noise: tp = 1 - t.float()/1000 (two float32 ops, in this
    order), x = tp * x0 + (1 - tp) * eps; t [P], x0/eps [P, 4, T, h, w]."""
    tp = t.float() / NUM_TIMESTEPS
    tp = 1 - tp
    tp = tp[:, None, None, None, None]
    return tp * x0 + (1 - tp) * eps


def rflow_sample(model, z, y, mask, timesteps, cfg_scale, fps, height, width, record=None,
                 cond_only=False, cache_threshold=0.0, cfg_until=1.0, frame_mask=None, step_noise=None):
    """RFLOW.sample with a frame mask (Open-Sora always passes one; all 1.0 = text-to-video).

    z [P, 4, T, h, w] float32; y [2P, 1, L, Cc] = [cond; null] (or [P, ...] cond only when
    `cond_only`: no CFG batch, v = cond); mask [P, L]; fps/height/width float32 [P].
    frame_mask [P, T] float32 (None = all 1.0); step_noise(i) -> [P, 4, T, h, w] float32, the
    noise of step i, called only when some frame needs noise at step i (see the module docstring).
    cache_threshold > 0: TeaCache step caching (the first and last steps always run the blocks).
    cfg_until < 1: the CFG batch for the first ceil(cfg_until * steps) steps only, then the
    conditional half alone (v = cond). record["schedule"]: per step 'R'/'C' (blocks ran / cached),
    lower case for a conditional-only step; record["noise_added.step{i}"] [P, T] bool (frames
    re-noised at step i), record["step_noise.step{i}"] (only for steps that drew noise) and
    record["z_in.step{i}"] (z entering the model)."""
    P, T = z.shape[0], z.shape[2]
    n = len(timesteps)
    n_cfg = min(n, math.ceil(cfg_until * n - 1e-9))
    cache = {"threshold": cache_threshold, "acc": 0.0} if cache_threshold > 0 else None
    schedule = []
    if frame_mask is None:
        frame_mask = torch.ones(P, T, dtype=torch.float32)
    frame_mask = frame_mask.to(torch.float32)
    if tuple(frame_mask.shape) != (P, T):
        raise ValueError("frame_mask shape %s, expected %s" % (tuple(frame_mask.shape), (P, T)))
    frame_mask_t = frame_mask * NUM_TIMESTEPS
    noise_added = frame_mask == 1
    for i, t in enumerate(timesteps):
        x_mask = frame_mask_t >= t.unsqueeze(1)  # [P, T]
        x0 = z.clone()
        mask_add_noise = x_mask & ~noise_added
        if bool(mask_add_noise.any()):
            if step_noise is None:
                raise ValueError("step %d re-noises frames (t' = %r) but no step_noise source was given"
                                 % (i, t.tolist()))
            eps = step_noise(i).to(torch.float32)
            if tuple(eps.shape) != tuple(z.shape):
                raise ValueError("step_noise(%d) shape %s, expected %s" % (i, tuple(eps.shape), tuple(z.shape)))
            x_noise = add_noise(x0, eps, t)
            z = torch.where(mask_add_noise[:, None, :, None, None], x_noise, x0)
            if record is not None:
                record["step_noise.step%d" % i] = eps.clone()
        if record is not None:
            record["noise_added.step%d" % i] = mask_add_noise.clone()
            record["z_in.step%d" % i] = z.detach().clone()
        noise_added = x_mask
        if cache is not None:
            cache["refresh"] = i == 0 or i == n - 1
        use_cfg = not cond_only and i < n_cfg
        if not use_cfg:
            pred = model(z, t, y[:P], mask=mask, x_mask=x_mask, fps=fps, height=height, width=width,
                         cache=cache)
            v = pred[:, 0:4]
        else:
            z_in = torch.cat([z, z], 0)
            t_in = torch.cat([t, t], 0)
            pred = model(z_in, t_in, y, mask=mask, x_mask=x_mask.repeat(2, 1), fps=fps,
                         height=height, width=width, cache=cache)
            pred = pred.chunk(2, dim=1)[0]  # channels 0..3 (the other 4 are the unused sigma)
            cond, uncond = pred.chunk(2, dim=0)
            v = uncond + cfg_scale * (cond - uncond)
        ran = cache["ran"] if cache is not None else True
        schedule.append(("R" if ran else "C") if use_cfg else ("r" if ran else "c"))
        if i < len(timesteps) - 1:
            dt = timesteps[i] - timesteps[i + 1]
        else:
            dt = timesteps[i]
        dt = dt / NUM_TIMESTEPS
        z = z + v * dt[:, None, None, None, None]
        z = torch.where(x_mask[:, None, :, None, None], z, x0)
        if record is not None:
            record["x_mask.step%d" % i] = x_mask.clone()
            record["v.step%d" % i] = v.detach().clone()
            record["z.step%d" % i] = z.detach().clone()
    if record is not None:
        record["schedule"] = " ".join(schedule)
    return z


# ----------------------------------------------------------------------------------------------
# Output conversion
# ----------------------------------------------------------------------------------------------

def to_uint8(video):
    """Open-Sora save_sample (and torchvision save_image for F == 1): video [P, 3, F, H, W] float
    -> uint8 [P, F, H, W, 3]. float32 ops in this order: clamp(-1, 1); x - (-1); / 2; * 255;
    + 0.5; clamp(0, 255); cast to uint8 (truncation toward zero)."""
    x = video.detach().clone().to(torch.float32)
    x.clamp_(min=-1, max=1)
    x.sub_(-1).div_(max(1 - (-1), 1e-5))
    x = x.mul(255).add_(0.5).clamp_(0, 255)
    return x.permute(0, 2, 3, 4, 1).to(torch.uint8).contiguous()


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def generate(prompts, noise, height, width, num_frames, fps=24, steps=30, cfg_scale=7.0, aes=6.5,
             flow=None, camera_motion=None, *, dit_dir, t5_dir, vae_dir, record=None,
             models=None, sp=None, cond_only=False, step_noise=None, seed=None):
    """Open-Sora 1.2 text-to-video for `prompts` (list of str) starting from `noise`
    [P, 4, T, height//8, width//8]. Returns dict(video [P,3,F,H,W] float32, frames
    [P,F,H,W,3] uint8, latents [P,4,T,h,w]). `record` (dict) receives texts, input_ids, mask,
    y_cond, timesteps, x_mask.step{i}, v.step{i}, z.step{i}, latents, video, frames.
    `models` = (t5, dit, vae) skips loading; `cond_only` runs the conditional branch alone
    (no CFG batch; for self-checks). `step_noise(i)` -> [P, 4, T, h, w]: the noise for a step that
    re-noises frames (only when t'_0 > 1000, see the NOTE in the module docstring); when it is
    None and `seed` is given, the engine's convention: philox.step_noise(shape, seed, stream =
    prompt index, loop 0, step i). With neither, such a run raises ValueError."""
    P = len(prompts)
    noise = noise.to(torch.float32)
    t5, dit, vae = models if models is not None else (load_t5(t5_dir), load_dit(dit_dir), load_vae(vae_dir))
    T_lat, h_lat, w_lat = vae.get_latent_size(num_frames, height, width)
    if tuple(noise.shape) != (P, dit.cfg.in_channels, T_lat, h_lat, w_lat):
        raise ValueError("noise shape %s, expected %s" % (tuple(noise.shape), (P, dit.cfg.in_channels, T_lat, h_lat, w_lat)))

    texts, ids, mask = prepare_text(prompts, aes, flow, camera_motion, sp=sp)
    y_cond = t5(ids, mask)[:, None]  # [P, 1, 300, Cc]
    y_null = dit.y_embedder.y_embedding[None].repeat(P, 1, 1)[:, None]
    y = y_cond if cond_only else torch.cat([y_cond, y_null], 0)

    f = lambda v: torch.tensor([float(v)] * P, dtype=torch.float32)  # noqa: E731
    fps_t = f(fps if num_frames > 1 else IMG_FPS)
    h_t, w_t = f(height), f(width)
    timesteps = sampling_timesteps(steps, P, height, width, num_frames)
    if step_noise is None and seed is not None:
        import philox
        shape = tuple(noise.shape[1:])
        step_noise = lambda i: torch.stack([philox.step_noise(shape, seed, k, 0, i) for k in range(P)])  # noqa: E731

    z = rflow_sample(dit, noise.clone(), y, mask, timesteps, cfg_scale, fps_t, h_t, w_t,
                     record=record, cond_only=cond_only, step_noise=step_noise)
    video = vae.decode(z, num_frames)
    frames = to_uint8(video)
    if record is not None:
        record["texts"] = texts
        record["input_ids"] = ids
        record["mask"] = mask
        record["y_cond"] = y_cond
        record["timesteps"] = torch.stack([t[0] for t in timesteps])
        record["latents"] = z
        record["video"] = video
        record["frames"] = frames
    return {"video": video, "frames": frames, "latents": z}
