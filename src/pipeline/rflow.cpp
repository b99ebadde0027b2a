#include "pipeline/rflow.h"

#include <cmath>

#include "core/error.h"

namespace stdit {

namespace {
// Rounds through the model dtype, as each PyTorch op on such tensors does.
float rnd(float v, DType dt) {
  if (dt == DType::BF16) return bf16_to_f32(f32_to_bf16(v));
  if (dt == DType::F16) return f16_to_f32(f32_to_f16(v));
  return v;
}
}  // namespace

float rflow_shift_ratio(int height, int width, int num_frames, DType dt) {
  // timestep_transform: base_resolution 512*512, base_num_frames 1, scale 1.
  // In f16 Open-Sora upcasts to f32 first (PR #523); bf16 stays bf16.
  if (dt == DType::F16) dt = DType::F32;
  const float h = rnd(static_cast<float>(height), dt), w = rnd(static_cast<float>(width), dt);
  const float resolution = rnd(h * w, dt);
  const float ratio_space = rnd(std::sqrt(rnd(resolution / 262144.0f, dt)), dt);
  const float nf = rnd(static_cast<float>(num_frames), dt);
  // num_frames == 1 -> 1, else num_frames // 17 * 5 (floor division of the float tensor).
  const float frames = num_frames == 1 ? 1.0f : rnd(rnd(std::floor(nf / 17.0f), dt) * 5.0f, dt);
  const float ratio_time = rnd(std::sqrt(frames), dt);
  return rnd(ratio_space * ratio_time, dt);
}

std::vector<float> rflow_timesteps(int steps, int height, int width, int num_frames, DType dt) {
  STDIT_CHECK(steps >= 1, "steps must be at least 1, got ", steps);
  const float ratio = rflow_shift_ratio(height, width, num_frames, dt);
  STDIT_CHECK(ratio > 0, num_frames, " frames is not a length Open-Sora 1.2 can sample: its timestep "
              "shift needs 1 frame or at least 17 (2..16 would give all-zero timesteps)");
  std::vector<float> ts(steps);
  for (int i = 0; i < steps; ++i) {
    // Python float (1 - i/steps) * 1000, then a float32 tensor.
    const float t = static_cast<float>((1.0 - static_cast<double>(i) / steps) * 1000.0);
    const float tau = t / 1000.0f;
    const float shifted = ratio * tau / (1.0f + (ratio - 1.0f) * tau);
    ts[i] = shifted * 1000.0f;
  }
  return ts;
}

}  // namespace stdit
