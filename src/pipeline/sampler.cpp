// The denoising loop: rectified flow with classifier-free guidance (spec §8.4), on any backend.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "models/stdit3/stdit3.h"
#include "pipeline/denoiser.h"
#include "pipeline/generate.h"
#include "pipeline/rflow.h"

namespace stdit {

Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                    int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step, const SamplerOptions& so,
                    SamplerReport* report) {
  SingleDenoiser d(dit);
  return rflow_sample(static_cast<Denoiser&>(d), y_cond, mask, noise, height, width, num_frames, fps,
                      steps, cfg_scale, on_step, so, report);
}

Tensor rflow_sample(STDiT3& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                    int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step) {
  return rflow_sample(dit, y_cond, mask, noise, height, width, num_frames, fps, steps, cfg_scale, on_step,
                      SamplerOptions{});
}

double parse_step_cache(const std::string& spec) {
  const std::string forms = " (use none, teacache, or teacache:THRESHOLD with a threshold > 0, e.g. teacache:0.1)";
  if (spec == "none") return 0;
  if (spec == "teacache") return 0.1;
  const std::string prefix = "teacache:";
  STDIT_CHECK(spec.compare(0, prefix.size(), prefix) == 0, "--cache: unknown method '", spec, "'", forms);
  const std::string v = spec.substr(prefix.size());
  double t = 0;
  size_t used = 0;
  try {
    t = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  STDIT_CHECK(!v.empty() && used == v.size() && std::isfinite(t) && t > 0, "--cache: bad threshold '", v, "'", forms);
  return t;
}

std::string step_cache_name(double threshold) {
  if (threshold <= 0) return "none";
  char buf[64];
  std::snprintf(buf, sizeof buf, "teacache:%g", threshold);
  return buf;
}

int cfg_steps(double cfg_until, int steps) {
  STDIT_CHECK(std::isfinite(cfg_until) && cfg_until > 0 && cfg_until <= 1, "--cfg-until must be in (0, 1], got ",
              cfg_until);
  // ceil, less a rounding allowance: 0.6 of 30 steps is 18, not 19
  return std::min(steps, static_cast<int>(std::ceil(cfg_until * steps - 1e-9)));
}

Tensor rflow_sample(Denoiser& dit, const Tensor& y_cond, const Tensor& mask, const Tensor& noise, int height,
                    int width, int num_frames, double fps, int steps, double cfg_scale,
                    const std::function<void(int, const Tensor&)>& on_step, const SamplerOptions& so,
                    SamplerReport* report) {
  STDIT_CHECK(std::isfinite(so.cache_threshold) && so.cache_threshold >= 0,
              "the step-cache threshold must be a finite number >= 0, got ", so.cache_threshold);
  const int with_cfg = cfg_steps(so.cfg_until, steps);
  SamplerReport rep;
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
  Tensor zh = noise.to(DType::F32).clone();
  if (dit.model_dtype() != DType::F32) zh = zh.to(dit.model_dtype()).to(DType::F32);  // randn in model dtype
  // The latents live where the denoiser computes (its backend, when it takes them there: the CFG
  // combine and the Euler step run there and nothing crosses to the host between steps), else on
  // the host. The frame-mask edits below are host work on a downloaded copy, in the steps that
  // have them only.
  std::unique_ptr<Backend> host_backend;
  Backend* lb = dit.latent_backend();
  if (!lb) {
    host_backend = std::make_unique<CpuBackend>();
    lb = host_backend.get();
  }
  Tensor z = lb->alloc(zh.shape());
  lb->copy(lb->upload(zh), z);
  auto to_latents = [&](const Tensor& host) { lb->copy(lb->upload(host), z); };
  const int64_t per = z.numel() / B;
  STDiT3Inputs in;
  in.y = y;
  in.mask = mask;
  in.fps = Tensor::from_f32({1}, {static_cast<float>(num_frames == 1 ? 120.0 : fps)});
  in.height = Tensor::from_f32({1}, {static_cast<float>(height)});
  in.width = Tensor::from_f32({1}, {static_cast<float>(width)});
  Shape zin_shape = z.shape();
  zin_shape[0] = 2 * B;
  Tensor zin = lb->alloc(zin_shape);
  Tensor zin_halves[2] = {zin.slice(0, 0, B), zin.slice(0, B, 2 * B)};
  // The conditional half alone (--cfg-until): its rows of y; x is z itself.
  STDiT3Inputs in_c = in;
  in_c.y = y.slice(0, 0, B);
  in.cache.threshold = in_c.cache.threshold = so.cache_threshold;
  // The text is the same at every step: each half's conditioning is computed once, on the device.
  in.text_key = new_text_key();
  in_c.text_key = new_text_key();
  int first_model_step = -1;
  for (int i = 0; i < steps; ++i)
    if (ts[i] <= 1000.0f) {
      first_model_step = i;
      break;
    }
  // The frame mask (Open-Sora's RFLOW.sample): x_mask = (1000 * mask >= t); frames whose x_mask
  // turns true get noise added once (noise_added starts as mask == 1); frames with x_mask false
  // are restored after the step.
  const int64_t T = z.size(2), hw = per / (4 * T);  // latent frames, pixels per frame plane
  std::vector<float> mask_t(B * T, 1000.0f);
  std::vector<char> noise_added(B * T, 1), x_mask(B * T);
  if (so.frame_mask.defined()) {
    STDIT_CHECK(so.frame_mask.dim() == 2 && so.frame_mask.size(0) == B && so.frame_mask.size(1) == T,
                "frame mask ", shape_str(so.frame_mask.shape()), " does not fit ", B, " videos of ", T, " latent frames");
    const Tensor fm = so.frame_mask.to(DType::F32);
    for (int64_t k = 0; k < B * T; ++k) {
      mask_t[k] = fm.data<float>()[k] * 1000.0f;
      noise_added[k] = fm.data<float>()[k] == 1.0f;
    }
  }
  Tensor x0;  // host: the latents before a step that has frozen frames
  for (int i = 0; i < steps; ++i) {
    bool any_frozen = false, any_live = false, any_noise = false;
    for (int64_t k = 0; k < B * T; ++k) {
      x_mask[k] = mask_t[k] >= ts[i];
      (x_mask[k] ? any_live : any_frozen) = true;
      any_noise |= x_mask[k] && !noise_added[k];
    }
    if (any_frozen || any_noise) {
      zh = lb->download(z);
      if (any_frozen) x0 = zh.clone();
    }
    // Noise once for the frames whose threshold was just crossed: tp * x0 + (1 - tp) * eps.
    const float tp = 1.0f - ts[i] / 1000.0f;
    for (int64_t b = 0; b < B && any_noise; ++b) {
      Tensor eps;
      for (int64_t t = 0; t < T; ++t) {
        if (!x_mask[b * T + t] || noise_added[b * T + t]) continue;
        if (!eps.defined()) {
          STDIT_CHECK(so.step_noise, "the sampler needs step noise (a frame gets noise added at step ", i, ")");
          eps = so.step_noise(i, b).to(DType::F32);
          STDIT_CHECK(eps.numel() == per, "step noise ", shape_str(eps.shape()), " does not fit one video's latent");
          // At step 0 Open-Sora's z is still in the model dtype, and so is its randn_like.
          if (i == 0 && dit.model_dtype() != DType::F32) eps = eps.to(dit.model_dtype()).to(DType::F32);
        }
        for (int c = 0; c < 4; ++c) {
          float* zp = zh.data<float>() + b * per + (c * T + t) * hw;
          const float* ep = eps.data<float>() + (c * T + t) * hw;
          for (int64_t r = 0; r < hw; ++r) zp[r] = tp * zp[r] + (1.0f - tp) * ep[r];
        }
      }
    }
    if (any_noise) to_latents(zh);
    for (int64_t k = 0; k < B * T; ++k) noise_added[k] = x_mask[k];
    // Every frame frozen (e.g. a first timestep rounding above 1000 at small sizes): the step
    // restores z, so the model call is skipped.
    if (!any_live) {
      if (on_step) on_step(i, z);
      continue;
    }
    // x_mask for the CFG batch [2B, T] (both halves alike); its first B rows for the conditional
    // half alone. Absent when every frame is live (the model then skips its t0 branch).
    Tensor xm2;
    if (any_frozen) {
      xm2 = Tensor::empty({2 * B, T}, DType::BOOL);
      for (int64_t k = 0; k < 2 * B * T; ++k) xm2.data<uint8_t>()[k] = x_mask[k % (B * T)];
    }
    // The first and last model steps always run the blocks (TeaCache's rule).
    const bool refresh = i == first_model_step || i == steps - 1;
    const bool cfg = i < with_cfg;
    const float dt = (i + 1 < steps ? ts[i] - ts[i + 1] : ts[i]) / 1000.0f;
    Tensor out;  // [2B or B, 8, T, h, w]; velocity = channels 0..3
    if (cfg) {
      for (Tensor& half : zin_halves) lb->copy(z, half);
      in.x = zin;
      in.timestep = Tensor::from_f32({2 * B}, std::vector<float>(2 * B, ts[i]));
      in.cache.refresh = refresh;
      in.step = i;
      in.steps = steps;
      in.x_mask = xm2;
      out = dit.forward(in);
    } else {
      in_c.x = z;  // read only by forward, before z is stepped
      in_c.timestep = Tensor::from_f32({B}, std::vector<float>(B, ts[i]));
      in_c.cache.refresh = refresh;
      in_c.step = i;
      in_c.steps = steps;
      in_c.x_mask = xm2.defined() ? xm2.slice(0, 0, B).contiguous() : Tensor();
      out = dit.forward_conditional(in_c);
    }
    // The output where z is (a host output is uploaded; on the host backend that is no copy).
    const Tensor v = out.device() == z.device() ? out : lb->upload(out);
    lb->cfg_euler_step(z, v, cfg, static_cast<float>(cfg_scale), dt);
    if (any_frozen) {  // frozen frames keep their value from before the step
      zh = lb->download(z);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < T; ++t)
          if (!x_mask[b * T + t])
            for (int c = 0; c < 4; ++c) {
              const int64_t o = b * per + (c * T + t) * hw;
              std::memcpy(zh.data<float>() + o, x0.data<float>() + o, hw * sizeof(float));
            }
      to_latents(zh);
    }
    // The report: one group per step.
    ++rep.steps;
    rep.cond_only_steps += cfg ? 0 : 1;
    if (!rep.schedule.empty()) rep.schedule += ' ';
    for (bool ran : dit.last_blocks_ran()) {
      ++rep.parts;
      rep.parts_cached += ran ? 0 : 1;
      rep.schedule += cfg ? (ran ? 'R' : 'C') : (ran ? 'r' : 'c');
    }
    if (on_step) on_step(i, z);
  }
  if (report) *report = rep;
  return lb->download(z);
}

}  // namespace stdit
