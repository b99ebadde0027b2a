"""Write the STDiT3 test fixtures under tests/data/ (deterministic, CPU, float32).

Usage (from the repository root, Debian's python3 with torch 1.13):

    /usr/bin/python3 tools/reference/make_fixtures.py [--out tests/data]

Fixtures (see tests/data/README.md for the full description):
    stdit3_a  tiny model (depth 2, C 64), 2 prompts under CFG (B=4), mask [2,8],
              all-True x_mask; weights stored (seed 1) including rope.freqs.
    stdit3_b  same config, B=4, mask [4,8], x_mask with False frames; weights
              stored (seed 2) WITHOUT rope.freqs.
    stdit3_c  real widths (C 1152, 16 heads, caption 4096), depth 1, B=2, no
              x_mask; weights NOT stored: weights.json gives the recipe manifest.
"""

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import weights_recipe as W  # noqa: E402
from safetensors_io import save_file  # noqa: E402
from stdit3 import STDiT3, STDiT3Config  # noqa: E402

TINY = dict(depth=2, hidden_size=64, num_heads=4, mlp_ratio=4.0, caption_channels=32, model_max_length=8)
REAL_WIDTH = dict(depth=1, hidden_size=1152, num_heads=16, mlp_ratio=4.0, caption_channels=4096, model_max_length=12)

# Intermediates written to expected.safetensors (when the model produced them).
EXPECTED_KEYS = ["t", "t0", "t_mlp", "t0_mlp", "y_lens", "y_packed", "pos_emb", "x_embed",
                 "block.0", "block.1", "block.2", "block.3", "final"]


