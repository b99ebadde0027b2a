"""Write tests/data/pipeline_tiny/ (end-to-end text-to-video fixture) and run self-checks.

Usage (from the repository root, Debian's python3 with torch 1.13, numpy, sentencepiece):

    /usr/bin/python3 tools/reference/make_pipeline_fixtures.py [--out tests/data] [--no-write]

Writes tests/data/pipeline_tiny/:
    dit/config.json, dit/model.safetensors   tiny STDiT3 (depth 2, C 32, 2 heads of 16, mlp 4.0,
                                             caption 8, max_len 300), recipe splitmix64-v1 seed 31,
                                             with rope.freqs
    inputs.json                              prompts and generation settings
    noise.safetensors                        `noise` [2,4,5,3,5] F32 (the initial latent)
    expected.safetensors                     input_ids, mask, y_cond, timesteps, z.step{0,1,2},
                                             latents, video, frames
The T5 is tests/data/t5_tiny/safetensors/, the VAE tests/data/vae_tiny/ (both existing).

Self-checks (all must pass, else the script exits non-zero, having written nothing new):
  * timestep_transform in float32 matches the fp64 worked values of architecture.md §8.3
  * the uint8 conversion on edge values
  * text preparation reproduces tests/data/text/prompts_ftfy_lite.jsonl
  * the loaders + reference pieces reproduce the t5_tiny, stdit3_a, stdit3_b and vae_tiny fixtures
  * cfg_scale 1.0 equals running the conditional branch alone
  * the x_mask quirk for t'_0 > 1000 (ratio < 1, F = 1): step 0 leaves z unchanged and step 1
    re-noises every frame (Philox step noise, tools/reference/philox.py)
  * determinism: a second run gives bit-identical results; written files read back
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import philox  # noqa: E402
import pipeline as PL  # noqa: E402
import text_prep  # noqa: E402
import weights_recipe as W  # noqa: E402
from safetensors_io import load_file, load_torch, save_file  # noqa: E402
from stdit3 import STDiT3Config  # noqa: E402

DIT_SEED = 31
NOISE_SEED = 4242
TINY_DIT = dict(depth=2, hidden_size=32, num_heads=2, mlp_ratio=4.0, caption_channels=8,
                model_max_length=300, in_channels=4, patch_size=(1, 2, 2), pred_sigma=True)

PROMPTS = [
    "a red ball",
    "A lone hiker in a bright orange jacket walks slowly along a narrow, snowy mountain ridge "
    "at sunrise; thick clouds drift through the valley below, golden light catches the jagged "
    "peaks, and a hawk circles overhead. Cinematic, wide shot, 4K!",
]
SETTINGS = {"height": 24, "width": 40, "num_frames": 17, "fps": 24, "steps": 3, "cfg_scale": 7.0, "aes": 6.5}

# architecture.md §8.3 worked values (fp64 columns): (H, W, F, ratio, first 5, last 3), 30 steps.
SPEC_83 = [
    (360, 640, 102, 5.1349, [1000, 993.33, 986.28, 978.82, 970.91], [363.28, 268.35, 150.43]),
    (720, 1280, 102, 10.2698, [1000, 996.65, 993.09, 989.30, 985.24], [532.95, 423.15, 261.52]),
    (240, 426, 51, 2.4187, [1000, 985.94, 971.32, 956.08, 940.20], [211.82, 147.32, 76.98]),
    (480, 854, 51, 4.8431, [1000, 992.93, 985.47, 977.57, 969.21], [349.86, 257.02, 143.11]),
    (720, 1280, 1, 1.875, [1000, 981.94, 963.30, 944.06, 924.17], [172.41, 118.11, 60.73]),
]

FAILS = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILS.append(what)


def maxdiff(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


# ----------------------------------------------------------------------------------------------
# self-checks that need no pipeline run
# ----------------------------------------------------------------------------------------------

def fp64_transform(t, H, W, F):
    n = 1 if F == 1 else (F // 17) * 5
    ratio = math.sqrt(H * W / 262144.0) * math.sqrt(n)
    tau = t / 1000.0
    return 1000.0 * ratio * tau / (1 + (ratio - 1) * tau), ratio


def check_timesteps():
    for H, Wd, F, ratio_spec, first, last in SPEC_83:
        ts = [float(t[0]) for t in PL.sampling_timesteps(30, 1, H, Wd, F)]
        ref = [fp64_transform((1.0 - i / 30) * 1000, H, Wd, F)[0] for i in range(30)]
        ratio64 = fp64_transform(1000.0, H, Wd, F)[1]
        ratio32 = PL.transform_ratio(H, Wd, F)
        rel = max(abs(a - b) / b for a, b in zip(ts, ref))
        spec_ok = (abs(ratio64 - ratio_spec) < 6e-5
                   and all(abs(a - b) < 0.0051 for a, b in zip(ref[:5] + ref[-3:], first + last)))
        check(rel < 1e-6 and abs(ratio32 - ratio64) / ratio64 < 1e-6 and spec_ok and ts[0] == 1000.0,
              "timestep_transform %dx%d F=%d: ratio f32 %.6f fp64 %.6f (spec %s), max rel err vs fp64 "
              "%.1e, t'_0 = %r" % (H, Wd, F, ratio32, ratio64, ratio_spec, rel, ts[0]))
    # bf16 note of §8.6 (ratio rounded to 5.125 / 10.25 when computed in bf16)
    for (H, Wd, F), want in (((360, 640, 102), 5.125), ((720, 1280, 102), 10.25)):
        b = lambda v: torch.tensor([float(v)], dtype=torch.bfloat16)  # noqa: E731
        r = ((b(H) * b(Wd) / 262144).sqrt() * (torch.div(b(F), 17, rounding_mode="floor") * 5 / 1).sqrt() * 1.0)
        check(float(r[0]) == want, "bf16 ratio %dx%d F=%d = %r (spec §8.6: %r)" % (H, Wd, F, float(r[0]), want))


def check_uint8():
    x = torch.tensor([-5.0, -1.0, -0.99, 0.0, 1.0 / 255, 0.5, 0.99, 1.0, 3.0, float("nan")]).reshape(1, 1, 10, 1, 1)
    got = PL.to_uint8(x.expand(1, 3, 10, 1, 1)).reshape(10, 3)[:, 0].tolist()
    # float32 reference of each step, written out with numpy
    v = np.clip(x.numpy().reshape(-1), -1, 1).astype(np.float32)
    v = ((v + np.float32(1)) / np.float32(2)).astype(np.float32)
    v = (v * np.float32(255)).astype(np.float32)
    v = (v + np.float32(0.5)).astype(np.float32)
    want = [int(a) if a == a else None for a in np.clip(v, 0, 255)]
    ok = got[:9] == want[:9] and got[:9] == [0, 0, 1, 128, 128, 191, 254, 255, 255]
    check(ok, "uint8 conversion: %s (NaN -> %d, torch's cast of NaN; not specified)" % (got[:9], got[9]))


def check_text(sp):
    path = os.path.join(REPO, "tests", "data", "text", "prompts_ftfy_lite.jsonl")
    n = bad = 0
    for line in open(path, encoding="utf-8"):
        d = json.loads(line)
        _, ids, mask = PL.prepare_text([d["prompt"]], d["aes"], d["flow"], d["camera_motion"], sp=sp)
        want = d["ids"] + [0] * (300 - len(d["ids"]))
        n += 1
        if ids[0].tolist() != want or mask[0].tolist() != [1] * len(d["ids"]) + [0] * (300 - len(d["ids"])):
            bad += 1
    check(bad == 0, "prepare_text reproduces %d/%d lines of text/prompts_ftfy_lite.jsonl" % (n - bad, n))


def check_parts():
    data = os.path.join(REPO, "tests", "data")
    # T5
    t5 = PL.load_t5(os.path.join(data, "t5_tiny", "safetensors"))
    inp = load_torch(os.path.join(data, "t5_tiny", "inputs.safetensors"))
    exp = load_torch(os.path.join(data, "t5_tiny", "expected.safetensors"))
    with torch.no_grad():
        out = t5(inp["input_ids"], inp["attention_mask"])
    check(torch.equal(out, exp["last_hidden_state"]),
          "t5_tiny/safetensors reproduces last_hidden_state (max |diff| %.3g)" % maxdiff(out, exp["last_hidden_state"]))
    # STDiT3 (a: rope.freqs stored, b: recomputed)
    for name in ("stdit3_a", "stdit3_b"):
        dit = PL.load_dit(os.path.join(data, name))
        inp = load_torch(os.path.join(data, name, "inputs.safetensors"))
        exp = load_torch(os.path.join(data, name, "expected.safetensors"))
        with torch.no_grad():
            out = dit(inp["x"], inp["timestep"], inp["y"], mask=inp["mask"], x_mask=inp["x_mask"],
                      fps=inp["fps"], height=inp["height"], width=inp["width"])
        check(torch.equal(out, exp["output"]), "%s reproduces output (max |diff| %.3g)" % (name, maxdiff(out, exp["output"])))
    # VAE
    vae = PL.load_vae(os.path.join(data, "vae_tiny"))
    for n in (17, 1):
        inp = load_torch(os.path.join(data, "vae_tiny", "decode_%d.inputs.safetensors" % n))
        exp = load_torch(os.path.join(data, "vae_tiny", "decode_%d.expected.safetensors" % n))
        out = vae.decode(inp["z"], int(inp["num_frames"][0]))
        check(torch.equal(out, exp["video"]), "vae_tiny decode_%d reproduces video (max |diff| %.3g)" % (n, maxdiff(out, exp["video"])))


# ----------------------------------------------------------------------------------------------
# fixture
# ----------------------------------------------------------------------------------------------

def dit_config():
    return STDiT3Config(**TINY_DIT)


def write_dit(d):
    os.makedirs(d, exist_ok=True)
    cfg = dit_config()
    sd = W.state_dict_for(cfg, DIT_SEED, with_rope=True)
    hf = cfg.to_hf_dict()
    with open("/work/shared/assets/configs/OpenSora-STDiT-v3/config.json") as f:
        real_keys = sorted(json.load(f))
    if sorted(hf) != real_keys:
        raise AssertionError("config keys differ from the real config")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
        f.write("\n")
    save_file(sd, os.path.join(d, "model.safetensors"),
              metadata={"fixture": "pipeline_tiny/dit", "recipe": W.RECIPE_NAME, "seed": str(DIT_SEED)})


def make_noise():
    g = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(2, 4, 5, 3, 5, generator=g)


def run(models, sp, noise, s, record=None, **over):
    kw = dict(fps=s["fps"], steps=s["steps"], cfg_scale=s["cfg_scale"], aes=s["aes"])
    kw.update(over)
    return PL.generate(PROMPTS, noise, s["height"], s["width"], s["num_frames"], dit_dir=None, t5_dir=None,
                       vae_dir=None, models=models, sp=sp, record=record, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--no-write", action="store_true", help="only run the self-checks")
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)

    sp = text_prep.load_sp()
    check_timesteps()
    check_uint8()
    check_text(sp)
    check_parts()

    root = os.path.join(args.out, "pipeline_tiny")
    tmp_dit = tempfile.mkdtemp(prefix="pipeline_tiny_dit.")
    write_dit(tmp_dit)
    data = os.path.join(REPO, "tests", "data")
    t5_dir = os.path.join(data, "t5_tiny", "safetensors")
    vae_dir = os.path.join(data, "vae_tiny")
    models = (PL.load_t5(t5_dir), PL.load_dit(tmp_dit), PL.load_vae(vae_dir))
    s = SETTINGS
    noise = make_noise()

    rec = {}
    out = run(models, sp, noise, s, record=rec)
    lens = rec["mask"].sum(1).tolist()
    print("texts:", rec["texts"], "token lengths (incl. EOS):", lens)
    print("timesteps:", ["%.9g" % v for v in rec["timesteps"].tolist()], "ratio %.9g" % PL.transform_ratio(s["height"], s["width"], s["num_frames"]))
    check(lens[0] != lens[1] and lens[1] >= 40, "prompts have different token lengths %s" % lens)
    check(all(bool(rec["x_mask.step%d" % i].all()) for i in range(s["steps"])), "x_mask all True at every step")
    check(torch.isfinite(out["video"]).all().item(), "video finite")
    v = out["video"]
    print("latents std %.4f max|z| %.3f; video mean %.4f std %.4f max|x| %.3f (%.1f%% beyond +-1); frames mean %.2f"
          % (float(out["latents"].std()), float(out["latents"].abs().max()), float(v.mean()), float(v.std()),
             float(v.abs().max()), 100.0 * float((v.abs() > 1).float().mean()), float(out["frames"].float().mean())))
    d_steps = [maxdiff(rec["z.step%d" % i], rec["z.step%d" % (i - 1)] if i else noise) for i in range(s["steps"])]
    check(all(d > 1e-3 for d in d_steps), "every step moves z (max |dz| %s)" % ["%.3g" % d for d in d_steps])

    # determinism
    rec2 = {}
    run(models, sp, noise, s, record=rec2)
    check(all(torch.equal(rec[k], rec2[k]) for k in ("y_cond", "latents", "video", "frames")), "second run bit-identical")

    # cfg 1.0 == conditional branch alone
    rc1, rco = {}, {}
    a = run(models, sp, noise, s, record=rc1, cfg_scale=1.0)
    b = run(models, sp, noise, s, record=rco, cfg_scale=1.0, cond_only=True)
    dz = maxdiff(a["latents"], b["latents"])
    dv = maxdiff(a["video"], b["video"])
    check(dz < 1e-5 and dv < 1e-4, "cfg 1.0 == conditional branch only (batch 2P with CFG vs batch P): max |diff| "
          "latents %.3g, video %.3g" % (dz, dv))
    dcfg = maxdiff(rec["latents"], a["latents"])
    check(dcfg > 1e-2, "cfg 7 differs from cfg 1 (max |diff| %.3g)" % dcfg)

    # x_mask quirk: 24x40, F = 1: ratio 0.0605 < 1, t'_0 = 1000.0004 > 1000 -> x_mask False at step 0,
    # noise_added reset, so step 1 re-noises every frame with fresh noise (Philox step noise, seed 7,
    # stream = prompt index, lane i + 1)
    rq = {}
    nq = torch.randn(2, 4, 1, 3, 5, generator=torch.Generator().manual_seed(7))
    step_noise = lambda i: torch.stack([philox.step_noise((4, 1, 3, 5), 7, k, 0, i) for k in range(2)])  # noqa: E731
    PL.generate(PROMPTS, nq, 24, 40, 1, steps=3, cfg_scale=7.0, dit_dir=None, t5_dir=None, vae_dir=None,
                models=models, sp=sp, record=rq, step_noise=step_noise)
    t0 = float(rq["timesteps"][0])
    t1 = rq["timesteps"][1:2].repeat(2)
    renoised = PL.add_noise(nq, step_noise(1), t1)
    check(t0 > 1000 and not bool(rq["x_mask.step0"].any()) and torch.equal(rq["z.step0"], nq)
          and not bool(rq["noise_added.step0"].any()) and bool(rq["noise_added.step1"].all())
          and not bool(rq["noise_added.step2"].any()) and sorted(k for k in rq if k.startswith("step_noise")) == ["step_noise.step1"]
          and torch.equal(rq["z_in.step1"], renoised)
          and bool(rq["x_mask.step1"].all()) and not torch.equal(rq["z.step1"], nq),
          "F=1 at 24x40: t'_0 = %.9g > 1000 -> x_mask False at step 0, z unchanged; step 1 re-noises every "
          "frame, z = tp*z + (1-tp)*eps, tp = 1 - t'_1/1000 (Open-Sora quirk)" % t0)

    shutil.rmtree(tmp_dit)
    if FAILS:
        print("%d check(s) failed" % len(FAILS))
        sys.exit(1)
    if args.no_write:
        print("all checks passed (nothing written)")
        return

    os.makedirs(root, exist_ok=True)
    write_dit(os.path.join(root, "dit"))
    meta = {"fixture": "pipeline_tiny", "dit_seed": str(DIT_SEED), "noise_seed": str(NOISE_SEED),
            "prompt0": PROMPTS[0], "prompt1": PROMPTS[1], "text0": rec["texts"][0], "text1": rec["texts"][1]}
    inputs = {"prompts": PROMPTS}
    inputs.update(s)
    with open(os.path.join(root, "inputs.json"), "w") as f:
        json.dump(inputs, f, indent=2, ensure_ascii=False)
        f.write("\n")
    save_file({"noise": noise}, os.path.join(root, "noise.safetensors"), metadata=meta)
    expected = {
        "input_ids": rec["input_ids"],
        "mask": rec["mask"],
        "y_cond": rec["y_cond"],
        "timesteps": rec["timesteps"],
    }
    for i in range(s["steps"]):
        expected["z.step%d" % i] = rec["z.step%d" % i]
    expected.update({"latents": rec["latents"], "video": rec["video"], "frames": rec["frames"]})
    save_file(expected, os.path.join(root, "expected.safetensors"), metadata=meta)

    # read back: rerun the pipeline from the written files only
    with open(os.path.join(root, "inputs.json")) as f:
        ij = json.load(f)
    nz = torch.from_numpy(load_file(os.path.join(root, "noise.safetensors"))["noise"])
    got = PL.generate(ij["prompts"], nz, ij["height"], ij["width"], ij["num_frames"], fps=ij["fps"], steps=ij["steps"],
                      cfg_scale=ij["cfg_scale"], aes=ij["aes"], dit_dir=os.path.join(root, "dit"), t5_dir=t5_dir,
                      vae_dir=vae_dir)
    ex = load_torch(os.path.join(root, "expected.safetensors"))
    check(torch.equal(got["frames"], ex["frames"]) and torch.equal(got["video"], ex["video"]),
          "rerun from the written files reproduces video and frames")
    for name in sorted(os.listdir(root)) + ["dit/" + n for n in sorted(os.listdir(os.path.join(root, "dit")))]:
        p = os.path.join(root, name)
        if os.path.isfile(p):
            print("  %-32s %9d bytes" % (name, os.path.getsize(p)))
    if FAILS:
        sys.exit(1)
    print("wrote", root)


if __name__ == "__main__":
    main()
