"""Write the T5 encoder test fixtures (deterministic, CPU, float32).

Usage (from the repository root, Debian's python3 with torch 1.13, numpy, sentencepiece):

    /usr/bin/python3 tools/reference/make_t5_fixtures.py [--out tests/data] [--dis]

Writes
    tests/data/t5_tiny/   tiny T5-v1.1 encoder (d_model 8, 2 heads of 4, d_ff 16, 2 layers,
                          vocab 32128), weights recipe splitmix64-v1 seed 11, stored twice:
                          safetensors/ (2 shards + model.safetensors.index.json) and
                          bin/ (2 torch.save zip shards + pytorch_model.bin.index.json);
                          inputs.safetensors (2 real prompts tokenised with the shipped
                          spiece.model, padded to 300) and expected.safetensors.
    tests/data/t5_bad/    malformed / hostile .bin checkpoints for the reader's refusal tests.

--dis prints pickletools.dis of every valid .bin shard and the opcode/global summary.

If `transformers` is importable (it is not in Debian's python by default; e.g.
`pip install --target /tmp/hfpy --no-deps transformers==4.41.2 tokenizers==0.19.1
huggingface_hub==0.23.4 safetensors==0.4.3 regex filelock packaging tqdm fsspec` and
PYTHONPATH=/tmp/hfpy), the fixtures are also checked against HF `T5EncoderModel.from_pretrained`
on both model directories and the ids against HF's T5Tokenizer / T5TokenizerFast.
"""

import argparse
import collections
import hashlib
import io
import json
import os
import pickletools
import shutil
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

import weights_recipe as W  # noqa: E402
from safetensors_io import load_file, save_file  # noqa: E402
from t5 import T5Config, bucket_table_exact, load_model, param_shapes  # noqa: E402

SPIECE = "/work/shared/assets/t5/spiece.model"
TOKENIZER_JSON = "/work/shared/assets/configs/t5-v1_1-xxl/tokenizer.json"
SEED = 11
BAD_SEED = 12
MAX_LEN = 300
PAD_ID, EOS_ID = 0, 1

TINY = dict(d_model=8, d_kv=4, num_heads=2, d_ff=16, num_layers=2, vocab_size=32128,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            layer_norm_epsilon=1e-6, feed_forward_proj="gated-gelu")

PROMPTS = [
    "a beautiful waterfall aesthetic score: 6.5.",
    "a drone shot flying slowly over a rugged volcanic coastline at golden hour, huge waves "
    "crashing against black basalt cliffs, white foam and mist rising into the warm evening "
    "light, seagulls gliding above the water, cinematic, highly detailed, 4k. aesthetic score: 6.5.",
]

EXPECTED_KEYS = ["last_hidden_state", "embed", "position_bias", "block.0", "block.1"]


# ----------------------------------------------------------------------------------------------
# weights


def t5_scale_offset(name, shape):
    """Recipe (scale, offset) for T5 tensors (power-of-two scales, see tests/data/README.md)."""
    if name == "shared.weight":
        return 1.0, 0.0  # O(1) embeddings (real T5 embeddings are O(1..10))
    if name.endswith("layer_norm.weight"):
        return 2.0 ** -3, 1.0
    if name.endswith("relative_attention_bias.weight"):
        return 1.0, 0.0  # comparable to / larger than the unscaled q.k scores
    return W.scale_offset(name, shape)  # fan-in rule for the linear weights


def manifest(cfg):
    out = []
    for name, shape in param_shapes(cfg):
        sc, off = t5_scale_offset(name, shape)
        out.append({"name": name, "shape": list(shape), "scale": sc, "offset": off})
    return out


def write_json(path, obj, sort_keys=False):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys)
        f.write("\n")


def write_manifest(path, seed, entries):
    lines = ['{"recipe": "%s", "seed": %d, "tensors": [' % (W.RECIPE_NAME, seed)]
    lines.append(",\n".join("  " + json.dumps(e) for e in entries))
    lines.append("]}")
    text = "\n".join(lines) + "\n"
    json.loads(text)
    with open(path, "w") as f:
        f.write(text)


