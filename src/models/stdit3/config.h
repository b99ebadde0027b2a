// STDiT3 configuration, read from the Hugging Face config.json of hpcai-tech/OpenSora-STDiT-v3.
#pragma once
#include <array>
#include <string>
#include <vector>

#include "io/checkpoint.h"

namespace stdit {

struct STDiT3Config {
  int depth = 28;
  int hidden_size = 1152;
  int num_heads = 16;
  double mlp_ratio = 4.0;
  int in_channels = 4;
  bool pred_sigma = true;
  int caption_channels = 4096;
  int model_max_length = 300;
  std::array<int, 3> patch_size{1, 2, 2};
  int input_sq_size = 512;
  bool qk_norm = true;
  // Fixed by the architecture (not in config.json).
  int frequency_embedding_size = 256;
  float norm_eps = 1e-6f;

  int head_dim() const { return hidden_size / num_heads; }
  int mlp_hidden() const { return static_cast<int>(hidden_size * mlp_ratio); }
  int out_channels() const { return pred_sigma ? 2 * in_channels : in_channels; }
  int patch_volume() const { return patch_size[0] * patch_size[1] * patch_size[2]; }
};

// Parses config.json text. `source` names the file in error messages. Refuses unsupported values
// (another model_type, qk_norm false, sizes that do not divide, ...); unknown keys are a warning.
STDiT3Config parse_stdit3_config(const std::string& json_text, const std::string& source);
STDiT3Config load_stdit3_config(const std::string& path);

// Every state_dict key with its shape, in checkpoint order; `rope.freqs` is optional.
// Every parameter with its shape; with tp > 1 the shapes of one tensor-parallel rank's shard.
std::vector<ParamSpec> stdit3_param_specs(const STDiT3Config& cfg, int tp = 1);

// How tensor parallelism splits a parameter (the seed's Megatron split, spec seed_system §12):
// replicated; Rows: dim 0 is `groups` equal parts (q,k,v / k,v / one), each cut in tp and the
// rank's pieces concatenated (column-parallel layers: self-attention qkv, cross-attention q and
// kv, MLP fc1, weights and biases); Cols: dim 1 cut in tp (row-parallel weights: the attention
// output projections and fc2; their biases are replicated and added on rank 0 only). Only block
// parameters are split; the caption MLP stays whole.
struct TpSplit {
  enum Kind { Replicated, Rows, Cols } kind = Replicated;
  int groups = 1;
};
TpSplit stdit3_tp_split(const std::string& name);

}  // namespace stdit
