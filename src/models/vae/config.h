// Open-Sora VAE v1.2 configuration: the pipeline's config.json (hpcai-tech/OpenSora-VAE-v1.2)
// plus the sizes of its two VAEs, which Open-Sora hard-codes; `stdit_vae_2d` and
// `stdit_vae_temporal` objects in config.json override them (used for small test models).
#pragma once
#include <array>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace stdit {

struct Vae2dConfig {  // diffusers AutoencoderKL of PixArt-Sigma's SDXL VAE
  std::vector<int> block_out_channels{128, 256, 512, 512};
  int layers_per_block = 2;
  int norm_num_groups = 32;
  int latent_channels = 4;
  float eps = 1e-6f;
};

struct VaeTemporalConfig {  // Open-Sora VAE_Temporal_SD
  int filters = 128;
  std::vector<int> channel_multipliers{1, 2, 2, 4};
  int num_res_blocks = 4;
  int num_groups = 32;
  std::vector<bool> temporal_downsample{false, true, true};
  int latent_channels = 4;
  float eps = 1e-5f;
  int time_factor() const;  // 2^(number of temporal downsamples) = 4
};

struct VaeConfig {
  Vae2dConfig spatial;
  VaeTemporalConfig temporal;
  std::array<float, 4> scale{3.85f, 2.32f, 2.33f, 3.06f};
  std::array<float, 4> shift{-0.10f, 0.34f, 0.27f, 0.98f};
  int micro_frame_size = 17;  // pixel frames per temporal chunk
  int micro_batch_size = 4;   // frames per 2D VAE call
  float scaling_factor = 0.18215f;  // hard-coded by Open-Sora (not PixArt's 0.13025)

  int micro_z_frame_size() const;                   // latents per temporal chunk: 5
  int latent_frames(int num_frames) const;          // spec §9.2: 1 -> 1, 17 -> 5, 51 -> 15
};

VaeConfig parse_vae_config(const std::string& json_text, const std::string& source);
VaeConfig load_vae_config(const std::string& path);
// Every tensor of the checkpoint, in its order: derived from the module tree (vae_modules.cpp).
std::vector<ParamSpec> vae_param_specs(const VaeConfig& cfg);

}  // namespace stdit
