"""Score the demo model on prompts with a known colour and motion (CPU, the PyTorch reference
pipeline), the way tests/test_demo_model.cpp checks the C++ engine.

    python3 tools/train/evaluate.py --engine models/tiny [--seeds 0 1 2] [--cfg 7] [--steps 30]
    python3 tools/train/evaluate.py --dirs OUT   (HF dirs written by train.py: OUT/{t5,dit,vae})
    python3 tools/train/evaluate.py --engine models/tiny --stdit build/stdit   (the C++ engine:
        `stdit generate --save-latents`, then `stdit forward vae-decode`; much faster on a CPU)

The initial noise is stdit's (Philox, stream 0 of the seed), so a row here is what
`stdit generate PROMPT --seed S` draws. Prints one line per video and the share that passes;
--grid FILE.png writes the first video of each prompt as rows of frames.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import dataset as D  # noqa: E402
import demo_models as M  # noqa: E402
import pipeline as PL  # noqa: E402

PROMPTS = [
    ("a red ball moving to the right", "red", "right"),
    ("a blue square moving up", "blue", "up"),
    ("a green triangle moving to the left", "green", "left"),
    ("a yellow circle moving down", "yellow", "down"),
    ("a purple square moving to the right", "purple", "right"),
    ("an orange ball moving left", "orange", "left"),
    ("a black triangle moving up", "black", "up"),
    ("a red square standing still", "red", "still"),
]


def load(args):
    if args.engine:
        return M.load_engine(args.engine)
    d = args.dirs
    return PL.load_t5(os.path.join(d, "t5")), PL.load_dit(os.path.join(d, "dit")), PL.load_vae(os.path.join(d, "vae"))


def generate_cpp(a, prompt, seed, cfg, tmp):
    """Frames uint8 [F, H, W, 3] of `stdit generate PROMPT --seed S` (CPU), decoded without the mp4."""
    from safetensors_io import load_file, save_file
    lat, z, vid = (os.path.join(tmp, n) for n in ("lat.safetensors", "z.safetensors", "video.safetensors"))
    for f in (lat, os.path.join(tmp, "v.mp4")):
        if os.path.exists(f):
            os.remove(f)
    subprocess.run([a.stdit, "generate", prompt, "-e", a.engine, "--seed", str(seed), "--steps", str(a.steps),
                    "--cfg-scale", str(cfg), "-W", str(a.size), "-H", str(a.size), "--num-frames", str(a.frames),
                    "--backend", "cpu", "--save-latents", lat, "-o", os.path.join(tmp, "v.mp4"), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    save_file({"z": load_file(lat)["latents"]}, z)
    subprocess.run([a.stdit, "forward", "vae-decode", "--model", os.path.join(a.engine, "vae"), "--inputs", z,
                    "--num-frames", str(a.frames), "--output", vid, "--backend", "cpu", "-q"], check=True)
    return D.to_uint8(torch.from_numpy(load_file(vid)["video"]))[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine")
    ap.add_argument("--dirs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--cfg", type=float, nargs="+", default=[7.0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--prompts", nargs="*", help="extra prompts (shown, not scored)")
    ap.add_argument("--grid")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--stdit", help="run the C++ engine (this binary) instead of the PyTorch reference")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = tempfile.mkdtemp(prefix="stdit_eval_")
    if not a.stdit:
        models = load(a)
        sp = M.text_prep.load_sp(M.SPIECE)
        T = models[2].get_latent_size(a.frames)[0]
        shape = (1, 4, T, a.size // 8, a.size // 8)
    rows, passed, total = [], {}, {}
    items = [(p, c, m) for p, c, m in PROMPTS] + [(p, None, None) for p in (a.prompts or [])]
    for cfg in a.cfg:
        for prompt, colour, motion in items:
            for seed in a.seeds:
                t0 = time.time()
                if a.stdit:
                    fr = generate_cpp(a, prompt, seed, cfg, tmp)
                else:
                    out = PL.generate([prompt], M.philox_normal(shape, seed), a.size, a.size, a.frames, fps=M.FPS,
                                      steps=a.steps, cfg_scale=cfg, aes=M.AES, dit_dir=None, t5_dir=None,
                                      vae_dir=None, models=models, sp=sp, seed=seed)
                    fr = out["frames"][0].numpy()
                if seed == a.seeds[0] and cfg == a.cfg[0]:
                    rows.append(fr)
                if colour is None:
                    print("cfg %.1f seed %d  %-40s (%.1f s)" % (cfg, seed, prompt, time.time() - t0), flush=True)
                    continue
                ok, det = D.meaning_check(fr, colour, motion)
                passed[cfg] = passed.get(cfg, 0) + int(ok)
                total[cfg] = total.get(cfg, 0) + 1
                print("cfg %.1f seed %d  %-40s %s  %s (%.1f s)" % (
                    cfg, seed, prompt, "PASS" if ok else "fail",
                    {k: (round(v, 3) if isinstance(v, float) else v) for k, v in det.items()}, time.time() - t0),
                    flush=True)
    for cfg in a.cfg:
        if total.get(cfg):
            print("cfg %.1f: %d/%d pass" % (cfg, passed[cfg], total[cfg]))
    if a.grid:
        from PIL import Image
        img = np.concatenate([np.concatenate([r[f] for f in range(0, a.frames, 4)], 1) for r in rows], 0)
        Image.fromarray(img).save(a.grid)
        print("grid:", a.grid)


if __name__ == "__main__":
    main()
