#include "core/fp8.h"

#include <array>
#include <cmath>

#include "core/error.h"

namespace stdit {

float row_amax_e4m3(const float* x, int64_t n) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (!std::isfinite(a)) return INFINITY;
    if (a > amax) amax = a;
  }
  return amax;
}

float quantize_row_e4m3_with_amax(const float* x, int64_t n, float amax, uint8_t* q) {
  if (!std::isfinite(amax)) {
    for (int64_t i = 0; i < n; ++i) q[i] = f32_to_f8e4m3(x[i]);
    return std::nanf("");
  }
  const float inv = kE4M3Max / amax;
  if (amax == 0.0f || !std::isfinite(inv)) {
    for (int64_t i = 0; i < n; ++i) q[i] = 0;
    return 1.0f;
  }
  for (int64_t i = 0; i < n; ++i) q[i] = f32_to_f8e4m3(x[i] * inv);
  return amax / kE4M3Max;
}

float quantize_row_e4m3(const float* x, int64_t n, uint8_t* q) {
  return quantize_row_e4m3_with_amax(x, n, row_amax_e4m3(x, n), q);
}

const float* e4m3_values() {
  static const std::array<float, 256> values = [] {
    std::array<float, 256> v{};
    for (int c = 0; c < 256; ++c) v[c] = f8e4m3_to_f32(static_cast<uint8_t>(c));
    return v;
  }();
  return values.data();
}

Tensor quantize_rows_e4m3(const Tensor& w, const std::string& what) {
  STDIT_CHECK(w.dim() == 2 && is_float(w.dtype()) && w.dtype() != DType::F8_E4M3, what,
              ": only a 2-D float matrix can be quantized to FP8, got ", dtype_name(w.dtype()), " ",
              shape_str(w.shape()));
  const Tensor f = w.to(DType::F32);
  const int64_t rows = w.size(0), n = w.size(1);
  Tensor q = Tensor::empty(w.shape(), DType::F8_E4M3);
  Tensor s = Tensor::empty({rows}, DType::F32);
  const float* x = f.data<float>();
  float* sp = s.data<float>();
  uint8_t* qp = q.data<uint8_t>();
  // Rows are independent (weights are quantized at load: the denoiser's 1.2 billion values).
#pragma omp parallel for schedule(static) if (rows * n > (int64_t{1} << 18))
  for (int64_t r = 0; r < rows; ++r) sp[r] = quantize_row_e4m3(x + r * n, n, qp + r * n);
  for (int64_t r = 0; r < rows; ++r)
    STDIT_CHECK(std::isfinite(sp[r]), what, ": row ", r, " holds a NaN or an infinity; it cannot be quantized to FP8");
  return q.with_scales(s);
}

Tensor dequantize_rows_e4m3(const Tensor& q, const Tensor& scales) {
  STDIT_CHECK(q.dtype() == DType::F8_E4M3 && q.dim() == 2, "dequantize: expected a 2-D F8_E4M3 matrix");
  STDIT_CHECK(scales.defined() && scales.numel() == q.size(0), "dequantize: ", q.size(0),
              " rows need as many scales");
  const Tensor c = q.contiguous(), s = scales.to(DType::F32);
  const int64_t rows = q.size(0), n = q.size(1);
  Tensor out = Tensor::empty(q.shape(), DType::F32);
  const float* value = e4m3_values();
  const uint8_t* cp = c.data<uint8_t>();
  const float* sp = s.data<float>();
  float* o = out.data<float>();
#pragma omp parallel for schedule(static) if (rows * n > (int64_t{1} << 18))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) o[r * n + i] = value[cp[r * n + i]] * sp[r];
  return out;
}

}  // namespace stdit
