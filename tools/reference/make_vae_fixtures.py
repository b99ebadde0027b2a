"""Write the VAE v1.2 test fixtures tests/data/vae_tiny/ and run the reference self-checks.

Usage (from the repository root; Debian's python3 with torch 1.13 and numpy, not pyenv's):

    /usr/bin/python3 tools/reference/make_vae_fixtures.py [--out tests/data] [--no-write]

Writes tests/data/vae_tiny/:
    config.json               the real OpenSora-VAE-v1.2 config.json + `stdit_vae_2d` and
                              `stdit_vae_temporal` (reduced sizes; absent -> real sizes)
    model.safetensors         F32, real key names, recipe splitmix64-v1 seed 21
                              (GroupNorm weights 1 + 2^-3 u), scale/shift = config values
    decode_{17,23,1}.inputs.safetensors    z (F32, randn), num_frames (I64 [1])
    decode_{17,23,1}.expected.safetensors  video [1,3,F,8h,8w], decode.temporal_out [1,4,F,h,w]
    encode_{17,23,1}.inputs.safetensors    video (F32, uniform [-1,1)) [1,3,F,24,40]
    encode_{17,23,1}.expected.safetensors  z [1,4,T,3,5] (posterior mean), encode.spatial_out [1,4,F,3,5]
    README.md

Self-checks (always run; a failure raises):
    - the model built with the REAL sizes (meta device) has exactly the keys and shapes of
      /work/shared/spec/keys/vae_v1.2.tsv;
    - get_latent_size for F in {1, 17, 23, 51, 102} (spec 9.2);
    - decode of 23 frames == decode(first 5 latents, 17) ++ decode(last 2 latents, 6), and the
      same for encode (chunk independence); a num_frames that does not match T is rejected;
    - reloading the written directory reproduces every expected tensor bit for bit.
Optional cross-check against the upstream code (skipped unless importable): if `diffusers`
(0.27.2) is importable, our 2D VAE is compared with diffusers' AutoencoderKL on the same weights;
if also `einops` is importable and OPENSORA_VAE_TEMPORAL points to Open-Sora v1.2.0's
`opensora/models/vae/vae_temporal.py`, our temporal VAE is compared with it.
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import weights_recipe as W  # noqa: E402
from safetensors_io import load_torch, save_file  # noqa: E402
from vae import OpenSoraVAE, VAEConfig, load_model, recipe_state_dict  # noqa: E402

REAL_CONFIG = "/work/shared/assets/configs/OpenSora-VAE-v1.2/config.json"
KEYS_TSV = "/work/shared/spec/keys/vae_v1.2.tsv"
SEED = 21
FIXTURE = "vae_tiny"

TINY_2D = OrderedDict([("block_out_channels", [8, 12, 16, 16]), ("layers_per_block", 2),
                       ("norm_num_groups", 4), ("latent_channels", 4)])
TINY_T = OrderedDict([("filters", 4), ("channel_multipliers", [1, 2, 2, 4]), ("num_res_blocks", 2),
                      ("num_groups", 2), ("temporal_downsample", [False, True, True])])

H, W_ = 24, 40          # pixel size (latent 3 x 5: odd)
DECODE_CASES = [("decode_17", 17, 101), ("decode_23", 23, 102), ("decode_1", 1, 103)]
ENCODE_CASES = [("encode_17", 17, 201), ("encode_23", 23, 202), ("encode_1", 1, 203)]


def tiny_config():
    with open(REAL_CONFIG) as f:
        cfg = json.load(f, object_pairs_hook=OrderedDict)
    cfg["stdit_vae_2d"] = TINY_2D
    cfg["stdit_vae_temporal"] = TINY_T
    return cfg


def meta(case, extra=None):
    m = OrderedDict([("fixture", FIXTURE), ("case", case), ("recipe", W.RECIPE_NAME), ("seed", str(SEED))])
    if extra:
        m.update(extra)
    return m


# ---------------------------------------------------------------------------------------------
# self-checks
# ---------------------------------------------------------------------------------------------

def check_real_keys():
    want = OrderedDict()
    with open(KEYS_TSV) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, shape, numel = line.rstrip("\n").split("\t")
            want[name] = tuple(json.loads(shape))
    m = OpenSoraVAE(VAEConfig(), device="meta")
    got = OrderedDict((k, tuple(v.shape)) for k, v in m.state_dict().items())
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    bad = [(k, got[k], want[k]) for k in want if k in got and got[k] != want[k]]
    if missing or extra or bad:
        raise AssertionError("real key set differs: missing %s extra %s shape %s" % (missing[:5], extra[:5], bad[:5]))
    n = sum(int(np.prod(s)) for s in got.values())
    same_order = list(got) == list(want)
    print("check real keys: %d keys, %d params (%.2f M), names+shapes == %s (order %s)"
          % (len(got), n, n / 1e6, os.path.basename(KEYS_TSV), "same" if same_order else "differs, irrelevant"))


def check_latent_sizes(model):
    def spec(F):  # 5 * floor(F / 17) + latent(F mod 17), latent(n) = (n + (4 - n % 4) % 4) / 4
        r = F % 17
        return 5 * (F // 17) + ((r + (4 - r % 4) % 4) // 4 if r else 0)
    table = {1: 1, 17: 5, 23: 7, 51: 15, 102: 30}
    for F, t in table.items():
        got = model.get_latent_size(F, 240, 426)
        assert got == (t, 30, 53) and spec(F) == t, (F, got, t)
    print("check latent sizes: " + ", ".join("F=%d->T=%d" % kv for kv in table.items()) + " (H,W 240x426 -> 30x53)")


def check_chunks(model, z23, video23, expected_dec, expected_enc):
    """Temporal chunks are independent: the temporal stage must match exactly. The 2D stage only
    differs by float rounding because the micro-batches of 4 frames are composed differently
    (frame 16 is alone in its batch when 17 frames are decoded on their own)."""
    ra, rb, rf = {}, {}, {}
    full = model.decode(z23, 23, record=rf)
    a = model.decode(z23[:, :, :5], 17, record=ra)
    b = model.decode(z23[:, :, 5:], 6, record=rb)
    d_t = (torch.cat([ra["decode.temporal_out"], rb["decode.temporal_out"]], 2) - rf["decode.temporal_out"]).abs().max().item()
    d_dec = (torch.cat([a, b], dim=2) - expected_dec).abs().max().item()
    assert (full - expected_dec).abs().max().item() == 0.0
    sf = {}
    model.encode(video23, record=sf)
    za = model.encode(video23[:, :, :17])
    # temporal stage alone on the same 2D latents: exact
    zb_exact = torch.cat([model.temporal_vae.encode_mean(sf["encode.spatial_out"][:, :, :17]),
                          model.temporal_vae.encode_mean(sf["encode.spatial_out"][:, :, 17:])], 2)
    d_te = ((zb_exact - model.shift) / model.scale - expected_enc).abs().max().item()
    zb = model.encode(video23[:, :, 17:])
    d_enc = (torch.cat([za, zb], dim=2) - expected_enc).abs().max().item()
    assert d_t == 0.0 and d_te == 0.0, (d_t, d_te)
    assert d_dec <= 2e-5 and d_enc <= 2e-5, (d_dec, d_enc)
    for T, F in ((7, 17), (1, 17), (5, 16), (5, 18)):
        try:
            model.decode(torch.zeros(1, 4, T, 3, 5), F)
        except ValueError:
            continue
        raise AssertionError("decode accepted T=%d with num_frames=%d" % (T, F))
    print("check chunk independence: temporal stage exact (decode and encode); whole pipeline 23 vs (17 ++ 6): "
          "decode max|diff| %.3g, encode %.3g (2D micro-batch rounding only); mismatched num_frames rejected"
          % (d_dec, d_enc))


def check_reload(root, cases):
    m = load_model(root)
    worst = 0.0
    for name, kind in cases:
        inp = load_torch(os.path.join(root, name + ".inputs.safetensors"))
        exp = load_torch(os.path.join(root, name + ".expected.safetensors"))
        rec = {}
        if kind == "decode":
            out = {"video": m.decode(inp["z"], int(inp["num_frames"][0]), record=rec)}
        else:
            out = {"z": m.encode(inp["video"], record=rec)}
        out.update(rec)
        assert set(out) == set(exp), (name, set(out), set(exp))
        for k in exp:
            worst = max(worst, (out[k] - exp[k]).abs().max().item())
    assert worst == 0.0, worst
    print("check reload: %d cases reproduce bit for bit" % len(cases))


def check_upstream(model, sd, z, video):
    """Optional: compare with diffusers' AutoencoderKL and Open-Sora's VAE_Temporal on our weights."""
    try:
        import diffusers  # noqa: F401
        from diffusers.models import AutoencoderKL
    except Exception:
        print("check upstream 2D: skipped (diffusers not importable)")
        return
    c = model.cfg
    n = len(c.block_out_channels)
    ref = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(c.block_out_channels),
                        layers_per_block=c.layers_per_block, latent_channels=c.latent_channels,
                        norm_num_groups=c.norm_num_groups).eval()
    pre = "spatial_vae.module."
    ref.load_state_dict(OrderedDict((k[len(pre):], v) for k, v in sd.items() if k.startswith(pre)), strict=True)
    frames = video[:, :, :4].permute(0, 2, 1, 3, 4).reshape(-1, 3, video.shape[3], video.shape[4])
    with torch.no_grad():
        mine_e = model.spatial_vae.module.encode_mean(frames)
        ref_e = ref.encode(frames).latent_dist.mean
        lat = torch.randn(4, 4, 3, 5, generator=torch.Generator().manual_seed(7))
        mine_d = model.spatial_vae.module.decode(lat)
        ref_d = ref.decode(lat).sample
    print("check upstream 2D (diffusers %s): encode mean max|diff| %.3g, decode %.3g"
          % (diffusers.__version__, (mine_e - ref_e).abs().max().item(), (mine_d - ref_d).abs().max().item()))
    path = os.environ.get("OPENSORA_VAE_TEMPORAL")
    if not path:
        print("check upstream temporal: skipped (OPENSORA_VAE_TEMPORAL not set)")
        return
    import types
    import importlib.util
    for mod in ("opensora", "opensora.registry", "opensora.utils", "opensora.utils.ckpt_utils",
                "opensora.models", "opensora.models.vae", "opensora.models.vae.utils"):
        sys.modules.setdefault(mod, types.ModuleType(mod))

    class _Reg:
        def register_module(self, name=None, *a, **k):
            return (lambda f: f) if name is None or isinstance(name, str) else name
    sys.modules["opensora.registry"].MODELS = _Reg()
    sys.modules["opensora.utils.ckpt_utils"].load_checkpoint = None
    sys.modules["opensora.models.vae.utils"].DiagonalGaussianDistribution = \
        lambda p: types.SimpleNamespace(mean=torch.chunk(p, 2, dim=1)[0])
    spec = importlib.util.spec_from_file_location("opensora.models.vae.vae_temporal", path)
    vt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vt)
    ref_t = vt.VAE_Temporal(in_out_channels=4, latent_embed_dim=4, embed_dim=4, filters=c.filters,
                            num_res_blocks=c.num_res_blocks, channel_multipliers=tuple(c.channel_multipliers),
                            temporal_downsample=tuple(c.temporal_downsample), num_groups=c.num_groups).eval()
    pre = "temporal_vae."
    ref_t.load_state_dict(OrderedDict((k[len(pre):], v) for k, v in sd.items() if k.startswith(pre)), strict=True)
    with torch.no_grad():
        worst = 0.0
        for nf, t in ((17, 5), (6, 2), (1, 1)):
            zz = z[:, :, :t]
            worst = max(worst, (model.temporal_vae.decode(zz, nf) - ref_t.decode(zz, num_frames=nf)).abs().max().item())
            xx = torch.randn(1, 4, nf, 3, 5, generator=torch.Generator().manual_seed(nf))
            worst = max(worst, (model.temporal_vae.encode_mean(xx) - ref_t.encode(xx).mean).abs().max().item())
    print("check upstream temporal (Open-Sora %s): decode/encode (17, 6, 1 frames) max|diff| %.3g" % (path, worst))


# ---------------------------------------------------------------------------------------------

README = """# `vae_tiny/`: Open-Sora VAE v1.2 fixtures (tiny sizes, real structure)

