"""Procedural captioned clips for the embedded demo model (docs/DEMO_MODEL.md).

Every clip is one or two flat-coloured shapes (circle, square, triangle) on a plain background,
doing one of eight motions, with a caption made from the same parameters:

    "a blue square moving up on a black background"
    "a red ball moving to the right"                      (no background named: white)
    "a green triangle spinning and a yellow circle moving down on a gray background"

Parameters are drawn with numpy's PCG64 from a seed (`sample_specs`), so a seed gives the same
clips on any machine; `render` draws them with torch (CPU or GPU) as [B, 3, F, S, S] in [-1, 1],
anti-aliased from signed distances. Geometry is in units of the frame size, so any S works.

Motions (over the F frames of a clip):
    left / right / up / down   straight line, 0.30-0.50 of the frame
    bouncing                   hops on a floor: y = floor - A |sin(pi t / P + phase)|
    growing                    half-size x 1.8-2.6
    spinning                   +-10..20 degrees a frame (squares and triangles only)
    still                      no motion

`object_track` and `meaning_check` measure what a clip shows (object colour, centroid path): the
same check as tests/test_demo_model.cpp, used here to score generated samples.
"""

import math
from collections import OrderedDict

import numpy as np
import torch

# Palette (RGB 0-255). Object colours and backgrounds are named in captions.
COLOURS = OrderedDict([
    ("red", (220, 35, 35)),
    ("green", (35, 170, 60)),
    ("blue", (35, 75, 225)),
    ("yellow", (240, 210, 30)),
    ("orange", (245, 130, 25)),
    ("purple", (145, 55, 195)),
    ("white", (240, 240, 240)),
    ("black", (20, 20, 20)),
])
BACKGROUNDS = OrderedDict([
    ("white", (235, 235, 235)),
    ("black", (25, 25, 25)),
    ("gray", (125, 125, 125)),
    ("dark blue", (25, 35, 90)),
])
BACKGROUND_P = [0.4, 0.2, 0.2, 0.2]          # white is also the background of captions without one
NO_BACKGROUND_PHRASE_P = 0.5                 # white backgrounds: caption omits it this often
CLASHES = {("white", "white"), ("black", "black"), ("blue", "dark blue"), ("purple", "dark blue"),
           ("black", "dark blue")}

SHAPES = ["circle", "square", "triangle"]
SHAPE_WORDS = {"circle": ["circle", "ball"], "square": ["square"], "triangle": ["triangle"]}

MOTIONS = ["left", "right", "up", "down", "bouncing", "growing", "spinning", "still"]
MOTION_PHRASES = {
    "left": ["moving to the left", "moving left"],
    "right": ["moving to the right", "moving right"],
    "up": ["moving up"],
    "down": ["moving down"],
    "bouncing": ["bouncing"],
    "growing": ["growing"],
    "spinning": ["spinning"],
    "still": ["standing still"],
}
TWO_OBJECTS_P = 0.2
COLOUR_JITTER = 8  # +- per channel, per clip

SHAPE_ID = {s: i for i, s in enumerate(SHAPES)}


def article(word):
    return "an" if word[0] in "aeiou" else "a"


def _phrase(rng, options):
    return options[int(rng.integers(len(options)))]


def _sample_object(rng, shape, colour, motion, frames):
    """Geometry of one object: per-frame centre (cx, cy), half-size r, angle (frame units)."""
    t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)  # 0 .. 1
    r0 = rng.uniform(0.075, 0.12)
    if motion == "growing":
        r0 = rng.uniform(0.05, 0.075)
    m = r0 * 1.15 + 0.02  # keep the whole shape (triangle corners too) inside
    cx = np.full(frames, rng.uniform(m, 1 - m))
    cy = np.full(frames, rng.uniform(m, 1 - m))
    r = np.full(frames, r0)
    ang = np.full(frames, rng.uniform(0, 2 * math.pi) if shape == "square" else 0.0)
    if shape == "square" and motion != "spinning":
        ang[:] = 0.0  # squares stand upright unless spinning
    if motion in ("left", "right", "up", "down"):
        d = rng.uniform(0.30, 0.50)
        start = rng.uniform(m, 1 - m - d)
        path = start + d * t
        if motion in ("left", "up"):
            path = 1 - path
        if motion in ("left", "right"):
            cx = path
        else:
            cy = path
    elif motion == "bouncing":
        floor = 1 - m
        amp = rng.uniform(0.30, 0.50)
        period = rng.uniform(10, 16) / max(frames - 1, 1)  # in clip time, one hop = 10..16 frames
        phase = rng.uniform(0, math.pi)
        cy = floor - amp * np.abs(np.sin(math.pi * t / period + phase))
    elif motion == "growing":
        g = rng.uniform(1.8, 2.6)
        r = r0 * (1 + (g - 1) * t)
        mg = r[-1] * 1.15 + 0.02
        cx[:] = rng.uniform(mg, 1 - mg)
        cy[:] = rng.uniform(mg, 1 - mg)
    elif motion == "spinning":
        w = rng.uniform(10, 20) * math.pi / 180 * (1 if rng.random() < 0.5 else -1)
        ang = ang + w * np.arange(frames)
    return {"shape": shape, "colour": colour, "motion": motion, "cx": cx, "cy": cy, "r": r, "angle": ang}


