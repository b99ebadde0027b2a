"""Write tests/data/conditioning/ (image-to-video, video editing, loops) and run self-checks.

Usage (from the repository root, Debian's python3 with torch 1.13, numpy, PIL, sentencepiece):

    /usr/bin/python3 tools/reference/make_conditioning_fixtures.py [--out tests/data] [--no-write]

Models: DiT tests/data/pipeline_tiny/dit, T5 tests/data/t5_tiny/safetensors, VAE
tests/data/vae_tiny (the ones pipeline_tiny uses). Run seed 42, cfg 7.0, aes 6.5, fps 24,
float32, one thread. Noise: the engine's Philox convention (tools/reference/philox.py): video k
of a case uses noise stream k; initial noise lane l << 16, step noise lane (l << 16) | (i + 1),
VAE posterior noise under key splitmix64(42 ^ splitmix64((k << 32) | r)) for reference r.
The run itself is tools/reference/conditioning.py (generate_conditioned).

Cases (the videos of a case are one batch, one sampling call per loop):
    i2v    24x40, 17 frames, 3 steps, align 5: video 0 "a red ball" + ref.png, mask strategy "0";
           video 1 "a blue square moving to the right on a white background", no reference
    edit   24x40, 17 frames, 4 steps, align None: "a red ball" + ref.png, "0,0,0,2,1,0.5"
    loop   24x40, 34 frames, 3 steps, align 5: "|0|a red ball|1|a blue square", loop 2,
           condition_frame_length 5, condition_frame_edit 0.0

Writes tests/data/conditioning/:
    ref.png                    64x48 RGB reference picture (numpy, lossless PNG)
    cases.json                 the cases (settings, per video prompt / reference_path / mask_strategy)
                               plus what the run derived (timesteps, final mask strategies, texts,
                               output frame counts)
    expected.safetensors       per case C, video k: C.k.frames U8 [F_out,H,W,3], C.k.latents
                               [4,T,h,w] (last clip), C.k.mask.loop{l} [T], C.k.ref{r} [4,Tr,h,w],
                               C.k.noise.loop{l} [4,T,h,w] (before the mask strategy),
                               C.k.step_noise.loop{l}.step{i} (only the step noises used)

Self-checks (all must pass, else nothing is written):
  * Philox: Random123 known-answer vectors; lane 0 equals tools/train/demo_models.philox_normal;
    the vectorised generator equals the scalar one on other lanes/streams; splitmix64(0)
  * encode_sample with eps = 0 equals encode (posterior mean) bit for bit; its noise is the
    documented Philox streams; the existing vae_tiny encode fixtures still reproduce
  * mask strategy parsing, find_nearest_point, prompt splitting, resize_crop_to_fill geometry
  * i2v: video 0's latent frame 0 equals the encoded reference's frame 0 at the end; video 1
    equals pipeline.generate's text-to-video result with the same noise
  * edit: frame 2 stays the reference while t' > 500 and is re-noised exactly once, at the first
    step with t' <= 500 (z = tp * ref + (1 - tp) * eps); no other frame is ever re-noised
  * loop: t'_0 > 1000 quirk (step 0 freezes everything, step 1 re-noises every unmasked frame);
    clip 1's first 5 latent frames equal the last 5 of clip 0's encoding; 34 + 17 = 51 frames
  * a second run is bit-identical; rereading the written files reproduces them
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import conditioning as CD  # noqa: E402
import philox  # noqa: E402
import pipeline as PL  # noqa: E402
import text_prep  # noqa: E402
from safetensors_io import load_torch, save_file  # noqa: E402

SEED = 42
DATA = os.path.join(REPO, "tests", "data")
DIT_DIR = os.path.join(DATA, "pipeline_tiny", "dit")
T5_DIR = os.path.join(DATA, "t5_tiny", "safetensors")
VAE_DIR = os.path.join(DATA, "vae_tiny")
COMMON = {"cfg": 7.0, "seed": SEED, "aes": 6.5, "fps": 24}
CASES = [
    dict(name="i2v", H=24, W=40, num_frames=17, steps=3, align=5, loop=1, condition_frame_length=5,
         condition_frame_edit=0.0, videos=[
             {"prompt": "a red ball", "reference_path": "ref.png", "mask_strategy": "0"},
             {"prompt": "a blue square moving to the right on a white background", "reference_path": "",
              "mask_strategy": ""}]),
    dict(name="edit", H=24, W=40, num_frames=17, steps=4, align=None, loop=1, condition_frame_length=5,
         condition_frame_edit=0.0, videos=[
             {"prompt": "a red ball", "reference_path": "ref.png", "mask_strategy": "0,0,0,2,1,0.5"}]),
    dict(name="loop", H=24, W=40, num_frames=34, steps=3, align=5, loop=2, condition_frame_length=5,
         condition_frame_edit=0.0, videos=[
             {"prompt": "|0|a red ball|1|a blue square", "reference_path": "", "mask_strategy": ""}]),
]
FAILS = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILS.append(what)


def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ----------------------------------------------------------------------------------------------
# the reference picture
# ----------------------------------------------------------------------------------------------

def make_ref_image():
    """64x48 RGB uint8: horizontal/vertical gradient background, a red disc (radius 11) on the
    left, a dark-blue bar on the right."""
    H, W = 48, 64
    y, x = np.mgrid[0:H, 0:W]
    img = np.empty((H, W, 3), np.uint8)
    img[..., 0] = 40 + (x * 150) // (W - 1)
    img[..., 1] = 60 + (y * 160) // (H - 1)
    img[..., 2] = 200 - (x * 100) // (W - 1)
    disc = (x - 18) ** 2 + (y - 24) ** 2 <= 11 ** 2
    img[disc] = (225, 30, 35)
    bar = (x >= 46) & (x < 54) & (y >= 8) & (y < 40)
    img[bar] = (20, 30, 110)
    return img


def write_png(img, path):
    from PIL import Image
    Image.fromarray(img, "RGB").save(path, format="PNG", optimize=False, compress_level=9)


# ----------------------------------------------------------------------------------------------
# checks that need no sampling
# ----------------------------------------------------------------------------------------------

def load_demo_philox():
    spec = importlib.util.spec_from_file_location("demo_models", os.path.join(REPO, "tools", "train", "demo_models.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.philox_normal


def check_philox():
    kat = [  # Random123 kat_vectors, philox4x32 10 rounds
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
    ]
    check(all(philox.philox4x32_10(c, k) == w for c, k, w in kat), "Philox4x32-10 known-answer vectors")
    old = load_demo_philox()
    cases = [((4, 5, 3, 5), 42, 0), ((4, 10, 3, 5), 42, 1), ((7,), 0, 3), ((1, 4, 1, 3, 5), 2 ** 63 + 12345, 0x80000001),
             ((3, 3), 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF)]
    same = all(torch.equal(philox.philox_normal(s, sd, st), old(s, sd, st)) and
               torch.equal(philox.philox_normal(s, sd, st, 0), old(s, sd, st)) for s, sd, st in cases)
    check(same, "philox_normal lane 0 == tools/train/demo_models.philox_normal (%d shapes/seeds/streams)" % len(cases))
    ok = True
    for seed, stream, lane in ((42, 0, 1), (42, 1, 1 << 16), (7, 0x80000000, (1 << 16) | 3), (2 ** 40 + 5, 9, 0xFFFFFFFF)):
        w = philox.philox_words(6, seed, stream, lane)
        ok &= all([int(v) for v in w[b]] == philox.philox4x32_10([b, 0, stream, lane], [seed & 0xFFFFFFFF, seed >> 32])
                  for b in range(6))
    # element order / Box-Muller of one block by hand
    w = philox.philox4x32_10([1, 0, 3, 5], [42, 0])
    u = [(v + 0.5) * 2.0 ** -32 for v in w]
    r0, r1 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    hand = np.array([r0 * np.cos(2 * np.pi * u[1]), r0 * np.sin(2 * np.pi * u[1]),
                     r1 * np.cos(2 * np.pi * u[3]), r1 * np.sin(2 * np.pi * u[3])], np.float32)
    got = philox.philox_normal((8,), 42, 3, 5)[4:8].numpy()
    ok &= bool(np.array_equal(hand, got))
    check(ok, "vectorised Philox == scalar Philox on lanes != 0; block 1 Box-Muller by hand")
    check(philox.splitmix64(0) == 0xE220A8397B1DCDAF and philox.splitmix64(1) == 0x910A2DEC89025CC1,
          "splitmix64(0) = 0xe220a8397b1dcdaf, splitmix64(1) = 0x910a2dec89025cc1")
    a = philox.initial_noise((4, 5, 3, 5), SEED, 0, 0)
    b = philox.step_noise((4, 5, 3, 5), SEED, 0, 0, 0)
    c = philox.initial_noise((4, 5, 3, 5), SEED, 0, 1)
    big = philox.philox_normal((200000,), SEED, 0, 1)
    check(not torch.equal(a, b) and not torch.equal(a, c) and abs(float(big.mean())) < 0.01
          and abs(float(big.std()) - 1) < 0.01,
          "lanes differ; 2e5 samples mean %.4f std %.4f" % (float(big.mean()), float(big.std())))
    keys = {philox.reference_key(SEED, n, r) for n in range(3) for r in range(3)}
    check(len(keys) == 9, "reference keys distinct: key(42,0,0) = %#x" % philox.reference_key(SEED, 0, 0))


def check_vae(vae):
    x = torch.rand(1, 3, 23, 24, 40, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mean = vae.encode(x)
    real = philox.philox_normal
    try:
        philox.philox_normal = lambda shape, seed, stream=0, lane=0: torch.zeros(shape)
        zero = vae.encode_sample(x, 123)
    finally:
        philox.philox_normal = real
    check(torch.equal(zero, mean), "encode_sample with eps = 0 == encode (posterior mean), 23 frames")
    # the sample by hand from the moments and the documented streams
    key = philox.reference_key(SEED, 0, 0)
    rec = {}
    z = vae.encode_sample(x, key, record=rec)
    frames = x[0].permute(1, 0, 2, 3)
    ok = True
    for f in (0, 5, 22):
        m = vae.spatial_vae.module.encode_moments(frames[f:f + 1])
        eps = philox.philox_normal((1, 4, 1, 3, 5), key, f)[:, :, 0]
        want = (m[:, :4] + torch.exp(0.5 * torch.clamp(m[:, 4:], -30.0, 20.0)) * eps) * 0.18215
        ok &= maxdiff(want, rec["encode.spatial_out"][:, :, f]) < 1e-6
    for k, (a, b) in enumerate(((0, 17), (17, 23))):
        m = vae.temporal_vae.encode_moments(rec["encode.spatial_out"][:, :, a:b])
        eps = philox.philox_normal((1, 4, m.shape[2], 3, 5), key, 0x80000000 + k)
        want = (m[:, :4] + torch.exp(0.5 * torch.clamp(m[:, 4:], -30.0, 20.0)) * eps - vae.shift) / vae.scale
        ok &= maxdiff(want, z[:, :, 5 * k:5 * k + m.shape[2]]) < 1e-6
    d = maxdiff(z, mean)
    check(ok and z.shape == (1, 4, 7, 3, 5) and d > 1e-3,
          "encode_sample: 2D frame f uses stream f, temporal chunk k stream 0x80000000+k (sample - mean max %.3g)" % d)
    for n in (17, 23, 1):
        inp = load_torch(os.path.join(VAE_DIR, "encode_%d.inputs.safetensors" % n))
        exp = load_torch(os.path.join(VAE_DIR, "encode_%d.expected.safetensors" % n))
        d = maxdiff(vae.encode(inp["video"]), exp["z"])
        # bit-exact on the machine that wrote vae_tiny; other CPUs (ATen AVX2 vs AVX512 kernels) differ ~1e-6
        check(d < 1e-5, "vae_tiny encode_%d still reproduces (encode unchanged): max |diff| %.3g" % (n, d))


def check_helpers(ref_path):
    P = CD.parse_mask_strategy
    check(P("0") == [[0, 0, 0, 0, 1, 0.0]] and P("") == [] and P(None) == []
          and P("0,0,0,2,1,0.5;1,2,-5,0,5,0.0") == [[0, 0, 0, 2, 1, 0.5], [1, 2, -5, 0, 5, 0.0]]
          and P("1,1") == [[1, 1, 0, 0, 1, 0.0]],
          "parse_mask_strategy: defaults 0,0,0,0,1,0, ';' separates entries")
    fnp = CD.find_nearest_point
    got = [fnp(v, 5, 10) for v in range(10)] + [fnp(8, 5, 16), fnp(13, 5, 15), fnp(3, 5, 1)]
    check(got == [0, 0, 0, 5, 5, 5, 5, 5, 5, 5, 10, 10, 0],
          "find_nearest_point(v, 5, 10) for v = 0..9, (8,5,16), (13,5,15), (3,5,1): %s" % got)
    z = torch.zeros(4, 10, 1, 1)
    ref = torch.arange(10.0)[None, :, None, None].repeat(4, 1, 1, 1) + 1
    m, a = CD.apply_mask_strategy(z, [ref], "1,0,-5,0,5,0.0", 1, align=5)
    m2, _ = CD.apply_mask_strategy(torch.zeros(4, 10, 1, 1), [ref], "1,0,-5,0,5,0.0", 0, align=5)
    z3 = torch.zeros(4, 10, 1, 1)
    m3, a3 = CD.apply_mask_strategy(z3, [ref[:, :3]], "0,0,1,8,4,0.25", 0, align=None)
    check(m.tolist() == [0.0] * 5 + [1.0] * 5 and a == [(0, 5, 0, 5, 0.0)]
          and z[0, :, 0, 0].tolist() == [6, 7, 8, 9, 10, 0, 0, 0, 0, 0] and m2.tolist() == [1.0] * 10
          and a3 == [(0, 1, 8, 2, 0.25)] and z3[0, 8:, 0, 0].tolist() == [2, 3] and m3[8:].tolist() == [0.25, 0.25],
          "apply_mask_strategy: negative ref start, loop filter, length clipped to both ends")
    check(CD.split_prompt("|0| a red ball |1|a blue square") == (["a red ball", "a blue square"], [0, 1])
          and CD.split_prompt("plain") == (["plain"], None)
          and [CD.prompt_for_loop("|0|A|2|B", l) for l in range(4)] == ["A", "A", "B", "B"]
          and CD.prompt_for_loop("plain", 3) == "plain",
          "split_prompt / prompt_for_loop")
    from PIL import Image
    img = Image.open(ref_path).convert("RGB")
    x = CD.load_reference_image(ref_path, 24, 40)
    scaled = np.array(img.resize((40, 30), Image.BICUBIC))[3:27].astype(np.float32)
    want = torch.from_numpy(scaled).permute(2, 0, 1) / 255 * 2 - 1
    check(x.shape == (3, 1, 24, 40) and maxdiff(x[:, 0], want) < 1e-6 and maxdiff(x, torch.zeros(1)) <= 1.0,
          "ref.png 64x48 -> BICUBIC 40x30, rows 3..26 -> [3,1,24,40] in [-1,1]")


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------

def run_case(case, models, sp, ref_dir, record=None):
    return CD.generate_conditioned(
        case["videos"], case["H"], case["W"], case["num_frames"], models=models, seed=COMMON["seed"],
        steps=case["steps"], cfg_scale=COMMON["cfg"], aes=COMMON["aes"], fps=COMMON["fps"], align=case["align"],
        loop=case["loop"], condition_frame_length=case["condition_frame_length"],
        condition_frame_edit=case["condition_frame_edit"], ref_dir=ref_dir, sp=sp, record=record)


def tensors_of(case, out):
    """The expected.safetensors entries of one case."""
    t = {}
    name = case["name"]
    for k in range(len(case["videos"])):
        p = "%s.%d." % (name, k)
        t[p + "frames"] = out["frames"][k].contiguous()
        t[p + "latents"] = out["latents"][k].contiguous()
        for l in range(case["loop"]):
            t[p + "mask.loop%d" % l] = out["masks"][l][k].contiguous()
        for r, ref in enumerate(out["refs"][k]):
            t[p + "ref%d" % r] = ref.contiguous()
        for l in range(case["loop"]):
            t[p + "noise.loop%d" % l] = out["noises"][l][k].contiguous()
            for i in sorted(out["step_noise"][l]):
                if bool(out["noise_used"][l][i][k]):
                    t[p + "step_noise.loop%d.step%d" % (l, i)] = out["step_noise"][l][i][k].contiguous()
    return t


def describe(case, out, rec):
    print("  case %s: t' = %s" % (case["name"], ["%.9g" % v for v in out["timesteps"]]))
    for l in range(case["loop"]):
        used = {i: out["noise_used"][l][i].tolist() for i in out["noise_used"][l] if bool(out["noise_used"][l][i].any())}
        print("    loop %d: texts %s" % (l, out["texts"][l]))
        print("            masks %s; applied %s; step noise used (step: per video) %s"
              % (out["masks"][l].tolist(), out["applied"][l], used))
        print("            x_mask per step %s" % [rec[l]["x_mask.step%d" % i].int().tolist() for i in range(case["steps"])])
    print("    refs %s; final mask strategies %s; frames %s; latents std %.4f"
          % ([[tuple(r.shape) for r in rk] for rk in out["refs"]], out["mask_strategies"],
             tuple(out["frames"].shape), float(out["latents"].std())))


def check_i2v(case, out, rec, models, sp):
    ref0 = out["refs"][0][0]
    lat = out["latents"]
    check(out["masks"][0].tolist() == [[0.0, 1, 1, 1, 1], [1.0] * 5] and ref0.shape == (4, 1, 3, 5),
          "i2v: masks [[0,1,1,1,1],[1,1,1,1,1]], reference [4,1,3,5]")
    check(torch.equal(lat[0, :, 0], ref0[:, 0]) and not torch.equal(lat[0, :, 1], out["noises"][0][0, :, 1]),
          "i2v: video 0 latent frame 0 == encoded reference frame 0 at the end (other frames denoised)")
    check(all(not bool(u.any()) for u in out["noise_used"][0].values()) and not out["step_noise"][0],
          "i2v: no step re-noises a frame (frame 0 has mask 0; t'_0 = %.9g <= 1000)" % out["timesteps"][0])
    check(all(bool(rec[0]["x_mask.step%d" % i][0].tolist() == [False, True, True, True, True])
              and bool(rec[0]["x_mask.step%d" % i][1].all()) for i in range(case["steps"])),
          "i2v: x_mask video 0 = [F,T,T,T,T], video 1 all True at every step")
    v = case["videos"]
    noise1 = out["noises"][0][1:2]
    H, W, F = case["H"], case["W"], case["num_frames"]
    kw = dict(fps=COMMON["fps"], steps=case["steps"], cfg_scale=COMMON["cfg"], aes=COMMON["aes"], dit_dir=None,
              t5_dir=None, vae_dir=None, models=models, sp=sp)
    both = PL.generate([v[0]["prompt"], v[1]["prompt"]], out["noises"][0], H, W, F, **kw)
    check(torch.equal(both["latents"][1], lat[1]) and torch.equal(both["frames"][1], out["frames"][1]),
          "i2v: video 1 == pipeline.generate text-to-video (same batch of 2, same noise) bit for bit")
    alone = PL.generate([v[1]["prompt"]], noise1, H, W, F, **kw)
    d = maxdiff(alone["latents"][0], lat[1]) / float(lat[1].abs().max())
    fd = maxdiff(alone["frames"][0].int(), out["frames"][1].int())
    check(d < 1e-5 and fd <= 1, "i2v: video 1 == pipeline.generate on its own (batch 1): latents rel %.2g, "
          "frames max |diff| %d" % (d, fd))


def check_edit(case, out, rec):
    ref0 = out["refs"][0][0]
    ts = out["timesteps"]
    r = rec[0]
    first = next(i for i, t in enumerate(ts) if t <= 500.0)
    check(out["masks"][0].tolist() == [[1.0, 1, 0.5, 1, 1]] and first >= 1,
          "edit: mask [1,1,0.5,1,1]; first step with t' <= 500 is step %d (t' = %s)" % (first, ["%.6g" % t for t in ts]))
    frozen = all(torch.equal(r["z_in.step%d" % i][0, :, 2], ref0[:, 0]) and torch.equal(r["z.step%d" % i][0, :, 2], ref0[:, 0])
                 and not bool(r["x_mask.step%d" % i][0, 2]) for i in range(first))
    check(frozen, "edit: frame 2 == reference frame 0, x_mask False, for steps 0..%d (t' > 500)" % (first - 1))
    added = [r["noise_added.step%d" % i][0].int().tolist() for i in range(case["steps"])]
    want = [[0] * 5 for _ in range(case["steps"])]
    want[first][2] = 1
    check(added == want and sorted(out["step_noise"][0]) == [first],
          "edit: noise added exactly once, frame 2 at step %d (per step %s)" % (first, added))
    eps = out["step_noise"][0][first][0]
    prev = r["z.step%d" % (first - 1)][0]
    tp = torch.tensor([ts[first]], dtype=torch.float32) / 1000
    tp = 1 - tp
    want2 = tp * prev[:, 2] + (1 - tp) * eps[:, 2]
    others = [0, 1, 3, 4]
    check(torch.equal(r["z_in.step%d" % first][0, :, 2], want2)
          and torch.equal(r["z_in.step%d" % first][0, :, others], prev[:, others])
          and torch.equal(eps, philox.step_noise((4, 5, 3, 5), SEED, 0, 0, first)),
          "edit: step %d input frame 2 = tp*ref + (1-tp)*eps (tp = 1 - t'/1000 = %.9g), eps = Philox lane %d"
          % (first, float(tp), first + 1))
    check(all(bool(r["x_mask.step%d" % i][0].all()) for i in range(first, case["steps"]))
          and not torch.equal(out["latents"][0, :, 2], ref0[:, 0]),
          "edit: frame 2 denoised from step %d on" % first)


def check_loop(case, out, rec):
    ts = out["timesteps"]
    ref0 = out["refs"][0][0]
    check(ts[0] > 1000.0, "loop: 24x40, 34 frames: t'_0 = %.9g > 1000 (ratio %.6g)"
          % (ts[0], PL.transform_ratio(case["H"], case["W"], case["num_frames"])))
    check(out["masks"][0].tolist() == [[1.0] * 10] and out["masks"][1].tolist() == [[0.0] * 5 + [1.0] * 5]
          and out["mask_strategies"] == ["1,0,-5,0,5,0.0"] and out["applied"][1] == [[(0, 5, 0, 5, 0.0)]],
          "loop: masks loop0 all 1, loop1 [0]*5+[1]*5; strategy '1,0,-5,0,5,0.0' -> ref frames 5..9 -> 0..4")
    check(out["texts"][0][0] != out["texts"][1][0] and out["texts"][0][0].startswith("a red ball")
          and out["texts"][1][0].startswith("a blue square"), "loop: per-loop texts %s / %s"
          % (out["texts"][0], out["texts"][1]))
    want_added = {0: ([False] * 10, [False] * 10), 1: ([True] * 10, [False] * 5 + [True] * 5)}
    ok = True
    for l in range(2):
        r = rec[l]
        ok &= not bool(r["x_mask.step0"].any()) and torch.equal(r["z.step0"], r["z_start"])
        for i in range(case["steps"]):
            exp_add = want_added[1][l] if i == 1 else [False] * 10
            ok &= r["noise_added.step%d" % i][0].tolist() == exp_add
        ok &= sorted(out["step_noise"][l]) == [1]
        eps = out["step_noise"][l][1]
        ok &= torch.equal(eps[0], philox.step_noise((4, 10, 3, 5), SEED, 0, l, 1))
        ok &= torch.equal(r["z_in.step1"], torch.where(r["noise_added.step1"][:, None, :, None, None],
                                                       PL.add_noise(r["z_start"], eps, torch.tensor([ts[1]])),
                                                       r["z_start"]))
    check(ok, "loop: step 0 freezes every frame (x_mask False); step 1 re-noises every frame with mask 1 "
          "(loop 0: all 10, loop 1: frames 5..9) with Philox lane (l<<16)|2")
    clip1 = out["latents"][0]
    check(torch.equal(clip1[:, 0:5], ref0[:, 5:10]) and torch.equal(out["noises"][1][0], philox.initial_noise((4, 10, 3, 5), SEED, 0, 1)),
          "loop: clip 1 latent frames 0..4 == clip 0 encoding's latent frames 5..9 (ref0 [4,10,3,5])")
    f0 = PL.to_uint8(out["clips"][0])[0]
    f1 = PL.to_uint8(out["clips"][1])[0]
    check(out["frames"].shape == (1, 51, 24, 40, 3) and torch.equal(out["frames"][0, :34], f0)
          and torch.equal(out["frames"][0, 34:], f1[17:]),
          "loop: output = clip 0 (34 frames) + clip 1 frames 17..33 = 51 frames")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DATA)
    ap.add_argument("--no-write", action="store_true", help="only run the self-checks")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    sp = text_prep.load_sp()
    models = (PL.load_t5(T5_DIR), PL.load_dit(DIT_DIR), PL.load_vae(VAE_DIR))
    tmp = tempfile.mkdtemp(prefix="conditioning.")
    img = make_ref_image()
    write_png(img, os.path.join(tmp, "ref.png"))
    from PIL import Image
    check(np.array_equal(np.array(Image.open(os.path.join(tmp, "ref.png")).convert("RGB")), img),
          "ref.png reads back losslessly (64x48)")

    check_philox()
    check_vae(models[2])
    check_helpers(os.path.join(tmp, "ref.png"))

    results = {}
    for case in CASES:
        rec = {}
        out = run_case(case, models, sp, tmp, record=rec)
        describe(case, out, rec)
        {"i2v": lambda: check_i2v(case, out, rec, models, sp), "edit": lambda: check_edit(case, out, rec),
         "loop": lambda: check_loop(case, out, rec)}[case["name"]]()
        check(all(torch.isfinite(c).all() for c in out["clips"]), "%s: videos finite" % case["name"])
        out2 = run_case(case, models, sp, tmp)
        t1, t2 = tensors_of(case, out), tensors_of(case, out2)
        check(list(t1) == list(t2) and all(torch.equal(t1[k], t2[k]) for k in t1),
              "%s: second run bit-identical (%d tensors)" % (case["name"], len(t1)))
        results[case["name"]] = (case, out, t1)

    if FAILS:
        shutil.rmtree(tmp)
        print("%d check(s) failed" % len(FAILS))
        sys.exit(1)
    if args.no_write:
        shutil.rmtree(tmp)
        print("all checks passed (nothing written)")
        return

    root = os.path.join(args.out, "conditioning")
    os.makedirs(root, exist_ok=True)
    shutil.copyfile(os.path.join(tmp, "ref.png"), os.path.join(root, "ref.png"))
    shutil.rmtree(tmp)
    doc = {"fixture": "conditioning", "models": {"dit": "tests/data/pipeline_tiny/dit",
                                                 "t5": "tests/data/t5_tiny/safetensors", "vae": "tests/data/vae_tiny"},
           "noise": "philox: video k = stream k; initial lane l<<16; step i lane (l<<16)|(i+1); "
                    "reference r key splitmix64(seed ^ splitmix64((k<<32)|r))",
           "cases": []}
    tensors = {}
    for name, (case, out, t) in results.items():
        c = {"name": name, "H": case["H"], "W": case["W"], "num_frames": case["num_frames"], "steps": case["steps"]}
        c.update(COMMON)
        c.update({"align": case["align"], "loop": case["loop"], "condition_frame_length": case["condition_frame_length"],
                  "condition_frame_edit": case["condition_frame_edit"], "videos": case["videos"],
                  "derived": {"timesteps": out["timesteps"], "frames_out": int(out["frames"].shape[1]),
                              "final_mask_strategies": out["mask_strategies"],
                              "texts": [[tx[k] for tx in out["texts"]] for k in range(len(case["videos"]))],
                              "masks": [[m[k].tolist() for m in out["masks"]] for k in range(len(case["videos"]))]}})
        doc["cases"].append(c)
        tensors.update(t)
    with open(os.path.join(root, "cases.json"), "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
    meta = {"fixture": "conditioning", "seed": str(SEED), "noise": "philox4x32-10 lanes, splitmix64 reference keys",
            "dit": "pipeline_tiny/dit", "t5": "t5_tiny/safetensors", "vae": "vae_tiny"}
    save_file(tensors, os.path.join(root, "expected.safetensors"), metadata=meta)

    # read back: rerun every case from the written files only
    with open(os.path.join(root, "cases.json")) as fh:
        back = json.load(fh)
    ex = load_torch(os.path.join(root, "expected.safetensors"))
    for c in back["cases"]:
        out = run_case(c, models, sp, root)
        t = tensors_of(c, out)
        check(sorted(t) == sorted(k for k in ex if k.startswith(c["name"] + ".")) and all(torch.equal(t[k], ex[k]) for k in t),
              "%s: rerun from the written files reproduces expected.safetensors" % c["name"])
    total = 0
    for name in sorted(os.listdir(root)):
        size = os.path.getsize(os.path.join(root, name))
        total += size
        print("  %-24s %9d bytes" % (name, size))
    print("  %-24s %9d bytes" % ("total", total))
    if FAILS:
        sys.exit(1)
    print("wrote", root)


if __name__ == "__main__":
    main()
