// Classifier-free guidance split over two devices: the conditional half of the CFG batch runs on
// one backend, the unconditional half on another, one thread each; per step only the predicted
// velocities meet (on the host). Same schedule and update as rflow_sample.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/tensor.h"

namespace stdit {

class Denoiser;

// Runs fn(k) for k in [0, n) on n threads, each bound to backends[k]; rethrows the first error.
void run_on_devices(const std::vector<Backend*>& backends, const std::function<void(int)>& fn);

// `dits[0]` (on backends[0]) computes the conditional half, `dits[1]` the unconditional one. A
// denoiser may itself be tensor parallel (its first device's backend is given here): CFG x TP.
Tensor rflow_sample_cfg_parallel(const std::vector<Backend*>& backends,
                                 const std::vector<Denoiser*>& dits, const Tensor& y_cond,
                                 const Tensor& mask, const Tensor& noise, int height, int width,
                                 int num_frames, double fps, int steps, double cfg_scale,
                                 const std::function<void(int, const Tensor&)>& on_step = {});

}  // namespace stdit
