// The engine directory: what `stdit convert` writes and `stdit generate` reads.
//
//   ENGINE/config.json        {"format": "stdit-engine", "format_version": 1, "dtype", "tp_size",
//                              "program", "components": {"dit"|"t5"|"vae": {"source", ...}}}
//   ENGINE/dit/{config.json, model.safetensors}    STDiT3, Hugging Face layout and key names
//   ENGINE/t5/{config.json, model.safetensors, spiece.model}
//   ENGINE/vae/{config.json, model.safetensors}
#pragma once
#include <string>

#include "core/dtype.h"

namespace stdit {

struct Engine {
  std::string dir, dit, t5, vae, spiece;
  std::string dtype;
  bool embedded = false;  // the tiny model shipped with stdit
};

// Opens and checks an engine directory (every part present); Error otherwise.
Engine open_engine(const std::string& dir);
// The engine to use when none is given: ./engine_outputs if it exists, else the embedded one.
Engine default_engine();

struct ConvertOptions {
  std::string dit, vae, t5;  // Hugging Face directories (or a weights file inside one)
  std::string out = "engine_outputs";
  DType dtype = DType::BF16;
  bool force = false;
};

// Streams every tensor (one at a time) into a new engine directory, cast to `dtype`. A checkpoint
// given to the wrong flag is recognised and the error names the right flag. An existing output
// directory is only replaced with `force`; the new one is built under a temporary name first.
void convert_engine(const ConvertOptions& opt);

}  // namespace stdit
