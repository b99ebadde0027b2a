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
  std::string engine;                  // empty: ./engine_outputs, else the embedded tiny model
  std::string resolution = "240p";     // Open-Sora 1.2 inference config defaults
  std::string aspect_ratio = "9:16";   // H:W
  int width = 0, height = 0;           // pixels; override resolution/aspect when both set
  std::string num_frames = "51";       // or 2s/4s/8s/16s/32s
  double fps = 24;
  int steps = 30;
  double cfg_scale = 7.0;
  uint64_t seed = 42;
  std::optional<double> aes = 6.5, flow;
  std::optional<std::string> camera_motion;
  int num_samples = 1, batch_size = 1;
  std::string out_dir = "sample_outputs", sample_name = "sample", output;
  std::string save_latents, decode_only;
  std::string backend = "auto";  // cuda when a usable GPU is present, else cpu
  int crf = 18;
  bool preview = false;  // also write NAME.grid.png: 4x4 evenly spaced frames
  int gpus = 1;          // 2: CFG-parallel, the two CFG halves on cuda:0 and cuda:1
};

// Runs the whole job; returns the paths written. Every bad input is an Error before any heavy
// work starts where that is possible.
std::vector<std::string> generate(const GenerateOptions& opt);

// The reusable core for tests: the denoising loop on given text embeddings and noise.
// y_cond [B, 1, L, C], mask [B, L] (I64), noise [B, 4, T, h, w] -> latents [B, 4, T, h, w].
class STDiT3;
Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise,
                    int height, int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step = {});

}  // namespace stdit
