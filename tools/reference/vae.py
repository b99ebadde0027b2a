"""Independent PyTorch reference of the Open-Sora 1.2 VAE (`OpenSoraVAE_V1_2`).

Written from shared/spec/architecture.md section 9 (checked against Open-Sora v1.2.0
`opensora/models/vae/{vae,vae_temporal,utils}.py` and diffusers 0.27.2 `AutoencoderKL`).
CPU, float32. Sizes are configurable so that a tiny model with every real key pattern can
be built; the default `VAEConfig()` is the real model.

Pipeline (frames <-> latents):

    encode(x [B,3,F,H,W]):
        x_z = 2D-encode every frame (micro-batches of 4 frames):
              mean of quant_conv(encoder(frame)) (first 4 of 8 channels) * 0.18215
        for each chunk of 17 frames of x_z (the last may be shorter), n frames:
              front-pad p = (4 - n % 4) % 4 zero frames, temporal encoder, quant_conv,
              mean = first 4 of 8 channels      -> (n + p) / 4 latent frames
        z = (concat_t(means) - shift) / scale

    decode(z [B,4,T,h,w], num_frames F):   (T must equal get_latent_size(F)[0])
        z' = z * scale + shift
        for each chunk k of 5 latent frames:  f_k = min(17, F - 17 k)
              x_k = temporal decoder(post_quant_conv(z'_k)), 4 * len frames,
              drop the first (4 - f_k % 4) % 4 frames
        x_z = concat_t(x_k)                                       [B,4,F,h,w]
        video = 2D-decode every frame (micro-batches of 4): decoder(post_quant_conv(x_z / 0.18215))
        no clamp.

`encode` returns the posterior MEAN in both VAEs. `encode_sample(x, key)` samples both posteriors
as Open-Sora does (mean + exp(0.5 clamp(logvar, -30, 20)) * eps), eps from the engine's Philox
convention (philox.py): 2D frame f uses stream f, temporal chunk k stream 0x80000000 + k.

State-dict keys are the real ones: `scale`, `shift` ([1,4,1,1,1] buffers),
`spatial_vae.module.` + diffusers AutoencoderKL names, `temporal_vae.` + VAE_Temporal names.
"""

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALING_FACTOR_2D = 0.18215  # hard-coded in Open-Sora (PixArt's config says 0.13025: unused)
REAL_SCALE = (3.85, 2.32, 2.33, 3.06)
REAL_SHIFT = (-0.10, 0.34, 0.27, 0.98)


@dataclass
class VAEConfig:
    # 2D (diffusers AutoencoderKL, SDXL VAE)
    block_out_channels: Tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    latent_channels: int = 4
    in_channels: int = 3
    out_channels: int = 3
    # temporal (VAE_Temporal_SD)
    filters: int = 128
    channel_multipliers: Tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 4
    num_groups: int = 32
    temporal_downsample: Tuple[bool, ...] = (False, True, True)
    t_in_out_channels: int = 4
    t_latent_channels: int = 4
    # pipeline
    micro_frame_size: int = 17
    micro_batch_size: int = 4
    scale: Tuple[float, ...] = REAL_SCALE
    shift: Tuple[float, ...] = REAL_SHIFT

    @property
    def time_factor(self):
        return 2 ** sum(bool(b) for b in self.temporal_downsample)

    @classmethod
    def from_json_dict(cls, d):
        """Real Open-Sora VAE config.json, plus the optional `stdit_vae_2d` / `stdit_vae_temporal`
        objects that reduce the sizes (absent -> real values)."""
        kw = {}
        if "scale" in d:
            kw["scale"] = tuple(float(v) for v in d["scale"])
        if "shift" in d:
            kw["shift"] = tuple(float(v) for v in d["shift"])
        if d.get("micro_frame_size") is not None:
            kw["micro_frame_size"] = int(d["micro_frame_size"])
        mbs = (d.get("vae_2d") or {}).get("micro_batch_size")
        if mbs is not None:
            kw["micro_batch_size"] = int(mbs)
        s2 = d.get("stdit_vae_2d") or {}
        for k in ("layers_per_block", "norm_num_groups", "latent_channels"):
            if k in s2:
                kw[k] = int(s2[k])
        if "block_out_channels" in s2:
            kw["block_out_channels"] = tuple(int(v) for v in s2["block_out_channels"])
        st = d.get("stdit_vae_temporal") or {}
        for k in ("filters", "num_res_blocks", "num_groups"):
            if k in st:
                kw[k] = int(st[k])
        if "channel_multipliers" in st:
            kw["channel_multipliers"] = tuple(int(v) for v in st["channel_multipliers"])
        if "temporal_downsample" in st:
            kw["temporal_downsample"] = tuple(bool(v) for v in st["temporal_downsample"])
        return cls(**kw)


