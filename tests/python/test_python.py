"""The Python package against the real engine: the demo model, equality with the `stdit` program,
bad arguments, cancellation (callback and Ctrl-C), two pipelines in one process, the example.

Run: STDIT_BIN=build/stdit python -m pytest tests/python (with the package installed).
"""
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import stdit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STDIT_BIN = os.environ.get("STDIT_BIN", os.path.join(ROOT, "build", "stdit"))
FAST = dict(num_inference_steps=3, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return stdit.Pipeline.from_pretrained(device="cpu")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32"
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(info["shape"])
    return out, header.get("__metadata__", {})


def write_png(path, rgb):
    """A plain 8-bit RGB PNG (filter 0 on every row)."""
    import zlib

    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def red_centroid_x(frame):
    r, g, b = (frame[..., k].astype(int) for k in range(3))
    red = (r > 140) & (g < 110) & (b < 110)
    assert red.sum() > 20, "no red ball in the frame"
    return np.nonzero(red)[1].mean()


def test_demo_model_draws_the_prompt(pipe):
    out = pipe("a red ball moving to the right", progress=False)  # the engine's defaults: 30 steps
    assert len(out.frames) == 1 and out.latents is None
    v = out.frames[0]
    assert v.shape == (17, 128, 128, 3) and v.dtype == np.uint8
    first, last = red_centroid_x(v[0]), red_centroid_x(v[-1])
    assert last > first + 10, f"red ball at x={first:.1f} then x={last:.1f}: not moving right"
    out = pipe("a red ball moving to the left", progress=False)
    assert red_centroid_x(out.frames[0][-1]) < red_centroid_x(out.frames[0][0]) - 10


def test_same_latents_as_the_program(pipe, tmp_path):
    out = pipe("a blue square moving up", seed=5, return_latents=True, **FAST)
    lat = tmp_path / "lat.safetensors"
    subprocess.run([STDIT_BIN, "generate", "a blue square moving up", "--seed", "5", "--steps", "3",
                    "--backend", "cpu", "-e", stdit.demo_engine_dir(), "--out-dir", str(tmp_path),
                    "--save-latents", str(lat), "-q"], check=True)
    tensors, meta = read_safetensors(lat)
    assert tensors["latents"].shape == (1,) + out.latents[0].shape
    assert np.array_equal(tensors["latents"][0], out.latents[0])  # identical, not close
    assert json.loads(meta["stdit"])["engine_id"] == out.records[0]["engine_id"]


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="unknown camera motion 'dolly'"):
        pipe("x", camera_motion="dolly", **FAST)
    with pytest.raises(ValueError, match="height and width go together"):
        pipe("x", height=64, **FAST)
    with pytest.raises(ValueError, match="16 frames is not a length"):
        pipe("x", num_frames=16, **FAST)
    with pytest.raises(ValueError, match="unknown resolution"):
        pipe("x", resolution="1080p", **FAST)
    with pytest.raises(ValueError):
        pipe([], **FAST)
    with pytest.raises(ValueError, match="seed or generator"):
        pipe("x", seed=1, generator=2, **FAST)
    with pytest.raises(FileNotFoundError, match="no engine directory here"):
        stdit.Pipeline.from_pretrained("/nonexistent/engine")
    with pytest.raises(ValueError, match="device"):
        stdit.Pipeline.from_pretrained(device="tpu")
    with pytest.raises(ValueError, match="precision"):
        stdit.Pipeline.from_pretrained(device="cpu", precision="fp4")
    with pytest.raises(ValueError, match="--fp8-keep needs --precision fp8"):
        stdit.Pipeline.from_pretrained(device="cpu", fp8_keep="qkv")
    with pytest.raises(ValueError, match="--kernels must be auto or portable, got 'fast'"):
        stdit.Pipeline.from_pretrained(device="cpu", kernels="fast")
    with pytest.raises(ValueError, match="uint8"):
        stdit.export_to_video(np.zeros((2, 8, 8, 3), np.float32), "x.mp4")
    with pytest.raises(ValueError, match="--cache: unknown method 'pab'"):
        pipe("x", cache="pab", **FAST)
    with pytest.raises(ValueError, match="--cfg-until must be in"):
        pipe("x", cfg_until=0, **FAST)