def length_mask(lengths, max_len):
    """int64 [len(lengths), max_len]: 1 for the first L tokens, then 0."""
    m = torch.zeros(len(lengths), max_len, dtype=torch.int64)
    for i, L in enumerate(lengths):
        m[i, :L] = 1
    return m


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_manifest(path, seed, entries):
    """weights.json: {"recipe", "seed", "tensors": [...]}, one tensor entry per line."""
    lines = ['{"recipe": "%s", "seed": %d, "tensors": [' % (W.RECIPE_NAME, seed)]
    body = [json.dumps(e) for e in entries]
    lines.append(",\n".join("  " + b for b in body))
    lines.append("]}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # must stay valid JSON
    with open(path, "w") as f:
        f.write(text)


def run_and_write(outdir, cfg, sd, inputs, meta):
    """Run the reference on `inputs` and write inputs/expected safetensors."""
    model = STDiT3(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    record = {}
    with torch.no_grad():
        out = model(
            inputs["x"], inputs["timestep"], inputs["y"],
            mask=inputs.get("mask"), x_mask=inputs.get("x_mask"), fps=inputs["fps"],
            height=inputs["height"], width=inputs["width"], record=record,
        )
    expected = {"output": out}
    for k in EXPECTED_KEYS:
        if k in record:
            expected[k] = record[k]
    save_file(inputs, os.path.join(outdir, "inputs.safetensors"), metadata=meta)
    save_file(expected, os.path.join(outdir, "expected.safetensors"), metadata=meta)
    return expected


def make_a(root):
    """Tiny config, two prompts + CFG (B=4), mask with B/2 rows, x_mask all True."""
    d = os.path.join(root, "stdit3_a")
    os.makedirs(d, exist_ok=True)
    cfg = STDiT3Config(**TINY)
    seed = 1
    sd = W.state_dict_for(cfg, seed, with_rope=True)
    write_json(os.path.join(d, "config.json"), cfg.to_hf_dict())
    save_file(sd, os.path.join(d, "model.safetensors"),
              metadata={"recipe": W.RECIPE_NAME, "seed": str(seed)})

    g = torch.Generator().manual_seed(1001)
    x = torch.randn(4, 4, 3, 5, 7, generator=g)
    cond = 0.3 * torch.randn(2, 1, 8, 32, generator=g)
    null = sd["y_embedder.y_embedding"].reshape(1, 1, 8, 32)
    inputs = {
        "x": x,
        "timestep": torch.tensor([993.33, 500.25, 993.33, 500.25], dtype=torch.float32),
        "y": torch.cat([cond, null, null], dim=0),  # [cond0, cond1, null, null]
        "mask": length_mask([5, 3], 8),  # [B/2, 8]: tiled to B inside the model
        "x_mask": torch.ones(4, 3, dtype=torch.bool),
        "fps": torch.tensor([24.0]),
        "height": torch.tensor([40.0]),
        "width": torch.tensor([56.0]),
    }
    run_and_write(d, cfg, sd, inputs, {"fixture": "stdit3_a", "recipe": W.RECIPE_NAME, "seed": str(seed)})


def make_b(root):
    """Tiny config, B rows in mask, x_mask with clean (False) frames, no rope.freqs stored."""
    d = os.path.join(root, "stdit3_b")
    os.makedirs(d, exist_ok=True)
    cfg = STDiT3Config(**TINY)
    seed = 2
    sd = W.state_dict_for(cfg, seed, with_rope=True)  # the model needs rope.freqs ...
    stored = {k: v for k, v in sd.items() if k != "rope.freqs"}  # ... the file does not have it
    write_json(os.path.join(d, "config.json"), cfg.to_hf_dict())
    save_file(stored, os.path.join(d, "model.safetensors"),
              metadata={"recipe": W.RECIPE_NAME, "seed": str(seed)})

    g = torch.Generator().manual_seed(2002)
    x = torch.randn(4, 4, 4, 5, 6, generator=g)
    cond = 0.3 * torch.randn(2, 1, 8, 32, generator=g)
    null = sd["y_embedder.y_embedding"].reshape(1, 1, 8, 32)
    x_mask = torch.ones(4, 4, dtype=torch.bool)
    x_mask[:, 0] = False  # first frame is a clean conditioning frame everywhere
    x_mask[1, 2] = False
    inputs = {
        "x": x,
        "timestep": torch.tensor([700.5, 700.5, 300.0, 300.0], dtype=torch.float32),
        "y": torch.cat([cond, null, null], dim=0),
        "mask": length_mask([6, 2, 6, 2], 8),  # [B, 8]
        "x_mask": x_mask,
        "fps": torch.tensor([24.0]),
        "height": torch.tensor([40.0]),
        "width": torch.tensor([48.0]),
    }
    run_and_write(d, cfg, sd, inputs, {"fixture": "stdit3_b", "recipe": W.RECIPE_NAME, "seed": str(seed)})


def make_c(root):
    """Real widths (C 1152, d 72, caption 4096), depth 1, one prompt + null, no x_mask.
    Weights are not stored; weights.json is the recipe manifest."""
    d = os.path.join(root, "stdit3_c")
    os.makedirs(d, exist_ok=True)
    cfg = STDiT3Config(**REAL_WIDTH)
    seed = 3
    write_json(os.path.join(d, "config.json"), cfg.to_hf_dict())
    write_manifest(os.path.join(d, "weights.json"), seed, W.manifest(cfg))
    sd = W.state_dict_for(cfg, seed, with_rope=True)

    g = torch.Generator().manual_seed(3003)
    x = torch.randn(2, 4, 3, 6, 10, generator=g)
    cond = 0.3 * torch.randn(1, 1, 12, 4096, generator=g)
    null = sd["y_embedder.y_embedding"].reshape(1, 1, 12, 4096)
    inputs = {
        "x": x,
        "timestep": torch.tensor([966.67, 966.67], dtype=torch.float32),
        "y": torch.cat([cond, null], dim=0),
        "mask": length_mask([7], 12),  # [1, 12]
        "fps": torch.tensor([24.0]),
        "height": torch.tensor([48.0]),
        "width": torch.tensor([80.0]),
    }
    run_and_write(d, cfg, sd, inputs, {"fixture": "stdit3_c", "recipe": W.RECIPE_NAME, "seed": str(seed)})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    repo = os.path.dirname(os.path.dirname(HERE))
    ap.add_argument("--out", default=os.path.join(repo, "tests", "data"))
    args = ap.parse_args()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)  # one thread: bit-identical results run to run
    for make in (make_a, make_b, make_c):
        make(args.out)
        print("wrote", make.__name__[5:], "->", args.out)


if __name__ == "__main__":
    main()