# ----------------------------------------------------------------------------------------
# Temporal VAE (VAE_Temporal_SD): causal 3D convolutions, GroupNorm eps 1e-5
# ----------------------------------------------------------------------------------------

class CausalConv3d(nn.Module):
    """Zero-pad W and H by k//2 on both sides and time by (k_t - 1) + (1 - stride_t) frames in
    front only, then a plain Conv3d with stride (stride_t, 1, 1) and no padding. Key: `.conv.*`."""

    def __init__(self, cin, cout, k, stride_t=1, bias=True, device=None):
        super().__init__()
        k = (k, k, k) if isinstance(k, int) else tuple(k)
        kt, kh, kw = k
        self.pad = (kw // 2, kw // 2, kh // 2, kh // 2, (kt - 1) + (1 - stride_t), 0)
        self.conv = nn.Conv3d(cin, cout, k, stride=(stride_t, 1, 1), bias=bias, device=device)

    def forward(self, x):
        return self.conv(F.pad(x, self.pad))


class TResBlock(nn.Module):
    """GN -> SiLU -> conv3^3 (no bias) -> GN -> SiLU -> conv3^3 (no bias), + residual
    (1x1x1 conv3, no bias, when cin != cout)."""

    def __init__(self, cin, cout, groups, device=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5, device=device)
        self.conv1 = CausalConv3d(cin, cout, 3, bias=False, device=device)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5, device=device)
        self.conv2 = CausalConv3d(cout, cout, 3, bias=False, device=device)
        self.conv3 = CausalConv3d(cin, cout, 1, bias=False, device=device) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        r = self.conv3(x) if self.conv3 is not None else x
        return h + r


