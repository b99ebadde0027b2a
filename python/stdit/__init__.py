"""stdit: Open-Sora 1.2 text-to-video inference (STDiT3 + T5 + VAE) from a C++/CUDA engine.

    import stdit
    pipe = stdit.Pipeline.from_pretrained()            # the embedded demo model
    out = pipe("a red ball moving to the right", num_inference_steps=30)
    stdit.export_to_video(out.frames[0], "red_ball.mp4", fps=24)

The call mirrors diffusers' video pipelines (argument names, ``.frames``); the engine runs without
the GIL. Errors: ``ValueError`` for bad arguments, ``FileNotFoundError`` for a missing engine,
``RuntimeError`` otherwise, each with the engine's one-line message. Ctrl-C (KeyboardInterrupt)
stops a run at the next denoising step.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _core

__all__ = ["Pipeline", "PipelineOutput", "export_to_video", "demo_engine_dir", "set_verbosity", "__version__"]
__version__ = _core.version.split()[-1]


def set_verbosity(level: int) -> None:
    """The engine's own log lines on stderr: 0 errors only (the default in Python), 1 the settings
    line and stage times (as the ``stdit`` program prints), 2 also its memory plan."""
    _core.set_verbosity(int(level))


set_verbosity(0)


def demo_engine_dir() -> str:
    """The embedded demo model shipped inside the package (128x128 px, 17 frames; docs/DEMO_MODEL.md)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", "tiny")


@dataclass
class PipelineOutput:
    """What a call returns.

    frames: one ``numpy.ndarray`` per video, ``[num_frames, height, width, 3]`` uint8 RGB.
    latents: with ``return_latents=True``, one float32 ``[4, T, h, w]`` array per video, else None.
    records: per video, the run record (a dict) that ``stdit generate --from`` understands.
    """

    frames: List[np.ndarray]
    latents: Optional[List[np.ndarray]] = None
    records: List[Dict[str, Any]] = field(default_factory=list)


def _as_list(v: Any) -> Optional[List[str]]:
    if v is None:
        return None
    return [v] if isinstance(v, str) else [str(x) for x in v]


def _seed_of(seed: Optional[int], generator: Any) -> Optional[int]:
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if generator is not None:
        if isinstance(generator, (int, np.integer)):
            return int(generator)
        initial = getattr(generator, "initial_seed", None)  # torch.Generator
        if callable(initial):
            return int(initial())
        raise ValueError("generator must be an int or have initial_seed() (torch.Generator)")
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return None if seed is None else int(seed)


