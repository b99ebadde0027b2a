"""Independent PyTorch reference of Open-Sora 1.2 conditioning: image-to-video, video editing
(mask strategies) and loops (CPU, float32), with the engine's Philox noise convention.

Checked against Open-Sora v1.2.0 `scripts/inference.py` (the loop), `opensora/utils/
inference_utils.py` (parse_mask_strategy, find_nearest_point, apply_mask_strategy,
append_generated, split_prompt, extract_prompts_loop, dframe_to_frame), `opensora/datasets/
utils.py` (read_image_from_path with resize_crop_to_fill) and `opensora/schedulers/rf`
(RFLOW.sample with a mask, add_noise). The pieces are pipeline.py (text, timesteps, the masked
RFLOW sampler, to_uint8), vae.py (encode_sample, decode) and philox.py (noise).

For a batch of videos k = 0..P-1 (noise stream n = k), run seed S, `loop` loops:

    references   refs_k = [encode_sample(load_reference_image(path), key(S, n, r)) for each user
                 reference path r = 0, 1, ... (";"-separated)]      each [4, Tr, h, w]
    loop l:
      text       each video's text for loop l (prompt_for_loop), then pipeline.prepare_text
      l > 0      refs_k.append(encode_sample(previous clip's decoded video [1,3,F,H,W],
                                             key(S, n, r = len(refs_k))))
                 mask_strategy_k += (";" if non-empty) + "l,r,-cfl,0,cfl,cfe"
      noise      z_k = philox_normal([4,T,h,w], S, n, lane = l << 16)
      masks      frame_mask_k = apply_mask_strategy(z_k, refs_k, mask_strategy_k, l, align)  [T]
      sample     pipeline.rflow_sample(..., frame_mask, step_noise(i) = philox_normal(
                 [4,T,h,w], S, n, lane = (l << 16) | (i + 1)) per video)
      decode     clip_l = vae.decode(z, F)  [P, 3, F, H, W] float, not clamped
    output       frames of clip 0, then clip l > 0 without its first cfl // 5 * 17 frames
                 (uint8 by pipeline.to_uint8 per clip, then concatenated)

Model inputs: fps 24 (120 when F == 1), height/width float32 [P], cfg scale, x_mask from the
sampler repeated for the CFG batch, y = [cond; null].
"""

import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import philox  # noqa: E402
import pipeline as PL  # noqa: E402

MASK_DEFAULT = ["0", "0", "0", "0", "1", "0"]


# ----------------------------------------------------------------------------------------------
# Reference images
# ----------------------------------------------------------------------------------------------

def resize_crop_to_fill(pil_image, height, width):
    """Scale (BICUBIC) so the image covers (height, width), keeping the aspect ratio, then crop
    the centre: rh = H/h, rw = W/w; rh > rw: size (round(w*rh), H), column offset
    int(round((sw - W)/2)); else size (W, round(h*rw)), row offset int(round((sh - H)/2)).
    Python's round (half to even), as Open-Sora."""
    from PIL import Image
    w, h = pil_image.size
    th, tw = height, width
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        image = pil_image.resize((sw, sh), Image.BICUBIC)
        i, j = 0, int(round((sw - tw) / 2.0))
    else:
        sh, sw = round(h * rw), tw
        image = pil_image.resize((sw, sh), Image.BICUBIC)
        i, j = int(round((sh - th) / 2.0)), 0
    arr = np.array(image)
    if i + th > arr.shape[0] or j + tw > arr.shape[1]:
        raise ValueError("resize_crop_to_fill: crop outside the image")
    return arr[i:i + th, j:j + tw]


def load_reference_image(path, height, width):
    """PIL open + convert("RGB"), resize_crop_to_fill, ToTensor (uint8 HWC -> float CHW / 255),
    Normalize (x - 0.5) / 0.5 -> [3, 1, H, W] float32."""
    from PIL import Image
    with open(path, "rb") as f:
        img = Image.open(f)
        img = img.convert("RGB")
    arr = resize_crop_to_fill(img, height, width)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    x = x.sub(0.5).div(0.5)
    return x[:, None]


# ----------------------------------------------------------------------------------------------
# Prompts of a loop
# ----------------------------------------------------------------------------------------------