class TEncoder(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        f, mult, nrb, g = c.filters, c.channel_multipliers, c.num_res_blocks, c.num_groups
        self.conv_in = CausalConv3d(c.t_in_out_channels, f, 3, bias=False, device=device)
        self.block_res_blocks = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        prev = f
        for i, m in enumerate(mult):
            ch = f * m
            blocks = nn.ModuleList()
            for _ in range(nrb):
                blocks.append(TResBlock(prev, ch, g, device=device))
                prev = ch
            self.block_res_blocks.append(blocks)
            if i < len(mult) - 1:
                if c.temporal_downsample[i]:
                    self.conv_blocks.append(CausalConv3d(ch, ch, 3, stride_t=2, bias=True, device=device))
                else:
                    self.conv_blocks.append(nn.Identity())
        self.res_blocks = nn.ModuleList([TResBlock(prev, prev, g, device=device) for _ in range(nrb)])
        self.norm1 = nn.GroupNorm(g, prev, eps=1e-5, device=device)
        self.conv2 = CausalConv3d(prev, 2 * c.t_latent_channels, 1, bias=True, device=device)

    def forward(self, x):
        x = self.conv_in(x)
        for i, blocks in enumerate(self.block_res_blocks):
            for b in blocks:
                x = b(x)
            if i < len(self.conv_blocks):
                x = self.conv_blocks[i](x)
        for b in self.res_blocks:
            x = b(x)
        return self.conv2(F.silu(self.norm1(x)))


def depth_to_time(x, ts):
    """[B, C*ts, T, H, W] -> [B, C, T*ts, H, W]; input channel c*ts + j -> output channel c, frame t*ts + j."""
    if ts == 1:
        return x
    b, cts, t, h, w = x.shape
    x = x.reshape(b, cts // ts, ts, t, h, w).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, cts // ts, t * ts, h, w)


class TDecoder(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        f, mult, nrb, g = c.filters, c.channel_multipliers, c.num_res_blocks, c.num_groups
        top = f * mult[-1]
        self.conv1 = CausalConv3d(c.t_latent_channels, top, 3, bias=True, device=device)
        self.res_blocks = nn.ModuleList([TResBlock(top, top, g, device=device) for _ in range(nrb)])
        n = len(mult)
        stages = [None] * n
        ups = [None] * (n - 1)
        self.t_strides = [1] * (n - 1)
        prev = top
        for s in reversed(range(n)):
            ch = f * mult[s]
            blocks = nn.ModuleList()
            for _ in range(nrb):
                blocks.append(TResBlock(prev, ch, g, device=device))
                prev = ch
            stages[s] = blocks
            if s > 0:
                if c.temporal_downsample[s - 1]:
                    ups[s - 1] = CausalConv3d(ch, ch * 2, 3, bias=True, device=device)
                    self.t_strides[s - 1] = 2
                else:
                    ups[s - 1] = nn.Identity()
        self.block_res_blocks = nn.ModuleList(stages)
        self.conv_blocks = nn.ModuleList(ups)
        self.norm1 = nn.GroupNorm(g, prev, eps=1e-5, device=device)
        self.conv_out = CausalConv3d(prev, c.t_in_out_channels, 3, bias=True, device=device)

    def forward(self, x):
        x = self.conv1(x)
        for b in self.res_blocks:
            x = b(x)
        for s in reversed(range(len(self.block_res_blocks))):
            for b in self.block_res_blocks[s]:
                x = b(x)
            if s > 0:
                x = depth_to_time(self.conv_blocks[s - 1](x), self.t_strides[s - 1])
        return self.conv_out(F.silu(self.norm1(x)))


class TemporalVAE(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        self.tf = c.time_factor
        self.lc = c.t_latent_channels
        self.encoder = TEncoder(c, device=device)
        self.quant_conv = CausalConv3d(2 * c.t_latent_channels, 2 * c.t_latent_channels, 1, device=device)
        self.post_quant_conv = CausalConv3d(c.t_latent_channels, c.t_latent_channels, 1, device=device)
        self.decoder = TDecoder(c, device=device)

    def front_pad(self, n):
        return (self.tf - n % self.tf) % self.tf

    def encode_mean(self, x):
        """x: one chunk [B, 4, n, h, w] -> posterior mean [B, 4, (n + p)/4, h, w]."""
        p = self.front_pad(x.shape[2])
        x = F.pad(x, (0, 0, 0, 0, p, 0))
        moments = self.quant_conv(self.encoder(x))
        return moments[:, : self.lc]

    def encode_moments(self, x):
        """x: one chunk [B, 4, n, h, w] -> moments [B, 8, (n + p)/4, h, w] = (mean, logvar)."""
        p = self.front_pad(x.shape[2])
        x = F.pad(x, (0, 0, 0, 0, p, 0))
        return self.quant_conv(self.encoder(x))

    def decode(self, z, num_frames):
        """z: one chunk [B, 4, t, h, w] -> [B, 4, 4t - p(num_frames), h, w]."""
        x = self.decoder(self.post_quant_conv(z))
        return x[:, :, self.front_pad(num_frames):]


# ----------------------------------------------------------------------------------------
# Spatial VAE (diffusers AutoencoderKL layout, SDXL VAE): GroupNorm eps 1e-6
# ----------------------------------------------------------------------------------------

class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, groups, device=None):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-6, device=device)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, device=device)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-6, device=device)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, device=device)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1, device=device) if cin != cout else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        r = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return r + h


