"""Deterministic synthetic STDiT3 weights ("splitmix64-v1"), reproducible bit-exactly in C++.

For one tensor (name, shape, scale, offset) and a seed S:

    h    = FNV-1a 64-bit of the UTF-8 name
           (offset basis 0xcbf29ce484222325, prime 0x100000001b3)
    base = (S * 0x9E3779B97F4A7C15 + h) mod 2^64
    for element i = 0, 1, ... (row-major):
        x = (base + (i + 1) * 0x9E3779B97F4A7C15) mod 2^64
        z = x
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 mod 2^64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB mod 2^64
        z =  z ^ (z >> 31)
        m = z >> 40                                   (top 24 bits)
        value = float32( f64(offset) + f64(m - 2^23) * 2^-23 * f64(scale) )

`scale` is a power of two, so the float64 expression is exact and there is a
single rounding, to float32 (round to nearest even). Values lie in
[offset - scale, offset + scale).

Scale / offset rules (first match wins):
    *scale_shift_table                     scale 2^-3, offset 0
    *.attn.q_norm.weight, *.k_norm.weight  scale 2^-3, offset 1.0
    y_embedder.y_embedding                 scale 2^-1, offset 0
    *.bias                                 scale 2^-4, offset 0
    any other tensor of rank >= 2          scale 2^-e, e = round(log2(sqrt(fan_in))),
                                           fan_in = numel / shape[0]; halves round UP
                                           (floor(x + 0.5), like C's round() for x > 0)
`rope.freqs` is not part of the recipe: it is always 1 / 10000^(2i/d).
"""

import math
from collections import OrderedDict

import numpy as np

RECIPE_NAME = "splitmix64-v1"
MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
FNV_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def fnv1a64(name):
    h = FNV_BASIS
    for byte in name.encode("utf-8"):
        h ^= byte
        h = (h * FNV_PRIME) & MASK64
    return h


def tensor_base(name, seed):
    return (seed * GOLDEN + fnv1a64(name)) & MASK64


def _check_pow2(scale):
    mant, _ = math.frexp(scale)
    if scale <= 0 or mant != 0.5:
        raise ValueError("recipe scale must be a positive power of two, got %r" % scale)


def values(name, shape, scale, offset, seed):
    """Vectorised recipe (numpy uint64 arithmetic wraps mod 2^64 on purpose)."""
    _check_pow2(scale)
    n = int(np.prod(shape, dtype=np.int64))
    base = np.uint64(tensor_base(name, seed))
    out = np.empty(n, dtype=np.float32)
    chunk = 1 << 22  # bound the temporary uint64 arrays
    with np.errstate(over="ignore"):
        for s in range(0, n, chunk):
            idx = np.arange(s + 1, min(n, s + chunk) + 1, dtype=np.uint64)  # i + 1
            z = base + idx * np.uint64(GOLDEN)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
            z = z ^ (z >> np.uint64(31))
            m = (z >> np.uint64(40)).astype(np.int64) - (1 << 23)
            v = float(offset) + m.astype(np.float64) * (2.0 ** -23 * float(scale))
            out[s:s + len(idx)] = v.astype(np.float32)
    return out.reshape(shape)


def value_scalar(name, index, scale, offset, seed):
    """Pure-Python version of one element (used to cross-check `values`)."""
    x = (tensor_base(name, seed) + (index + 1) * GOLDEN) & MASK64
    z = x
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    z = z ^ (z >> 31)
    m = z >> 40
    return float(np.float32(float(offset) + float(m - (1 << 23)) * 2.0 ** -23 * float(scale)))


def scale_offset(name, shape):
    """The (scale, offset) rule of the recipe for one tensor."""
    if name.endswith("scale_shift_table"):
        return 2.0 ** -3, 0.0
    if name.endswith("attn.q_norm.weight") or name.endswith("attn.k_norm.weight"):
        return 2.0 ** -3, 1.0
    if name == "y_embedder.y_embedding":
        return 2.0 ** -1, 0.0
    if name.endswith(".bias"):
        return 2.0 ** -4, 0.0
    if len(shape) >= 2:
        fan_in = int(np.prod(shape, dtype=np.int64)) // int(shape[0])
        e = int(math.floor(0.5 * math.log2(fan_in) + 0.5))
        return 2.0 ** -e, 0.0
    raise ValueError("no recipe rule for %s %s" % (name, shape))


def manifest(cfg):
    """[{name, shape, scale, offset}] for every state_dict key except rope.freqs, in key order."""
    from stdit3 import param_shapes

    out = []
    for name, shape in param_shapes(cfg):
        if name == "rope.freqs":
            continue
        sc, off = scale_offset(name, shape)
        out.append({"name": name, "shape": list(shape), "scale": sc, "offset": off})
    return out


def materialise(entries, seed):
    """OrderedDict name -> torch float32 tensor for manifest `entries`."""
    import torch

    out = OrderedDict()
    for e in entries:
        out[e["name"]] = torch.from_numpy(values(e["name"], e["shape"], e["scale"], e["offset"], seed))
    return out


def state_dict_for(cfg, seed, with_rope=True):
    """Full state dict (recipe tensors + analytic rope.freqs first) for `cfg`."""
    from stdit3 import rope_default_freqs

    sd = OrderedDict()
    if with_rope:
        sd["rope.freqs"] = rope_default_freqs(cfg.head_dim)
    sd.update(materialise(manifest(cfg), seed))
    return sd
