// Strict loading of a model's weights by their checkpoint key names.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/safetensors.h"
#include "io/tensor_source.h"

namespace stdit {

// One parameter a model expects, by its PyTorch state_dict name.
struct ParamSpec {
  std::string name;
  Shape shape;
  bool optional = false;  // may be absent from the file (the model recomputes it)
  // A denoiser block matrix's layer name for --fp8-keep (fp8_layer_names()), else null. Such a
  // weight may be stored in FP8 (F8_E4M3, rows quantized as core/fp8.h), then with its per-row
  // scales as `<name>_scale` (F32 [rows]) beside it: an engine made by `convert --dtype fp8`.
  const char* fp8_layer = nullptr;
  bool quantizable() const { return fp8_layer != nullptr; }
};

// The key of the per-row scales of a quantized weight `name`.
std::string scale_key(const std::string& name);

using WeightMap = std::map<std::string, Tensor>;

// Returns every expected tensor (CPU views into the file, any float dtype; an FP8 weight with its
// scales attached, Tensor::scales()). Throws one Error that
// lists every missing key, unexpected key, shape mismatch and non-float dtype, naming the file and
// the command-line flag the file came from.
// Keys starting with one of `ignored_prefixes` are skipped (e.g. a T5 decoder next to its encoder).
WeightMap load_checked(const TensorSource& file, const std::vector<ParamSpec>& expected,
                       const std::string& flag, const std::vector<std::string>& ignored_prefixes = {});

// Same check for tensors already in memory (e.g. synthetic weights); `label` names their source.
void check_weights(const WeightMap& weights, const std::vector<ParamSpec>& expected,
                   const std::string& label);

}  // namespace stdit

namespace stdit {

// Opens the weights of a Hugging Face model directory, whichever layout it has:
// model.safetensors, model.safetensors.index.json (shards), pytorch_model.bin, or
// pytorch_model.bin.index.json (shards). Shards must agree with their index exactly.
// One tensor file, safetensors or PyTorch .bin (told apart by content, then by extension).
std::shared_ptr<TensorSource> open_tensor_file(const std::string& path);

std::shared_ptr<TensorSource> open_model_weights(const std::string& dir, const std::string& flag);

}  // namespace stdit