def test_step_caching_and_cfg_until_as_the_program(pipe, tmp_path):
    out = pipe("a red ball moving to the right", seed=3, cache="teacache:0.2", cfg_until=0.6,
               num_inference_steps=8, return_latents=True, progress=False)
    rec = out.records[0]
    assert rec["cache"] == "teacache:0.2" and rec["cfg_until"] == 0.6
    lat = tmp_path / "lat.safetensors"
    subprocess.run([STDIT_BIN, "generate", "a red ball moving to the right", "--seed", "3", "--steps", "8",
                    "--cache", "teacache:0.2", "--cfg-until", "0.6", "--backend", "cpu",
                    "-e", stdit.demo_engine_dir(), "--out-dir", str(tmp_path), "--save-latents", str(lat), "-q"],
                   check=True)
    tensors, _ = read_safetensors(lat)
    assert np.array_equal(tensors["latents"][0], out.latents[0])
    plain = pipe("a red ball moving to the right", seed=3, num_inference_steps=8, return_latents=True,
                 progress=False)
    assert not np.array_equal(plain.latents[0], out.latents[0])


def test_fp8_as_the_program(tmp_path):
    p8 = stdit.Pipeline.from_pretrained(device="cpu", precision="fp8", fp8_keep="fc2")
    assert p8.precision == "fp8 (unquantized fc2)"
    out = p8("a red ball moving to the right", seed=4, return_latents=True, **FAST)
    assert out.records[0]["precision"] == "fp8" and out.records[0]["fp8_keep"] == "fc2"
    assert out.records[0]["attention_kernels"] == "cpu"
    lat = tmp_path / "lat.safetensors"
    subprocess.run([STDIT_BIN, "generate", "a red ball moving to the right", "--seed", "4", "--steps", "3",
                    "--precision", "fp8", "--fp8-keep", "fc2", "--backend", "cpu", "-e", stdit.demo_engine_dir(),
                    "--out-dir", str(tmp_path), "--save-latents", str(lat), "-q"], check=True)
    tensors, _ = read_safetensors(lat)
    assert np.array_equal(tensors["latents"][0], out.latents[0])


def test_offload_keeps_only_the_denoiser(pipe):
    assert pipe.loaded_models == ["t5", "denoiser", "vae"] or pipe.loaded_models == []  # [] before its first call
    want = pipe("a red ball moving to the right", seed=5, **FAST).frames[0]
    assert pipe.loaded_models == ["t5", "denoiser", "vae"]
    off = stdit.Pipeline.from_pretrained(device="cpu", offload=True)
    assert off.loaded_models == []
    for _ in range(2):
        got = off("a red ball moving to the right", seed=5, **FAST).frames[0]
        assert np.array_equal(got, want)
        assert off.loaded_models == ["denoiser"]


def test_image_to_video_as_the_program(pipe, tmp_path):
    # a red disc on the left of the demo model's white background, as a PNG
    yy, xx = np.mgrid[0:128, 0:128]
    img = np.full((128, 128, 3), 240, np.uint8)
    img[(xx + 0.5 - 30) ** 2 + (yy + 0.5 - 64) ** 2 <= 14 ** 2] = (220, 35, 35)
    ref = tmp_path / "ball.png"
    write_png(ref, img)
    out = pipe("a red ball moving to the right", image=str(ref), return_latents=True, **FAST)
    rec = out.records[0]
    assert rec["videos"][0]["reference_path"] == str(ref) and rec["videos"][0]["mask_strategy"] == "0"
    v = out.frames[0]
    assert red_centroid_x(v[0]) < 45, "the first frame does not start from the picture"
    lat = tmp_path / "lat.safetensors"
    subprocess.run([STDIT_BIN, "generate", "a red ball moving to the right", "--image", str(ref), "--steps", "3",
                    "--backend", "cpu", "-e", stdit.demo_engine_dir(), "--out-dir", str(tmp_path),
                    "--save-latents", str(lat), "-q"], check=True)
    tensors, _ = read_safetensors(lat)
    assert np.array_equal(tensors["latents"][0], out.latents[0])
    with pytest.raises(ValueError, match="does not exist"):
        pipe("x", image=str(tmp_path / "missing.png"), **FAST)
    with pytest.raises(ValueError, match="bad ref_id 'q'"):
        pipe("x", reference_path=str(ref), mask_strategy="0,q", **FAST)


