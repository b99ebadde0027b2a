"""Independent PyTorch reference of the Open-Sora 1.2 STDiT3 denoiser (CPU, float32).

Written from /work/shared/spec/architecture.md sections 2-5 (the section numbers
below, "§3.3" etc., refer to that file). It is meant to be read side by side
with the C++ engine: every step is spelled out with plain tensor operations,
there are no fused kernels, no einops, no attention libraries.

Module and parameter names are chosen so that `state_dict()` has exactly the
keys, shapes and order of the real checkpoint (spec/keys/stdit3.tsv).

Shapes used in comments:
    B  model batch (2 x prompts under classifier-free guidance)
    C  hidden size, nh heads, d = C / nh head dim
    T  latent frames, (Hp, Wp) patch grid, S = Hp*Wp, N = T*S tokens
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# TeaCache (step caching, arXiv 2411.19108): the polynomial its authors fitted for Open-Sora 1.2,
# highest power first, that rescales the relative L1 change of the first block's modulated input.
TEACACHE_COEFFS = (2.17546007e+02, -1.18329252e+02, 2.68662585e+01, -4.59364272e-02, 4.84426240e-02)


def teacache_rescale(rel):
    v = 0.0
    for c in TEACACHE_COEFFS:
        v = v * rel + c
    return v

LN_EPS = 1e-6  # all LayerNorms (norm1, norm2, final): eps 1e-6, no affine
RMS_EPS = 1e-6  # q_norm / k_norm
ROPE_THETA = 10000.0
FREQ_EMB_DIM = 256  # sinusoidal size of timestep / fps embeddings (§3.4)


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclass
class STDiT3Config:
    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    mlp_ratio: float = 4.0
    caption_channels: int = 4096
    model_max_length: int = 300
    in_channels: int = 4
    patch_size: tuple = (1, 2, 2)
    pred_sigma: bool = True
    input_sq_size: int = 512

    @property
    def out_channels(self):
        return self.in_channels * 2 if self.pred_sigma else self.in_channels

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self):
        return int(self.hidden_size * self.mlp_ratio)

    @classmethod
    def from_hf_dict(cls, d):
        """Build from a HF-style config.json dict (extra keys are ignored)."""
        return cls(
            depth=d["depth"],
            hidden_size=d["hidden_size"],
            num_heads=d["num_heads"],
            mlp_ratio=d["mlp_ratio"],
            caption_channels=d["caption_channels"],
            model_max_length=d["model_max_length"],
            in_channels=d.get("in_channels", 4),
            patch_size=tuple(d.get("patch_size", (1, 2, 2))),
            pred_sigma=d.get("pred_sigma", True),
            input_sq_size=d.get("input_sq_size", 512),
        )

    def to_hf_dict(self):
        """HF config.json dict with the same keys as hpcai-tech/OpenSora-STDiT-v3."""
        return {
            "architectures": ["STDiT3"],
            "caption_channels": self.caption_channels,
            "class_dropout_prob": 0.1,
            "depth": self.depth,
            "drop_path": 0.0,
            "enable_flash_attn": False,
            "enable_layernorm_kernel": False,
            "enable_sequence_parallelism": False,
            "freeze_y_embedder": True,
            "hidden_size": self.hidden_size,
            "in_channels": self.in_channels,
            "input_size": [None, None, None],
            "input_sq_size": self.input_sq_size,
            "mlp_ratio": self.mlp_ratio,
            "model_max_length": self.model_max_length,
            "model_type": "STDiT3",
            "num_heads": self.num_heads,
            "only_train_temporal": False,
            "patch_size": list(self.patch_size),
            "pred_sigma": self.pred_sigma,
            "qk_norm": True,
            "skip_y_embedder": False,
            "torch_dtype": "float32",
            "transformers_version": "4.36.2",
        }


def param_shapes(cfg):
    """Ordered list of (state_dict key, shape) for `cfg`, computed without
    building the model. check_reference.py verifies it equals the model's
    state_dict and, for the real config, spec/keys/stdit3.tsv."""
    C, d, H, ptot = cfg.hidden_size, cfg.head_dim, cfg.mlp_hidden, 1
    for p in cfg.patch_size:
        ptot *= p
    out = [
        ("rope.freqs", [d // 2]),
        ("x_embedder.proj.weight", [C, cfg.in_channels] + list(cfg.patch_size)),
        ("x_embedder.proj.bias", [C]),
    ]
    for emb in ("t_embedder", "fps_embedder"):
        out += [
            (emb + ".mlp.0.weight", [C, FREQ_EMB_DIM]),
            (emb + ".mlp.0.bias", [C]),
            (emb + ".mlp.2.weight", [C, C]),
            (emb + ".mlp.2.bias", [C]),
        ]
    out += [
        ("t_block.1.weight", [6 * C, C]),
        ("t_block.1.bias", [6 * C]),
        ("y_embedder.y_embedding", [cfg.model_max_length, cfg.caption_channels]),
        ("y_embedder.y_proj.fc1.weight", [C, cfg.caption_channels]),
        ("y_embedder.y_proj.fc1.bias", [C]),
        ("y_embedder.y_proj.fc2.weight", [C, C]),
        ("y_embedder.y_proj.fc2.bias", [C]),
    ]
    for kind in ("spatial_blocks", "temporal_blocks"):
        for i in range(cfg.depth):
            p = "%s.%d." % (kind, i)
            out += [
                (p + "scale_shift_table", [6, C]),
                (p + "attn.qkv.weight", [3 * C, C]),
                (p + "attn.qkv.bias", [3 * C]),
                (p + "attn.q_norm.weight", [d]),
                (p + "attn.k_norm.weight", [d]),
                (p + "attn.proj.weight", [C, C]),
                (p + "attn.proj.bias", [C]),
                (p + "cross_attn.q_linear.weight", [C, C]),
                (p + "cross_attn.q_linear.bias", [C]),
                (p + "cross_attn.kv_linear.weight", [2 * C, C]),
                (p + "cross_attn.kv_linear.bias", [2 * C]),
                (p + "cross_attn.proj.weight", [C, C]),
                (p + "cross_attn.proj.bias", [C]),
                (p + "mlp.fc1.weight", [H, C]),
                (p + "mlp.fc1.bias", [H]),
                (p + "mlp.fc2.weight", [C, H]),
                (p + "mlp.fc2.bias", [C]),
            ]
    out += [
        ("final_layer.scale_shift_table", [2, C]),
        ("final_layer.linear.weight", [ptot * cfg.out_channels, C]),
        ("final_layer.linear.bias", [ptot * cfg.out_channels]),
    ]
    return out


# ----------------------------------------------------------------------------
# Stateless helpers (formulas of §3.3, §3.4, §4.3, §4.4)
# ----------------------------------------------------------------------------


def rope_default_freqs(head_dim, device=None):
    """Value of `rope.freqs`: w_i = 1 / 10000^(2i/d), i = 0..d/2-1, in float32.

    Computed in the same float32 operation order as rotary_embedding_torch:
    e = float32(2i) / d ; p = 10000^e ; w = 1 / p.
    """
    e = torch.arange(0, head_dim, 2, dtype=torch.float32)[: head_dim // 2] / head_dim
    freqs = 1.0 / (ROPE_THETA ** e)
    return freqs if device is None else freqs.to(device)


def sinusoid_embedding(v, dim=FREQ_EMB_DIM, max_period=10000.0):
    """Timestep / fps sinusoid (§3.4): [cos(v*f) | sin(v*f)], COS FIRST.

    f_i = exp(-ln(max_period) * i / half), i = 0..half-1, all in float32:
    f32(-ln(10000)) * f32(i), then / half, then exp.
    v: [B] -> [B, dim].
    """
    half = dim // 2
    i = torch.arange(0, half, dtype=torch.float32)
    freqs = torch.exp(-math.log(max_period) * i / half)
    args = v.reshape(-1, 1).float() * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_emb_2d(C, Hp, Wp, scale, base_size):
    """2D sin-cos positional embedding (§3.3), returns [S, C], row-major (r, c).

    omega_k = 1 / 10000^(k / (C/4)), k = 0..C/4-1, computed in float32 as
        e = f32(2k) / (C/2) ; omega = 1 / 10000^e.
    Coordinates (float32): rho = (r / scale) * (base_size / Hp) for row r,
                           gam = (c / scale) * (base_size / Wp) for column c
    (the scalars `scale` and `base_size / Hp` are Python doubles rounded to
    float32 by each tensor op). Each token gets four C/4-wide parts:
        [sin(gam*omega), cos(gam*omega), sin(rho*omega), cos(rho*omega)]
    i.e. the COLUMN coordinate comes first.
    """
    assert C % 4 == 0
    half = C // 2
    e = torch.arange(0, half, 2, dtype=torch.float32) / half
    omega = 1.0 / (10000.0 ** e)  # [C/4]
    rows = torch.arange(Hp, dtype=torch.float32) / scale
    cols = torch.arange(Wp, dtype=torch.float32) / scale
    rows = rows * (base_size / Hp)
    cols = cols * (base_size / Wp)
    rho = rows[:, None].expand(Hp, Wp).reshape(-1)  # [S] row coordinate of token
    gam = cols[None, :].expand(Hp, Wp).reshape(-1)  # [S] column coordinate
    a_col = gam[:, None] * omega[None, :]
    a_row = rho[:, None] * omega[None, :]
    return torch.cat([torch.sin(a_col), torch.cos(a_col), torch.sin(a_row), torch.cos(a_row)], dim=-1)


def layer_norm(x):
    """LayerNorm over the last dim, eps 1e-6, no weight/bias."""
    return F.layer_norm(x, (x.shape[-1],), weight=None, bias=None, eps=LN_EPS)


def modulate(x, shift, scale):
    """t2i_modulate: x * (1 + scale) + shift."""
    return x * (1 + scale) + shift


def attention(q, k, v):
    """Plain softmax attention on [..., Nq, d] x [..., Nk, d].

    Like Open-Sora's non-flash path, q is multiplied by d^-0.5 first, then
    scores = q @ k^T, softmax over keys, out = p @ v. No mask.
    """
    d = q.shape[-1]
    scores = (q * (d ** -0.5)) @ k.transpose(-2, -1)
    return torch.softmax(scores, dim=-1) @ v


def apply_rope(x, freqs):
    """Rotary embedding along dim -2 (positions 0..L-1) with INTERLEAVED pairs (§4.4).

    x: [..., L, d]; freqs: [d/2]. For pair i of position p, angle a = p * freqs[i]
    (float32 product), and
        out[2i]   = x[2i]   * cos(a) - x[2i+1] * sin(a)
        out[2i+1] = x[2i+1] * cos(a) + x[2i]   * sin(a)
    Position 0 is the identity.
    """
    L = x.shape[-2]
    pos = torch.arange(L, dtype=x.dtype)
    ang = pos[:, None] * freqs.to(x.dtype)[None, :]  # [L, d/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x_even, x_odd = x[..., 0::2], x[..., 1::2]
    out_even = x_even * cos - x_odd * sin
    out_odd = x_odd * cos + x_even * sin
    return torch.stack([out_even, out_odd], dim=-1).flatten(-2)


# ----------------------------------------------------------------------------
# Sub-modules (names match the checkpoint keys)
# ----------------------------------------------------------------------------


class RotaryFreqs(nn.Module):
    """Holds `rope.freqs` [d/2] (an nn.Parameter in the real model, not trained)."""

    def __init__(self, head_dim, device=None):
        super().__init__()
        self.freqs = nn.Parameter(rope_default_freqs(head_dim, device), requires_grad=False)


class PatchEmbed3D(nn.Module):
    """§3.2: zero-pad W, H, T at the end to multiples of the patch, Conv3d with
    kernel = stride = patch, flatten to tokens in (t, h, w) order -> [B, N, C]."""

    def __init__(self, patch_size, in_ch, C, device=None):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(in_ch, C, kernel_size=self.patch_size, stride=self.patch_size, device=device)

    def forward(self, x):
        pt, ph, pw = self.patch_size
        _, _, T, H, W = x.shape
        # F.pad takes (W_left, W_right, H_top, H_bottom, T_front, T_back)
        x = F.pad(x, (0, (-W) % pw, 0, (-H) % ph, 0, (-T) % pt))
        x = self.proj(x)  # [B, C, T, Hp, Wp]
        return x.flatten(2).transpose(1, 2)  # [B, T*Hp*Wp, C]


class FreqEmbedder(nn.Module):
    """t_embedder / fps_embedder: sinusoid(256) -> Linear -> SiLU -> Linear."""

    def __init__(self, C, device=None):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(FREQ_EMB_DIM, C, device=device),
            nn.SiLU(),
            nn.Linear(C, C, device=device),
        )

    def forward(self, v):
        return self.mlp(sinusoid_embedding(v))


class Mlp(nn.Module):
    """timm-style Mlp: fc1 -> GELU(tanh) -> fc2, both with bias."""

    def __init__(self, c_in, hidden, c_out, device=None):
        super().__init__()
        self.fc1 = nn.Linear(c_in, hidden, device=device)
        self.fc2 = nn.Linear(hidden, c_out, device=device)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """y_embedder: persistent buffer `y_embedding` (the null caption) + y_proj Mlp."""

    def __init__(self, caption_channels, C, max_len, device=None):
        super().__init__()
        self.register_buffer("y_embedding", torch.zeros(max_len, caption_channels, device=device))
        self.y_proj = Mlp(caption_channels, C, C, device=device)

    def forward(self, y):
        return self.y_proj(y)


class RMSNorm(nn.Module):
    """LlamaRMSNorm: w * (x / sqrt(mean(x^2) + eps)), statistics in float32."""

    def __init__(self, d, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, device=device))

    def forward(self, x):
        x32 = x.float()
        inv = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + RMS_EPS)
        return self.weight * (x32 * inv).to(x.dtype)


class SelfAttention(nn.Module):
    """`attn` (§4.3): qkv Linear(C -> 3C) laid out [q | k | v], each head a
    contiguous run of d; RMSNorm on q and k; RoPE after the norm (temporal
    blocks only); softmax attention; proj Linear(C -> C)."""

    def __init__(self, C, nh, device=None):
        super().__init__()
        self.nh, self.d = nh, C // nh
        self.qkv = nn.Linear(C, 3 * C, device=device)
        self.q_norm = RMSNorm(self.d, device=device)
        self.k_norm = RMSNorm(self.d, device=device)
        self.proj = nn.Linear(C, C, device=device)

    def forward(self, x, rope_freqs=None):
        Bq, L, C = x.shape  # Bq sequences of L tokens
        qkv = self.qkv(x).view(Bq, L, 3, self.nh, self.d).permute(2, 0, 3, 1, 4)  # [3, Bq, nh, L, d]
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope_freqs is not None:
            q, k = apply_rope(q, rope_freqs), apply_rope(k, rope_freqs)
        o = attention(q, k, v)  # [Bq, nh, L, d]
        return self.proj(o.transpose(1, 2).reshape(Bq, L, C))


class CrossAttention(nn.Module):
    """`cross_attn` (§4.5): q from image tokens, [k | v] from the packed text.
    Batch entry b attends only to its own y_lens[b] text tokens (block-diagonal)."""

    def __init__(self, C, nh, device=None):
        super().__init__()
        self.nh, self.d = nh, C // nh
        self.q_linear = nn.Linear(C, C, device=device)
        self.kv_linear = nn.Linear(C, 2 * C, device=device)
        self.proj = nn.Linear(C, C, device=device)

    def forward(self, x, y_packed, y_lens):
        B, N, C = x.shape
        q = self.q_linear(x).view(B, N, self.nh, self.d)
        kv = self.kv_linear(y_packed).view(-1, 2, self.nh, self.d)
        k, v = kv[:, 0], kv[:, 1]  # [sum L, nh, d]
        outs, start = [], 0
        for b in range(B):
            L = int(y_lens[b])
            assert L > 0, "empty caption for batch entry %d" % b
            qb = q[b].transpose(0, 1)  # [nh, N, d]
            kb = k[start:start + L].transpose(0, 1)  # [nh, L, d]
            vb = v[start:start + L].transpose(0, 1)
            outs.append(attention(qb, kb, vb).transpose(0, 1).reshape(N, C))
            start += L
        return self.proj(torch.stack(outs, dim=0))


def select_frames(x_mask, x_normal, x_zero, T, S):
    """Per frame: keep x_normal where x_mask[b, t] is True, else x_zero. [B, N, C]."""
    B, N, C = x_normal.shape
    m = x_mask.view(B, T, 1, 1)
    return torch.where(m, x_normal.view(B, T, S, C), x_zero.view(B, T, S, C)).view(B, N, C)


class STDiT3Block(nn.Module):
    """One spatial or temporal block (§4.2). Same parameters for both kinds."""

    def __init__(self, cfg, temporal, device=None):
        super().__init__()
        C = cfg.hidden_size
        self.temporal = temporal
        self.scale_shift_table = nn.Parameter(torch.zeros(6, C, device=device))
        self.attn = SelfAttention(C, cfg.num_heads, device=device)
        self.cross_attn = CrossAttention(C, cfg.num_heads, device=device)
        self.mlp = Mlp(C, cfg.mlp_hidden, C, device=device)

    def _mod(self, tvec):
        """[B, 6C] -> six [B, 1, C]: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp."""
        B, C = tvec.shape[0], self.scale_shift_table.shape[1]
        return (self.scale_shift_table[None] + tvec.reshape(B, 6, C)).chunk(6, dim=1)

    def forward(self, x, y_packed, y_lens, t_mlp, x_mask, t0_mlp, T, S, rope_freqs):
        B, N, C = x.shape
        sh1, sc1, g1, sh2, sc2, g2 = self._mod(t_mlp)
        if x_mask is not None:
            sh1z, sc1z, g1z, sh2z, sc2z, g2z = self._mod(t0_mlp)

        # 1. norm1 + modulation (clean frames use the t0 modulation)
        h = layer_norm(x)
        a = modulate(h, sh1, sc1)
        if x_mask is not None:
            a = select_frames(x_mask, a, modulate(h, sh1z, sc1z), T, S)

        # 2. self-attention over the S tokens of a frame, or the T frames of a position
        if self.temporal:
            a = a.view(B, T, S, C).transpose(1, 2).reshape(B * S, T, C)
            a = self.attn(a, rope_freqs)
            a = a.view(B, S, T, C).transpose(1, 2).reshape(B, N, C)
        else:
            a = self.attn(a.reshape(B * T, S, C)).view(B, N, C)

        # 3. gated residual
        g = g1 * a
        if x_mask is not None:
            g = select_frames(x_mask, g, g1z * a, T, S)
        x = x + g

        # 4. cross-attention: no norm, no modulation, no gate
        x = x + self.cross_attn(x, y_packed, y_lens)

        # 5.-7. norm2 + modulation, MLP, gated residual
        h = layer_norm(x)
        m = modulate(h, sh2, sc2)
        if x_mask is not None:
            m = select_frames(x_mask, m, modulate(h, sh2z, sc2z), T, S)
        m = self.mlp(m)
        g = g2 * m
        if x_mask is not None:
            g = select_frames(x_mask, g, g2z * m, T, S)
        return x + g


class FinalLayer(nn.Module):
    """final_layer (§3.7): modulation from the RAW t (no t_block), Linear(C -> 32)."""

    def __init__(self, C, n_out, device=None):
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.zeros(2, C, device=device))
        self.linear = nn.Linear(C, n_out, device=device)

    def forward(self, x, t, x_mask=None, t0=None, T=None, S=None):
        shift, scale = (self.scale_shift_table[None] + t[:, None]).chunk(2, dim=1)  # [B, 1, C] each
        x = modulate(layer_norm(x), shift, scale)
        if x_mask is not None:
            # Open-Sora quirk: the clean-frame version is built from the
            # ALREADY MODULATED x, so LayerNorm runs twice for those frames.
            shift0, scale0 = (self.scale_shift_table[None] + t0[:, None]).chunk(2, dim=1)
            x0 = modulate(layer_norm(x), shift0, scale0)
            x = select_frames(x_mask, x, x0, T, S)
        return self.linear(x)


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


class STDiT3(nn.Module):
    def __init__(self, cfg=None, device=None):
        super().__init__()
        cfg = cfg or STDiT3Config()
        self.cfg = cfg
        C = cfg.hidden_size
        n_patch = 1
        for p in cfg.patch_size:
            n_patch *= p
        # Registration order == checkpoint key order (rope.freqs comes first).
        self.rope = RotaryFreqs(cfg.head_dim, device=device)
        self.x_embedder = PatchEmbed3D(cfg.patch_size, cfg.in_channels, C, device=device)
        self.t_embedder = FreqEmbedder(C, device=device)
        self.fps_embedder = FreqEmbedder(C, device=device)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C, device=device))
        self.y_embedder = CaptionEmbedder(cfg.caption_channels, C, cfg.model_max_length, device=device)
        self.spatial_blocks = nn.ModuleList([STDiT3Block(cfg, False, device) for _ in range(cfg.depth)])
        self.temporal_blocks = nn.ModuleList([STDiT3Block(cfg, True, device) for _ in range(cfg.depth)])
        self.final_layer = FinalLayer(C, n_patch * cfg.out_channels, device=device)

    # -- text ---------------------------------------------------------------
    def encode_text(self, y, mask):
        """§3.5: y [B, 1, Lmax, Cc] -> (y_packed [sum L_b, C], y_lens list).

        The caption MLP runs on every row (null rows included); then the rows
        with mask != 0 are kept, batch entry after batch entry. A mask with
        B/2 rows is tiled to B (the null half reuses the prompt's mask).
        """
        B, C = y.shape[0], self.cfg.hidden_size
        e = self.y_embedder(y).squeeze(1)  # [B, Lmax, C]
        if mask is None:
            return e.reshape(-1, C), [e.shape[1]] * B
        mask = mask.reshape(mask.shape[0], -1)
        if mask.shape[0] != B:
            assert B % mask.shape[0] == 0
            mask = mask.repeat(B // mask.shape[0], 1)
        keep = mask != 0
        y_lens = [int(v) for v in mask.to(torch.int64).sum(dim=1)]
        return e[keep], y_lens

    # -- forward --------------------------------------------------------------
    def forward(self, x, timestep, y, mask=None, x_mask=None, fps=None, height=None, width=None, record=None,
                cache=None):
        """x [B, Cin, Tx, Hx, Wx]; timestep [B]; y [B, 1, Lmax, Cc]; mask [B/2 or B, Lmax];
        x_mask [B, T] bool or None; fps, height, width: [1] or [B/2] (the first
        entry of height/width is used, as in Open-Sora).
        Returns float32 [B, 2*Cin, Tx, Hx, Wx]. If `record` is a dict it receives
        the intermediates listed in tests/data/README.md.
        `cache` (a dict: threshold > 0, refresh) enables TeaCache step caching across calls: the
        dict keeps the state and gets cache["ran"] (whether the blocks ran)."""
        cfg = self.cfg
        C = cfg.hidden_size

        def rec(name, value):
            if record is not None:
                record[name] = value.detach().clone() if torch.is_tensor(value) else value

        dtype = self.x_embedder.proj.weight.dtype
        x, timestep, y = x.to(dtype), timestep.to(dtype), y.to(dtype)
        B, _, Tx, Hx, Wx = x.shape
        pt, ph, pw = cfg.patch_size
        T, Hp, Wp = -(-Tx // pt), -(-Hx // ph), -(-Wx // pw)  # ceil divisions
        S = Hp * Wp
        N = T * S
        assert fps is not None and height is not None and width is not None

        # §3.3 positional embedding (pixel height/width; first entry used)
        base_size = round(math.sqrt(S))
        h_px, w_px = float(height.reshape(-1)[0]), float(width.reshape(-1)[0])
        scale = math.sqrt(h_px * w_px) / cfg.input_sq_size
        pos_emb = sincos_pos_emb_2d(C, Hp, Wp, scale, base_size).to(dtype)  # [S, C]
        rec("pos_emb", pos_emb)

        # §3.4 timestep + fps -> raw t, and the shared modulation vector t_mlp
        fps_b = fps.reshape(-1)
        if fps_b.shape[0] != B:
            fps_b = fps_b.repeat(B // fps_b.shape[0])
        fps_emb = self.fps_embedder(fps_b)
        t = self.t_embedder(timestep) + fps_emb  # [B, C]
        t_mlp = self.t_block(t)  # [B, 6C]
        rec("t", t)
        rec("t_mlp", t_mlp)
        t0 = t0_mlp = None
        if x_mask is not None:
            x_mask = x_mask.to(torch.bool).reshape(B, T)
            t0 = self.t_embedder(torch.zeros_like(timestep)) + fps_emb
            t0_mlp = self.t_block(t0)
            rec("t0", t0)
            rec("t0_mlp", t0_mlp)

        # §3.5 captions
        y_packed, y_lens = self.encode_text(y, mask)
        rec("y_packed", y_packed)
        rec("y_lens", torch.tensor(y_lens, dtype=torch.int64))

        # §3.2 patch embedding + positional embedding (added to every frame)
        h = self.x_embedder(x)  # [B, N, C]
        h = (h.view(B, T, S, C) + pos_emb[None, None]).view(B, N, C)
        rec("x_embed", h)

        # TeaCache: the first spatial block's norm1 + modulation of the embedded input (no frame
        # selection); the relative L1 change against the previous call's, rescaled, accumulated;
        # under the threshold the blocks are skipped and the last residual of the blocks reused.
        run = True
        if cache is not None and cache["threshold"] > 0:
            sh1, sc1 = self.spatial_blocks[0]._mod(t_mlp)[:2]
            m = modulate(layer_norm(h), sh1, sc1)
            prev, res = cache.get("prev"), cache.get("residual")
            if cache["refresh"] or prev is None or res is None or prev.shape[0] < B:
                cache["acc"] = 0.0
            else:
                prev = prev[:B]
                rel = float((m - prev).abs().mean() / prev.abs().mean())
                cache["acc"] += teacache_rescale(rel)
                if cache["acc"] < cache["threshold"]:
                    run = False
                else:
                    cache["acc"] = 0.0
            cache["prev"] = m
            cache["ran"] = run

        # §3.6 blocks S0, T0, S1, T1, ...
        if run:
            h_in = h.clone()
            freqs = self.rope.freqs
            k = 0
            for sb, tb in zip(self.spatial_blocks, self.temporal_blocks):
                h = sb(h, y_packed, y_lens, t_mlp, x_mask, t0_mlp, T, S, None)
                rec("block.%d" % k, h)
                h = tb(h, y_packed, y_lens, t_mlp, x_mask, t0_mlp, T, S, freqs)
                rec("block.%d" % (k + 1), h)
                k += 2
            if cache is not None and cache["threshold"] > 0:
                cache["residual"] = h - h_in
        else:
            h = h + cache["residual"][:B]

        # §3.7 final layer + unpatchify (c_out fastest) + crop
        out = self.final_layer(h, t, x_mask, t0, T, S)  # [B, N, pt*ph*pw*Cout]
        rec("final", out)
        Co = cfg.out_channels
        out = out.view(B, T, Hp, Wp, pt, ph, pw, Co)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(B, Co, T * pt, Hp * ph, Wp * pw)
        out = out[:, :, :Tx, :Hx, :Wx]
        return out.to(torch.float32)