Regenerate (from the repository root, Debian's python3 with torch 1.13):

    /usr/bin/python3 tools/reference/make_vae_fixtures.py

Made by `tools/reference/vae.py` (`OpenSoraVAE`, written from shared/spec/architecture.md §9 and
checked against Open-Sora v1.2.0 / diffusers 0.27.2). CPU, float32, one thread, deterministic
(byte-identical on rerun).

| file | content |
|---|---|
| `config.json` | the real `OpenSora-VAE-v1.2/config.json` plus `stdit_vae_2d` = %(t2d)s and `stdit_vae_temporal` = %(tt)s (sizes; absent = real sizes) |
| `model.safetensors` | %(nkeys)d F32 tensors, real key names (`scale`, `shift` [1,4,1,1,1] = config values; `spatial_vae.module.*`, `temporal_vae.*`), recipe `splitmix64-v1` seed %(seed)d: biases 2^-4, GroupNorm weights 1 + 2^-3·u, conv/linear weights fan-in rule (see `weights_recipe.py`) |
| `decode_17.inputs` | `z` [1,4,5,3,5] randn, `num_frames` I64 [17]: one full chunk |
| `decode_23.inputs` | `z` [1,4,7,3,5], `num_frames` [23]: chunk of 5 latents (17 frames) + remainder chunk of 2 latents (6 frames, first 2 of 8 dropped) |
| `decode_1.inputs` | `z` [1,4,1,3,5], `num_frames` [1]: single image (4 frames decoded, first 3 dropped) |
| `decode_N.expected` | `video` [1,3,N,24,40] (not clamped), `decode.temporal_out` [1,4,N,3,5] = x_z, the temporal decoder output that goes into the 2D decoder (before /0.18215) |
| `encode_N.inputs` | `video` [1,3,N,24,40] uniform in [-1,1) (N = 17, 23, 1) |
| `encode_N.expected` | `z` [1,4,T,3,5] (T = 5, 7, 1) = (posterior mean - shift) / scale, `encode.spatial_out` [1,4,N,3,5] = 2D latents (posterior mean × 0.18215) that go into the temporal encoder |

Every `.safetensors` has `__metadata__` {fixture, case, recipe, seed}. The encoder uses the
posterior **mean** in both VAEs (Open-Sora samples with randn; the engine has no reason to).

Output stats (for scale): %(stats)s

Sizes: 2D block_out_channels [8,12,16,16] (not [8,16,16,16]) so that, as in the real
[128,256,512,512], `conv_shortcut` exists in encoder down_blocks.1/2 resnets.0 and decoder
up_blocks.2/3 resnets.0; temporal channels 4, 8, 8, 16 with `conv3` in encoder stages 1/3 and
decoder stages 2/0, like the real model. Every real key pattern exists (397 keys instead of 517
because of 2 instead of 4 ResBlocks per temporal stage).

Tolerance: chunks are independent, and the temporal stage reproduces exactly when chunks are
run one by one; the 2D stage changes by float rounding only (max 5.8e-6 here) when the
micro-batches of 4 frames are composed differently, because PyTorch's CPU convolution does not
give bit-identical per-image results for different batch sizes. An engine in float32 should
match to about 1e-5 relative to the output's magnitude.

Cross-checked: with diffusers 0.27.2 importable and OPENSORA_VAE_TEMPORAL pointing to Open-Sora
v1.2.0's `opensora/models/vae/vae_temporal.py` (plus `einops`), the script compares the 2D VAE
with diffusers' AutoencoderKL and the temporal VAE with Open-Sora's VAE_Temporal on these
weights: max |diff| 0 (bit-identical), e.g.

    pip install --target /tmp/vaecheck --no-deps diffusers==0.27.2 huggingface_hub==0.23.4 einops==0.8.0 \
        safetensors==0.4.3 filelock regex importlib_metadata zipp requests tqdm fsspec packaging \
        typing_extensions pyyaml urllib3 idna charset_normalizer certifi Pillow
    git -C <Open-Sora git dir> show v1.2.0:opensora/models/vae/vae_temporal.py > /tmp/os_vae_temporal.py
    PYTHONPATH=/tmp/vaecheck OPENSORA_VAE_TEMPORAL=/tmp/os_vae_temporal.py \
        /usr/bin/python3 tools/reference/make_vae_fixtures.py --no-write

Open-Sora v1.2.0's `VideoAutoencoderPipeline.encode/decode` itself (run with stubbed
`transformers`/registry and `sample()` replaced by the mean) also reproduces all six cases with
max |diff| 0.

