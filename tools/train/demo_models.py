"""The three models of the embedded demo engine, built from the reference code in
tools/reference (no second model definition): sizes, initialisation, checkpoint writing, text
preparation, and the training-time batched caption attention.

    T5     T5-v1.1 encoder, d_model 64, 2 layers, 4 heads of 16, d_ff 128, the real 32128-piece
           vocabulary (spiece.model); frozen random weights from the splitmix64-v1 recipe
           (weights_recipe.py), so they are the same bit for bit on every machine.
    VAE    Open-Sora VAE v1.2 structure (SDXL-style 2D VAE, 8x spatial; causal temporal VAE, 4x
           time), reduced: 2D block_out_channels [16, 32, 64, 64], 2 layers per block, 8 groups;
           temporal filters 16, multipliers [1, 2, 2, 4], 1 res block, 8 groups.
    DiT    STDiT3, hidden 192, depth 4 (4 spatial + 4 temporal blocks), 6 heads of 32, mlp 4.0,
           caption channels 64, patch 1x2x2.
"""

import json
import math
import os
import shutil
import sys
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
REF = os.path.join(REPO, "tools", "reference")
if REF not in sys.path:
    sys.path.insert(0, REF)

import stdit3 as S3  # noqa: E402
import t5 as T5  # noqa: E402
import text_prep  # noqa: E402
import vae as V  # noqa: E402
import weights_recipe as W  # noqa: E402
from safetensors_io import save_file  # noqa: E402

SPIECE = os.path.join(REPO, "assets", "t5", "spiece.model")
VAE_TEMPLATE = os.path.join(REPO, "tests", "data", "vae_tiny", "config.json")  # the real config keys

