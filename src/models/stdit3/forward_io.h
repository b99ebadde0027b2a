// File I/O of `stdit forward dit`: inputs named as the PyTorch forward's arguments.
#pragma once
#include "io/safetensors.h"
#include "models/stdit3/stdit3.h"

namespace stdit {

// Required: x, timestep, y, fps, height, width. Optional: mask, x_mask. Anything else is an error
// (a misspelt optional input must not be silently ignored).
STDiT3Inputs read_stdit3_inputs(const SafetensorsFile& file);

}  // namespace stdit
