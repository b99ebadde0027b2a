// Synthetic weights of the real-size models (for `stdit bench` and `stdit convert --synthetic`):
// every tensor of a model's specs filled by the recipe of core/synthetic.h with fan-in scaling,
// so that activations keep a sensible size through the layers. Same seed, same bits everywhere.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace stdit {

// One tensor of a model's specs (not for optional specs).
Tensor synthetic_weight(const ParamSpec& p, uint64_t seed);
// Every required tensor of `specs`.
WeightMap synthetic_weights(const std::vector<ParamSpec>& specs, uint64_t seed);

// The seeds `stdit bench` gives each model, so that a synthetic engine holds the bench's weights.
inline uint64_t synthetic_seed(const std::string& kind, uint64_t seed) {
  return kind == "t5" ? seed : kind == "dit" ? seed + 1 : seed + 3;
}

// The Hugging Face config.json of the real models (hpcai-tech/OpenSora-STDiT-v3,
// hpcai-tech/OpenSora-VAE-v1.2, DeepFloyd/t5-v1_1-xxl), for kind "dit", "vae" or "t5".
const char* real_config_json(const std::string& kind);

}  // namespace stdit
