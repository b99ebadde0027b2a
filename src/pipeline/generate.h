// Text to video: prompts -> T5 -> STDiT3 with RFLOW and classifier-free guidance -> VAE -> files.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "stdit/stdit.h"

namespace stdit {

// The command line's job: the public API's request plus the engine and devices to open for it
// (tests and `stdit generate` use it; other front ends use api::Engine directly).
struct GenerateOptions : api::Request {
  std::string engine;            // empty: the engine recorded by `from`, else ./engine_outputs, else the demo model
  std::string backend = "auto";  // cuda when a usable GPU is present, else cpu
  int gpus = 1;                  // devices cuda:0 .. gpus-1 for the denoiser
  int tp = 0;                    // tensor-parallel ranks per CFG half; 0: from --gpus (see plan_parallel)
  int cp = 1;                    // context-parallel ranks (processes under mpirun)
  bool cfg_parallel = false;     // the CFG halves on separate GPUs (default when --gpus is even and no --tp)
  std::string precision = "auto", kernels = "auto";  // the execution policy asked for (backend/policy.h)
  std::string fp8_keep;                               // with precision fp8 (--fp8-keep)
};

// How the denoiser is spread over `gpus` devices: CFG-parallel (the conditional and unconditional
// halves on separate GPUs) and/or tensor parallel over `tp` GPUs per half; gpus = tp x (1 or 2).
// Without --tp an even --gpus means CFG-parallel x tp = gpus / 2. An inconsistent split is an Error.
struct ParallelPlan {
  int gpus = 1, tp = 1, cp = 1;  // gpus = (cfg_parallel ? 2 : 1) x tp x cp
  bool cfg_parallel = false;
};
// `devices` names the count in messages ("--gpus", or "mpirun -n" for processes).
ParallelPlan plan_parallel(int gpus, int tp, bool cfg_parallel, const char* devices = "--gpus", int cp = 1);

// Runs the whole job; returns the paths written. Every bad input is an Error before any model is
// loaded. Output names are reserved atomically as each video starts (O_EXCL), so concurrent runs
// into one directory never take each other's names and no existing file is replaced. Each video
// is decoded and written as soon as its denoising ends. After interrupt_requested() (SIGINT /
// SIGTERM with install_interrupt_handlers()) it stops at the next step boundary, removes its
// temporary files and unused reservations, keeps the finished videos and throws Cancelled (with
// the paths saved). The same as api::Engine::open + generate.
std::vector<std::string> generate(const GenerateOptions& opt);

// The reusable core for tests: the denoising loop on given text embeddings and noise.
// y_cond [B, 1, L, C], mask [B, L] (I64), noise [B, 4, T, h, w] -> latents [B, 4, T, h, w] (host).
// on_step(i, z) gets the latents after step i where the loop keeps them: on the denoiser's backend
// (Denoiser::latent_backend(); download them to read them there), else on the host.
class STDiT3;
struct SamplerOptions;  // pipeline/denoiser.h
struct SamplerReport;
Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise,
                    int height, int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step = {});
Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise,
                    int height, int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step, const SamplerOptions& options,
                    SamplerReport* report = nullptr);

}  // namespace stdit