class SelfAttention2D(nn.Module):
    """Single head over H*W tokens: GN -> q,k,v Linear -> softmax(q k^T / sqrt(C)) v -> to_out.0, + x."""

    def __init__(self, ch, groups, device=None):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, ch, eps=1e-6, device=device)
        self.to_q = nn.Linear(ch, ch, device=device)
        self.to_k = nn.Linear(ch, ch, device=device)
        self.to_v = nn.Linear(ch, ch, device=device)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch, device=device)])

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)
        att = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (1.0 / math.sqrt(c)), dim=-1)
        o = self.to_out[0](torch.bmm(att, v))
        return o.transpose(1, 2).reshape(b, c, h, w) + x


class MidBlock2D(nn.Module):
    def __init__(self, ch, groups, device=None):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, groups, device=device) for _ in range(2)])
        self.attentions = nn.ModuleList([SelfAttention2D(ch, groups, device=device)])

    def forward(self, x):
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample2D(nn.Module):
    """Zero-pad (left 0, right 1, top 0, bottom 1), then 3x3 conv, stride 2, padding 0."""

    def __init__(self, ch, device=None):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0, device=device)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x, then 3x3 conv, padding 1."""

    def __init__(self, ch, device=None):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1, device=device)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class DownBlock2D(nn.Module):
    def __init__(self, cin, cout, n, groups, add_down, device=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, device=device) for i in range(n)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout, device=device)]) if add_down else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
        return x


class UpBlock2D(nn.Module):
    def __init__(self, cin, cout, n, groups, add_up, device=None):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock2D(cin if i == 0 else cout, cout, groups, device=device) for i in range(n)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout, device=device)]) if add_up else None

    def forward(self, x):
        for r in self.resnets:
            x = r(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Encoder2D(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        boc, g, n = c.block_out_channels, c.norm_num_groups, c.layers_per_block
        self.conv_in = nn.Conv2d(c.in_channels, boc[0], 3, padding=1, device=device)
        self.down_blocks = nn.ModuleList()
        prev = boc[0]
        for i, ch in enumerate(boc):
            self.down_blocks.append(DownBlock2D(prev, ch, n, g, i < len(boc) - 1, device=device))
            prev = ch
        self.mid_block = MidBlock2D(boc[-1], g, device=device)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], eps=1e-6, device=device)
        self.conv_out = nn.Conv2d(boc[-1], 2 * c.latent_channels, 3, padding=1, device=device)

    def forward(self, x):
        x = self.conv_in(x)
        for blk in self.down_blocks:
            x = blk(x)
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class Decoder2D(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        boc, g, n = c.block_out_channels, c.norm_num_groups, c.layers_per_block
        rev = list(reversed(boc))
        self.conv_in = nn.Conv2d(c.latent_channels, rev[0], 3, padding=1, device=device)
        self.mid_block = MidBlock2D(rev[0], g, device=device)
        self.up_blocks = nn.ModuleList()
        prev = rev[0]
        for i, ch in enumerate(rev):
            self.up_blocks.append(UpBlock2D(prev, ch, n + 1, g, i < len(rev) - 1, device=device))
            prev = ch
        self.conv_norm_out = nn.GroupNorm(g, boc[0], eps=1e-6, device=device)
        self.conv_out = nn.Conv2d(boc[0], c.out_channels, 3, padding=1, device=device)

    def forward(self, x):
        x = self.mid_block(self.conv_in(x))
        for blk in self.up_blocks:
            x = blk(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL2D(nn.Module):
    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        self.lc = c.latent_channels
        self.encoder = Encoder2D(c, device=device)
        self.quant_conv = nn.Conv2d(2 * c.latent_channels, 2 * c.latent_channels, 1, device=device)
        self.post_quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, 1, device=device)
        self.decoder = Decoder2D(c, device=device)

    def encode_mean(self, x):
        return self.quant_conv(self.encoder(x))[:, : self.lc]

    def encode_moments(self, x):
        """quant_conv(encoder(x)): [N, 2*lc, h, w] = (mean, logvar)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


