"""Self-checks of the STDiT3 reference (not fixtures). Exit status 0 = all passed.

    /usr/bin/python3 tools/reference/check_reference.py

Each check is an independent restatement of a fact from the spec (often in
float64 or with a different formulation) compared against the reference code.
"""

import math
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import safetensors_io as sio  # noqa: E402
import weights_recipe as W  # noqa: E402
from stdit3 import (STDiT3, STDiT3Config, apply_rope, param_shapes, rope_default_freqs,  # noqa: E402
                    sincos_pos_emb_2d, sinusoid_embedding)

KEYS_TSV = "/work/shared/spec/keys/stdit3.tsv"
TINY = dict(depth=2, hidden_size=64, num_heads=4, mlp_ratio=4.0, caption_channels=32, model_max_length=8)

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def tiny_model(seed=1):
    cfg = STDiT3Config(**TINY)
    m = STDiT3(cfg)
    m.load_state_dict(W.state_dict_for(cfg, seed))
    return m.eval()


def tiny_inputs(B=4, T=3, H=5, Wd=7, gen_seed=0):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(B, 4, T, H, Wd, generator=g)
    y = 0.3 * torch.randn(B, 1, 8, 32, generator=g)
    ts = torch.tensor([993.33, 500.25, 993.33, 500.25][:B])
    mask = torch.zeros(B // 2, 8, dtype=torch.int64)
    for i, L in enumerate([5, 3][: B // 2]):
        mask[i, :L] = 1
    return dict(x=x, timestep=ts, y=y, mask=mask, fps=torch.tensor([24.0]),
                height=torch.tensor([8.0 * H]), width=torch.tensor([8.0 * Wd]))


# ---------------------------------------------------------------- file format


@check
def safetensors_roundtrip():
    t = {
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
        "i64": np.array([-(2 ** 40), 3], dtype=np.int64),
        "i32": np.array([[1, -2]], dtype=np.int32),
        "bool": np.array([True, False, True]),
        "u8": np.array([0, 255, 7], dtype=np.uint8),
        "scalar": np.array(1.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.safetensors")
        sio.save_file(t, p, metadata={"k": "v"})
        back = sio.load_file(p)
        header, meta, start = sio.read_header(p)
    assert start % 8 == 0, "data block must start 8-byte aligned"
    assert meta == {"k": "v"}
    assert list(back) == list(t)
    for k in t:
        assert back[k].dtype == t[k].dtype and back[k].shape == t[k].shape and np.array_equal(back[k], t[k]), k
    assert header["bool"]["dtype"] == "BOOL" and header["u8"]["dtype"] == "U8" and header["i32"]["dtype"] == "I32"


# ---------------------------------------------------------------- recipe


@check
def recipe_known_vectors():
    # FNV-1a 64 published test vectors.
    assert W.fnv1a64("") == 0xCBF29CE484222325
    assert W.fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert W.fnv1a64("foobar") == 0x85944171F73967E8
    # base = 0, element 0 is the first output of the standard splitmix64 seeded with 0.
    first = 0xE220A8397B1DCDAF
    h = W.fnv1a64("x")
    seed = (-h * pow(W.GOLDEN, -1, 1 << 64)) % (1 << 64)  # makes base == 0
    assert W.tensor_base("x", seed) == 0
    m = first >> 40
    want = float(np.float32((m - 2 ** 23) * 2.0 ** -23))
    assert W.values("x", [1], 1.0, 0.0, seed)[0] == want


@check
def recipe_vectorised_equals_scalar_and_is_deterministic():
    cfg = STDiT3Config(**TINY)
    man = W.manifest(cfg)
    assert all(e["name"] != "rope.freqs" for e in man)
    a, b = W.materialise(man, 5), W.materialise(man, 5)
    rng = np.random.default_rng(0)
    for e in man:
        v = a[e["name"]]
        assert torch.equal(v, b[e["name"]]), e["name"]
        assert v.dtype == torch.float32 and list(v.shape) == e["shape"]
        flat = v.reshape(-1)
        n = flat.numel()
        for i in {0, n - 1, int(rng.integers(n))}:
            assert flat[i].item() == W.value_scalar(e["name"], i, e["scale"], e["offset"], 5), (e["name"], i)
        lo, hi = e["offset"] - e["scale"], e["offset"] + e["scale"]
        assert float(v.min()) >= lo and float(v.max()) <= hi, e["name"]
        assert math.frexp(e["scale"])[0] == 0.5
    assert not torch.equal(W.materialise(man[:1], 5)[man[0]["name"]], W.materialise(man[:1], 6)[man[0]["name"]])
    # Scale rules on a few names.
    sc = {e["name"]: (e["scale"], e["offset"]) for e in man}
    assert sc["x_embedder.proj.weight"] == (2.0 ** -2, 0.0)  # fan_in 16
    assert sc["y_embedder.y_proj.fc1.weight"] == (2.0 ** -3, 0.0)  # fan_in 32: 2.5 rounds up
    assert sc["spatial_blocks.0.mlp.fc2.weight"] == (2.0 ** -4, 0.0)  # fan_in 256
    assert sc["temporal_blocks.1.attn.k_norm.weight"] == (2.0 ** -3, 1.0)
    assert sc["final_layer.scale_shift_table"] == (2.0 ** -3, 0.0)
    assert sc["y_embedder.y_embedding"] == (2.0 ** -1, 0.0)
    assert sc["t_block.1.bias"] == (2.0 ** -4, 0.0)


# ---------------------------------------------------------------- key layout


def read_tsv():
    rows = []
    with open(KEYS_TSV) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, _numel = line.rstrip("\n").split("\t")
            rows.append((name, [int(s) for s in shape.strip("[]").split(",")]))
    return rows


@check
def real_config_keys_match_tsv():
    import json

    with open("/work/shared/assets/configs/OpenSora-STDiT-v3/config.json") as f:
        cfg = STDiT3Config.from_hf_dict(json.load(f))
    want = read_tsv()
    assert len(want) == 973
    model = STDiT3(cfg, device="meta")  # no memory is allocated
    got = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert got == want, "state_dict keys/shapes/order differ from stdit3.tsv"
    assert [(k, list(s)) for k, s in param_shapes(cfg)] == want
    assert cfg.to_hf_dict() == json.load(open("/work/shared/assets/configs/OpenSora-STDiT-v3/config.json"))
    # Persistent buffers: only y_embedding; rope.freqs is a (frozen) parameter.
    assert [n for n, _ in model.named_buffers()] == ["y_embedder.y_embedding"]
    assert not model.rope.freqs.requires_grad


@check
def tiny_state_dict_matches_param_shapes():
    cfg = STDiT3Config(**TINY)
    got = [(k, list(v.shape)) for k, v in STDiT3(cfg).state_dict().items()]
    assert got == [(k, list(s)) for k, s in param_shapes(cfg)]


# ---------------------------------------------------------------- formulas


@check
def rope_freqs_value():
    f = rope_default_freqs(72).double()
    ref = torch.tensor([10000.0 ** (-2 * i / 72) for i in range(36)], dtype=torch.float64)
    assert torch.allclose(f, ref, rtol=1e-6, atol=0)


@check
def rope_properties():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 5, 72, generator=g)
    freqs = rope_default_freqs(72)
    r = apply_rope(x, freqs)
    assert torch.equal(r[..., 0, :], x[..., 0, :]), "position 0 must be the identity"
    # Interleaved pairs: each (x_{2i}, x_{2i+1}) keeps its length.
    n_in = x.view(3, 2, 5, 36, 2).norm(dim=-1)
    n_out = r.view(3, 2, 5, 36, 2).norm(dim=-1)
    assert torch.allclose(n_in, n_out, rtol=1e-5, atol=1e-6)
    # Same thing as complex multiplication z_i * exp(i p w_i), z_i = x_{2i} + i x_{2i+1} (float64).
    xd = x.double()
    z = torch.complex(xd[..., 0::2], xd[..., 1::2])
    ang = torch.arange(5, dtype=torch.float64)[:, None] * freqs.double()[None, :]
    zr = z * torch.polar(torch.ones_like(ang), ang)
    ref = torch.stack([zr.real, zr.imag], dim=-1).flatten(-2)
    assert torch.allclose(r.double(), ref, atol=2e-5)
    # Relative position: <R_m q, R_n k> depends on m - n only.
    q, k = torch.randn(72, generator=g).double(), torch.randn(72, generator=g).double()
    seq_q, seq_k = q.expand(8, 72), k.expand(8, 72)
    rq, rk = apply_rope(seq_q, freqs.double()), apply_rope(seq_k, freqs.double())
    assert abs(float(rq[5] @ rk[2]) - float(rq[4] @ rk[1])) < 1e-10


@check
def timestep_embedding_formula():
    v = torch.tensor([0.0, 1.0, 500.25, 993.33])
    e = sinusoid_embedding(v)
    i = torch.arange(128, dtype=torch.float64)
    f = torch.exp(-math.log(10000.0) * i / 128)
    a = v.double()[:, None] * f[None]
    ref = torch.cat([torch.cos(a), torch.sin(a)], dim=-1)  # cos first
    assert torch.allclose(e.double(), ref, atol=2e-4)  # fp32 args near 1000 lose ~1e-4
    assert torch.equal(e[0, :128], torch.ones(128)) and torch.equal(e[0, 128:], torch.zeros(128))


@check
def pos_emb_formula():
    C, Hp, Wp = 64, 3, 4
    scale, base = math.sqrt(40 * 56) / 512, round(math.sqrt(Hp * Wp))
    pe = sincos_pos_emb_2d(C, Hp, Wp, scale, base)
    w = torch.tensor([10000.0 ** (-k / (C / 4)) for k in range(C // 4)], dtype=torch.float64)
    for r in range(Hp):
        for c in range(Wp):
            rho = r / scale * base / Hp
            gam = c / scale * base / Wp
            ref = torch.cat([torch.sin(gam * w), torch.cos(gam * w), torch.sin(rho * w), torch.cos(rho * w)])
            assert torch.allclose(pe[r * Wp + c].double(), ref, atol=1e-5), (r, c)


# ---------------------------------------------------------------- model behaviour


@check
def all_true_x_mask_equals_no_x_mask():
    m = tiny_model()
    inp = tiny_inputs()
    with torch.no_grad():
        a = m(**inp)
        b = m(**inp, x_mask=torch.ones(4, 3, dtype=torch.bool))
    assert torch.equal(a, b)


@check
def x_mask_changes_only_modulation():
    """A False frame differs from the all-True run; with t0 == t (timestep 0) nothing changes."""
    m = tiny_model()
    inp = tiny_inputs()
    xm = torch.ones(4, 3, dtype=torch.bool)
    xm[:, 0] = False
    with torch.no_grad():
        a = m(**inp)
        b = m(**inp, x_mask=xm)
        inp0 = dict(inp, timestep=torch.zeros(4))
        c = m(**inp0)
        d = m(**inp0, x_mask=xm)
    assert not torch.allclose(a, b)
    # With timestep 0 the modulations agree, but the final layer still applies
    # LayerNorm twice on clean frames (the Open-Sora quirk), so only frames
    # 1.. of the block stack agree; compare the hidden state before the final layer.
    rc, rd = {}, {}
    with torch.no_grad():
        m(**inp0, record=rc)
        m(**inp0, x_mask=xm, record=rd)
    assert torch.equal(rc["block.3"], rd["block.3"])
    assert torch.equal(c[:, :, 1:], d[:, :, 1:]) and not torch.allclose(c[:, :, 0], d[:, :, 0])


@check
def final_layer_double_layernorm_quirk():
    m = tiny_model()
    fl = m.final_layer
    g = torch.Generator().manual_seed(3)
    B, T, S, C = 2, 2, 3, 64
    x = torch.randn(B, T * S, C, generator=g)
    t, t0 = 0.1 * torch.randn(B, C, generator=g), 0.1 * torch.randn(B, C, generator=g)
    xm = torch.tensor([[False, True], [True, True]])
    out = fl(x, t, xm, t0, T, S)

    def ln(v):
        mu = v.mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(((v - mu) ** 2).mean(-1, keepdim=True) + 1e-6)

    tab = fl.scale_shift_table
    xt = ln(x) * (1 + tab[1] + t[:, None]) + tab[0] + t[:, None]
    x0 = ln(xt) * (1 + tab[1] + t0[:, None]) + tab[0] + t0[:, None]
    sel = xt.clone()
    sel[0, :S] = x0[0, :S]
    ref = sel @ fl.linear.weight.T + fl.linear.bias
    assert torch.allclose(out, ref, atol=1e-5)


@check
def batch_entries_are_independent():
    """Packed, block-diagonal cross-attention == running each entry alone."""
    m = tiny_model()
    inp = tiny_inputs()
    full_mask = inp["mask"].repeat(2, 1)
    with torch.no_grad():
        out = m(**inp)
        for b in range(4):
            one = m(x=inp["x"][b:b + 1], timestep=inp["timestep"][b:b + 1], y=inp["y"][b:b + 1],
                    mask=full_mask[b:b + 1], fps=inp["fps"], height=inp["height"], width=inp["width"])
            assert torch.allclose(out[b:b + 1], one, atol=1e-5), b


@check
def cross_attention_equals_padded_masked_attention():
    m = tiny_model()
    ca = m.spatial_blocks[0].cross_attn
    g = torch.Generator().manual_seed(4)
    B, N, C, Lmax, nh, d = 3, 5, 64, 6, 4, 16
    lens = [6, 2, 4]
    x = torch.randn(B, N, C, generator=g)
    ypad = torch.randn(B, Lmax, C, generator=g)
    keep = torch.zeros(B, Lmax, dtype=torch.bool)
    for b, L in enumerate(lens):
        keep[b, :L] = True
    out = ca(x, ypad[keep], lens)
    # Dense attention over padded keys with -inf on padding.
    q = ca.q_linear(x).view(B, N, nh, d).transpose(1, 2)
    k, v = ca.kv_linear(ypad).view(B, Lmax, 2, nh, d).unbind(2)
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    ref = ca.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, N, C))
    assert torch.allclose(out, ref, atol=1e-5)


@check
def patch_embed_padding_and_unpatchify_layout():
    m = tiny_model()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 2, 3, 5, generator=g)  # H, W odd -> zero padded to 4, 6
    tok = m.x_embedder(x)  # [1, 2*2*3, 64]
    xp = torch.zeros(1, 4, 2, 4, 6)
    xp[..., :3, :5] = x
    w = m.x_embedder.proj.weight.reshape(64, -1)  # [C, 4*1*2*2] (c_in, kt, kh, kw)
    n = 0
    for t in range(2):
        for r in range(2):
            for c in range(3):
                patch = xp[0, :, t, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(-1)
                assert torch.allclose(tok[0, n], w @ patch + m.x_embedder.proj.bias, atol=1e-5)
                n += 1
    # Unpatchify: check output[b, co, t, 2r+i, 2c+j] == final[b, t*S + r*Wp + c, (i*2 + j)*8 + co].
    inp = tiny_inputs(B=2, T=2, H=3, Wd=5)
    rec = {}
    with torch.no_grad():
        out = m(**inp, record=rec)
    fin = rec["final"]
    Hp, Wp = 2, 3
    for t in range(2):
        for h in range(3):
            for w_ in range(5):
                r, i, c, j = h // 2, h % 2, w_ // 2, w_ % 2
                tokv = fin[:, t * Hp * Wp + r * Wp + c, (i * 2 + j) * 8:(i * 2 + j) * 8 + 8]
                assert torch.equal(out[:, :, t, h, w_], tokv)


@check
def philox_known_answers():
    """Philox4x32-10 (Random123 known-answer vectors), the normal generator's block layout, SplitMix64."""
    import philox
    assert philox.philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox.philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]) == \
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    w = philox.philox4x32_10([2, 0, 5, 7], [42, 0])  # block 2 of stream 5, lane 7 -> elements 8..11
    u = [(v + 0.5) * 2.0 ** -32 for v in w]
    want = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        r = math.sqrt(-2.0 * math.log(a))
        want += [r * math.cos(2 * math.pi * b), r * math.sin(2 * math.pi * b)]
    got = philox.philox_normal((3, 4), 42, 5, 7)[2]
    assert torch.equal(got, torch.tensor(want, dtype=torch.float64).float())
    assert philox.splitmix64(0) == 0xE220A8397B1DCDAF


@check
def fixtures_reproduce():
    """Reload each fixture from tests/data and re-run; must equal expected exactly."""
    import json

    torch.set_num_threads(1)
    root = os.path.join(REPO, "tests", "data")
    for name in ("stdit3_a", "stdit3_b", "stdit3_c"):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            print("  (skip %s: not generated)" % name)
            continue
        cfg = STDiT3Config.from_hf_dict(json.load(open(os.path.join(d, "config.json"))))
        if os.path.exists(os.path.join(d, "model.safetensors")):
            sd = sio.load_torch(os.path.join(d, "model.safetensors"))
            if "rope.freqs" not in sd:
                sd["rope.freqs"] = rope_default_freqs(cfg.head_dim)
            else:
                assert torch.equal(sd["rope.freqs"], rope_default_freqs(cfg.head_dim))
        else:
            man = json.load(open(os.path.join(d, "weights.json")))
            assert man["recipe"] == W.RECIPE_NAME
            sd = W.materialise(man["tensors"], man["seed"])
            sd["rope.freqs"] = rope_default_freqs(cfg.head_dim)
        model = STDiT3(cfg)
        model.load_state_dict(sd, strict=True)
        inp = sio.load_torch(os.path.join(d, "inputs.safetensors"))
        exp = sio.load_torch(os.path.join(d, "expected.safetensors"))
        rec = {}
        with torch.no_grad():
            out = model(inp["x"], inp["timestep"], inp["y"], mask=inp.get("mask"), x_mask=inp.get("x_mask"),
                        fps=inp["fps"], height=inp["height"], width=inp["width"], record=rec)
        assert torch.equal(out, exp["output"]), name
        for k, v in exp.items():
            if k != "output":
                assert torch.equal(rec[k], v), (name, k)


def main():
    torch.set_default_dtype(torch.float32)
    failed = 0
    for fn in CHECKS:
        try:
            fn()
            print("PASS", fn.__name__)
        except Exception as e:  # report every failing check, not just the first
            failed += 1
            print("FAIL", fn.__name__, "->", type(e).__name__, e)
    print("%d/%d checks passed" % (len(CHECKS) - failed, len(CHECKS)))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
