// Open-Sora 1.2's rectified-flow sampler schedule (spec §8).
#pragma once
#include <vector>

#include "core/dtype.h"

namespace stdit {

// The `steps` timesteps t_i = (1 - i/steps) * 1000 (f32), shifted by timestep_transform for the
// pixel height/width and frame count as Open-Sora computes it: in f32, except that with a bf16
// model the shift ratio is computed from bf16 tensors and rounded at each operation, as Open-Sora
// v1.2.0 does (spec §8.6: 5.125 instead of 5.1349 at 360p/102 frames).
std::vector<float> rflow_timesteps(int steps, int height, int width, int num_frames,
                                   DType model_dtype = DType::F32);

// The shift ratio alone (for messages and tests).
float rflow_shift_ratio(int height, int width, int num_frames, DType model_dtype = DType::F32);

}  // namespace stdit
