"""Check that the C++ CPU pipeline reproduces the PyTorch reference pipeline on an engine.

    python3 tools/train/check_engine.py [--engine models/tiny] [--stdit build/stdit] [PROMPT]

Three comparisons on the engine's own weights (bf16 read as f32), CPU backend:
  1. one denoiser call (`stdit forward dit`) on the first sampling step's inputs (cond + null
     caption, Philox noise) against tools/reference/stdit3.py            (--tol-step, 1e-5)
  2. the whole sampling: `stdit generate PROMPT --seed S --save-latents` against
     tools/reference/pipeline.generate from the same noise              (--tol, 1e-2 for bf16)
  3. `stdit forward vae-decode` of the C++ latents against the reference decode (--tol-step)
Exits non-zero above a tolerance.

With a bf16 engine, stdit does what Open-Sora does with a bf16 model (docs/NUMERICS.md, "Model
dtype"): the timestep shift ratio is computed from bf16 values (0.55859375 here, not 0.5590170)
and the denoiser's inputs x, timestep, y, fps, height, width and the positional table are rounded
to bf16 on entry, the arithmetic staying f32. The reference gets the same roundings here.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import demo_models as M  # noqa: E402
import pipeline as PL  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt", nargs="?", default="a red ball moving to the right")
    ap.add_argument("--engine", default=os.path.join(REPO, "models", "tiny"))
    ap.add_argument("--stdit", default=os.path.join(REPO, "build", "stdit"))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--tol", type=float, default=1e-2)
    ap.add_argument("--tol-step", type=float, default=1e-5)
    a = ap.parse_args()
    with open(os.path.join(a.engine, "config.json")) as f:
        d = json.load(f).get("defaults", {})
    H, W, F = d.get("height", 128), d.get("width", 128), d.get("num_frames", 17)
    steps, cfg, fps = d.get("steps", 30), d.get("cfg_scale", 7.0), d.get("fps", 24)
    tmp = tempfile.mkdtemp(prefix="stdit_check_")
    lat = os.path.join(tmp, "lat.safetensors")
    subprocess.run([a.stdit, "generate", a.prompt, "-e", a.engine, "--seed", str(a.seed), "--backend", "cpu",
                    "--save-latents", lat, "-o", os.path.join(tmp, "v.mp4"), "-q"], check=True)
    z_cpp = torch.from_numpy(load_file(lat)["latents"])

    with open(os.path.join(a.engine, "config.json")) as f:
        dtype = json.load(f).get("dtype", "f32")
    if dtype == "bf16":
        def timesteps_bf16(steps, P, height, width, num_frames, use_transform=True):
            b = lambda v: torch.tensor([float(v)] * P, dtype=torch.bfloat16)  # noqa: E731
            ts = [torch.tensor([(1.0 - i / steps) * PL.NUM_TIMESTEPS] * P, dtype=torch.float32) for i in range(steps)]
            return [PL.timestep_transform(t, b(height), b(width), b(num_frames)) for t in ts]
        PL.sampling_timesteps = timesteps_bf16
        pos_emb = M.S3.sincos_pos_emb_2d
        M.S3.sincos_pos_emb_2d = lambda *args: pos_emb(*args).to(torch.bfloat16).float()
    t5, dit, vae = M.load_engine(a.engine)
    if dtype == "bf16":
        forward = dit.forward
        r = lambda v: v.to(torch.bfloat16).float()  # noqa: E731

        def forward_bf16_inputs(x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None):
            return forward(r(x), r(timestep), r(y), mask=mask, x_mask=x_mask, fps=r(fps), height=r(height),
                           width=r(width))
        dit.forward = forward_bf16_inputs
    T = vae.get_latent_size(F)[0]
    noise = M.philox_normal((1, 4, T, H // 8, W // 8), a.seed)
    sp = M.text_prep.load_sp(M.SPIECE)

    # 1. one denoiser call
    _, ids, mask = PL.prepare_text([a.prompt], M.AES, sp=sp)
    t0 = PL.sampling_timesteps(steps, 1, H, W, F)[0]
    with torch.no_grad():
        y = t5(ids, mask)[:, None]
        y = torch.cat([y, dit.y_embedder.y_embedding[None, None]], 0)
        inp = {"x": torch.cat([noise, noise]), "timestep": torch.cat([t0, t0]), "y": y, "mask": mask,
               "fps": torch.tensor([float(fps)]), "height": torch.tensor([float(H)]),
               "width": torch.tensor([float(W)])}
        want = dit(inp["x"], inp["timestep"], y, mask=mask, fps=inp["fps"], height=inp["height"], width=inp["width"])
    fin, fout = os.path.join(tmp, "dit_in.safetensors"), os.path.join(tmp, "dit_out.safetensors")
    save_file(inp, fin)
    subprocess.run([a.stdit, "forward", "dit", "--model", os.path.join(a.engine, "dit"), "--inputs", fin,
                    "--output", fout, "--backend", "cpu", "-q"], check=True)
    e_step = rel(torch.from_numpy(load_file(fout)["output"]), want)

    # 2. the whole sampling
    ref = PL.generate([a.prompt], noise, H, W, F, fps=fps, steps=steps, cfg_scale=cfg, aes=M.AES,
                      dit_dir=None, t5_dir=None, vae_dir=None, models=(t5, dit, vae), sp=sp, seed=a.seed)
    e_lat = rel(z_cpp, ref["latents"])

    zin, vout = os.path.join(tmp, "z.safetensors"), os.path.join(tmp, "video.safetensors")
    save_file({"z": z_cpp}, zin)
    subprocess.run([a.stdit, "forward", "vae-decode", "--model", os.path.join(a.engine, "vae"), "--inputs", zin,
                    "--num-frames", str(F), "--output", vout, "--backend", "cpu", "-q"], check=True)
    with torch.no_grad():
        v_ref = vae.decode(z_cpp, F)
    e_vid = rel(torch.from_numpy(load_file(vout)["video"]), v_ref)
    print("%s engine, %r seed %d, %dx%d, %d frames, %d steps, cfg %g" % (dtype, a.prompt, a.seed, W, H, F, steps, cfg))
    print("1. one denoiser call (step 0, CFG batch), C++ vs PyTorch: rel err %.2e" % e_step)
    print("2. latents after %d steps, C++ vs PyTorch:               rel err %.2e" % (steps, e_lat))
    print("3. VAE decode of the same latents, C++ vs PyTorch:      rel err %.2e" % e_vid)
    return 0 if e_step <= a.tol_step and e_lat <= a.tol and e_vid <= a.tol_step else 1


if __name__ == "__main__":
    sys.exit(main())