class Pipeline:
    """A loaded engine: T5, STDiT3 and the VAE stay in memory between calls."""

    def __init__(self, engine: "_core.Engine", device: str) -> None:
        self._engine = engine
        self.device = device
        self.interrupt = False  # set True from callback_on_step_end to stop the run

    @classmethod
    def from_pretrained(cls, engine_dir: Optional[str] = None, device: str = "auto",
                        precision: Optional[str] = None, fp8_keep: Optional[str] = None,
                        kernels: str = "auto", offload: bool = False) -> "Pipeline":
        """Opens an engine directory made by ``stdit convert`` (None: the embedded demo model).

        device: "auto" (the GPU when one is usable, else the CPU), "cpu", "cuda" or "cuda:N".
        precision: None (the device's: bf16 on a GPU, f32 on the CPU), "bf16", "fp16", "tf32", "f32", or "fp8"
            (e4m3 block linears; on the CPU an emulation for checking quality). The CPU computes in f32
            or emulates fp8.
        fp8_keep: with precision "fp8", what stays unquantized, as ``--fp8-keep`` (e.g. "fc2,first:2").
        kernels: "auto", or "portable": no Hopper-only kernels (what Ampere and Ada GPUs run), as ``--kernels``.
        offload: keep only the denoiser on the device between calls; T5 and the VAE are loaded for each call
            and freed after it (for GPUs with 24 GB or less), as ``stdit serve --offload``.
        """
        if device != "auto" and device != "cpu" and device != "cuda" and not str(device).startswith("cuda:"):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        path = demo_engine_dir() if engine_dir is None else os.fspath(engine_dir)
        engine = _core.Engine.open(path, device, True, "auto" if precision is None else str(precision),
                                   "" if fp8_keep is None else str(fp8_keep), str(kernels), bool(offload))
        return cls(engine, device)

    @property
    def engine_dir(self) -> str:
        return self._engine.dir

    @property
    def backend(self) -> str:
        return self._engine.backend

    @property
    def precision(self) -> str:
        return self._engine.precision

    @property
    def loaded_models(self) -> List[str]:
        """The models kept on the device between calls: "t5", "denoiser", "vae" (only "denoiser" with offload)."""
        return list(self._engine.loaded_models)

    def __call__(
        self,
        prompt: Union[str, Sequence[str]],
        height: Optional[int] = None,
        width: Optional[int] = None,
        resolution: Optional[str] = None,
        aspect_ratio: Optional[str] = None,
        num_frames: Optional[Union[int, str]] = None,
        fps: Optional[float] = None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        cache: Optional[str] = None,
        cfg_until: Optional[float] = None,
        seed: Optional[int] = None,
        generator: Any = None,
        aes: Optional[float] = 6.5,
        flow: Optional[float] = None,
        camera_motion: Optional[str] = None,
        num_videos_per_prompt: int = 1,
        batch_size: int = 1,
        callback_on_step_end: Optional[Callable[..., Any]] = None,
        return_latents: bool = False,
        progress: bool = True,
        image: Optional[str] = None,
        extend: Optional[str] = None,
        reference_path: Optional[Union[str, Sequence[str]]] = None,
        mask_strategy: Optional[Union[str, Sequence[str]]] = None,
        loop: Optional[int] = None,
        condition_frame_length: Optional[int] = None,
        condition_frame_edit: Optional[float] = None,
        align: Optional[int] = None,
        max_memory: Optional[float] = None,
    ) -> PipelineOutput:
        """Generates one video per prompt (times ``num_videos_per_prompt``).

        Unset settings take the engine's defaults, else Open-Sora 1.2's (240p 9:16, 51 frames,
        24 fps, 30 steps, guidance 7.0, seed 42).

        prompt: a prompt or a list of prompts.
        height, width: pixels (both or neither), instead of resolution / aspect_ratio.
        resolution: "144p" .. "720p"; aspect_ratio: "9:16" (landscape, Open-Sora's H:W) etc.
        num_frames: frames, or "2s"/"4s"/...; 1 makes an image.
        fps: the model's frame-rate condition and the video's rate.
        num_inference_steps, guidance_scale: RFLOW steps and the CFG scale.
        cache: step caching, "none" (default), "teacache" or "teacache:0.2" (faster, slightly
            different videos; see docs/NUMERICS.md).
        cfg_until: guidance for this fraction of the steps only, in (0, 1] (default 1).
        seed / generator: the initial noise (-1: a random seed, recorded in ``records``).
        aes, flow, camera_motion: Open-Sora's score suffixes (aes=None: no aesthetic score).
        callback_on_step_end: ``f(pipe, step, total_steps, callback_kwargs)`` after every step;
            set ``pipe.interrupt = True`` in it to stop the run at that step: the call then
            returns the videos finished before it (possibly none).
        return_latents: also return the final latents.
        progress: a tqdm bar when tqdm is installed.
        image: image-to-video, the picture (a file) becomes the first frame.
        extend: a video file to continue; the result is that video followed by the new frames.
        reference_path, mask_strategy: Open-Sora's references ("a.png;b.mp4") and their placement
            ("loop,ref,ref_start,target_start,length,edit_ratio;..."), one for every prompt or one
            for all (docs/CLI.md, "Image-to-video, extension, loops").
        loop: clips per video, each continuing the last; condition_frame_length (5 latent frames)
            and condition_frame_edit (0) say on what; align: snap mask-strategy starts (5; 0: off).
        max_memory: GiB this call may use on the GPU (as ``stdit generate --max-memory``): the
            memory plan is checked before anything loads; ValueError naming the shortfall when the
            call cannot fit even with the CFG halves one after the other and fewer VAE frames per call.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a non-empty list of strings")
        if (height is None) != (width is None):
            raise ValueError("height and width go together")
        for name, v in (("num_videos_per_prompt", num_videos_per_prompt), ("batch_size", batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        request: Dict[str, Any] = {
            "prompts": prompts,
            "resolution": resolution,
            "aspect_ratio": aspect_ratio,
            "num_frames": None if num_frames is None else str(num_frames),
            "fps": fps,
            "steps": num_inference_steps,
            "cfg_scale": guidance_scale,
            "cache": cache,
            "cfg_until": cfg_until,
            "seed": _seed_of(seed, generator),
            "aes": aes,
            "no_aes": aes is None,
            "flow": flow,
            "camera_motion": camera_motion,
            "num_samples": num_videos_per_prompt,
            "batch_size": batch_size,
            "return_latents": bool(return_latents),
            "image": image,
            "extend": extend,
            "reference_paths": _as_list(reference_path),
            "mask_strategies": _as_list(mask_strategy),
            "loop": loop,
            "condition_frame_length": condition_frame_length,
            "condition_frame_edit": condition_frame_edit,
            "align": align,
            "max_memory_gib": max_memory,
        }
        if height is not None:
            request["height"], request["width"] = int(height), int(width)

        tqdm = None
        if progress:
            try:
                from tqdm.auto import tqdm  # optional
            except ImportError:
                pass
        bar = None
        self.interrupt = False

        def on_event(stage: str, done: int, total: int, video: int, videos: int) -> bool:
            nonlocal bar
            if tqdm is not None and stage == "denoise":
                if bar is None:
                    bar = tqdm(total=total, desc="denoise", unit="step")
                bar.n = done
                bar.refresh()
            if stage == "denoise" and callback_on_step_end is not None:
                callback_on_step_end(self, done - 1, total, {})
                if self.interrupt:
                    return True
            return False

        try:
            videos, _cancelled = self._engine.generate(request, on_event)
        finally:
            if bar is not None:
                bar.close()
        return PipelineOutput(
            frames=[v["frames"] for v in videos],
            latents=[v["latents"] for v in videos] if return_latents else None,
            records=[json.loads(v["record"]) for v in videos],
        )


def export_to_video(frames: Union[np.ndarray, Sequence[np.ndarray]], path: str, fps: float = 24.0,
                    crf: int = 18) -> str:
    """Writes ``[F, H, W, 3]`` uint8 frames (or a list of ``[H, W, 3]`` frames) as the H.264 mp4
    ``stdit generate`` writes (yuv420p, the same encoder settings). Refuses to replace a file."""
    arr = np.stack(list(frames)) if not isinstance(frames, np.ndarray) else frames
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {arr.dtype} {arr.shape}")
    _core.write_video(os.fspath(path), np.ascontiguousarray(arr), float(fps), int(crf))
    return os.fspath(path)
