"""Philox4x32-10 normal noise and SplitMix64 keys: the engine's documented noise convention.

Numpy, independent of the C++ engine (src/core/philox.cpp implements the same definition).

philox4x32_10(counter, key): the Random123 Philox4x32 generator with 10 rounds. One round, with
M0 = 0xD2511F53, M1 = 0xCD9E8D57 and (hi, lo) the 64-bit product split into 32-bit halves:

    (hi0, lo0) = M0 * c0;  (hi1, lo1) = M1 * c2
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  k0 += 0x9E3779B9;  k1 += 0xBB67AE85  (mod 2^32)

philox_normal(shape, seed, stream, lane=0) -> float32 torch tensor of `shape`:
    element i comes from block b = i // 4, word i % 4 of the Box-Muller output of
    philox4x32_10(counter = (b mod 2^32, b >> 32, stream, lane), key = (seed mod 2^32, seed >> 32)).
    The 4 words w0..w3 give two pairs: u = (w + 0.5) / 2^32, r = sqrt(-2 ln u_even),
    a = 2 pi u_odd, outputs (r cos a, r sin a); all in float64, each rounded once to float32.
    lane 0 is the original single-lane convention (tools/train/demo_models.philox_normal).

splitmix64(x): SplitMix64's output function (mod 2^64):
    z = x + 0x9E3779B97F4A7C15; z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB; return z ^ (z >> 31)

Per-video noise of a run with seed S, for the video's noise stream n (video k of a batch: n = k):
    initial noise of loop l              philox_normal([4,T,h,w], S, n, lane = l << 16)
    step noise of step i (0-based), loop l  philox_normal([4,T,h,w], S, n, lane = (l << 16) | (i + 1))
    VAE posterior noise of reference r   key K = reference_key(S, n, r) = splitmix64(S ^ splitmix64((n << 32) | r));
                                         see vae.OpenSoraVAE.encode_sample for the streams under K.
"""

import math

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
TEMPORAL_STREAM_BASE = 0x80000000  # VAE temporal posterior chunk k uses stream 0x80000000 + k


def philox4x32_10(counter, key):
    """Scalar Philox4x32-10 on Python ints: counter 4 words, key 2 words -> 4 words."""
    c = [int(v) & MASK32 for v in counter]
    k = [int(v) & MASK32 for v in key]
    for _ in range(10):
        p0 = PHILOX_M0 * c[0]
        p1 = PHILOX_M1 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k[0]) & MASK32, p1 & MASK32, ((p0 >> 32) ^ c[3] ^ k[1]) & MASK32, p0 & MASK32]
        k = [(k[0] + PHILOX_W0) & MASK32, (k[1] + PHILOX_W1) & MASK32]
    return c


def philox_words(blocks, seed, stream, lane=0):
    """Vectorised Philox4x32-10 of blocks 0..blocks-1: uint64 array [blocks, 4] holding 32-bit words."""
    M = np.uint64(MASK32)
    b = np.arange(blocks, dtype=np.uint64)
    c = [b & M, b >> np.uint64(32), np.full(blocks, int(stream) & MASK32, np.uint64),
         np.full(blocks, int(lane) & MASK32, np.uint64)]
    seed = int(seed) & MASK64
    k = [seed & MASK32, (seed >> 32) & MASK32]
    m0, m1 = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1)
    with np.errstate(over="ignore"):
        for _ in range(10):
            p0 = m0 * c[0]  # < 2^64: exact
            p1 = m1 * c[2]
            c = [((p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k[0])) & M, p1 & M,
                 ((p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k[1])) & M, p0 & M]
            k = [(k[0] + PHILOX_W0) & MASK32, (k[1] + PHILOX_W1) & MASK32]
    return np.stack(c, 1)


def philox_normal(shape, seed, stream=0, lane=0):
    """Standard normal float32 tensor of `shape` (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    blocks = (n + 3) // 4
    w = philox_words(blocks, seed, stream, lane).astype(np.float64)  # [blocks, 4]
    z = np.empty((blocks, 4))
    for pair in range(2):
        u1 = (w[:, 2 * pair] + 0.5) * 2.0 ** -32
        u2 = (w[:, 2 * pair + 1] + 0.5) * 2.0 ** -32
        r = np.sqrt(-2.0 * np.log(u1))
        a = 2.0 * math.pi * u2
        z[:, 2 * pair] = r * np.cos(a)
        z[:, 2 * pair + 1] = r * np.sin(a)
    return torch.from_numpy(z.reshape(-1)[:n].astype(np.float32).reshape(shape))


def splitmix64(x):
    z = (int(x) + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def reference_key(seed, stream, ref_index):
    """Philox key of the VAE posterior noise of reference `ref_index` of the video with noise stream `stream`."""
    return splitmix64((int(seed) & MASK64) ^ splitmix64(((int(stream) << 32) | int(ref_index)) & MASK64))


def loop_lane(loop, step=None):
    """Lane of the initial noise (step None) or of the step noise of 0-based `step`, in loop `loop`."""
    return (int(loop) << 16) | (0 if step is None else int(step) + 1)


def initial_noise(shape, seed, stream, loop):
    return philox_normal(shape, seed, stream, loop_lane(loop))


def step_noise(shape, seed, stream, loop, step):
    return philox_normal(shape, seed, stream, loop_lane(loop, step))