def split_keys(cfg, names):
    """Shard 1: shared.weight + block 0; shard 2: the rest (block 1.. + final_layer_norm)."""
    first = [n for n in names if n == "shared.weight" or n.startswith("encoder.block.0.")]
    second = [n for n in names if n not in first]
    return first, second


def index_json(sd, shards):
    """HF index: {"metadata": {"total_size": bytes}, "weight_map": {key: file}} (sorted keys)."""
    total = sum(int(t.numel()) * t.element_size() for t in sd.values())
    wm = {}
    for fname, keys in shards:
        for k in keys:
            wm[k] = fname
    return {"metadata": {"total_size": total}, "weight_map": dict(sorted(wm.items()))}


def module_state_dict(cfg, sd):
    """`model.state_dict()` of our module with `sd` loaded: an OrderedDict with `_metadata`."""
    model = load_model(cfg, sd)
    return model.state_dict()


def write_model_dirs(root, cfg, sd):
    """root/safetensors/ and root/bin/, each a complete HF model directory."""
    names = list(sd.keys())
    k1, k2 = split_keys(cfg, names)
    hf_cfg = cfg.to_hf_dict()

    st_dir = os.path.join(root, "safetensors")
    os.makedirs(st_dir, exist_ok=True)
    st_files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for fname, keys in zip(st_files, (k1, k2)):
        save_file(OrderedDict((k, sd[k]) for k in keys), os.path.join(st_dir, fname),
                  metadata={"format": "pt"})
    write_json(os.path.join(st_dir, "model.safetensors.index.json"),
               index_json(sd, list(zip(st_files, (k1, k2)))))
    write_json(os.path.join(st_dir, "config.json"), hf_cfg)

    bin_dir = os.path.join(root, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    bin_files = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]
    # shard 1: a plain dict, as HF save_pretrained's sharding writes it;
    # shard 2: an OrderedDict carrying `_metadata`, as torch.save(model.state_dict()) writes it.
    part1 = {k: sd[k] for k in k1}
    full = module_state_dict(cfg, sd)
    part2 = OrderedDict((k, full[k]) for k in k2)
    part2._metadata = full._metadata
    torch.save(part1, os.path.join(bin_dir, bin_files[0]))
    torch.save(part2, os.path.join(bin_dir, bin_files[1]))
    write_json(os.path.join(bin_dir, "pytorch_model.bin.index.json"),
               index_json(sd, list(zip(bin_files, (k1, k2)))))
    write_json(os.path.join(bin_dir, "config.json"), hf_cfg)
    return st_dir, bin_dir


def load_model_dir(d):
    """Read a sharded model directory back (safetensors or torch zip .bin, weights_only)."""
    cfg = T5Config.from_json(os.path.join(d, "config.json"))
    sd = OrderedDict()
    if os.path.exists(os.path.join(d, "model.safetensors.index.json")):
        with open(os.path.join(d, "model.safetensors.index.json")) as f:
            idx = json.load(f)
        for fname in sorted(set(idx["weight_map"].values())):
            for k, v in load_file(os.path.join(d, fname)).items():
                sd[k] = torch.from_numpy(v)
    else:
        with open(os.path.join(d, "pytorch_model.bin.index.json")) as f:
            idx = json.load(f)
        for fname in sorted(set(idx["weight_map"].values())):
            sd.update(torch.load(os.path.join(d, fname), map_location="cpu", weights_only=True))
    if set(sd) != set(idx["weight_map"]):
        raise AssertionError("index and shards disagree in %s" % d)
    return cfg, sd


# ----------------------------------------------------------------------------------------------
# tokenizer