def split_prompt(prompt):
    """'|0|text A|1|text B' -> (['text A', 'text B'], [0, 1]) (segments stripped); a prompt not
    starting with '|0|' -> ([prompt], None)."""
    if prompt.startswith("|0|"):
        parts = prompt.split("|")[1:]
        texts, starts = [], []
        for i in range(0, len(parts), 2):
            starts.append(int(parts[i]))
            texts.append(parts[i + 1].strip())
        return texts, starts
    return [prompt], None


def prompt_for_loop(prompt, loop):
    """The raw text of loop `loop` (before prepare_text): Open-Sora's extract_prompts_loop on the
    split segments (segment j covers loops start_j .. start_{j+1} - 1; the last one all later)."""
    texts, starts = split_prompt(prompt)
    if starts is None:
        return texts[0]
    out = []
    for j, (s, t) in enumerate(zip(starts, texts)):
        end = starts[j + 1] if j + 1 < len(starts) else loop + 1
        out.extend([t] * (end - s))
    return out[loop]


# ----------------------------------------------------------------------------------------------
# Mask strategies
# ----------------------------------------------------------------------------------------------

def parse_mask_strategy(ms):
    """'loop_id,ref_id,ref_start,target_start,length,edit_ratio;...' -> list of
    [int, int, int, int, int, float]; missing fields default to 0,0,0,0,1,0."""
    out = []
    if ms is None or ms == "":
        return out
    for entry in ms.split(";"):
        g = entry.split(",")
        if not 1 <= len(g) <= 6:
            raise ValueError("invalid mask strategy entry %r" % entry)
        g = g + MASK_DEFAULT[len(g):]
        out.append([int(v) for v in g[:5]] + [float(g[5])])
    return out


def find_nearest_point(value, point, max_value):
    t = value // point
    if value % point > point / 2 and t < max_value // point - 1:
        t += 1
    return t * point


def apply_mask_strategy(z, refs, mask_strategy, loop, align=None):
    """One video: z [4, T, h, w] (modified in place), refs list of [4, Tr, h, w]. Entries whose
    loop_id == loop: negative starts += Tr (ref) / T (target); with align, both starts go through
    find_nearest_point(start, align, Tr or T); length = min(length, T - ts, Tr - rs);
    z[:, ts:ts+len] = ref[:, rs:rs+len]; mask[ts:ts+len] = edit_ratio. Returns mask [T] float32
    and the list of applied (ref_id, rs, ts, len, edit_ratio)."""
    T = z.shape[1]
    mask = torch.ones(T, dtype=torch.float32)
    applied = []
    for loop_id, m_id, rs, ts, length, edit in parse_mask_strategy(mask_strategy):
        if loop_id != loop:
            continue
        ref = refs[m_id]
        Tr = ref.shape[1]
        if rs < 0:
            rs = Tr + rs
        if ts < 0:
            ts = T + ts
        if align is not None:
            rs = find_nearest_point(rs, align, Tr)
            ts = find_nearest_point(ts, align, T)
        length = min(length, T - ts, Tr - rs)
        z[:, ts:ts + length] = ref[:, rs:rs + length]
        mask[ts:ts + length] = edit
        applied.append((m_id, rs, ts, length, edit))
    return mask, applied


def dframe_to_frame(num):
    if num % 5 != 0:
        raise ValueError("condition_frame_length must be a multiple of 5 (got %d)" % num)
    return num // 5 * 17


