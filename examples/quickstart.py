"""A notebook-style walk through the Python API (run by the tests: python examples/quickstart.py OUT_DIR).

Each block below is one notebook cell.
"""
import os
import sys

import numpy as np

import stdit

out_dir = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out_dir, exist_ok=True)

# --- Load the embedded demo model once (T5, the denoiser and the VAE stay in memory) ---
pipe = stdit.Pipeline.from_pretrained()
print("engine:", pipe.engine_dir, "on", pipe.backend)

# --- One video: frames come back as numpy arrays [frames, height, width, 3] uint8 ---
out = pipe("a red ball moving to the right", seed=7, progress=False)
video = out.frames[0]
print("frames:", video.shape, video.dtype)

# --- Write it as the same H.264 mp4 the command line writes ---
path = stdit.export_to_video(video, os.path.join(out_dir, "red_ball.mp4"), fps=24)
print("wrote", path)

# --- Several prompts in one call, fewer steps for a quick look ---
out = pipe(["a blue square moving up", "an orange ball moving left"], num_inference_steps=10, progress=False)
for prompt_video, record in zip(out.frames, out.records):
    print(record["videos"][0]["prompt"], "->", prompt_video.shape, "mean", float(np.mean(prompt_video)))

# --- The record of a video says how to make it again (also: stdit generate --from FILE.mp4) ---
print("seed", out.records[0]["seed"], "noise stream", out.records[0]["videos"][0]["noise_index"])