How well the fixtures catch mistakes (max |diff| of `video` of decode_23 / `z` of encode_23):

| mistake | decode_23 | encode_23 |
|---|---|---|
| depth-to-time with (ts, C) channel order instead of (C, ts) | 3.5 | - |
| time padding split front/back instead of front only | 3.2 | 0.38 |
| decoder drops the last p frames instead of the first | 3.0 | - |
| encoder pads the chunk at the back | - | 0.33 |
| 2D downsample padding (1,0,1,0) instead of (0,1,0,1) | - | 0.28 |
| clamp of the decoded video | 2.2 | - |
| 2D latent factor 0.13025 instead of 0.18215 | 1.8 | 0.0075 |
| 2D attention without 1/sqrt(C) | 1.5 | 0.15 |
| GroupNorm eps 1e-6 everywhere (temporal should be 1e-5) | 1.1e-3 | 8.8e-3 |
| GroupNorm eps 1e-5 everywhere (2D should be 1e-6) | 9.3e-4 | 7.8e-5 |
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--no-write", action="store_true", help="only run the self-checks")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()

    check_real_keys()

    cfg_json = tiny_config()
    cfg = VAEConfig.from_json_dict(cfg_json)
    model = OpenSoraVAE(cfg).eval()
    sd = recipe_state_dict(model, SEED)
    model.load_state_dict(sd, strict=True)
    check_latent_sizes(model)

    files = OrderedDict()
    results = {}
    stats = []
    for name, F, gseed in DECODE_CASES:
        g = torch.Generator().manual_seed(gseed)
        T = model.get_latent_size(F)[0]
        z = torch.randn(1, 4, T, H // 8, W_ // 8, generator=g)
        rec = {}
        video = model.decode(z, F, record=rec)
        assert video.shape == (1, 3, F, H, W_), video.shape
        files[name + ".inputs"] = OrderedDict([("z", z), ("num_frames", torch.tensor([F], dtype=torch.int64))])
        files[name + ".expected"] = OrderedDict([("video", video), ("decode.temporal_out", rec["decode.temporal_out"])])
        results[name] = (z, video)
        stats.append("%s video mean %.3f std %.3f max|x| %.2f (%.1f%% beyond ±1)" % (
            name, video.mean().item(), video.std().item(), video.abs().max().item(),
            100.0 * (video.abs() > 1).float().mean().item()))
    for name, F, gseed in ENCODE_CASES:
        g = torch.Generator().manual_seed(gseed)
        video = torch.rand(1, 3, F, H, W_, generator=g) * 2 - 1
        rec = {}
        z = model.encode(video, record=rec)
        assert z.shape == (1, 4, model.get_latent_size(F)[0], H // 8, W_ // 8), z.shape
        files[name + ".inputs"] = OrderedDict([("video", video)])
        files[name + ".expected"] = OrderedDict([("z", z), ("encode.spatial_out", rec["encode.spatial_out"])])
        results[name] = (video, z)
        stats.append("%s z std %.3f max|z| %.2f" % (name, z.std().item(), z.abs().max().item()))
    for s in stats:
        print("  " + s)

    check_chunks(model, results["decode_23"][0], results["encode_23"][0],
                 results["decode_23"][1], results["encode_23"][1])
    check_upstream(model, sd, results["decode_17"][0], results["encode_17"][0])

    if args.no_write:
        print("done (no files written) in %.1f s" % (time.time() - t0))
        return
    root = os.path.join(args.out, FIXTURE)
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
        f.write("\n")
    save_file(sd, os.path.join(root, "model.safetensors"), metadata=meta("model"))
    for fname, tensors in files.items():
        case = fname.split(".")[0]
        save_file(tensors, os.path.join(root, fname + ".safetensors"), metadata=meta(case))
    with open(os.path.join(root, "README.md"), "w") as f:
        f.write(README % dict(t2d=json.dumps(TINY_2D), tt=json.dumps(TINY_T), nkeys=len(sd), seed=SEED,
                              stats="; ".join(stats)))
    check_reload(root, [(n, "decode") for n, _, _ in DECODE_CASES] + [(n, "encode") for n, _, _ in ENCODE_CASES])
    total = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root))
    print("wrote %s (%d files, %.2f MB) in %.1f s" % (root, len(os.listdir(root)), total / 1e6, time.time() - t0))


if __name__ == "__main__":
    main()