# ----------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def generate_conditioned(videos, height, width, num_frames, *, models, seed, steps, cfg_scale=7.0,
                         aes=6.5, fps=24, align=None, loop=1, condition_frame_length=5,
                         condition_frame_edit=0.0, ref_dir=".", sp=None, record=None):
    """`videos`: list of dicts {prompt, reference_path ('' or ';'-separated paths relative to
    ref_dir), mask_strategy}; video k uses noise stream k. models = (t5, dit, vae).
    Returns dict(frames [P, F_out, H, W, 3] uint8, latents [P, 4, T, h, w] (last clip),
    clips (decoded float videos), refs (per video list of [4, Tr, h, w]), masks (per loop
    [P, T]), noises (per loop, before the mask strategy), step_noise (per loop {i: [P, ...]}),
    noise_used (per loop {i: [P] bool}), mask_strategies (final strings), texts (per loop)).
    `record` (dict) receives per loop the sampler's record as record[l]."""
    t5, dit, vae = models
    P = len(videos)
    T, h, w = vae.get_latent_size(num_frames, height, width)
    C = dit.cfg.in_channels
    shape = (C, T, h, w)
    f = lambda v: torch.tensor([float(v)] * P, dtype=torch.float32)  # noqa: E731
    fps_t = f(fps if num_frames > 1 else PL.IMG_FPS)
    h_t, w_t = f(height), f(width)
    timesteps = PL.sampling_timesteps(steps, P, height, width, num_frames)
    y_null = dit.y_embedder.y_embedding[None].repeat(P, 1, 1)[:, None]

    refs = []
    strategies = []
    for k, v in enumerate(videos):
        rk = []
        paths = v.get("reference_path", "") or ""
        for path in (paths.split(";") if paths else []):
            x = load_reference_image(os.path.join(ref_dir, path), height, width)
            key = philox.reference_key(seed, k, len(rk))
            rk.append(vae.encode_sample(x[None], key)[0])
        refs.append(rk)
        strategies.append(v.get("mask_strategy", "") or "")

    out = {"clips": [], "masks": [], "noises": [], "step_noise": [], "noise_used": [], "texts": [],
           "applied": [], "latents": None}
    for l in range(loop):
        texts_raw = [prompt_for_loop(v["prompt"], l) for v in videos]
        texts, ids, tmask = PL.prepare_text(texts_raw, aes, sp=sp)
        y_cond = t5(ids, tmask)[:, None]
        y = torch.cat([y_cond, y_null], 0)
        if l > 0:
            prev = out["clips"][-1]
            for k in range(P):
                key = philox.reference_key(seed, k, len(refs[k]))
                refs[k].append(vae.encode_sample(prev[k:k + 1], key)[0])
                entry = "%d,%d,-%d,0,%d,%s" % (l, len(refs[k]) - 1, condition_frame_length,
                                              condition_frame_length, repr(float(condition_frame_edit)))
                strategies[k] = entry if strategies[k] == "" else strategies[k] + ";" + entry
        noise = torch.stack([philox.initial_noise(shape, seed, k, l) for k in range(P)])
        z = noise.clone()
        masks, applied = [], []
        for k in range(P):
            m, a = apply_mask_strategy(z[k], refs[k], strategies[k], l, align)
            masks.append(m)
            applied.append(a)
        masks = torch.stack(masks)
        z_start = z.clone()
        drawn = {}

        def step_noise(i, _l=l):
            e = torch.stack([philox.step_noise(shape, seed, k, _l, i) for k in range(P)])
            drawn[i] = e
            return e

        rec = {}
        z = PL.rflow_sample(dit, z, y, tmask, timesteps, cfg_scale, fps_t, h_t, w_t, record=rec,
                            frame_mask=masks, step_noise=step_noise)
        video = vae.decode(z, num_frames)
        out["clips"].append(video)
        out["masks"].append(masks)
        out["noises"].append(noise)
        out["step_noise"].append(drawn)
        out["noise_used"].append({i: rec["noise_added.step%d" % i].any(1) for i in range(steps)})
        out["texts"].append(texts)
        out["applied"].append(applied)
        out["latents"] = z
        if record is not None:
            rec["y_cond"] = y_cond
            rec["input_ids"] = ids
            rec["mask"] = tmask
            rec["noise"] = noise
            rec["z_start"] = z_start  # after the mask strategy
            rec["timesteps"] = torch.stack([t[0] for t in timesteps])
            record[l] = rec

    cut = dframe_to_frame(condition_frame_length)
    frames = [PL.to_uint8(out["clips"][0])]
    for l in range(1, loop):
        frames.append(PL.to_uint8(out["clips"][l])[:, cut:])
    out["frames"] = torch.cat(frames, 1)
    out["refs"] = refs
    out["mask_strategies"] = strategies
    out["timesteps"] = [float(t[0]) for t in timesteps]
    return out
