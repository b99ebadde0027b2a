// CPU linear layer: BLAS sgemm plus a bias/activation pass.
#include <cblas.h>

#include <omp.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace stdit {

using namespace cpu;

namespace {
inline float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
}  // namespace

void CpuBackend::linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
                        Tensor& out) {
  expect_contiguous_f32(x, "linear", "x");
  expect_contiguous_f32(w, "linear", "weight");
  expect_contiguous_f32(out, "linear", "out");
  STDIT_CHECK(w.dim() == 2, "cpu linear: weight must be 2-d, got ", shape_str(w.shape()));
  const int64_t n = w.size(0), k = w.size(1);
  STDIT_CHECK(x.size(-1) == k, "cpu linear: input ", shape_str(x.shape()), " does not match weight ",
              shape_str(w.shape()));
  const int64_t m = x.numel() / k;
  STDIT_CHECK(out.numel() == m * n, "cpu linear: output ",
              shape_str(out.shape()), " is not [", m, ", ", n, "]");
  if (bias.defined()) {
    expect_contiguous_f32(bias, "linear", "bias");
    STDIT_CHECK(bias.numel() == n, "cpu linear: bias has ", bias.numel(), " values, expected ", n);
  }
  if (m == 0) return;
  // BLAS runs single-threaded (see CpuBackend()); OpenMP splits the rows instead.
  const int64_t chunks = std::min<int64_t>(m, omp_get_max_threads());
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t r0 = m * c / chunks, r1 = m * (c + 1) / chunks;
    if (r1 > r0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(r1 - r0), static_cast<int>(n),
                  static_cast<int>(k), 1.0f, x.data<float>() + r0 * k, static_cast<int>(k), w.data<float>(),
                  static_cast<int>(k), 0.0f, out.data<float>() + r0 * n, static_cast<int>(n));
  }
  if (!bias.defined() && act == Activation::None) return;
  float* o = out.data<float>();
  const float* b = bias.defined() ? bias.data<float>() : nullptr;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    float* row = o + i * n;
    for (int64_t j = 0; j < n; ++j) {
      float v = row[j] + (b ? b[j] : 0.0f);
      if (act == Activation::GeluTanh) v = gelu_tanh(v);
      else if (act == Activation::Silu) v = v / (1.0f + std::exp(-v));
      row[j] = v;
    }
  }
}

}  // namespace stdit
