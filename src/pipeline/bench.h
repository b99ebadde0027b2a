// `stdit bench`: the real model sizes (STDiT3-XL/2, T5-v1.1-XXL, VAE v1.2) with synthetic weights,
// timed per stage on a backend. Results as a table for people and JSON for machines.
#pragma once
#include <string>
#include <vector>

namespace stdit {

struct BenchOptions {
  std::vector<std::string> presets{"240p-2s", "480p-4s", "720p-4s"};  // resolution-duration, 9:16
  std::string backend = "cpu";
  int denoise_iters = 3;  // timed denoiser calls per preset (after one warm-up)
  bool t5 = true, vae = true;
  uint64_t seed = 1;
  std::string json;  // write results here too
  bool cfg_parallel = false;  // also time the CFG halves on two devices (backend "cuda": cuda:0 + cuda:1)
  int tp = 1;  // > 1: also time tensor parallelism over tp devices (cuda:0..tp-1; CPU: tp backends)
  int cp = 1;  // > 1: also time context parallelism over cp devices (with tp: tp x cp devices)
  // Set either: also run the whole 30-step sampling loop with and without these savings (step
  // caching "teacache[:T]", guidance for a fraction of the steps) and report both times, the
  // evaluations saved and the change of the latents.
  std::string cache = "none";
  double cfg_until = 1.0;
  int steps = 30;  // of those sampling loops (and of the fp8 / fp16 quality gates)
  // The execution policy (backend/policy.h). With "fp8" each preset also runs the quality gate:
  // the sampling loop in fp8 and in the backend's high precision (bf16 on a GPU, f32 on the CPU)
  // from the same noise, text and weights; the latents' relative error and the decoded videos'
  // per-frame PSNR (worst frame; gate >= 30 dB). With "fp16": the same against f32, beside bf16
  // against f32 (gate: fp16's latents no further from f32's than bf16's).
  std::string precision = "auto", fp8_keep;
  std::string kernels = "auto";  // auto | portable (as generate's --kernels)
  // The denoiser's config.json from this directory instead of STDiT3-XL/2's (e.g. the demo
  // model's, for checks of the splits on the CPU); the weights stay synthetic.
  std::string dit;
};

// One process: every stage on `backend` (the splits as threads over its devices). Under mpirun
// (several processes): the denoiser split over the processes, timed against one device.
void run_bench(const BenchOptions& opt);

// FLOPs of one denoiser call (CFG batch 2) by the model of DESIGN.md §7: linear layers
// 2 * 1.04e9 per token, plus spatial attention 4*B*T*S^2*C and temporal 4*B*S*T^2*C per block pair.
double stdit3_step_flops(int64_t T, int64_t S, int64_t C = 1152, int depth = 28);

}  // namespace stdit
