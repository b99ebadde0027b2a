// Step caching for STDiT3 (the TeaCache method, arXiv 2411.19108): between denoising steps the
// modulated input of the first block changes little; while the accumulated, rescaled change stays
// under a threshold the 28 block pairs are skipped and the residual they added at the last full
// step (output of the block stack minus its input) is added again.
#pragma once

namespace stdit {

// Set per forward call by the sampler. threshold > 0 enables caching; refresh makes the blocks
// run and restarts the accumulated change (the first and the last step of a video).
struct StepCacheControl {
  double threshold = 0;
  bool refresh = false;
};

// TeaCache's rescaling of the relative L1 change for Open-Sora 1.2 (the polynomial its authors
// fitted and publish for this model): c0 x^4 + c1 x^3 + c2 x^2 + c3 x + c4, in double.
inline double teacache_rescale(double rel) {
  constexpr double c[5] = {2.17546007e+02, -1.18329252e+02, 2.68662585e+01, -4.59364272e-02,
                           4.84426240e-02};
  double v = 0;
  for (double k : c) v = v * rel + k;
  return v;
}

}  // namespace stdit
