"""Independent float32 reference of the T5-v1.1 encoder (HF `T5EncoderModel` semantics).

Written from shared/spec/architecture.md section 10; only torch is needed (no transformers).
The state_dict names are exactly those of the Hugging Face checkpoints:

    shared.weight                                                  [vocab, d_model]
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v}.weight         [H*d_kv, d_model]
    encoder.block.{i}.layer.0.SelfAttention.o.weight               [d_model, H*d_kv]
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight  [buckets, H]
    encoder.block.{i}.layer.0.layer_norm.weight                    [d_model]
    encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1}.weight    [d_ff, d_model]
    encoder.block.{i}.layer.1.DenseReluDense.wo.weight             [d_model, d_ff]
    encoder.block.{i}.layer.1.layer_norm.weight                    [d_model]
    encoder.final_layer_norm.weight                                [d_model]

(HF's in-memory `T5EncoderModel.state_dict()` also lists `encoder.embed_tokens.weight`, a
tied alias of `shared.weight`; checkpoints written by `save_pretrained` drop it. Use
`strip_tied_alias` to load such a dict here.)

Forward pass (input_ids [B, L] int64, attention_mask [B, L] 0/1 or None):

    h = shared[input_ids]                                     (no scaling)
    bias[1, H, L, L] = relative_attention_bias[bucket(k - q)] (block 0's table, used by all blocks)
    mask_add[B, 1, 1, L] = (1 - attention_mask) * finfo(float32).min   (on KEYS only)
    for each block:
        x = rmsnorm(h) * w                                    (variance in fp32, eps)
        q, k, v = x Wq^T, x Wk^T, x Wv^T  split into H heads of d_kv
        s = q k^T + (bias + mask_add)                         (NO 1/sqrt(d_kv) scaling)
        h = h + (softmax_fp32(s) v) Wo^T
        x = rmsnorm(h) * w
        h = h + (gelu_new(x Wi0^T) * (x Wi1^T)) Wo^T
    out = rmsnorm(h) * w_final                                (every position, padding included)

gelu_new(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

Relative position buckets (bidirectional, as Mesh TensorFlow / HF):
    n = num_buckets // 2 (16), max_exact = n // 2 (8), rel = key_pos - query_pos
    bucket = (n if rel > 0 else 0) + (|rel| if |rel| < max_exact else
             min(n - 1, max_exact + trunc(float32(log(float32(|rel|) / max_exact)
                                                 / log(max_distance / max_exact) * (n - max_exact)))))
The large-offset branch is evaluated in float32 exactly as HF does (see `bucket_table_exact`
for the integer cross-check: for the default 32/128 both agree on every offset).
"""

import json
import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F


class T5Config:
    """The subset of HF `T5Config` that the encoder uses."""

    def __init__(self, d_model=4096, d_kv=64, num_heads=64, d_ff=10240, num_layers=24,
                 vocab_size=32128, relative_attention_num_buckets=32,
                 relative_attention_max_distance=128, layer_norm_epsilon=1e-6,
                 feed_forward_proj="gated-gelu"):
        self.d_model = int(d_model)
        self.d_kv = int(d_kv)
        self.num_heads = int(num_heads)
        self.d_ff = int(d_ff)
        self.num_layers = int(num_layers)
        self.vocab_size = int(vocab_size)
        self.relative_attention_num_buckets = int(relative_attention_num_buckets)
        self.relative_attention_max_distance = int(relative_attention_max_distance)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        if feed_forward_proj != "gated-gelu":
            raise ValueError("only feed_forward_proj 'gated-gelu' (T5 v1.1) is implemented, got %r"
                             % feed_forward_proj)
        self.feed_forward_proj = feed_forward_proj

    @property
    def inner_dim(self):
        return self.num_heads * self.d_kv

    @classmethod
    def from_dict(cls, d):
        # HF defaults for keys that old config files omit (e.g. max_distance in google/t5-v1_1-xxl)
        return cls(
            d_model=d["d_model"], d_kv=d["d_kv"], num_heads=d["num_heads"], d_ff=d["d_ff"],
            num_layers=d["num_layers"], vocab_size=d["vocab_size"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
            feed_forward_proj=d.get("feed_forward_proj", "relu"),
        )

    @classmethod
    def from_json(cls, path):
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def to_hf_dict(self, num_decoder_layers=None, torch_dtype="float32"):
        """HF config.json contents, same key set as the real t5-v1_1-xxl T5EncoderModel config."""
        return OrderedDict([
            ("architectures", ["T5EncoderModel"]),
            ("classifier_dropout", 0.0),
            ("d_ff", self.d_ff),
            ("d_kv", self.d_kv),
            ("d_model", self.d_model),
            ("decoder_start_token_id", 0),
            ("dense_act_fn", "gelu_new"),
            ("dropout_rate", 0.1),
            ("eos_token_id", 1),
            ("feed_forward_proj", self.feed_forward_proj),
            ("initializer_factor", 1.0),
            ("is_encoder_decoder", True),
            ("is_gated_act", True),
            ("layer_norm_epsilon", self.layer_norm_epsilon),
            ("model_type", "t5"),
            ("num_decoder_layers", self.num_layers if num_decoder_layers is None else num_decoder_layers),
            ("num_heads", self.num_heads),
            ("num_layers", self.num_layers),
            ("output_past", True),
            ("pad_token_id", 0),
            ("relative_attention_max_distance", self.relative_attention_max_distance),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets),
            ("tie_word_embeddings", False),
            ("torch_dtype", torch_dtype),
            ("transformers_version", "4.41.2"),
            ("use_cache", True),
            ("vocab_size", self.vocab_size),
        ])


