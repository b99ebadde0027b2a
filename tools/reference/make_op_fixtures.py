"""Golden values of the op registry (tests/op_cases.*): one case or a few per op of the backend
interface (src/backend/backend.h), inputs drawn here, expected outputs computed here in float64
from the definitions in that header's comments and the architecture spec, not from the engine.

Writes tests/data/ops/cases.safetensors: tensors "CASE/in/NAME" and "CASE/out/NAME" (inputs and
expected outputs, F32, integers as I64/U8) and metadata "cases": a JSON list of {name, op, params, inputs, outputs}.

Run: /usr/bin/python3 tools/reference/make_op_fixtures.py [OUT_DIR]   (Debian python3-torch, python3-numpy)
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import save_file  # noqa: E402
from stdit3 import sincos_pos_emb_2d  # noqa: E402

torch.set_num_threads(1)
torch.manual_seed(1234)
CASES = []
TENSORS = {}


def randn(*shape, scale=1.0):
    return (torch.randn(*shape, dtype=torch.float32) * scale)


def d(t):
    return t.double()


def case(name, op, params, inputs, outputs):
    """inputs / outputs: dicts name -> tensor; stored F32 (floats) or as given (integers)."""
    def store(k, v):
        if v.dtype in (torch.float32, torch.float64):
            v = v.float()
        TENSORS[k] = v.contiguous().numpy()
    for k, v in inputs.items():
        store(f"{name}/in/{k}", v)
    for k, v in outputs.items():
        store(f"{name}/out/{k}", v)
    CASES.append({"name": name, "op": op, "params": params, "inputs": list(inputs), "outputs": list(outputs)})


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x * torch.sigmoid(x)


ACT = {"none": lambda x: x, "gelu_tanh": gelu_tanh, "silu": silu}


def frame_rows(mask, tokens_per_frame, n):
    """[B, N] bool: token n of sample b is in a frame whose mask is 0 (the "_zero" vectors)."""
    frame = torch.arange(n) // tokens_per_frame
    return mask[:, frame] == 0


def layer_norm(x, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


# ---------------------------------------------------------------- dense --------------------------
for act in ("none", "gelu_tanh", "silu"):
    x, w, b = randn(2, 5, 24), randn(16, 24, scale=0.2), randn(16, scale=0.1)
    case(f"linear_{act}", "linear", {"act": act}, {"x": x, "w": w, "bias": b},
         {"out": ACT[act](d(x) @ d(w).T + d(b))})
x, w = randn(7, 40), randn(9, 40, scale=0.2)
case("linear_nobias", "linear", {"act": "none"}, {"x": x, "w": w}, {"out": d(x) @ d(w).T})

a, b = randn(3, 4, 8), randn(3, 4, 8)
case("add", "add", {}, {"a": a, "b": b}, {"out": d(a) + d(b)})
b8 = randn(8)
case("add_broadcast", "add", {}, {"a": a, "b": b8}, {"out": d(a) + d(b8)})
x = randn(37, scale=3)
case("silu", "silu", {}, {"x": x}, {"out": silu(d(x))})
a, b = randn(5, 7), randn(5, 7)
case("mul", "mul", {}, {"a": a, "b": b}, {"out": d(a) * d(b)})
case("sub", "sub", {}, {"a": a, "b": b}, {"out": d(a) - d(b)})
a, b = randn(3, 50), randn(3, 50)
case("l1_distance", "l1_distance", {}, {"a": a, "b": b},
     {"out": torch.stack([(d(a) - d(b)).abs().mean(), d(b).abs().mean()])})

# ---------------------------------------------------------------- norms and modulation ---------
x, wt = randn(3, 5, 16, scale=2), randn(16)
case("rms_norm", "rms_norm", {"eps": 1e-6}, {"x": x, "weight": wt},
     {"out": d(wt) * d(x) / torch.sqrt((d(x) ** 2).mean(-1, keepdim=True) + 1e-6)})

B, T, S, C = 2, 3, 2, 16
N = T * S
x = randn(B, N, C, scale=2) + 0.5
sh, sc, sh0, sc0 = randn(B, C), randn(B, C, scale=0.3), randn(B, C), randn(B, C, scale=0.3)
mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.uint8)
zero = frame_rows(mask, S, N)[..., None]  # [B, N, 1]
ln = layer_norm(d(x), 1e-6)
case("layernorm_modulate", "layernorm_modulate", {"eps": 1e-6}, {"x": x, "shift": sh, "scale": sc},
     {"out": ln * (1 + d(sc)[:, None]) + d(sh)[:, None]})
case("layernorm_modulate_frames", "layernorm_modulate", {"eps": 1e-6, "tokens_per_frame": S},
     {"x": x, "shift": sh, "scale": sc, "shift0": sh0, "scale0": sc0, "frame_mask": mask},
     {"out": torch.where(zero, ln * (1 + d(sc0)[:, None]) + d(sh0)[:, None], ln * (1 + d(sc)[:, None]) + d(sh)[:, None])})

y, g, g0 = randn(B, N, C), randn(B, C), randn(B, C)
case("gated_residual", "gated_residual", {}, {"x": x, "y": y, "gate": g}, {"x": d(x) + d(g)[:, None] * d(y)})
case("gated_residual_frames", "gated_residual", {"tokens_per_frame": S},
     {"x": x, "y": y, "gate": g, "gate0": g0, "frame_mask": mask},
     {"x": d(x) + torch.where(zero, d(g0)[:, None], d(g)[:, None]) * d(y)})

K = 24
yk, w, bias = randn(B, N, K), randn(C, K, scale=0.2), randn(C, scale=0.1)
proj = d(yk) @ d(w).T + d(bias)
case("linear_residual", "linear_residual", {}, {"y": yk, "w": w, "bias": bias, "gate": g, "x": x},
     {"x": d(x) + d(g)[:, None] * proj})
case("linear_residual_frames", "linear_residual", {"tokens_per_frame": S},
     {"y": yk, "w": w, "bias": bias, "gate": g, "gate0": g0, "frame_mask": mask, "x": x},
     {"x": d(x) + torch.where(zero, d(g0)[:, None], d(g)[:, None]) * proj})
case("linear_residual_nogate", "linear_residual", {}, {"y": yk, "w": w, "bias": bias, "x": x}, {"x": d(x) + proj})

src = randn(B, N, C)
case("select_frames", "select_frames", {"tokens_per_frame": S}, {"dst": x, "src": src, "frame_mask": mask},
     {"dst": torch.where(zero, d(src), d(x))})

# ---------------------------------------------------------------- attention --------------------
def rope_interleaved(x, freqs):
    """x [..., N, H, D]: pair i of position n (dim -3) rotated by n * freqs[i]."""
    n = x.shape[-3]
    ang = torch.arange(n, dtype=torch.float64)[:, None] * freqs.double()[None, :]  # [N, D/2]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    ev, od = x[..., 0::2], x[..., 1::2]
    return torch.stack([ev * cos - od * sin, od * cos + ev * sin], dim=-1).flatten(-2)


q, wq = randn(2, 5, 3, 8, scale=2), randn(8)
normed = d(wq) * d(q) / torch.sqrt((d(q) ** 2).mean(-1, keepdim=True) + 1e-6)
case("qk_norm", "qk_norm_rope", {"eps": 1e-6}, {"q": q, "weight": wq}, {"q": normed})
freqs = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
case("qk_norm_rope", "qk_norm_rope", {"eps": 1e-6}, {"q": q, "weight": wq, "rope_freqs": freqs},
     {"q": rope_interleaved(normed, freqs)})


def sdpa(q, k, v, scale, bias=None, key_mask=None):
    """q [Bt, Nq, H, D], k/v [Bt, Nk, H, D] -> [Bt, Nq, H, D]."""
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        s = s + bias[None]
    if key_mask is not None:
        keep = key_mask.bool()[:, None, None, :]
        # A row with every key masked ignores the mask (backend.h's contract; PyTorch's additive
        # mask would make it uniform, a case no model reaches).
        dead = ~keep.any(-1, keepdim=True)
        keep = keep | dead
        s = torch.where(keep, s, torch.full_like(s, -math.inf))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), v)


q, k, v = randn(2, 5, 2, 8), randn(2, 7, 2, 8), randn(2, 7, 2, 8)
sc_ = 8 ** -0.5
case("attention", "attention", {"scale": sc_}, {"q": q, "k": k, "v": v}, {"out": sdpa(d(q), d(k), d(v), sc_)})
bias_t = randn(2, 5, 7)
km = torch.tensor([[1, 1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 0]], dtype=torch.uint8)
case("attention_bias_mask", "attention", {"scale": sc_}, {"q": q, "k": k, "v": v, "bias": bias_t, "key_mask": km},
     {"out": sdpa(d(q), d(k), d(v), sc_, d(bias_t), km)})
lens = [3, 4]
qx, kx, vx = randn(2, 5, 2, 8), randn(sum(lens), 2, 8), randn(sum(lens), 2, 8)
outs, o = [], 0
for bi, L in enumerate(lens):
    outs.append(sdpa(d(qx[bi:bi + 1]), d(kx[None, o:o + L]), d(vx[None, o:o + L]), sc_))
    o += L
case("cross_attention", "cross_attention", {"scale": sc_, "kv_lens": lens}, {"q": qx, "k": kx, "v": vx},
     {"out": torch.cat(outs, 0)})

# ---------------------------------------------------------------- embeddings and layout --------
t = torch.tensor([0.0, 1.0, 999.0], dtype=torch.float32)
# Frequencies and arguments in float32 as the spec orders them (§3.4), cos/sin in float64.
half = 8
f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
args = d(t[:, None] * f[None, :])
case("timestep_embedding", "timestep_embedding", {"max_period": 10000.0, "dim": 16}, {"t": t},
     {"out": torch.cat([torch.cos(args), torch.sin(args)], -1)})
case("sincos_pos_embed_2d", "sincos_pos_embed_2d", {"hp": 3, "wp": 4, "scale": 1.5, "base_size": 3.0, "channels": 16},
     {}, {"out": sincos_pos_emb_2d(16, 3, 4, 1.5, 3.0)})

x = randn(2, 3, 3, 5, 7)
pt, ph, pw = 1, 2, 2
xp = F.pad(d(x), (0, (-7) % pw, 0, (-5) % ph, 0, (-3) % pt))
Bx, Cx, Tp, Hp, Wp = 2, 3, 3, 3, 4
pat = xp.reshape(Bx, Cx, Tp, pt, Hp, ph, Wp, pw).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(Bx, Tp * Hp * Wp, Cx * pt * ph * pw)
case("patchify", "patchify", {"patch": [pt, ph, pw]}, {"x": x}, {"out": pat})
co = 2
tok = randn(2, Tp * Hp * Wp, pt * ph * pw * co)
full = d(tok).reshape(2, Tp, Hp, Wp, pt, ph, pw, co).permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(2, co, Tp * pt, Hp * ph, Wp * pw)
case("unpatchify", "unpatchify", {"grid": [Tp, Hp, Wp], "patch": [pt, ph, pw], "size": [3, 5, 7]}, {"x": tok},
     {"out": full[:, :, :3, :5, :7]})
src = randn(10, 6)
rows = [3, 0, 9, 3]
case("gather_rows", "gather_rows", {"rows": rows}, {"src": src}, {"out": d(src)[rows]})
src = randn(3, 4, 5)
case("copy_permuted", "copy", {"permute": [2, 0, 1]}, {"src": src}, {"out": d(src).permute(2, 0, 1)})

# ---------------------------------------------------------------- convolutions (VAE) -----------
x, w, b = randn(1, 3, 4, 6, 6), randn(5, 3, 3, 3, 3, scale=0.2), randn(5, scale=0.1)
xpad = F.pad(d(x), (1, 1, 1, 1, 2, 0))  # causal: two frames in front, none behind
case("conv3d_causal", "conv3d", {"stride": [1, 1, 1], "pad": [2, 0, 1, 1, 1, 1]}, {"x": x, "w": w, "bias": b},
     {"out": F.conv3d(xpad, d(w), d(b))})
x2, w2, b2 = randn(2, 4, 1, 7, 8), randn(6, 4, 1, 3, 3, scale=0.2), randn(6, scale=0.1)
xpad = F.pad(d(x2), (0, 1, 0, 1, 0, 0))  # the 2D downsampler: (0, 1, 0, 1), stride 2
case("conv2d_stride2", "conv3d", {"stride": [1, 2, 2], "pad": [0, 0, 0, 1, 0, 1]}, {"x": x2, "w": w2, "bias": b2},
     {"out": F.conv3d(xpad, d(w2), d(b2), stride=(1, 2, 2))})
x = randn(2, 8, 3, 4, 4, scale=2) + 1
gam, bet = randn(8), randn(8)
gn = F.group_norm(d(x), 4, d(gam), d(bet), eps=1e-6)
case("group_norm", "group_norm", {"groups": 4, "eps": 1e-6, "silu": False}, {"x": x, "gamma": gam, "beta": bet}, {"out": gn})
case("group_norm_silu", "group_norm", {"groups": 4, "eps": 1e-6, "silu": True}, {"x": x, "gamma": gam, "beta": bet},
     {"out": silu(gn)})
x = randn(2, 3, 4, 5)
case("upsample_nearest2x", "upsample_nearest2x", {}, {"x": x},
     {"out": d(x).repeat_interleave(2, -1).repeat_interleave(2, -2)})
scl, sft = randn(3), randn(3)
case("channel_affine", "channel_affine", {}, {"x": x, "scale": scl, "shift": sft},
     {"out": d(x) * d(scl)[None, :, None, None] + d(sft)[None, :, None, None]})


# ---------------------------------------------------------------- sampling ----------------------
# The rectified-flow Euler step with classifier-free guidance (spec §8.4): z += dt * v, with
# v = vu + g * (vc - vu) from the two halves of the denoiser's output (its first 4 of 8 channels).
z = randn(2, 4, 3, 2, 5)
for cfg in (True, False):
    v = randn(2 * (2 if cfg else 1), 8, 3, 2, 5)
    vc = d(v[:2, :4])
    step = d(v[2:, :4]) + 7.0 * (vc - d(v[2:, :4])) if cfg else vc
    case("cfg_euler_step" if cfg else "euler_step", "cfg_euler_step", {"cfg": cfg, "guidance": 7.0, "dt": 0.03125},
         {"z": z, "v": v}, {"z": d(z) + 0.03125 * step})


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests", "data", "ops")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "cases.safetensors")
    save_file(TENSORS, path, {"cases": json.dumps(CASES), "made_by": "tools/reference/make_op_fixtures.py"})
    print(f"{path}: {len(CASES)} cases over {len({c['op'] for c in CASES})} ops, {len(TENSORS)} tensors")


if __name__ == "__main__":
    main()
