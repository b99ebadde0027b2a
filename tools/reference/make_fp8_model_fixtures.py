"""Write tests/data/fp8/{rows,linear,stdit3}.safetensors: the fp8 precision's quantization rule,
its scaled GEMM and STDiT3 forwards with fp8 block linears, from the reference (tools/reference/fp8.py).

Usage (from the repository root, Debian's python3 with torch 1.13):

    /usr/bin/python3 tools/reference/make_fp8_model_fixtures.py [--out tests/data]

First checks fp8.e4m3_round against ml_dtypes' encoding (tests/data/fp8/e4m3.safetensors, made by
make_fp8_fixtures.py): every code's value and every rounding case must agree.

rows.safetensors     x F32 [R, K]; codes U8 [R, K] (e4m3 bit patterns); scales F32 [R]. Rows: random
                     of several magnitudes, one all-zero, one tiny (scale 1 rule), one with a single
                     large value, one with values at rounding ties after scaling.
linear.safetensors   x F32 [M, K], w F32 [N, K], bias F32 [N]; out F32 [M, N] = fp8_linear(x, w, bias)
stdit3.safetensors   output_all: stdit3_a's inputs through its weights with every block linear in fp8;
                     output_keep: the same with fc2 and temporal block 1 unquantized
                     (--fp8-keep fc2,temporal:1); output_b_all: stdit3_b (conditioning frames), all fp8.
"""

import argparse
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import fp8  # noqa: E402
from safetensors_io import load_torch, save_file  # noqa: E402
from stdit3 import STDiT3, STDiT3Config  # noqa: E402


def encode(values):
    """e4m3 values (float32, exact) -> their bit patterns (uint8)."""
    table = fp8_table()
    v = values.to(torch.float32).numpy().ravel()
    lookup = {float(table[c]): c for c in range(256) if np.isfinite(table[c]) and not (table[c] == 0 and c == 0x80)}
    lookup[0.0] = 0
    out = np.array([lookup[float(a)] if a != 0 else (0x80 if np.signbit(a) else 0) for a in v], dtype=np.uint8)
    return torch.from_numpy(out.reshape(tuple(values.shape)))


def fp8_table():
    ref = load_torch(os.path.join(REPO, "tests", "data", "fp8", "e4m3.safetensors"))
    return ref["decoded"].numpy()


def check_rounding():
    ref = load_torch(os.path.join(REPO, "tests", "data", "fp8", "e4m3.safetensors"))
    table = ref["decoded"]
    ours = fp8.e4m3_round(ref["inputs"])
    theirs = table[ref["codes"].to(torch.int64)]
    bad = (ours != theirs).sum().item()
    assert bad == 0, "e4m3_round disagrees with ml_dtypes on %d of %d inputs" % (bad, ours.numel())
    finite = table[torch.isfinite(table)]
    assert torch.equal(fp8.e4m3_round(finite), finite), "e4m3_round moves an e4m3 value"
    assert fp8.e4m3_round(torch.tensor([1000.0, -1e30, float("inf")])).tolist() == [448.0, -448.0, 448.0]
    print("e4m3_round = ml_dtypes on", ours.numel(), "inputs")


def rows_fixture(g):
    K = 48
    rows = [torch.randn(K, generator=g) * s for s in (1e-3, 0.1, 1.0, 30.0, 5000.0)]
    rows.append(torch.zeros(K))
    rows.append(torch.full((K,), 1e-38))                 # inv = 448 / 1e-38 overflows: zero row, scale 1
    spike = torch.randn(K, generator=g) * 0.01
    spike[7] = 90.0                                     # one large value: the rest goes subnormal
    rows.append(spike)
    ties = torch.tensor([448.0, 1.0625, 1.1875, 17.0, 2 ** -7 * 1.5, 2 ** -9 * 2.5, -3.25, 0.0] * 6)
    rows.append(ties)                                   # amax 448: inv 1, ties stay ties
    x = torch.stack(rows).to(torch.float32)
    q, s = fp8.quantize_rows(x)
    return {"x": x, "codes": encode(q), "scales": s}


def linear_fixture(g):
    M, N, K = 13, 24, 40
    x = torch.randn(M, K, generator=g)
    x[3] *= 100.0
    x[5] = 0.0
    w = torch.randn(N, K, generator=g) * 0.05
    w[2] *= 1e-3
    b = torch.randn(N, generator=g)
    return {"x": x, "w": w, "bias": b, "out": fp8.fp8_linear(x, w, b)}


def model_output(name, keep=None):
    d = os.path.join(REPO, "tests", "data", name)
    import json
    with open(os.path.join(d, "config.json")) as f:
        cfg = STDiT3Config.from_hf_dict(json.load(f))
    sd = load_torch(os.path.join(d, "model.safetensors"))
    model = STDiT3(cfg)
    if "rope.freqs" not in sd:
        sd["rope.freqs"] = model.state_dict()["rope.freqs"]
    model.load_state_dict(sd, strict=True)
    model.eval()
    fp8.quantize_blocks(model, keep or (lambda layer, temporal, index: False))
    inp = load_torch(os.path.join(d, "inputs.safetensors"))
    with torch.no_grad():
        return model(inp["x"], inp["timestep"], inp["y"], mask=inp.get("mask"), x_mask=inp.get("x_mask"),
                     fps=inp["fps"], height=inp["height"], width=inp["width"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    check_rounding()
    g = torch.Generator().manual_seed(8008)
    out = os.path.join(a.out, "fp8")
    os.makedirs(out, exist_ok=True)
    meta = {"source": "tools/reference/make_fp8_model_fixtures.py"}
    save_file(rows_fixture(g), os.path.join(out, "rows.safetensors"), metadata=meta)
    save_file(linear_fixture(g), os.path.join(out, "linear.safetensors"), metadata=meta)
    keep = lambda layer, temporal, index: layer == "fc2" or (temporal and index == 1)  # noqa: E731
    save_file({"output_all": model_output("stdit3_a"), "output_keep": model_output("stdit3_a", keep),
               "output_b_all": model_output("stdit3_b")},
              os.path.join(out, "stdit3.safetensors"), metadata=meta)
    print("wrote", out)


if __name__ == "__main__":
    main()