def param_shapes(cfg):
    """[(name, shape)] of every state_dict key, in module (state_dict) order."""
    D, I, F_, H = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.num_heads
    out = [("shared.weight", (cfg.vocab_size, D))]
    for i in range(cfg.num_layers):
        p = "encoder.block.%d.layer." % i
        out += [(p + "0.SelfAttention.q.weight", (I, D)),
                (p + "0.SelfAttention.k.weight", (I, D)),
                (p + "0.SelfAttention.v.weight", (I, D)),
                (p + "0.SelfAttention.o.weight", (D, I))]
        if i == 0:
            out.append((p + "0.SelfAttention.relative_attention_bias.weight",
                        (cfg.relative_attention_num_buckets, H)))
        out += [(p + "0.layer_norm.weight", (D,)),
                (p + "1.DenseReluDense.wi_0.weight", (F_, D)),
                (p + "1.DenseReluDense.wi_1.weight", (F_, D)),
                (p + "1.DenseReluDense.wo.weight", (D, F_)),
                (p + "1.layer_norm.weight", (D,))]
    out.append(("encoder.final_layer_norm.weight", (D,)))
    return out


# ----------------------------------------------------------------------------------------------
# relative position buckets


def relative_position_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128):
    """Bucket index (int64 tensor) for each relative position (= key_pos - query_pos).

    The log branch is evaluated in float32 as in HF/Mesh-TF and truncated toward zero.
    """
    rel = relative_position.to(torch.long)
    buckets = torch.zeros_like(rel)
    if bidirectional:
        num_buckets = num_buckets // 2
        buckets = buckets + (rel > 0).to(torch.long) * num_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # clamp to >= 1 so that log() of the (unused) small entries stays finite
    ratio = rel.clamp(min=1).to(torch.float32) / max_exact
    scaled = torch.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    large = max_exact + scaled.to(torch.long)
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, rel, large)


def bucket_table_exact(max_offset, num_buckets=32, max_distance=128):
    """Pure-integer bucket per offset in [-max_offset, max_offset] (cross-check of the fp32 path).

    With n = num_buckets // 2, me = n // 2 (max_exact), steps = n - me and ratio =
    max_distance / me (must be an integer here), the log branch is
    me + trunc(steps * log(|rel| / me) / log(ratio)) = me + the largest j with
    me^steps * ratio^j <= |rel|^steps, clamped to n - 1. Evaluated with Python integers.
    """
    n = num_buckets // 2
    me = n // 2
    steps = n - me
    ratio = max_distance // me
    if ratio * me != max_distance:
        raise ValueError("exact table needs max_distance to be a multiple of max_exact")
    out = []
    for r in range(-max_offset, max_offset + 1):
        b = n if r > 0 else 0
        a = abs(r)
        if a < me:
            b += a
        else:
            j = 0
            while j + 1 <= n - 1 - me and a ** steps >= me ** steps * ratio ** (j + 1):
                j += 1
            b += me + j
        out.append(b)
    return out


# ----------------------------------------------------------------------------------------------
# modules (attribute names give the HF state_dict names)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.eps))