def sample_spec(rng, frames):
    """One clip: {objects: [...], background, caption}."""
    bg = list(BACKGROUNDS)[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_P))]
    n = 2 if rng.random() < TWO_OBJECTS_P else 1
    objs, used_colours, used_shapes, parts = [], set(), set(), []
    for _ in range(n):
        while True:
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            if (colour, bg) in CLASHES or colour in used_colours or shape in used_shapes:
                continue
            break
        motions = [m for m in MOTIONS if not (shape == "circle" and m == "spinning")]
        motion = motions[int(rng.integers(len(motions)))]
        used_colours.add(colour)
        used_shapes.add(shape)
        objs.append(_sample_object(rng, shape, colour, motion, frames))
        parts.append("%s %s %s %s" % (article(colour), colour, _phrase(rng, SHAPE_WORDS[shape]),
                                      _phrase(rng, MOTION_PHRASES[motion])))
    caption = " and ".join(parts)
    if bg != "white" or rng.random() >= NO_BACKGROUND_PHRASE_P:
        caption += " on %s %s background" % (article(bg), bg)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=(n + 1, 3))
    return {"objects": objs, "background": bg, "caption": caption, "jitter": jitter}


def sample_specs(seed, n, frames):
    rng = np.random.default_rng(seed)
    return [sample_spec(rng, frames) for _ in range(n)]


def _pack(specs, frames):
    """Specs -> float64 numpy arrays [B, K=2, F] (cx, cy, r, angle), shape id / active [B, K],
    colours [B, K, 3], background [B, 3] (0..255)."""
    B, K = len(specs), 2
    geo = np.zeros((4, B, K, frames))
    shape = np.zeros((B, K), dtype=np.int64)
    active = np.zeros((B, K), dtype=bool)
    col = np.zeros((B, K, 3))
    bg = np.zeros((B, 3))
    for b, s in enumerate(specs):
        bg[b] = np.clip(np.array(BACKGROUNDS[s["background"]]) + s["jitter"][0], 0, 255)
        for k, o in enumerate(s["objects"]):
            geo[:, b, k] = [o["cx"], o["cy"], o["r"], o["angle"]]
            shape[b, k] = SHAPE_ID[o["shape"]]
            active[b, k] = True
            col[b, k] = np.clip(np.array(COLOURS[o["colour"]]) + s["jitter"][k + 1], 0, 255)
    return geo, shape, active, col, bg


def render(specs, size, frames, device="cpu"):
    """Clips [B, 3, F, size, size] float32 in [-1, 1] (B = len(specs))."""
    geo, shape, active, col, bg = _pack(specs, frames)
    f32 = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)  # noqa: E731
    cx, cy, r, ang = (f32(g * (size if i < 3 else 1.0))[..., None, None] for i, g in enumerate(geo))
    pix = (torch.arange(size, dtype=torch.float32, device=device) + 0.5)
    px, py = pix[None, None, None, None, :], pix[None, None, None, :, None]  # x along W, y along H
    dx, dy = px - cx, py - cy  # [B, K, F, S, S]
    c, s = torch.cos(ang), torch.sin(ang)
    u, v = c * dx + s * dy, -s * dx + c * dy  # rotated into the shape's frame
    d_circle = torch.sqrt(dx * dx + dy * dy) - r
    d_square = torch.maximum(u.abs(), v.abs()) - r
    R = 1.25 * r  # triangle circumradius; the triangle points up at angle 0
    d_tri = None
    for k in range(3):
        phi = math.pi / 2 + 2 * math.pi * k / 3
        e = math.cos(phi) * u + math.sin(phi) * v - R / 2
        d_tri = e if d_tri is None else torch.maximum(d_tri, e)
    sid = torch.as_tensor(shape, device=device)[..., None, None, None]
    d = torch.where(sid == 0, d_circle, torch.where(sid == 1, d_square, d_tri))
    alpha = (0.5 - d).clamp(0, 1) * f32(active)[..., None, None, None]  # [B, K, F, S, S]
    img = f32(bg)[:, :, None, None, None].expand(-1, -1, frames, size, size)  # [B, 3, F, S, S]
    colk = f32(col)
    for k in range(2):
        a = alpha[:, k][:, None]  # [B, 1, F, S, S]
        img = img * (1 - a) + colk[:, k][:, :, None, None, None] * a
    return img / 127.5 - 1.0


def pixel_weight(clips, specs, obj_w):
    """[B, 1, F, S, S] loss weights for rendered `clips`: 1 on the background, `obj_w` where the
    clip differs from its background colour (the objects, ~3 % of the pixels)."""
    if obj_w == 1:
        return torch.ones_like(clips[:, :1])
    bg = torch.tensor([[v / 127.5 - 1 for v in BACKGROUNDS[s["background"]]] for s in specs],
                      dtype=clips.dtype, device=clips.device)
    d = (clips - bg[:, :, None, None, None]).abs().sum(1, keepdim=True)
    return 1.0 + (obj_w - 1.0) * (d > 0.15).to(clips.dtype)