def sample_posterior(moments, eps):
    """DiagonalGaussianDistribution(moments).sample() with the given eps (diffusers and Open-Sora
    agree): mean, logvar = chunk(moments, 2, dim=1); logvar = clamp(logvar, -30, 20);
    std = exp(0.5 * logvar); mean + std * eps (float32 ops in this order)."""
    mean, logvar = torch.chunk(moments, 2, dim=1)
    logvar = torch.clamp(logvar, -30.0, 20.0)
    std = torch.exp(0.5 * logvar)
    return mean + std * eps


class SpatialVAE(nn.Module):
    """Open-Sora's VideoAutoencoderKL wrapper: `.module` is the AutoencoderKL; frames are
    independent images processed in micro-batches of `micro_batch_size` (B*T flattened)."""

    def __init__(self, c: VAEConfig, device=None):
        super().__init__()
        self.mbs = c.micro_batch_size
        self.module = AutoencoderKL2D(c, device=device)

    def _per_frame(self, x, fn):
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # (B T) C H W, frames of a batch adjacent
        outs = [fn(x[i:i + self.mbs]) for i in range(0, x.shape[0], self.mbs)]
        y = torch.cat(outs, dim=0)
        return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def encode(self, x):
        return self._per_frame(x, lambda f: self.module.encode_mean(f) * SCALING_FACTOR_2D)

    def encode_sample(self, x, key):
        """Posterior sample per frame (batch 1): (mean + std * eps_f) * 0.18215, eps_f =
        philox_normal([1, 4, 1, h, w], key, stream = f) for frame f (micro-batches as encode)."""
        from philox import philox_normal
        b, _, t, _, _ = x.shape
        if b != 1:
            raise ValueError("encode_sample: batch size 1 only (got %d)" % b)
        frames = x.permute(0, 2, 1, 3, 4).reshape(t, *x.shape[1:2], *x.shape[3:])
        outs = []
        for i in range(0, t, self.mbs):
            m = self.module.encode_moments(frames[i:i + self.mbs])
            lc = m.shape[1] // 2
            eps = torch.cat([philox_normal((1, lc, 1) + tuple(m.shape[2:]), key, f)[:, :, 0]
                             for f in range(i, i + m.shape[0])], 0)
            outs.append(sample_posterior(m, eps) * SCALING_FACTOR_2D)
        y = torch.cat(outs, 0)
        return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def decode(self, z):
        return self._per_frame(z, lambda f: self.module.decode(f / SCALING_FACTOR_2D))


# ----------------------------------------------------------------------------------------
# Pipeline
# ----------------------------------------------------------------------------------------