T5_SEED = 808
T5_CFG = dict(d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2, vocab_size=32128,
              relative_attention_num_buckets=32, relative_attention_max_distance=128,
              layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu")
VAE_2D = {"block_out_channels": [16, 32, 64, 64], "layers_per_block": 2, "norm_num_groups": 8,
          "latent_channels": 4}
VAE_TEMPORAL = {"filters": 16, "channel_multipliers": [1, 2, 2, 4], "num_res_blocks": 1, "num_groups": 8,
                "temporal_downsample": [False, True, True]}
DIT_CFG = dict(depth=4, hidden_size=192, num_heads=6, mlp_ratio=4.0, caption_channels=64,
               model_max_length=300, in_channels=4, patch_size=(1, 2, 2), pred_sigma=True)

# What `stdit generate` feeds by default (src/pipeline/generate.cpp, text_prep.append_scores).
AES = 6.5
FPS = 24.0


# ------------------------------------------------------------------------------------------------
# T5: frozen random weights (recipe)
# ------------------------------------------------------------------------------------------------

def t5_config():
    return T5.T5Config(**T5_CFG)


def t5_scale_offset(name, shape):
    if name == "shared.weight":
        return 1.0, 0.0
    if name.endswith("layer_norm.weight"):
        return 2.0 ** -8, 1.0
    if name.endswith("relative_attention_bias.weight"):
        return 2.0 ** -3, 0.0
    return W.scale_offset(name, shape)  # fan-in rule


def t5_state_dict(cfg=None, seed=T5_SEED):
    cfg = cfg or t5_config()
    sd = OrderedDict()
    for name, shape in T5.param_shapes(cfg):
        sc, off = t5_scale_offset(name, shape)
        sd[name] = torch.from_numpy(W.values(name, tuple(shape), sc, off, seed))
    return sd


def build_t5():
    cfg = t5_config()
    return T5.load_model(cfg, t5_state_dict(cfg))


# ------------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------------

def vae_config_dict(scale=(1.0, 1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0, 0.0)):
    with open(VAE_TEMPLATE) as f:
        d = json.load(f, object_pairs_hook=OrderedDict)
    d["scale"] = [float(v) for v in scale]
    d["shift"] = [float(v) for v in shift]
    d["stdit_vae_2d"] = OrderedDict(VAE_2D)
    d["stdit_vae_temporal"] = OrderedDict(VAE_TEMPORAL)
    return d


def build_vae(scale=(1.0, 1.0, 1.0, 1.0), shift=(0.0, 0.0, 0.0, 0.0)):
    """OpenSoraVAE with PyTorch's default initialisation (seed the global generator first)."""
    return V.OpenSoraVAE(V.VAEConfig.from_json_dict(vae_config_dict(scale, shift)))


def set_vae_norm(vae, scale, shift):
    vae.scale.copy_(torch.tensor(scale, dtype=torch.float32).reshape(1, -1, 1, 1, 1))
    vae.shift.copy_(torch.tensor(shift, dtype=torch.float32).reshape(1, -1, 1, 1, 1))


def bf16_round(x):
    """float -> nearest bfloat16 value, as a Python float (engine weights are bf16)."""
    return float(torch.tensor([x], dtype=torch.float32).to(torch.bfloat16).to(torch.float32)[0])


# ------------------------------------------------------------------------------------------------
# STDiT3
# ------------------------------------------------------------------------------------------------

def dit_config():
    return S3.STDiT3Config(**DIT_CFG)


def build_dit():
    """STDiT3 initialised as Open-Sora does (STDiT3.initialize_weights / PixArt): xavier-uniform
    linears with zero bias, N(0, 0.02) timestep/fps/caption MLPs and t_block, fps second layer and
    the temporal blocks' output projections zero, scale_shift_tables randn / sqrt(C), final
    linear zero, y_embedding (the null caption) randn / sqrt(caption channels), kept fixed.
    Draws from torch's global generator (seed it first)."""
    cfg = dit_config()
    m = S3.STDiT3(cfg)
    C = cfg.hidden_size
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Linear):
                torch.nn.init.xavier_uniform_(mod.weight)
                torch.nn.init.zeros_(mod.bias)
        w = m.x_embedder.proj.weight
        bound = math.sqrt(6.0 / (w.shape[0] + w[0].numel()))
        w.uniform_(-bound, bound)
        m.x_embedder.proj.bias.zero_()
        for lin in (m.t_embedder.mlp[0], m.t_embedder.mlp[2], m.fps_embedder.mlp[0], m.t_block[1],
                    m.y_embedder.y_proj.fc1, m.y_embedder.y_proj.fc2):
            lin.weight.normal_(0, 0.02)
        m.fps_embedder.mlp[2].weight.zero_()
        for blk in m.temporal_blocks:
            blk.attn.proj.weight.zero_()
            blk.cross_attn.proj.weight.zero_()
            blk.mlp.fc2.weight.zero_()
        for blk in list(m.spatial_blocks) + list(m.temporal_blocks):
            blk.scale_shift_table.copy_(torch.randn(6, C) / C ** 0.5)
        m.final_layer.scale_shift_table.copy_(torch.randn(2, C) / C ** 0.5)
        m.final_layer.linear.weight.zero_()
        m.final_layer.linear.bias.zero_()
        m.y_embedder.y_embedding.copy_(torch.randn(cfg.model_max_length, cfg.caption_channels)
                                       / cfg.caption_channels ** 0.5)
        m.rope.freqs.copy_(S3.rope_default_freqs(cfg.head_dim))
    return m


class MaskedCrossAttention(S3.CrossAttention):
    """The reference cross-attention over a padded caption batch: batch entry b attends to its
    keys with keymask[b] True. Same parameters and the same result as the reference's packed
    loop (checked by `check_batched_text_path`), in one batched call instead of B calls."""

    def forward(self, x, y, keymask):
        B, N, C = x.shape
        L = y.shape[1]
        q = self.q_linear(x).view(B, N, self.nh, self.d).transpose(1, 2)  # [B, nh, N, d]
        kv = self.kv_linear(y).view(B, L, 2, self.nh, self.d)
        k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, nh, L, d]
        scores = (q * (self.d ** -0.5)) @ k.transpose(-2, -1)
        scores = scores.masked_fill(~keymask[:, None, None, :], float("-inf"))
        o = torch.softmax(scores, dim=-1) @ v
        return self.proj(o.transpose(1, 2).reshape(B, N, C))