def all_captions():
    """Every caption sample_spec can write, in a fixed order (for text-embedding tables)."""
    words = []
    for colour in COLOURS:
        for shape in SHAPES:
            for sw in SHAPE_WORDS[shape]:
                for motion in MOTIONS:
                    if shape == "circle" and motion == "spinning":
                        continue
                    for mp in MOTION_PHRASES[motion]:
                        words.append((colour, shape, "%s %s %s %s" % (article(colour), colour, sw, mp)))
    out = []
    for bg in BACKGROUNDS:
        tails = [" on %s %s background" % (article(bg), bg)] + ([""] if bg == "white" else [])
        ones = [w for w in words if (w[0], bg) not in CLASHES]
        for tail in tails:
            for w in ones:
                out.append(w[2] + tail)
            for w1 in ones:
                for w2 in ones:
                    if w1[0] != w2[0] and w1[1] != w2[1]:
                        out.append(w1[2] + " and " + w2[2] + tail)
    return out


# ------------------------------------------------------------------------------------------------
# What a clip shows: the same measurement as tests/test_demo_model.cpp
# ------------------------------------------------------------------------------------------------

def object_track(frames_u8, bg_threshold=60.0):
    """frames_u8 [F, H, W, 3] uint8 -> dict: background RGB (median of the border of every frame),
    per-frame object mask area fraction, centroid (x, y) in pixels, mean object RGB."""
    x = frames_u8.astype(np.float64)
    F_, H, W, _ = x.shape
    border = np.concatenate([x[:, 0].reshape(-1, 3), x[:, -1].reshape(-1, 3),
                             x[:, :, 0].reshape(-1, 3), x[:, :, -1].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((x - bg) ** 2).sum(-1))  # [F, H, W]
    mask = dist > bg_threshold
    ys, xs = np.mgrid[0:H, 0:W]
    area, cxs, cys = [], [], []
    for f in range(F_):
        m = mask[f]
        n = m.sum()
        area.append(n / (H * W))
        cxs.append((xs[m].mean() + 0.5) if n else np.nan)
        cys.append((ys[m].mean() + 0.5) if n else np.nan)
    obj = x[mask].mean(0) if mask.any() else np.full(3, np.nan)
    return {"background": bg, "area": np.array(area), "cx": np.array(cxs), "cy": np.array(cys), "rgb": obj}


def nearest_colour(rgb):
    names = list(COLOURS)
    d = [np.sqrt(((np.array(COLOURS[n], dtype=np.float64) - rgb) ** 2).sum()) for n in names]
    return names[int(np.argmin(d))]


def meaning_check(frames_u8, colour, motion, min_shift=0.08):
    """Does the clip show one `colour` object doing `motion` (left/right/up/down/still)?
    Returns (ok, details). Mirrors tests/test_demo_model.cpp."""
    tr = object_track(frames_u8)
    F_, H, W, _ = frames_u8.shape
    det = {"colour": nearest_colour(tr["rgb"]) if np.isfinite(tr["rgb"]).all() else None,
           "area_min": float(np.min(tr["area"])), "area_max": float(np.max(tr["area"]))}
    ok = det["colour"] == colour and det["area_min"] > 0.005 and det["area_max"] < 0.35
    if det["area_min"] > 0:  # the motion is measured (and reported) even when the colour is wrong
        q = max(1, F_ // 4)  # mean of the last quarter of the frames minus the first quarter
        dx = (np.mean(tr["cx"][F_ - q:]) - np.mean(tr["cx"][:q])) / W
        dy = (np.mean(tr["cy"][F_ - q:]) - np.mean(tr["cy"][:q])) / H
        det.update(dx=float(dx), dy=float(dy))
        want = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[motion]
        if motion == "still":
            moved = abs(dx) < min_shift / 2 and abs(dy) < min_shift / 2
        else:
            along = dx * want[0] + dy * want[1]
            across = abs(dx * want[1]) + abs(dy * want[0])
            moved = along > min_shift and across < along / 2
        det["motion_ok"] = bool(moved)
        ok = ok and moved
    else:
        ok = False
    return ok, det


def to_uint8(video):
    """[B, 3, F, H, W] in [-1, 1] -> uint8 [B, F, H, W, 3] (Open-Sora's save_sample conversion)."""
    x = ((video.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255)
    return x.permute(0, 2, 3, 4, 1).to(torch.uint8).cpu().numpy()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Print captions of a few clips and check the renderer.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    a = ap.parse_args()
    specs = sample_specs(a.seed, a.n, a.frames)
    clips = render(specs, a.size, a.frames)
    u8 = to_uint8(clips)
    for s, f in zip(specs, u8):
        o = s["objects"][0]
        res = meaning_check(f, o["colour"], o["motion"]) if len(s["objects"]) == 1 and \
            o["motion"] in ("left", "right", "up", "down", "still") and s["background"] == "white" else None
        print("%-90s %s" % (s["caption"], "" if res is None else res))
    print("distinct captions:", len(all_captions()))
