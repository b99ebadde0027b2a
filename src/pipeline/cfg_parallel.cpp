#include "pipeline/cfg_parallel.h"

#include <cstring>
#include <exception>
#include <thread>

#include "core/error.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/denoiser.h"
#include "pipeline/rflow.h"

namespace stdit {

void run_on_devices(const std::vector<Backend*>& backends, const std::function<void(int)>& fn) {
  const int n = static_cast<int>(backends.size());
  std::vector<std::exception_ptr> errors(n);
  std::vector<std::thread> threads;
  for (int k = 0; k < n; ++k)
    threads.emplace_back([&, k] {
      try {
        backends[k]->bind_to_this_thread();
        fn(k);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    });
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

Tensor rflow_sample_cfg_parallel(const std::vector<Backend*>& backends, const std::vector<Denoiser*>& dits,
                                 const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                                 int width, int num_frames, double fps, int steps, double cfg_scale,
                                 const std::function<void(int, const Tensor&)>& on_step) {
  STDIT_CHECK(backends.size() == 2 && dits.size() == 2, "CFG-parallel needs exactly two devices");
  const int64_t B = noise.size(0), L = y_cond.size(2), C = y_cond.size(3);
  const Tensor& null = dits[1]->null_caption();
  STDIT_CHECK(null.size(0) == L && null.size(1) == C, "text embeddings do not fit the denoiser");
  Tensor y_null = Tensor::empty({B, 1, L, C}, DType::F32);
  for (int64_t b = 0; b < B; ++b) std::memcpy(y_null.data<float>() + b * L * C, null.data<float>(), L * C * 4);
  const std::vector<float> ts = rflow_timesteps(steps, height, width, num_frames, dits[0]->model_dtype());
  Tensor z = noise.to(DType::F32).clone();
  if (dits[0]->model_dtype() != DType::F32) z = z.to(dits[0]->model_dtype()).to(DType::F32);
  STDiT3Inputs half[2];
  for (int k = 0; k < 2; ++k) {
    half[k].y = k == 0 ? y_cond.to(DType::F32) : y_null;
    half[k].mask = mask;
    half[k].fps = Tensor::from_f32({1}, {static_cast<float>(num_frames == 1 ? 120.0 : fps)});
    half[k].height = Tensor::from_f32({1}, {static_cast<float>(height)});
    half[k].width = Tensor::from_f32({1}, {static_cast<float>(width)});
  }
  const int64_t per = z.numel() / B, plane = per / 4;
  for (int i = 0; i < steps; ++i) {
    if (ts[i] > 1000.0f) {  // Open-Sora's frame mask freezes such a step (see rflow_sample)
      if (on_step) on_step(i, z);
      continue;
    }
    Tensor out[2];
    run_on_devices(backends, [&](int k) {
      STDiT3Inputs in = half[k];
      in.x = z;
      in.timestep = Tensor::from_f32({B}, std::vector<float>(B, ts[i]));
      out[k] = dits[k]->forward(in);  // [B, 8, T, h, w]; velocity = channels 0..3
    });
    const int64_t oc = out[0].size(1);
    const float dt = (i + 1 < steps ? ts[i] - ts[i + 1] : ts[i]) / 1000.0f;
    const float g = static_cast<float>(cfg_scale);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < per; ++k) {
        const int64_t c = k / plane, r = k % plane;
        const float vc = out[0].data<float>()[(b * oc + c) * plane + r];
        const float vu = out[1].data<float>()[(b * oc + c) * plane + r];
        z.data<float>()[b * per + k] += (vu + g * (vc - vu)) * dt;
      }
    if (on_step) on_step(i, z);
  }
  return z;
}

}  // namespace stdit