class TrainSTDiT3(S3.STDiT3):
    """STDiT3 whose caption path keeps the batch padded (y [B, 1, L, Cc] + mask [B, L]) instead
    of packing the kept rows; everything else is the reference forward."""

    def __init__(self, cfg):
        super().__init__(cfg)
        for blk in list(self.spatial_blocks) + list(self.temporal_blocks):
            blk.cross_attn.__class__ = MaskedCrossAttention

    def encode_text(self, y, mask):
        e = self.y_embedder(y).squeeze(1)  # [B, L, C]
        if mask.shape[0] != e.shape[0]:
            mask = mask.repeat(e.shape[0] // mask.shape[0], 1)
        return e, mask != 0


def to_train_dit(m):
    t = TrainSTDiT3(m.cfg)
    t.load_state_dict(m.state_dict())
    return t


def to_ref_dit(m):
    r = S3.STDiT3(m.cfg)
    r.load_state_dict(m.state_dict())
    return r.eval()


@torch.no_grad()
def check_batched_text_path(seed=0):
    """TrainSTDiT3 == the reference STDiT3 on ragged captions (raises otherwise)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    ref = build_dit().eval()
    for p in ref.parameters():  # zero-initialised parts would hide differences
        p.add_(torch.randn(p.shape, generator=g) * 0.02)
    tr = to_train_dit(ref).eval()
    B, L, Cc = 3, 12, ref.cfg.caption_channels
    x = torch.randn(B, 4, 5, 6, 6, generator=g)
    y = torch.randn(B, 1, L, Cc, generator=g)
    mask = torch.zeros(B, L, dtype=torch.int64)
    for b, n in enumerate((12, 3, 7)):
        mask[b, :n] = 1
    kw = dict(mask=mask, fps=torch.tensor([FPS]), height=torch.tensor([48.0]), width=torch.tensor([48.0]))
    t = torch.tensor([999.0, 500.0, 3.0])
    a, b_ = ref(x, t, y, **kw), tr(x, t, y, **kw)
    err = float((a - b_).abs().max() / a.abs().max())
    if not err < 1e-5:
        raise RuntimeError("batched caption path differs from the reference: %g" % err)
    return err


# ------------------------------------------------------------------------------------------------
# Text: the exact text and ids `stdit generate` produces, with a per-word cache
# ------------------------------------------------------------------------------------------------

WORD_IDS = os.path.join(HERE, "caption_word_ids.json")


class CaptionTokenizer:
    """Open-Sora's prompt preparation (score suffix + double clean) and the HF-Unigram ids, as
    tools/reference/pipeline.prepare_text. The Metaspace pre-tokenizer splits before every space,
    so a caption's pieces are the concatenation of its words' pieces. The ids of every word the
    dataset uses are in caption_word_ids.json (made by `python3 demo_models.py --word-ids`), so
    training needs no sentencepiece; where sentencepiece is present, `check` compares captions
    against the full path (clean + tokenize) and new words are tokenized directly."""

    def __init__(self, spiece=SPIECE, max_length=48):
        with open(WORD_IDS) as f:
            self.words = json.load(f)
        try:
            self.sp = text_prep.load_sp(spiece)
        except Exception:  # no sentencepiece here: the table alone
            self.sp = None
        self.max_length = max_length

    def text(self, caption):
        return text_prep.append_scores(caption, AES)

    def ids(self, caption):
        out = []
        for w in self.text(caption).split(" "):
            if w not in self.words:
                if self.sp is None:
                    raise KeyError("word %r is not in %s and sentencepiece is missing" % (w, WORD_IDS))
                self.words[w] = text_prep.tokenize(w, self.sp)["ids"][:-1]  # without EOS
            out += self.words[w]
        out.append(text_prep.EOS_ID)
        if len(out) > self.max_length:
            raise ValueError("caption too long (%d tokens): %s" % (len(out), caption))
        return out

    def check(self, captions):
        """Raises if the cached path differs from clean + tokenize; False if it cannot check."""
        if self.sp is None:
            return False
        for c in captions:
            full = text_prep.clean(self.text(c), True)
            if full != self.text(c):
                raise RuntimeError("cleaning changes the caption %r -> %r" % (self.text(c), full))
            want = text_prep.tokenize(full, self.sp)["ids"]
            if want != self.ids(c):
                raise RuntimeError("cached ids differ for %r: %s vs %s" % (c, self.ids(c), want))
        return True

    def batch(self, captions):
        """ids, mask: int64 [n, max_length]."""
        ids = torch.zeros(len(captions), self.max_length, dtype=torch.int64)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(captions):
            t = self.ids(c)
            ids[i, :len(t)] = torch.tensor(t)
            mask[i, :len(t)] = 1
        return ids, mask


# ------------------------------------------------------------------------------------------------
# Writing Hugging Face-layout model directories (what `stdit convert` reads)
# ------------------------------------------------------------------------------------------------

def _f32_sd(module):
    return OrderedDict((k, v.detach().to("cpu", torch.float32).contiguous()) for k, v in module.state_dict().items())


def write_dit(model, out_dir, metadata=None):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.cfg.to_hf_dict(), f, indent=2)
    save_file(_f32_sd(model), os.path.join(out_dir, "model.safetensors"), metadata)


def write_vae(model, out_dir, metadata=None):
    os.makedirs(out_dir, exist_ok=True)
    scale = [float(v) for v in model.scale.reshape(-1)]
    shift = [float(v) for v in model.shift.reshape(-1)]
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(vae_config_dict(scale, shift), f, indent=2)
    save_file(_f32_sd(model), os.path.join(out_dir, "model.safetensors"), metadata)


def write_t5(model, out_dir, metadata=None):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(model.cfg.to_hf_dict(), f, indent=2)
    save_file(_f32_sd(model), os.path.join(out_dir, "model.safetensors"), metadata)
    shutil.copyfile(SPIECE, os.path.join(out_dir, "spiece.model"))


# ------------------------------------------------------------------------------------------------
# Reading an engine (bf16 safetensors) back into the reference models
# ------------------------------------------------------------------------------------------------

def load_safetensors_any(path):
    """name -> float32 torch tensor, for F32/BF16/F16 files (safetensors_io has no BF16)."""
    import struct
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=OrderedDict)
        data = f.read()
    header.pop("__metadata__", None)
    out = OrderedDict()
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = np.frombuffer(data[b:end], dtype=np.uint8)
        dt = e["dtype"]
        if dt == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view("<f4")
        elif dt == "F16":
            a = raw.view("<f2").astype(np.float32)
        elif dt == "F32":
            a = raw.view("<f4").copy()
        else:
            raise ValueError("%s: unexpected dtype %s for %s" % (path, dt, name))
        out[name] = torch.from_numpy(a.reshape(e["shape"]).copy())
    return out


def load_engine(engine_dir):
    """(t5, dit, vae) reference models from an engine directory, weights as stored (bf16 -> f32)."""
    sd = load_safetensors_any(os.path.join(engine_dir, "t5", "model.safetensors"))
    t5m = T5.load_model(T5.T5Config.from_json(os.path.join(engine_dir, "t5", "config.json")), sd)
    with open(os.path.join(engine_dir, "dit", "config.json")) as f:
        dcfg = S3.STDiT3Config.from_hf_dict(json.load(f))
    dsd = load_safetensors_any(os.path.join(engine_dir, "dit", "model.safetensors"))
    if "rope.freqs" not in dsd:
        dsd["rope.freqs"] = S3.rope_default_freqs(dcfg.head_dim)
    dit = S3.STDiT3(dcfg)
    dit.load_state_dict(dsd, strict=True)
    with open(os.path.join(engine_dir, "vae", "config.json")) as f:
        vcfg = V.VAEConfig.from_json_dict(json.load(f))
    vae = V.OpenSoraVAE(vcfg)
    vae.load_state_dict(load_safetensors_any(os.path.join(engine_dir, "vae", "model.safetensors")), strict=True)
    return t5m.eval(), dit.eval(), vae.eval()


# Philox4x32-10 normal noise, as src/core/philox.cpp (so Python can start from stdit's noise):
# tools/reference/philox.py.
from philox import philox_normal  # noqa: E402,F401


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write caption_word_ids.json (needs sentencepiece).")
    ap.add_argument("--word-ids", action="store_true")
    a = ap.parse_args()
    if a.word_ids:
        import dataset as D
        sp = text_prep.load_sp(SPIECE)
        words = set(text_prep.append_scores("x", AES).split(" ")[1:])
        for c in D.all_captions():
            words.update(c.split(" "))
        table = OrderedDict((w, text_prep.tokenize(w, sp)["ids"][:-1]) for w in sorted(words))
        with open(WORD_IDS, "w") as f:
            f.write("{\n" + ",\n".join("%s: %s" % (json.dumps(w), json.dumps(i)) for w, i in table.items()) + "\n}\n")
        print("%d words -> %s" % (len(table), WORD_IDS))
