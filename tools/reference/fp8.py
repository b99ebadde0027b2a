"""FP8 (e4m3, the "fn" variant) rounding and per-row quantization, written from the rule in
docs/NUMERICS.md ("FP8") with torch 1.13 (which has no float8 dtype): float64 arithmetic, exact
for every step. make_fp8_model_fixtures.py checks e4m3_round against ml_dtypes' codes
(tests/data/fp8/e4m3.safetensors) before using it.

Row rule: amax = max|x|; scale = f32(amax / 448); inv = f32(448 / amax); q = e4m3(f32(x * inv));
x ~ q * scale. A row with amax 0 (or inv not finite) is all zeros with scale 1.
"""

import torch
from torch import nn

E4M3_MAX = 448.0


def e4m3_round(x):
    """Round float values to the nearest e4m3 value (ties to even), saturating at +-448; NaN stays."""
    v = x.to(torch.float64)
    a = v.abs()
    _, e = torch.frexp(a)               # a = m * 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
    quantum = torch.pow(2.0, (e - 1 - 3).to(torch.float64))  # 3 mantissa bits
    quantum = torch.where(a < 2.0 ** -6, torch.full_like(a, 2.0 ** -9), quantum)  # subnormals
    q = torch.round(a / quantum) * quantum  # torch.round: half to even; a / quantum is exact
    q = torch.clamp(q, max=E4M3_MAX)
    q = torch.where(torch.isnan(v), v, torch.copysign(q, v))
    return q.to(torch.float32)


def quantize_rows(x):
    """x [..., K] float32 -> (q values [..., K] float32, exact e4m3 values; scale [...] float32)."""
    x = x.to(torch.float32)
    amax = x.abs().amax(dim=-1)
    inv = torch.tensor(E4M3_MAX, dtype=torch.float32) / amax          # f32 division
    scale = amax / torch.tensor(E4M3_MAX, dtype=torch.float32)        # f32 division
    zero = (amax == 0) | ~torch.isfinite(inv)
    inv = torch.where(zero, torch.zeros_like(inv), inv)
    q = e4m3_round(x * inv[..., None])                                 # f32 product
    scale = torch.where(zero, torch.ones_like(scale), scale)
    return q, scale


def fp8_linear(x, weight, bias):
    """out = (q_x @ q_w^T) * s_x * s_w + bias: codes multiplied exactly (float64), then f32."""
    qw, sw = quantize_rows(weight)
    shape = x.shape
    qx, sx = quantize_rows(x.reshape(-1, shape[-1]))
    acc = (qx.to(torch.float64) @ qw.to(torch.float64).T).to(torch.float32)
    out = acc * sx[:, None] * sw[None, :]
    if bias is not None:
        out = out + bias
    return out.reshape(*shape[:-1], weight.shape[0])


class Fp8Linear(nn.Module):
    """Wraps an nn.Linear: the same parameters, the fp8 arithmetic."""

    def __init__(self, linear):
        super().__init__()
        self.inner = linear

    def forward(self, x):
        return fp8_linear(x, self.inner.weight, self.inner.bias)


# The block layers --precision fp8 quantizes, by their --fp8-keep names.
LAYERS = {"qkv": ("attn", "qkv"), "proj": ("attn", "proj"), "q": ("cross_attn", "q_linear"),
          "kv": ("cross_attn", "kv_linear"), "cross_proj": ("cross_attn", "proj"),
          "fc1": ("mlp", "fc1"), "fc2": ("mlp", "fc2")}


def quantize_blocks(model, keep=lambda layer, temporal, index: False):
    """Swaps the block linears of a reference STDiT3 for Fp8Linear, except where keep(...) is true."""
    for temporal, blocks in ((False, model.spatial_blocks), (True, model.temporal_blocks)):
        for i, blk in enumerate(blocks):
            for name, (part, attr) in LAYERS.items():
                if keep(name, temporal, i):
                    continue
                owner = getattr(blk, part)
                setattr(owner, attr, Fp8Linear(getattr(owner, attr)))
    return model
