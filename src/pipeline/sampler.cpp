// The denoising loop: rectified flow with classifier-free guidance (spec §8.4), on any backend.
#include <cstring>

#include "core/error.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/denoiser.h"
#include "pipeline/generate.h"
#include "pipeline/rflow.h"

namespace stdit {

Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                    int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step) {
  SingleDenoiser d(dit);
  return rflow_sample(static_cast<Denoiser&>(d), y_cond, mask, noise, height, width, num_frames, fps,
                      steps, cfg_scale, on_step);
}

Tensor rflow_sample(Denoiser& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                    int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step) {
  const int64_t B = noise.size(0), L = y_cond.size(2), C = y_cond.size(3);
  const Tensor& null = dit.null_caption();  // [max_len, C]
  STDIT_CHECK(null.size(0) == L && null.size(1) == C, "text embeddings [", L, ", ", C,
              "] do not fit the denoiser's null caption ", shape_str(null.shape()));
  // y = [cond; null], mask [B, L] shared by both halves.
  Tensor y = Tensor::empty({2 * B, 1, L, C}, DType::F32);
  const Tensor yc = y_cond.to(DType::F32);
  std::memcpy(y.data<float>(), yc.data<float>(), yc.nbytes());
  for (int64_t b = 0; b < B; ++b)
    std::memcpy(y.data<float>() + (B + b) * L * C, null.data<float>(), L * C * 4);
  const std::vector<float> ts = rflow_timesteps(steps, height, width, num_frames, dit.model_dtype());
  Tensor z = noise.to(DType::F32).clone();
  if (dit.model_dtype() != DType::F32) z = z.to(dit.model_dtype()).to(DType::F32);  // randn in model dtype
  const int64_t per = z.numel() / B;
  STDiT3Inputs in;
  in.y = y;
  in.mask = mask;
  in.fps = Tensor::from_f32({1}, {static_cast<float>(num_frames == 1 ? 120.0 : fps)});
  in.height = Tensor::from_f32({1}, {static_cast<float>(height)});
  in.width = Tensor::from_f32({1}, {static_cast<float>(width)});
  Shape zin_shape = z.shape();
  zin_shape[0] = 2 * B;
  Tensor zin = Tensor::empty(zin_shape, DType::F32);
  for (int i = 0; i < steps; ++i) {
    // Open-Sora's frame mask is (1000 >= t): with a shift ratio below 1 the first timestep can
    // round above 1000 in f32, every frame then counts as a clean frame and the step leaves z
    // unchanged. Skipping the model call gives the same result.
    if (ts[i] > 1000.0f) {
      if (on_step) on_step(i, z);
      continue;
    }
    std::memcpy(zin.data<float>(), z.data<float>(), z.nbytes());
    std::memcpy(zin.data<float>() + z.numel(), z.data<float>(), z.nbytes());
    in.x = zin;
    in.timestep = Tensor::from_f32({2 * B}, std::vector<float>(2 * B, ts[i]));
    const Tensor out = dit.forward(in);  // [2B, 8, T, h, w]; velocity = channels 0..3
    const int64_t oc = out.size(1), plane = per / 4;
    const float dt = (i + 1 < steps ? ts[i] - ts[i + 1] : ts[i]) / 1000.0f;
    const float g = static_cast<float>(cfg_scale);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < per; ++k) {
        const int64_t c = k / plane, r = k % plane;
        const float vc = out.data<float>()[((b * oc) + c) * plane + r];
        const float vu = out.data<float>()[(((B + b) * oc) + c) * plane + r];
        z.data<float>()[b * per + k] += (vu + g * (vc - vu)) * dt;
      }
    if (on_step) on_step(i, z);
  }
  return z;
}

}  // namespace stdit