def tokenize(prompts, max_len=MAX_LEN):
    """HF T5Tokenizer(Fast)(max_length, padding='max_length', truncation=True) with plain SP."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=SPIECE)
    ids = torch.full((len(prompts), max_len), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(prompts), max_len), dtype=torch.int64)
    for i, p in enumerate(prompts):
        t = list(sp.encode(p))[: max_len - 1] + [EOS_ID]
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
        mask[i, : len(t)] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------
# t5_tiny


def make_tiny(out_root):
    torch.set_num_threads(1)
    root = os.path.join(out_root, "t5_tiny")
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    cfg = T5Config(**TINY)
    entries = manifest(cfg)
    sd = W.materialise(entries, SEED)
    write_manifest(os.path.join(root, "weights.json"), SEED, entries)
    write_json(os.path.join(root, "config.json"), cfg.to_hf_dict())
    st_dir, bin_dir = write_model_dirs(root, cfg, sd)

    ids, mask = tokenize(PROMPTS)
    meta = {"fixture": "t5_tiny", "recipe": W.RECIPE_NAME, "seed": str(SEED),
            "prompt0": PROMPTS[0], "prompt1": PROMPTS[1], "tokenizer": "spiece.model sha256 d60acb12..ea86"}
    save_file(OrderedDict([("input_ids", ids), ("attention_mask", mask)]),
              os.path.join(root, "inputs.safetensors"), metadata=meta)

    model = load_model(cfg, sd)
    record = {}
    with torch.no_grad():
        out = model(ids, mask, record=record)
    expected = OrderedDict([("last_hidden_state", out)])
    for k in EXPECTED_KEYS[1:]:
        expected[k] = record[k]
    # compact bucket table: entry j is the bucket of offset (key - query) = j - (L - 1)
    L = ids.shape[1]
    pb = record["position_bucket"]
    by_offset = torch.cat([pb[L - 1, :], pb[0, 1:]])  # offsets -(L-1)..0, then 1..L-1
    expected["position_bucket_by_offset"] = by_offset
    save_file(expected, os.path.join(root, "expected.safetensors"), metadata=meta)

    # --- self-checks -------------------------------------------------------------------------
    exact = torch.tensor(bucket_table_exact(L - 1, cfg.relative_attention_num_buckets,
                                            cfg.relative_attention_max_distance))
    assert torch.equal(by_offset, exact), "fp32 bucket path disagrees with the integer table"
    for q in (0, 17, 150, L - 1):  # bucket[q, k] == by_offset[k - q + L - 1]
        assert torch.equal(pb[q], by_offset[L - 1 - q: 2 * L - 1 - q])
    assert int(by_offset.max()) == 31 and int(by_offset.min()) == 0
    for d in (st_dir, bin_dir):
        cfg2, sd2 = load_model_dir(d)
        assert list(sorted(sd2)) == list(sorted(sd)), d
        for k in sd:
            assert torch.equal(sd2[k], sd[k]), (d, k)
        with torch.no_grad():
            out2 = load_model(cfg2, sd2)(ids, mask)
        assert torch.equal(out2, out), d
    assert torch.isfinite(out).all()
    # padding: masked keys must not matter -> changing padded ids leaves real rows unchanged
    ids_alt = ids.clone()
    ids_alt[mask == 0] = 5
    with torch.no_grad():
        out_alt = model(ids_alt, mask)
    real = mask.bool()
    assert torch.allclose(out_alt[real], out[real], rtol=0, atol=0), "padding leaks into real tokens"
    print("t5_tiny: ids lengths", mask.sum(1).tolist(), "out absmax %.4f" % out.abs().max().item())
    return cfg, sd, ids, mask, out, record, st_dir, bin_dir


def check_against_hf(cfg, ids, mask, out, record, st_dir, bin_dir):
    try:
        import transformers
        from transformers import T5EncoderModel as HFT5
    except Exception as e:  # noqa: BLE001
        print("HF check skipped: transformers not importable (%s)" % e.__class__.__name__)
        return
    print("HF check with transformers", transformers.__version__)
    for d in (st_dir, bin_dir):
        hf = HFT5.from_pretrained(d, torch_dtype=torch.float32)
        hf.eval()
        with torch.no_grad():
            o = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hb = hf.encoder.block[0].layer[0].SelfAttention.compute_bias(MAX_LEN, MAX_LEN)
        hs = o.hidden_states
        print("  %-10s last_hidden_state max|diff| %.3g  embed %.3g  block.0 %.3g  position_bias %.3g"
              % (os.path.basename(d), (o.last_hidden_state - out).abs().max().item(),
                 (hs[0] - record["embed"]).abs().max().item(),
                 (hs[1] - record["block.0"]).abs().max().item(),
                 (hb - record["position_bias"]).abs().max().item()))
        assert torch.allclose(o.last_hidden_state, out, rtol=1e-5, atol=1e-5)
        assert torch.equal(hb, record["position_bias"])
    try:
        from transformers import T5Tokenizer, T5TokenizerFast
        toks = [T5Tokenizer(vocab_file=SPIECE, legacy=True),
                T5TokenizerFast(tokenizer_file=TOKENIZER_JSON)]
        for tok in toks:
            enc = tok(PROMPTS, max_length=MAX_LEN, padding="max_length", truncation=True,
                      add_special_tokens=True, return_tensors="pt")
            same = torch.equal(enc["input_ids"], ids) and torch.equal(enc["attention_mask"], mask)
            print("  %s ids/mask identical: %s" % (type(tok).__name__, same))
            assert same
    except ImportError as e:
        print("  tokenizer check skipped (%s)" % e)


# ----------------------------------------------------------------------------------------------
# hand-made pickles (bytes only; nothing here is ever unpickled by Python with the full unpickler)


class PickleAsm:
    """Emits protocol-2 opcodes the way Python's pickler does for torch.save state dicts."""

    def __init__(self):
        self.b = bytearray(b"\x80\x02")  # PROTO 2
        self.n = 0
        self.memo = {}

    def put(self, key=None):
        i = self.n
        self.n += 1
        self.b += (b"q" + bytes([i])) if i < 256 else (b"r" + struct.pack("<I", i))
        if key is not None:
            self.memo[key] = i

    def get(self, key):
        i = self.memo[key]
        self.b += (b"h" + bytes([i])) if i < 256 else (b"j" + struct.pack("<I", i))

    def raw(self, bs):
        self.b += bs

    def glob(self, module, name):
        key = ("g", module, name)
        if key in self.memo:
            self.get(key)
        else:
            self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
            self.put(key)

    def string(self, s, memo_key=None):
        key = ("s", memo_key) if memo_key else None
        if key is not None and key in self.memo:
            self.get(key)
            return
        e = s.encode("utf-8")
        self.b += b"X" + struct.pack("<I", len(e)) + e
        self.put(key)

    def int(self, v):
        if 0 <= v <= 0xFF:
            self.b += b"K" + bytes([v])
        elif 0 <= v <= 0xFFFF:
            self.b += b"M" + struct.pack("<H", v)
        else:
            self.b += b"J" + struct.pack("<i", v)

    def small_tuple(self, vals):
        if len(vals) == 0:
            self.b += b")"
            return
        if len(vals) <= 3:
            for v in vals:
                self.int(v)
            self.b += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(vals)]
        else:
            self.b += b"("
            for v in vals:
                self.int(v)
            self.b += b"t"
        self.put()

    def tensor(self, key, size, stride, numel, storage_type="FloatStorage", offset=0):
        """_rebuild_tensor_v2((persid), offset, size, stride, False, OrderedDict())."""
        self.glob("torch._utils", "_rebuild_tensor_v2")
        self.b += b"(("
        self.string("storage", memo_key="storage")
        self.glob("torch", storage_type)
        self.string(key)
        self.string("cpu", memo_key="cpu")
        self.int(numel)
        self.b += b"t"
        self.put()
        self.b += b"Q"  # BINPERSID
        self.int(offset)
        self.small_tuple(size)
        self.small_tuple(stride)
        self.b += b"\x89"  # NEWFALSE
        self.glob("collections", "OrderedDict")
        self.b += b")R"
        self.put()
        self.b += b"t"
        self.put()
        self.b += b"R"
        self.put()

    def evil_call(self, module, name):
        """GLOBAL module name; EMPTY_TUPLE; REDUCE  (a zero-argument call)."""
        self.glob(module, name)
        self.b += b")R"
        self.put()