def test_max_memory(pipe):
    # The memory plan before anything loads: a budget under every stage is a ValueError naming the
    # shortfall; a roomy one makes the video as without it.
    with pytest.raises(ValueError, match="--max-memory"):
        pipe("a red ball", height=32, width=32, num_frames=1, num_inference_steps=1, max_memory=1e-6, progress=False)
    a = pipe("a red ball", height=32, width=32, num_frames=1, num_inference_steps=1, progress=False)
    b = pipe("a red ball", height=32, width=32, num_frames=1, num_inference_steps=1, max_memory=8, progress=False)
    assert (a.frames[0] == b.frames[0]).all()


def test_cancel_from_the_callback(pipe):
    seen = []

    def stop_at_step_1(p, step, total, kwargs):
        seen.append(step)
        if step == 1:
            p.interrupt = True
        return kwargs

    out = pipe(["a red ball", "a blue ball"], callback_on_step_end=stop_at_step_1, **FAST)
    assert seen == [0, 1] and out.frames == []
    # The next call runs normally.
    assert len(pipe("a red ball", **FAST).frames) == 1


def test_two_pipelines_in_one_process(pipe):
    other = stdit.Pipeline.from_pretrained(device="cpu")
    a = other("an orange ball moving left", seed=3, **FAST).frames[0]
    b = pipe("a green square moving down", seed=3, **FAST).frames[0]
    a2 = pipe("an orange ball moving left", seed=3, **FAST).frames[0]
    assert np.array_equal(a, a2) and not np.array_equal(a, b)


def test_export_to_video_reads_back(pipe, tmp_path):
    v = pipe("a red ball", **FAST).frames[0]
    path = stdit.export_to_video(v, str(tmp_path / "v.mp4"), fps=12)
    info = subprocess.run([STDIT_BIN, "inspect", path], check=True, capture_output=True, text=True).stdout
    assert "128x128 px, 17 frames at 12 fps" in info
    with pytest.raises(RuntimeError, match="exists"):
        stdit.export_to_video(v, path)


def test_ctrl_c_raises_keyboard_interrupt(tmp_path):
    script = textwrap.dedent("""
        import sys, stdit
        pipe = stdit.Pipeline.from_pretrained(device="cpu")
        def on_step(pipe, step, total, kwargs):
            if step == 1:
                print("denoising", flush=True)
            return kwargs
        try:
            pipe("a red ball", num_inference_steps=2000, progress=False, callback_on_step_end=on_step)
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
            out = pipe("a red ball", num_inference_steps=2, progress=False)  # usable afterwards
            print("again", len(out.frames), flush=True)
            sys.exit(0)
        sys.exit(3)
    """)
    # Ctrl-C as in a terminal: SIGINT at its default in the child even when the test runs as a
    # background job (which ignores SIGINT, and a Python started so keeps ignoring it).
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "denoising"  # the loop runs: Ctrl-C now
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # never leave the 2000-step run behind
            p.kill()
            p.wait()
    assert p.returncode == 0, out
    assert "KeyboardInterrupt" in out and "again 1" in out


def test_the_example_runs(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "quickstart.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "frames: (17, 128, 128, 3) uint8" in r.stdout
    assert (tmp_path / "red_ball.mp4").stat().st_size > 1000


def test_the_engine_runs_without_the_gil(pipe):
    import threading

    ticks = [0]
    stop = threading.Event()

    def count():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=count)
    t.start()
    start = ticks[0]
    pipe("a red ball", num_inference_steps=4, progress=False)
    during = ticks[0] - start
    stop.set()
    t.join()
    # With the GIL held for the whole call the counter could only move inside the few callbacks.
    assert during > 100000, f"only {during} increments while the engine ran"
