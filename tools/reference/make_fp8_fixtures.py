"""Write tests/data/fp8/e4m3.safetensors: FP8 E4M3 ("fn") decoding and rounding, from ml_dtypes.

Usage (a virtual environment with numpy and ml_dtypes; Debian's torch 1.13 has no float8 types):

    python3 -m venv /tmp/fp8 && /tmp/fp8/bin/pip install numpy ml_dtypes
    /tmp/fp8/bin/python tools/reference/make_fp8_fixtures.py [--out tests/data]

Tensors:
    decoded   F32 [256]   the value of every code 0x00 .. 0xFF (NaN for 0x7F, 0xFF)
    inputs    F32 [N]     values across the range: zeros, subnormals, exact codes, the half-way
                          points between neighbours (ties), their f32 neighbours, random values of
                          every binade, up to 464 (exclusive; beyond, ml_dtypes gives NaN where the
                          GPU's satfinite conversion gives 448: the C++ test checks that apart)
    codes     U8  [N]     ml_dtypes' round-to-nearest-even encoding of each input
"""

import argparse
import os

import sys

import ml_dtypes
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from safetensors_io import save_file  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = ap.parse_args()
    e4 = ml_dtypes.float8_e4m3fn
    codes = np.arange(256, dtype=np.uint8)
    decoded = codes.view(e4).astype(np.float32)
    finite = np.sort(np.unique(np.abs(decoded[np.isfinite(decoded)])))
    mids = (finite[:-1].astype(np.float64) + finite[1:]) / 2  # exact in f32 (one more bit)
    mids = mids.astype(np.float32)
    near = np.concatenate([np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf))])
    rng = np.random.default_rng(8)
    rand = np.concatenate([np.float32(2.0) ** rng.integers(-12, 9, 4000) * rng.uniform(1, 2, 4000).astype(np.float32),
                           rng.uniform(0, 2 ** -6, 1000).astype(np.float32), rng.uniform(440, 463.99, 200).astype(np.float32)])
    vals = np.concatenate([finite, mids, near, rand, [np.float32(463.9)]]).astype(np.float32)
    vals = vals[np.abs(vals) < 464]
    vals = np.concatenate([vals, -vals]).astype(np.float32)
    enc = vals.astype(e4).view(np.uint8)
    assert not np.isnan(enc.view(e4).astype(np.float32)).any()
    out = os.path.join(a.out, "fp8")
    os.makedirs(out, exist_ok=True)
    save_file({"decoded": decoded, "inputs": vals, "codes": enc}, os.path.join(out, "e4m3.safetensors"),
              metadata={"fixture": "fp8/e4m3", "source": "ml_dtypes %s float8_e4m3fn" % ml_dtypes.__version__})
    print("wrote", out, len(vals), "inputs")


if __name__ == "__main__":
    main()
