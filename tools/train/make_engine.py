"""Turn trained checkpoints into the embedded demo engine (models/tiny).

    python3 tools/train/make_engine.py --ckpt DIR [--stdit build/stdit] [-o models/tiny]

Runs `stdit convert --dtype bf16` on DIR/{dit,vae,t5} (Hugging Face layouts written by train.py /
finetune_decoder.py), then writes into the engine's config.json the settings it was trained for
("defaults": 128x128 px, 17 frames, fps 24, plus the sampling steps and guidance scale chosen in
docs/DEMO_MODEL.md) and replaces the machine-specific source paths by a note.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

DEFAULTS = {"height": 128, "width": 128, "num_frames": 17, "fps": 24, "steps": 30, "cfg_scale": 7.0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--stdit", default=os.path.join(REPO, "build", "stdit"))
    ap.add_argument("-o", "--out", default=os.path.join(REPO, "models", "tiny"))
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--cfg-scale", type=float, default=DEFAULTS["cfg_scale"])
    a = ap.parse_args()
    cmd = [a.stdit, "convert", "--dit", os.path.join(a.ckpt, "dit"), "--vae", os.path.join(a.ckpt, "vae"),
           "--t5", os.path.join(a.ckpt, "t5"), "--dtype", "bf16", "-o", a.out, "--force"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    path = os.path.join(a.out, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    notes = {"dit": "STDiT3 trained by tools/train/train.py (docs/DEMO_MODEL.md)",
             "vae": "Open-Sora VAE v1.2 structure trained by tools/train/train.py + finetune_decoder.py",
             "t5": "T5-v1.1 encoder, frozen splitmix64-v1 recipe weights (tools/train/demo_models.py)"}
    for k, note in notes.items():
        cfg["components"][k]["source"] = note
    cfg["defaults"] = dict(DEFAULTS, steps=a.steps, cfg_scale=a.cfg_scale)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, n)) for d, _, ns in os.walk(a.out) for n in ns)
    print("engine %s: %.1f MB, defaults %s" % (a.out, total / 1e6, json.dumps(cfg["defaults"])))


if __name__ == "__main__":
    sys.exit(main())
