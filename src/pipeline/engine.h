// The engine directory: what `stdit convert` writes and `stdit generate` reads.
//
//   ENGINE/config.json        {"format": "stdit-engine", "format_version": 1, "dtype", "tp_size",
//                              "program", "components": {"dit"|"t5"|"vae": {"source", ...}}}
//   ENGINE/dit/{config.json, model.safetensors}    STDiT3, Hugging Face layout and key names
//     (converted with --tp N: dit/rank0.safetensors ... rank{N-1}.safetensors instead, each one
//     tensor-parallel rank's shard; "tp_size": N)
//   ENGINE/t5/{config.json, model.safetensors, spiece.model}
//   ENGINE/vae/{config.json, model.safetensors}
//
// The config may also hold "defaults": {"height", "width", "num_frames", "fps", "steps",
// "cfg_scale"} (each optional), what `stdit generate` uses for a setting the user does not give.
#pragma once
#include <optional>
#include <string>

#include "core/dtype.h"

namespace stdit {

// Settings the engine's maker suggests (e.g. the size a small model was trained at); each checked
// when the engine is opened.
struct EngineDefaults {
  std::optional<int> height, width;  // pixels, both or neither, multiples of 8 in [8, 4096]
  std::optional<int> num_frames;     // 1, or 17..10000 (the sampler takes no 2..16)
  std::optional<int> steps;          // 1..1000
  std::optional<double> fps;         // (0, 1000]
  std::optional<double> cfg_scale;   // finite, [0, 100]
};

struct Engine {
  std::string dir, dit, t5, vae, spiece;
  std::string dtype;
  EngineDefaults defaults;
  bool embedded = false;  // the demo model shipped with stdit
  int tp_size = 1;        // > 1: the denoiser is stored as one file per tensor-parallel rank
};

// Opens and checks an engine directory (every part present); Error otherwise.
Engine open_engine(const std::string& dir);
// The engine to use when none is given: ./engine_outputs if it exists, else the embedded one.
Engine default_engine();

struct ConvertOptions {
  std::string dit, vae, t5;  // Hugging Face directories (or a weights file inside one)
  std::string out = "engine_outputs";
  DType dtype = DType::BF16;  // F8_E4M3: "fp8" (see engine_dtype_name)
  bool force = false;
  int tp = 1;  // > 1: the denoiser as one shard file per tensor-parallel rank (the seed's layout)
  // Real-size models with synthetic weights (for speed and memory measurements): dit/vae/t5 may
  // name model directories whose config.json to use; empty: the real models' configs.
  bool synthetic = false;
  uint64_t seed = 1;  // of the synthetic weights (the same as `stdit bench --seed`)
};

// Streams every tensor (one at a time) into a new engine directory, cast to `dtype`. A checkpoint
// given to the wrong flag is recognised and the error names the right flag. An existing output
// directory is only replaced with `force`; the new one is built under a temporary name first.
void convert_engine(const ConvertOptions& opt);
// "f32", "bf16", "f16", or "fp8" for F8_E4M3 (the denoiser's block matrices in e4m3 with row
// scales, everything else bf16).
const char* engine_dtype_name(DType d);

}  // namespace stdit

namespace stdit {

// A short identity of an engine's contents: FNV-1a (64 bit, hex) over every component's
// config.json and the header (tensor names, dtypes, shapes, offsets) of every weight file, in a
// fixed order. Equal for copies of one engine; different when a config or a weight layout changes.
// Weight values are not read (a re-quantised file with the same layout has the same identity).
std::string engine_identity(const Engine& e);

}  // namespace stdit
