"""Reference outputs for tests/test_media.cpp (MediaResize.*), made with Pillow and PyTorch.

Run with Debian's Python (Pillow 9.4, torch 1.13, numpy), from the repository root:
    /usr/bin/python3 tests/data/media/make_resize_reference.py
It writes tests/data/media/resize_ref/*.png (Pillow, Open-Sora's image path) and
tests/data/media/resize_ref/torch_bilinear.safetensors (PyTorch, Open-Sora's video path).
The two resize_crop_to_fill functions below are copied from Open-Sora v1.2.0
(opensora/datasets/utils.py and opensora/datasets/video_transforms.py).
"""
import json
import os
import struct

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "resize_ref")


# --- Open-Sora v1.2.0 opensora/datasets/utils.py (image path) -------------------------------
def resize_crop_to_fill_image(pil_image, image_size):
    w, h = pil_image.size  # PIL is (W, H)
    th, tw = image_size
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        image = pil_image.resize((sw, sh), Image.BICUBIC)
        i = 0
        j = int(round((sw - tw) / 2.0))
    else:
        sh, sw = round(h * rw), tw
        image = pil_image.resize((sw, sh), Image.BICUBIC)
        i = int(round((sh - th) / 2.0))
        j = 0
    arr = np.array(image)
    assert i + th <= arr.shape[0] and j + tw <= arr.shape[1]
    return Image.fromarray(arr[i : i + th, j : j + tw])


# --- Open-Sora v1.2.0 opensora/datasets/video_transforms.py (video path) --------------------
def resize(clip, target_size, interpolation_mode):
    return torch.nn.functional.interpolate(clip, size=target_size, mode=interpolation_mode, align_corners=False)


def crop(clip, i, j, h, w):
    return clip[..., i : i + h, j : j + w]


def resize_crop_to_fill_video(clip, target_size):
    h, w = clip.size(-2), clip.size(-1)
    th, tw = target_size[0], target_size[1]
    rh, rw = th / h, tw / w
    if rh > rw:
        sh, sw = th, round(w * rh)
        clip = resize(clip, (sh, sw), "bilinear")
        i = 0
        j = int(round(sw - tw) / 2.0)
    else:
        sh, sw = round(h * rw), tw
        clip = resize(clip, (sh, sw), "bilinear")
        i = int(round(sh - th) / 2.0)
        j = 0
    assert i + th <= clip.size(-2) and j + tw <= clip.size(-1)
    return crop(clip, i, j, th, tw)


def video_reference(frames_thwc, th, tw):
    """Open-Sora's video transform: ToTensorVideo, ResizeCrop, Normalize(0.5, 0.5) -> [C,T,H,W]."""
    vframes = torch.from_numpy(frames_thwc).permute(0, 3, 1, 2)  # as torchvision read_video TCHW
    clip = vframes.float() / 255.0
    clip = resize_crop_to_fill_video(clip, (th, tw))
    # torchvision transforms.Normalize(mean=[0.5] * 3, std=[0.5] * 3, inplace=True) on [T, C, H, W]
    mean = torch.as_tensor((0.5, 0.5, 0.5), dtype=clip.dtype).view(-1, 1, 1)
    std = torch.as_tensor((0.5, 0.5, 0.5), dtype=clip.dtype).view(-1, 1, 1)
    clip.sub_(mean).div_(std)
    return clip.permute(1, 0, 2, 3).contiguous()


def synthetic(w, h):
    """Same formula as synthetic() in tests/test_media.cpp."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return ((x * 37 + y * 91 + c * 53 + (x * y) % 7 * 11) % 256).astype(np.uint8)


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":"))
    h += " " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h.encode())
        for b in blobs:
            f.write(b)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    chelsea = Image.open(os.path.join(HERE, "chelsea.png")).convert("RGB")
    small = Image.fromarray(synthetic(13, 9))
    cases = {  # name: (source, target height, target width)
        "chelsea_64x48": (chelsea, 48, 64),   # shrink, crop columns
        "chelsea_64x24": (chelsea, 24, 64),   # shrink, crop rows: 9.5 -> 10 (image) / 9 (video)
        "synthetic_50x40": (small, 40, 50),   # enlarge 13x9
    }
    tensors = {}
    for name, (img, th, tw) in cases.items():
        resize_crop_to_fill_image(img, (th, tw)).save(os.path.join(OUT, name + ".png"))
        tensors[name] = video_reference(np.array(img)[None], th, tw)
    write_safetensors(os.path.join(OUT, "torch_bilinear.safetensors"), tensors)
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
