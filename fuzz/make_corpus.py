#!/usr/bin/env python3
"""Regenerates the seed corpora in fuzz/corpus/ from tests/data and hand-written malformed cases.

Run from anywhere: python3 fuzz/make_corpus.py. Only the standard library is used. The output is
committed; this script documents where each seed came from.
"""
import json, os, shutil, struct, zipfile, io, zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(harness, name, data):
    d = os.path.join(OUT, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def copy(harness, name, *path, prefix=b""):
    with open(os.path.join(DATA, *path), "rb") as f:
        put(harness, name, prefix + f.read())


def st_image(header, data_bytes, len_override=None):
    h = header.encode()
    n = len(h) if len_override is None else len_override
    return struct.pack("<Q", n) + h + b"\0" * data_bytes


def torch_zip(pkl, records=None, compress=False):
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        for k, v in (records or {}).items():
            z.writestr("archive/data/" + k, v)
    return b.getvalue()


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)

    # --- safetensors: small valid files + every malformed case of tests/test_safetensors.cpp ----
    for n in ["decode_1.inputs.safetensors", "encode_1.expected.safetensors",
              "decode_17.inputs.safetensors"]:
        copy("safetensors", "valid_" + n, "vae_tiny", n)
    copy("safetensors", "valid_noise.safetensors", "pipeline_tiny", "noise.safetensors")
    copy("safetensors", "valid_shard2.safetensors", "t5_tiny", "safetensors", "model-00002-of-00002.safetensors")
    ok = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    cases = {
        "ok": st_image(ok, 8),
        "meta": st_image('{"__metadata__":{"format":"pt"},"a":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]}}', 4),
        "too_short": b"\0" * 5,
        "len_past_end": st_image(ok, 8, 4000),
        "terabyte_header_len": st_image(ok, 8, 1 << 40),
        "not_json": st_image("{not json", 0),
        "not_object": st_image("[1, 2]", 0),
        "bad_dtype": st_image('{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}', 8),
        "truncated_data": st_image(ok, 4),
        "span_mismatch": st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,800]}}', 8),
        "overlap": st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                            '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12),
        "shape_vs_span": st_image('{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', 8),
        "duplicate": st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                              '"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}', 16),
        "begin_gt_end": st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}', 8),
        "gap": st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12),
        "trailing": st_image(ok, 12),
        "negative_dim": st_image('{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', 8),
        "terabyte_tensor": st_image('{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],'
                                    '"data_offsets":[0,8]}}', 8),
        "terabyte_offsets": st_image('{"a":{"dtype":"F32","shape":[262144,1048576],'
                                     '"data_offsets":[0,1099511627776]}}', 8),
        "no_offsets": st_image('{"a":{"dtype":"F32","shape":[2]}}', 8),
        "entry_not_object": st_image('{"a":5}', 0),
        "meta_not_string": st_image('{"__metadata__":{"k":1}}', 0),
        "nested": st_image('{"a":{"b":{"c":{"d":{"e":{"f":1}}}}}}', 0),
        "nesting_bomb": st_image("[" * 20000, 0),
    }
    for k, v in cases.items():
        put("safetensors", k + ".safetensors", v)

    # --- torch .bin: small valid shards + every malformed case of tests/data/t5_bad ------------
    copy("torch_bin", "valid_shard2.bin", "t5_tiny", "bin", "pytorch_model-00002-of-00002.bin")
    copy("torch_bin", "valid_index_mismatch_shard2.bin", "t5_bad", "index_mismatch", "pytorch_model-00002-of-00002.bin")
    for n in sorted(os.listdir(os.path.join(DATA, "t5_bad"))):
        if n.endswith(".bin"):
            copy("torch_bin", "t5_bad_" + n, "t5_bad", n)
    P = b"\x80\x02"
    put("torch_bin", "empty_state_dict.bin", torch_zip(P + b"}."))
    put("torch_bin", "deflated_entry.bin", torch_zip(P + b"}." + b" " * 4096, compress=True))
    put("torch_bin", "deep_nesting.bin", torch_zip(P + b"]" * 100 + b"a" * 99 + b"."))
    put("torch_bin", "deep_tuples.bin", torch_zip(P + b")" + b"\x85" * 200 + b"."))
    put("torch_bin", "huge_memo.bin", torch_zip(P + b"N" + b"\x94" * 20000 + b"."))
    put("torch_bin", "memo_far_index.bin", torch_zip(P + b"}r\xff\xff\xff\xffj\xff\xff\xff\xff."))
    put("torch_bin", "stack_bomb.bin", torch_zip(P + b"N" * 20000 + b"."))
    # A cycle of two lists (A=[B], B=[A]) put into the root dict.
    put("torch_bin", "list_cycle.bin", torch_zip(P + b"}]\x94]\x94ah\x01h\x00as."))
    # A chain built by appending to a list after it was nested (depth bookkeeping bypass):
    # L_{i-1} from memo, new list L_i memoised, APPEND L_i into L_{i-1}, repeated.
    chain = P + b"}" + b"K\x00" + b"]" + b"r" + struct.pack("<I", 0)
    for i in range(1, 300):
        chain += b"j" + struct.pack("<I", i - 1) + b"]" + b"r" + struct.pack("<I", i) + b"a"
    put("torch_bin", "reopened_chain.bin", torch_zip(chain + b"."))

    # --- config JSON: byte 0 picks the parser (0 stdit3, 1 t5, 2 vae, 3 generic) ---------------
    for k, path in [(0, ("stdit3_a", "config.json")), (0, ("configs", "OpenSora-STDiT-v3", "config.json")),
                    (1, ("t5_tiny", "config.json")), (1, ("configs", "t5-v1_1-xxl.config.json")),
                    (1, ("configs", "t5-v1_1-xxl.encoder.config.json")),
                    (2, ("vae_tiny", "config.json")), (2, ("configs", "OpenSora-VAE-v1.2.config.json")),
                    (3, ("t5_tiny", "safetensors", "model.safetensors.index.json"))]:
        copy("config", "%d_%s" % (k, "_".join(path)), *path, prefix=bytes([k]))
    for k in range(4):
        put("config", "%d_nesting_bomb" % k, bytes([k]) + b"[" * 20000)
        put("config", "%d_object_bomb" % k, bytes([k]) + b'{"a":' * 4000)
        put("config", "%d_wrong_types" % k, bytes([k]) + b'{"hidden_size":"x","depth":1e300,"d_model":-1,'
            b'"num_heads":null,"model_type":5,"patch_size":[1,"a"],"is_gated_act":"yes"}')

    # --- shard directories: "<layout byte><index json>\n@@@@\n<shard 1>\n@@@@\n<shard 2>" -------
    def shard_dir(name, layout, d, idx, shards):
        blob = bytes([layout]) + open(os.path.join(DATA, *d, idx), "rb").read()
        for s in shards:
            blob += b"\n@@@@\n" + open(os.path.join(DATA, *d, s), "rb").read()
        put("checkpoint_dir", name, blob)
    shard_dir("t5_bad_index_mismatch", 1, ("t5_bad", "index_mismatch"), "pytorch_model.bin.index.json",
              ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"])
    shard_dir("t5_bad_missing_shard", 1, ("t5_bad", "missing_shard"), "pytorch_model.bin.index.json",
              ["pytorch_model-00001-of-00002.bin"])
    two = ('{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}')
    sa = st_image('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', 8)
    sb = st_image('{"b":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}', 4)
    put("checkpoint_dir", "two_shards_ok", b"\0" + two.encode() + b"\n@@@@\n" + sa + b"\n@@@@\n" + sb)
    put("checkpoint_dir", "path_escape", b"\0" + b'{"weight_map":{"a":"../x","b":"/etc/passwd","c":".."}}')
    put("checkpoint_dir", "single_safetensors", b"\2" + sa)
    # An FP8 weight with its row scales (load_checked's quantizable spec "q" [2, 2] + "q_scale" [2]).
    fp8 = st_image('{"q":{"dtype":"F8_E4M3","shape":[2,2],"data_offsets":[0,4]},'
                   '"q_scale":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', 12)
    put("checkpoint_dir", "fp8_with_scales", b"\2" + fp8)
    put("checkpoint_dir", "single_bin", b"\3" + open(os.path.join(DATA, "t5_bad", "truncated.bin"), "rb").read())
    put("checkpoint_dir", "index_nesting_bomb", b"\0" + b"[" * 20000)

    # --- prompts + tokenizer: one prompt of each case in tests/data/text/prompts.jsonl --------
    seen = {}
    with open(os.path.join(DATA, "text", "prompts.jsonl"), encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if len(seen.get(r["case"], [])) < 2 and len(r["prompt"].encode()) < 4000:
                seen.setdefault(r["case"], []).append(r["prompt"])
    i = 0
    for case, ps in sorted(seen.items()):
        for p in ps:
            put("prompt", "%03d_%s" % (i, case[:40].replace("/", "_")), b"\x03\x03\x03" + p.encode())
            put("tokenizer", "%03d_%s" % (i, case[:40].replace("/", "_")), b"\x00" + p.encode())
            i += 1
    bad = [b"\xff\xfe invalid \xc3\x28 utf8 \xed\xa0\x80 surrogate \xf4\x90\x80\x80",
           b"<b>bold</b> &amp; &#x110000; &#0; &nbsp; <a href='x'>", b"\xe2\x80" * 300,
           b"\x00\x01\x02 control \x7f", "ЁЖ日本語 テスト 🎥🎬 ﬁ".encode(), b"a" * 5000,
           b"http://example.com/a?b=c www.x.org @user #tag 123-456-7890"]
    for j, b in enumerate(bad):
        put("prompt", "bad_%02d" % j, bytes([0xff, 0xff, 0xff]) + b)
        put("tokenizer", "bad_%02d" % j, bytes([j * 9]) + b)

    # --- media: a tiny PNG of each colour type, a truncated one; byte 0 picks the reader --------
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    def png(w, h, ctype, bitdepth, rowbytes, text=b""):
        raw = b"".join(b"\0" + bytes((x * 37 + y * 11) & 0xFF for x in range(rowbytes)) for y in range(h))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bitdepth, ctype, 0, 0, 0))
                + text + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    def itxt(key, value):  # uncompressed UTF-8 text, as generate writes its record
        return chunk(b"iTXt", key + b"\0\0\0\0\0" + value)
    put("media", "png_rgb", b"\0" + png(8, 6, 2, 8, 24))
    put("media", "png_rgba", b"\0" + png(5, 3, 6, 8, 20))
    put("media", "png_gray", b"\0" + png(7, 7, 0, 8, 7))
    put("media", "png_gray16", b"\0" + png(4, 4, 0, 16, 8))
    put("media", "png_truncated", b"\0" + png(8, 6, 2, 8, 24)[:60])
    put("media", "png_huge_dims", b"\0" + png(8, 6, 2, 8, 24)[:16] + struct.pack(">II", 0x7FFFFFFF, 0x7FFFFFFF) + png(8, 6, 2, 8, 24)[24:])
    put("media", "png_as_video", b"\6" + png(8, 6, 2, 8, 24))
    put("media", "garbage_mp4", b"\2" + b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\xff" * 64)
    put("media", "empty_video", b"\6")
    # Byte 0 & 8: the run record reader (generate --from); & 16: read_png_text.
    record = (b'{"program":"stdit 0.1.0","engine":"models/tiny","engine_id":"0","backend":"cpu","precision":"f32",'
              b'"width":16,"height":16,"output_width":16,"output_height":16,"num_frames":1,"fps":24.0,'
              b'"model_fps":120.0,"steps":1,"cfg_scale":7.0,"seed":42,"aes":6.5,"flow":null,"camera_motion":null,'
              b'"batch_size":1,"videos":[{"prompt":"a red ball","prompt_encoded":"a red ball aesthetic score: 6.5.",'
              b'"noise_index":0}]}')
    put("media", "record_png", b"\x08" + png(8, 6, 2, 8, 24, itxt(b"stdit", record) + itxt(b"prompt", "a r\u00e9d ball".encode())))
    put("media", "record_png_bad_json", b"\x08" + png(8, 6, 2, 8, 24, itxt(b"stdit", record[:-9])))
    put("media", "record_safetensors", b"\x08" + st_image(json.dumps({"__metadata__": {"stdit": record.decode()}}), 0))
    put("media", "png_text", b"\x10" + png(8, 6, 2, 8, 24, itxt(b"prompt", b"x" * 300) + chunk(b"tEXt", b"seed\x0042")))

    # --- engine directory: config.json text; byte 0 = which component files are missing ------
    copy("engine", "tiny_complete", "..", "..", "models", "tiny", "config.json", prefix=b"\0")
    copy("engine", "tiny_missing_vae", "..", "..", "models", "tiny", "config.json", prefix=b"\x40")
    put("engine", "wrong_types", b"\0" + b'{"format":1,"format_version":"1","dtype":[]}')
    put("engine", "nesting_bomb", b"\0" + b"[" * 20000)


if __name__ == "__main__":
    main()