class T5SelfAttention(nn.Module):
    def __init__(self, cfg, has_relative_attention_bias):
        super().__init__()
        self.cfg = cfg
        I = cfg.inner_dim
        self.q = nn.Linear(cfg.d_model, I, bias=False)
        self.k = nn.Linear(cfg.d_model, I, bias=False)
        self.v = nn.Linear(cfg.d_model, I, bias=False)
        self.o = nn.Linear(I, cfg.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)

    def compute_bias(self, q_len, k_len):
        """[1, H, q_len, k_len] float32 position bias (no mask)."""
        qpos = torch.arange(q_len, dtype=torch.long)[:, None]
        kpos = torch.arange(k_len, dtype=torch.long)[None, :]
        buckets = relative_position_bucket(kpos - qpos, bidirectional=True,
                                           num_buckets=self.cfg.relative_attention_num_buckets,
                                           max_distance=self.cfg.relative_attention_max_distance)
        vals = self.relative_attention_bias(buckets)  # [q, k, H]
        return vals.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x, bias_and_mask):
        B, L, _ = x.shape
        H, dk = self.cfg.num_heads, self.cfg.d_kv

        def heads(t):
            return t.view(B, L, H, dk).transpose(1, 2)  # [B, H, L, dk]

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.matmul(q, k.transpose(2, 3))  # no 1/sqrt(dk)
        scores = scores + bias_and_mask
        attn = F.softmax(scores.float(), dim=-1).type_as(scores)
        ctx = torch.matmul(attn, v).transpose(1, 2).contiguous().view(B, L, H * dk)
        return self.o(ctx)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, cfg, has_relative_attention_bias):
        super().__init__()
        self.SelfAttention = T5SelfAttention(cfg, has_relative_attention_bias)
        self.layer_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, h, bias_and_mask):
        return h + self.SelfAttention(self.layer_norm(h), bias_and_mask)


class T5DenseGatedGelu(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x):
        return self.wo(gelu_new(self.wi_0(x)) * self.wi_1(x))


class T5LayerFF(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.DenseReluDense = T5DenseGatedGelu(cfg)
        self.layer_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, h):
        return h + self.DenseReluDense(self.layer_norm(h))


class T5Block(nn.Module):
    def __init__(self, cfg, has_relative_attention_bias):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(cfg, has_relative_attention_bias), T5LayerFF(cfg)])

    def forward(self, h, bias_and_mask):
        return self.layer[1](self.layer[0](h, bias_and_mask))


class T5Stack(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.block = nn.ModuleList([T5Block(cfg, i == 0) for i in range(cfg.num_layers)])
        self.final_layer_norm = T5RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class T5EncoderModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg)

    def forward(self, input_ids, attention_mask=None, record=None):
        """last_hidden_state [B, L, d_model] (float32) for every position.

        `record`, if a dict, receives `embed` [B,L,D], `position_bias` [1,H,L,L] (without the
        mask), `position_bucket` [L,L] int64 and `block.{i}` [B,L,D] (hidden state after block i).
        """
        B, L = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones(B, L, dtype=torch.long)
        h = self.shared(input_ids.to(torch.long))
        if record is not None:
            record["embed"] = h.detach().clone()
        bias = self.encoder.block[0].layer[0].SelfAttention.compute_bias(L, L)
        if record is not None:
            record["position_bias"] = bias.detach().clone()
            qpos = torch.arange(L)[:, None]
            kpos = torch.arange(L)[None, :]
            record["position_bucket"] = relative_position_bucket(
                kpos - qpos, True, self.cfg.relative_attention_num_buckets,
                self.cfg.relative_attention_max_distance)
        mask_add = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        bias_and_mask = bias + mask_add  # [B, H, L, L]
        for i, blk in enumerate(self.encoder.block):
            h = blk(h, bias_and_mask)
            if record is not None:
                record["block.%d" % i] = h.detach().clone()
        return self.encoder.final_layer_norm(h)


def strip_tied_alias(sd):
    """Drop HF's in-memory alias `encoder.embed_tokens.weight` (must equal `shared.weight`)."""
    sd = OrderedDict(sd)
    alias = sd.pop("encoder.embed_tokens.weight", None)
    if alias is not None and "shared.weight" in sd and not torch.equal(alias, sd["shared.weight"]):
        raise ValueError("encoder.embed_tokens.weight differs from shared.weight")
    return sd


def load_model(cfg, state_dict):
    """T5EncoderModel with `state_dict` loaded strictly (exact key set and shapes)."""
    model = T5EncoderModel(cfg)
    model.load_state_dict(strip_tied_alias(state_dict), strict=True)
    model.eval()
    return model