def state_dict_pickle(items, evil=None):
    """Pickle bytes of OrderedDict(items) where items = [(name, spec dict)];
    evil = (position, key, module, name) inserts `key: module.name()` at `position`."""
    a = PickleAsm()
    a.glob("collections", "OrderedDict")
    a.raw(b")R")
    a.put()
    a.raw(b"(")
    entries = list(items)
    if evil is not None:
        entries.insert(evil[0], (evil[1], ("evil", evil[2], evil[3])))
    for name, spec in entries:
        a.string(name)
        if isinstance(spec, tuple) and spec[0] == "evil":
            a.evil_call(spec[1], spec[2])
        else:
            a.tensor(**spec)
    a.raw(b"u.")  # SETITEMS, STOP
    return bytes(a.b)


def write_torch_zip(path, records):
    """Write `records` [(name, bytes)] with torch's own zip writer (same layout as torch.save:
    <archive>/name entries, stored, 64-byte aligned, <archive>/version added at the end)."""
    w = torch._C.PyTorchFileWriter(path)
    for name, data in records:
        w.write_record(name, data, len(data))
    w.write_end_of_file()


def legacy_bytes(obj):
    """torch's legacy (non-zip) serialisation of `obj`, made deterministic: the legacy writer
    names storages by their memory address; rename them to same-length, same-order strings."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    pos = 0
    for _ in range(4):  # magic, protocol version, sys_info, the object
        for op, _arg, p in pickletools.genops(data[pos:]):
            if op.name == "STOP":
                end = p + 1
        pos += end
    keys = [arg for op, arg, _p in pickletools.genops(data[pos:]) if op.name == "BINUNICODE"]
    assert keys == sorted(keys) and len(set(map(len, keys))) == 1
    for i, k in enumerate(keys):
        new = str(i).rjust(len(k), "0")
        old_b = b"X" + struct.pack("<I", len(k)) + k.encode()
        new_b = b"X" + struct.pack("<I", len(new)) + new.encode()
        assert data.count(old_b) >= 2
        data = data.replace(old_b, new_b)
    return data


def f32_bytes(vals):
    return np.asarray(vals, dtype="<f4").tobytes()


# ----------------------------------------------------------------------------------------------
# t5_bad


def make_bad(out_root):
    bad = os.path.join(out_root, "t5_bad")
    os.makedirs(bad, exist_ok=True)
    for entry in os.listdir(bad):  # regenerate everything except the hand-written README.md
        path = os.path.join(bad, entry)
        if entry == "README.md":
            continue
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    tmp = os.path.join(bad, "_tmp")
    os.makedirs(tmp)

    # -- the hand assembler reproduces torch.save byte for byte (checked here) --------------
    a_vals = [1.0, 2.0, 3.0, 4.0]
    b_vals = [0.5, -0.5, 0.25, -0.25, 8.0, 16.0]
    ref_sd = OrderedDict([("a", torch.tensor(a_vals)), ("b", torch.tensor(b_vals).view(2, 3))])
    ref_path = os.path.join(tmp, "ref.bin")
    torch.save(ref_sd, ref_path)
    with zipfile.ZipFile(ref_path) as z:
        ref_pkl = z.read("ref/data.pkl")
    good_items = [("a", dict(key="0", size=(4,), stride=(1,), numel=4)),
                  ("b", dict(key="1", size=(2, 3), stride=(3, 1), numel=6))]
    assert state_dict_pickle(good_items) == ref_pkl, "PickleAsm no longer matches torch.save"
    good_data = [("data/0", f32_bytes(a_vals)), ("data/1", f32_bytes(b_vals))]

    def torch_like(name, pkl, data=good_data):
        path = os.path.join(bad, name)
        write_torch_zip(path, [("data.pkl", pkl)] + list(data))
        return path

    # evil_global.bin: valid tensors 'a', 'b' plus "x": os.system() between them
    p = torch_like("evil_global.bin", state_dict_pickle(good_items, evil=(1, "x", "os", "system")))
    # evil_torch_global.bin: a non-allowlisted global inside the torch package (torch.load())
    torch_like("evil_torch_global.bin", state_dict_pickle(good_items, evil=(2, "x", "torch", "load")))
    # evil_storage_type.bin: persistent id whose storage type is builtins.eval, no REDUCE at all
    items = [("a", dict(key="0", size=(4,), stride=(1,), numel=4)),
             ("b", dict(key="1", size=(2, 3), stride=(3, 1), numel=6, storage_type="FloatStorage"))]
    pkl = state_dict_pickle(items).replace(b"ctorch\nFloatStorage\n", b"cbuiltins\neval\n", 1)
    torch_like("evil_storage_type.bin", pkl)
    # evil_stack_global.bin: protocol-4 STACK_GLOBAL 'builtins' 'exec' + EMPTY_TUPLE + REDUCE
    s4 = (b"\x80\x04" + b"\x8c\x08builtins\x94" + b"\x8c\x04exec\x94" + b"\x93\x94" + b")R\x94.")
    torch_like("evil_stack_global.bin", s4, data=[])
    # missing_record.bin: persistent id key '1' but no data/1 in the archive
    torch_like("missing_record.bin", ref_pkl, data=good_data[:1])
    # storage_too_small.bin: 'b' claims size (2,3) over a storage of numel 4 (data/1 has 16 bytes)
    items = [("a", dict(key="0", size=(4,), stride=(1,), numel=4)),
             ("b", dict(key="1", size=(2, 3), stride=(3, 1), numel=4))]
    torch_like("storage_too_small.bin", state_dict_pickle(items),
               data=[good_data[0], ("data/1", f32_bytes(b_vals[:4]))])
    # record_size_mismatch.bin: storage numel 6 but data/1 holds only 5 floats
    torch_like("record_size_mismatch.bin", ref_pkl,
               data=[good_data[0], ("data/1", f32_bytes(b_vals[:5]))])

    # truncated.bin: a valid torch.save zip, first half only (no central directory)
    with open(ref_path, "rb") as f:
        full = f.read()
    with open(os.path.join(bad, "truncated.bin"), "wb") as f:
        f.write(full[: len(full) // 2])
    # not_a_zip.bin: torch's legacy (pre-1.6, non-zip) serialisation of the same dict
    with open(os.path.join(bad, "not_a_zip.bin"), "wb") as f:
        f.write(legacy_bytes(ref_sd))
    # random_bytes.bin: 256 deterministic pseudo-random bytes
    rnd = b"".join(hashlib.sha256(b"t5_bad random %d" % i).digest() for i in range(8))
    assert not rnd.startswith(b"PK")
    with open(os.path.join(bad, "random_bytes.bin"), "wb") as f:
        f.write(rnd)
    # empty.bin
    open(os.path.join(bad, "empty.bin"), "wb").close()

    # -- model directories -------------------------------------------------------------------
    cfg = T5Config(**dict(TINY, vocab_size=64))
    sd = W.materialise(manifest(cfg), BAD_SEED)
    names = list(sd)
    k1, k2 = split_keys(cfg, names)
    files = ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"]

    d = os.path.join(bad, "missing_shard")
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), cfg.to_hf_dict())
    write_json(os.path.join(d, "pytorch_model.bin.index.json"), index_json(sd, list(zip(files, (k1, k2)))))
    torch.save({k: sd[k] for k in k1}, os.path.join(d, files[0]))  # shard 2 deliberately absent

    d = os.path.join(bad, "index_mismatch")
    os.makedirs(d)
    write_json(os.path.join(d, "config.json"), cfg.to_hf_dict())
    write_json(os.path.join(d, "pytorch_model.bin.index.json"), index_json(sd, list(zip(files, (k1, k2)))))
    gone = "encoder.block.0.layer.1.layer_norm.weight"
    stray = "encoder.block.0.layer.1.layer_norm.bias"
    part1 = {}
    for k in k1:
        if k == gone:
            part1[stray] = sd[k].clone()
        else:
            part1[k] = sd[k]
    torch.save(part1, os.path.join(d, files[0]))
    torch.save({k: sd[k] for k in k2}, os.path.join(d, files[1]))

    shutil.rmtree(tmp)

    # -- self-checks: the hostile files are refused by torch's own weights_only loader -------
    for name, exc in [("evil_global.bin", "Unsupported class os.system"),
                      ("evil_torch_global.bin", "Unsupported class torch.load"),
                      ("evil_storage_type.bin", "Unsupported class builtins.eval"),
                      ("truncated.bin", None), ("random_bytes.bin", None), ("empty.bin", None),
                      ("missing_record.bin", None), ("storage_too_small.bin", None),
                      ("record_size_mismatch.bin", None), ("evil_stack_global.bin", None)]:
        try:
            torch.load(os.path.join(bad, name), weights_only=True)
            print("  NOTE: torch.load(weights_only=True) ACCEPTED %s" % name)
        except Exception as e:  # noqa: BLE001
            msg = str(e).replace("\n", " ")
            msg = msg.split("WeightsUnpickler error: ")[-1][:90]
            if exc is not None:
                assert exc in str(e), (name, e)
            print("  torch.load(weights_only=True) refuses %-26s %s: %s" % (name, type(e).__name__, msg))
    print("t5_bad written:", p and "ok")


# ----------------------------------------------------------------------------------------------
# opcode / global summary


def pickle_summary(pkl):
    ops = collections.Counter()
    globs = collections.Counter()
    for op, arg, _pos in pickletools.genops(pkl):
        ops[op.name] += 1
        if op.name == "GLOBAL":
            globs[arg] += 1
    return ops, globs


def dis_bins(out_root):
    paths = []
    for sub in ("t5_tiny/bin",):
        d = os.path.join(out_root, sub)
        paths += [os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".bin")]
    all_ops, all_globs = collections.Counter(), collections.Counter()
    for p in paths:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            pkl_name = [n for n in names if n.endswith("/data.pkl")][0]
            pkl = z.read(pkl_name)
        print("=" * 100)
        print(p, "entries:", names)
        out = io.StringIO()
        pickletools.dis(pkl, out=out)
        print(out.getvalue())
        ops, globs = pickle_summary(pkl)
        all_ops.update(ops)
        all_globs.update(globs)
    print("opcodes:", dict(sorted(all_ops.items())))
    print("globals:", dict(sorted(all_globs.items())))
    # The real XXL key layout (219 tensors) needs more than 256 memo slots, so Python switches to
    # LONG_BINPUT / LONG_BINGET; tensors here are 1-element stand-ins (real shapes only change
    # which BININT* width encodes the sizes: 0..255 BININT1, ..65535 BININT2, else BININT).
    big = {name: torch.zeros(1) for name, _shape in param_shapes(T5Config())}
    buf = io.BytesIO()
    torch.save(big, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
    ops, globs = pickle_summary(pkl)
    print("XXL key layout (plain dict of %d tensors): opcodes %s" % (len(big), dict(sorted(ops.items()))))
    print("XXL key layout globals:", dict(sorted(globs.items())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--dis", action="store_true")
    args = ap.parse_args()
    cfg, sd, ids, mask, out, record, st_dir, bin_dir = make_tiny(args.out)
    check_against_hf(cfg, ids, mask, out, record, st_dir, bin_dir)
    make_bad(args.out)
    if args.dis:
        dis_bins(args.out)


if __name__ == "__main__":
    main()
