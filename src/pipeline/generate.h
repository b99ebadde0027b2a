// Text to video: prompts -> T5 -> STDiT3 with RFLOW and classifier-free guidance -> VAE -> files.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stdit {

struct GenerateOptions {
  std::vector<std::string> prompts;
  std::string prompt_file;
  std::string engine;                  // empty: ./engine_outputs, else the embedded demo model
  // Settings left unset take the engine's "defaults" (its config.json), else Open-Sora 1.2's
  // inference defaults, shown here. The size: -W/-H, else --resolution/--aspect-ratio, else the
  // engine's height/width, else 240p 9:16.
  std::optional<std::string> resolution;    // 240p
  std::optional<std::string> aspect_ratio;  // 9:16 (H:W)
  int width = 0, height = 0;                // pixels; override resolution/aspect when both set
  std::optional<std::string> num_frames;    // 51; or 2s/4s/8s/16s/32s
  std::optional<double> fps;                // 24
  std::optional<int> steps;                 // 30
  std::optional<double> cfg_scale;          // 7.0
  std::optional<int64_t> seed;        // 42; -1: a random seed (printed and recorded)
  std::optional<uint32_t> noise_index;  // Philox stream of the first video's noise (0); video i uses +i
  std::optional<double> aes;           // 6.5 unless no_aes
  bool no_aes = false;
  std::optional<double> flow;
  std::optional<std::string> camera_motion;
  int num_samples = 1, batch_size = 1;
  std::string out_dir = "sample_outputs", sample_name = "sample", output;
  std::string save_latents, decode_only;
  // Re-run what made FILE (an mp4 / PNG from generate, or a --save-latents file): its prompts,
  // seed, noise streams, size, frames, fps, steps, cfg, scores and batch size; settings given here
  // as well win over the recorded ones.
  std::string from;
  std::string backend = "auto";  // cuda when a usable GPU is present, else cpu
  int crf = 18;
  bool preview = false;  // also write NAME.grid.png: 4x4 evenly spaced frames
  int gpus = 1;               // devices cuda:0 .. gpus-1 for the denoiser
  int tp = 0;                 // tensor-parallel ranks per CFG half; 0: from --gpus (see plan_parallel)
  bool cfg_parallel = false;  // the CFG halves on separate GPUs (default when --gpus is even and no --tp)
};

// How the denoiser is spread over `gpus` devices: CFG-parallel (the conditional and unconditional
// halves on separate GPUs) and/or tensor parallel over `tp` GPUs per half; gpus = tp x (1 or 2).
// Without --tp an even --gpus means CFG-parallel x tp = gpus / 2. An inconsistent split is an Error.
struct ParallelPlan {
  int gpus = 1, tp = 1;
  bool cfg_parallel = false;
};
ParallelPlan plan_parallel(int gpus, int tp, bool cfg_parallel);

// Runs the whole job; returns the paths written. Every bad input is an Error before any model is
// loaded. Output names are reserved atomically as each video starts (O_EXCL), so concurrent runs
// into one directory never take each other's names and no existing file is replaced. Each video
// is decoded and written as soon as its denoising ends. After interrupt_requested() (SIGINT /
// SIGTERM with install_interrupt_handlers()) it stops at the next step boundary, removes its
// temporary files and unused reservations, keeps the finished videos, prints
// "interrupted: N of M videos saved" and throws Interrupted.
std::vector<std::string> generate(const GenerateOptions& opt);

// The reusable core for tests: the denoising loop on given text embeddings and noise.
// y_cond [B, 1, L, C], mask [B, L] (I64), noise [B, 4, T, h, w] -> latents [B, 4, T, h, w].
class STDiT3;
Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise,
                    int height, int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step = {});

}  // namespace stdit