class OpenSoraVAE(nn.Module):
    def __init__(self, cfg: VAEConfig = None, device=None):
        super().__init__()
        cfg = cfg or VAEConfig()
        self.cfg = cfg
        self.register_buffer("scale", torch.tensor(cfg.scale, dtype=torch.float32).reshape(1, -1, 1, 1, 1).to(device or "cpu"))
        self.register_buffer("shift", torch.tensor(cfg.shift, dtype=torch.float32).reshape(1, -1, 1, 1, 1).to(device or "cpu"))
        self.spatial_vae = SpatialVAE(cfg, device=device)
        self.temporal_vae = TemporalVAE(cfg, device=device)
        self.mfs = cfg.micro_frame_size
        self.tf = cfg.time_factor
        self.mzs = self.temporal_latent(self.mfs)  # 5

    def temporal_latent(self, n):
        """Latent frames of one chunk of n pixel frames (n <= micro_frame_size)."""
        return (n + (self.tf - n % self.tf) % self.tf) // self.tf

    def get_latent_size(self, num_frames, height=None, width=None):
        t = self.mzs * (num_frames // self.mfs)
        r = num_frames % self.mfs
        if r > 0:
            t += self.temporal_latent(r)
        return (t, None if height is None else height // 8, None if width is None else width // 8)

    @torch.no_grad()
    def decode(self, z, num_frames, record=None):
        num_frames = int(num_frames)
        if num_frames < 1 or z.shape[2] != self.get_latent_size(num_frames)[0]:
            raise ValueError("num_frames %d does not match %d latent frames" % (num_frames, z.shape[2]))
        z = z * self.scale.to(z.dtype) + self.shift.to(z.dtype)
        parts = []
        left = num_frames
        for i in range(0, z.shape[2], self.mzs):
            parts.append(self.temporal_vae.decode(z[:, :, i:i + self.mzs], min(self.mfs, left)))
            left -= self.mfs
        x_z = torch.cat(parts, dim=2)
        if record is not None:
            record["decode.temporal_out"] = x_z.clone()
        return self.spatial_vae.decode(x_z)

    @torch.no_grad()
    def encode(self, x, record=None):
        x_z = self.spatial_vae.encode(x)
        if record is not None:
            record["encode.spatial_out"] = x_z.clone()
        means = [self.temporal_vae.encode_mean(x_z[:, :, i:i + self.mfs])
                 for i in range(0, x_z.shape[2], self.mfs)]
        z = torch.cat(means, dim=2)
        return (z - self.shift) / self.scale

    @torch.no_grad()
    def encode_sample(self, x, key, record=None):
        """Open-Sora's encode (both posteriors sampled), with the engine's noise convention.
        x [1, 3, F, H, W] -> [1, 4, T, h, w]. Philox key `key` (philox.reference_key):
          2D: frame f (0-based in x):  eps = philox_normal([1, 4, 1, h, w], key, stream = f)
          temporal chunk k (frames 17k .. 17k+16 of x_z):
               eps = philox_normal(shape of the chunk's mean [1, 4, t_k, h, w], key,
                                   stream = 0x80000000 + k)
        each: mean + exp(0.5 * clamp(logvar, -30, 20)) * eps (2D: then * 0.18215);
        z = (concat_t(temporal samples) - shift) / scale."""
        from philox import TEMPORAL_STREAM_BASE, philox_normal
        if x.shape[0] != 1:
            raise ValueError("encode_sample: batch size 1 only (got %d)" % x.shape[0])
        x_z = self.spatial_vae.encode_sample(x, key)
        if record is not None:
            record["encode.spatial_out"] = x_z.clone()
        zs = []
        for k, i in enumerate(range(0, x_z.shape[2], self.mfs)):
            m = self.temporal_vae.encode_moments(x_z[:, :, i:i + self.mfs])
            lc = m.shape[1] // 2
            eps = philox_normal((m.shape[0], lc) + tuple(m.shape[2:]), key, TEMPORAL_STREAM_BASE + k)
            zs.append(sample_posterior(m, eps))
        z = torch.cat(zs, dim=2)
        return (z - self.shift) / self.scale


# ----------------------------------------------------------------------------------------
# Synthetic weights (recipe splitmix64-v1, see weights_recipe.py)
# ----------------------------------------------------------------------------------------

def vae_scale_offset(name, shape):
    """GroupNorm weights (rank 1, `.weight`): 1 + 2^-3 u; everything else as weights_recipe
    (biases 2^-4, rank >= 2 fan-in rule). `scale`/`shift` are not part of the recipe."""
    if name.endswith(".weight") and len(shape) == 1:
        return 2.0 ** -3, 1.0
    import weights_recipe as W
    return W.scale_offset(name, shape)


def recipe_state_dict(model, seed):
    """OrderedDict in the model's state_dict order: recipe tensors + the config's scale/shift."""
    import weights_recipe as W
    sd = OrderedDict()
    for name, t in model.state_dict().items():
        if name in ("scale", "shift"):
            sd[name] = t.detach().clone().float()
            continue
        sc, off = vae_scale_offset(name, tuple(t.shape))
        sd[name] = torch.from_numpy(W.values(name, tuple(t.shape), sc, off, seed))
    return sd


def load_model(model_dir):
    """Build from `<dir>/config.json` and load `<dir>/model.safetensors` (strict)."""
    import os
    from safetensors_io import load_torch
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = VAEConfig.from_json_dict(json.load(f))
    m = OpenSoraVAE(cfg).eval()
    m.load_state_dict(load_torch(os.path.join(model_dir, "model.safetensors")), strict=True)
    return m
