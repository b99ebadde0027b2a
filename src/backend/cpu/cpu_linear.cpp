// CPU linear layer (BLAS sgemm plus a bias/activation pass), and the threaded sgemm the CPU
// backend's GEMMs share (cpu::parallel_sgemm: the linear layers and the convolutions).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/fp8.h"

namespace stdit {

using namespace cpu;

namespace cpu {

std::pair<int64_t, int64_t> gemm_blocks(int64_t m, int64_t n) {
  constexpr int64_t kBlocks = 16, kLeast = 64;
  auto size = [&](int64_t len) { return std::max<int64_t>(kLeast, (len + kBlocks - 1) / kBlocks); };
  return m >= n ? std::pair<int64_t, int64_t>{size(m), n} : std::pair<int64_t, int64_t>{m, size(n)};
}

void parallel_sgemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                    bool b_rows_are_n, float* c, int64_t ldc) {
  if (m <= 0 || n <= 0) return;
  // Plain variables, not a structured binding: clang's OpenMP regions cannot capture those.
  const std::pair<int64_t, int64_t> blocks = gemm_blocks(m, n);
  const int64_t rows = blocks.first, cols = blocks.second;
  const int64_t row_blocks = (m + rows - 1) / rows, col_blocks = (n + cols - 1) / cols;
  // BLAS runs single-threaded (see CpuBackend()); OpenMP takes the blocks.
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < row_blocks * col_blocks; ++blk) {
    const int64_t r0 = blk / col_blocks * rows, c0 = blk % col_blocks * cols;
    const int64_t r1 = std::min(m, r0 + rows), c1 = std::min(n, c0 + cols);
    const float* bb = b_rows_are_n ? b + c0 * ldb : b + c0;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, b_rows_are_n ? CblasTrans : CblasNoTrans, static_cast<int>(r1 - r0),
                static_cast<int>(c1 - c0), static_cast<int>(k), 1.0f, a + r0 * lda, static_cast<int>(lda), bb,
                static_cast<int>(ldb), 0.0f, c + r0 * ldc + c0, static_cast<int>(ldc));
  }
}

}  // namespace cpu

namespace {
inline float gelu_tanh(float x) {
  const float k = 0.7978845608028654f;  // sqrt(2/pi)
  return 0.5f * x * (1.0f + std::tanh(k * (x + 0.044715f * x * x * x)));
}
}  // namespace

// With a quantized weight (--precision fp8: e4m3 values with row scales, from upload_weight) this
// emulates the GPU's arithmetic on e4m3 codes: each row of x is quantized (core/fp8.h: per
// token) unless x arrives quantized (an F8_E4M3 tensor with its row scales); the codes' values
// are multiplied in f32 (each product of two e4m3 values is exact in f32, the sum is rounded as
// a GPU's f32 accumulator rounds it, in another order); then
// out = acc * x_scale[row] * w_scale[col] + bias, and the activation.
void CpuBackend::linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act,
                        Tensor& out) {
  STDIT_CHECK(w.dtype() != DType::F8_E4M3, "cpu linear: an F8_E4M3 weight must come from upload_weight()");
  expect_contiguous_f32(w, "linear", "weight");
  const bool fp8 = w.scales().defined();
  // x quantized already (operand_dtype(): codes with their row scales) or F32.
  const bool x_codes = x.dtype() == DType::F8_E4M3;
  if (x_codes)
    STDIT_CHECK(fp8 && x.device().kind == DeviceKind::CPU && x.is_contiguous() && x.scales().defined() &&
                    x.scales().dtype() == DType::F32 && x.scales().numel() * x.size(-1) == x.numel(),
                "cpu linear: an F8_E4M3 input needs a quantized weight, contiguous codes and one scale per row");
  else
    expect_contiguous_f32(x, "linear", "x");
  STDIT_CHECK(!fp8 || (w.dim() == 2 && w.scales().numel() == w.size(0) && w.scales().dtype() == DType::F32),
              "cpu linear: a quantized weight needs one F32 scale per row");
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
  const float* a = x.data<float>();
  std::vector<float> xq, xs;  // fp8: the values of x's codes and its rows' scales
  if (fp8) {
    const float* value = e4m3_values();
    xq.resize(static_cast<size_t>(m * k));
    xs.resize(static_cast<size_t>(m));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      std::vector<uint8_t> own(x_codes ? 0 : static_cast<size_t>(k));
      const uint8_t* codes = x_codes ? x.data<uint8_t>() + r * k : own.data();
      xs[r] = x_codes ? x.scales().data<float>()[r] : quantize_row_e4m3(x.data<float>() + r * k, k, own.data());
      for (int64_t i = 0; i < k; ++i) xq[r * k + i] = value[codes[i]];
    }
    a = xq.data();
  }
  parallel_sgemm(m, n, k, a, k, w.data<float>(), k, true, out.data<float>(), n);
  epilogue(out.data<float>(), m, n, fp8 ? xs.data() : nullptr, fp8 ? w.scales().data<float>() : nullptr,
           bias.defined() ? bias.data<float>() : nullptr, act);
}

void CpuBackend::row_amax(const Tensor& x, Tensor& amax) {
  expect_contiguous_f32(x, "row_amax", "x");
  expect_contiguous_f32(amax, "row_amax", "amax");
  const int64_t k = x.dim() ? x.size(-1) : 1, m = k ? x.numel() / k : 0;
  STDIT_CHECK(amax.numel() == m, "cpu row_amax: amax has ", amax.numel(), " values for ", m, " rows");
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r) amax.data<float>()[r] = row_amax_e4m3(x.data<float>() + r * k, k);
}

void CpuBackend::quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out) {
  expect_contiguous_f32(x, "quantize_rows_with_amax", "x");
  expect_contiguous_f32(amax, "quantize_rows_with_amax", "amax");
  const int64_t k = x.dim() ? x.size(-1) : 1, m = k ? x.numel() / k : 0;
  STDIT_CHECK(amax.numel() == m && out.dtype() == DType::F8_E4M3 && out.is_contiguous() && out.shape() == x.shape(),
              "cpu quantize_rows_with_amax: out must be a contiguous F8_E4M3 tensor of x's shape and amax one "
              "value per row");
  Tensor scales = alloc({m}, DType::F32);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < m; ++r)
    scales.data<float>()[r] = quantize_row_e4m3_with_amax(x.data<float>() + r * k, k, amax.data<float>()[r],
                                                          out.data<uint8_t>() + r * k);
  out = out.with_scales(scales);
}

// out[i, j] = act(out[i, j] * row_scale[i] * col_scale[j] + bias[j]); absent parts skipped.
void CpuBackend::epilogue(float* o, int64_t m, int64_t n, const float* row_scale, const float* col_scale,
                          const float* b, Activation act) {
  if (!row_scale && !b && act == Activation::None) return;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    float* row = o + i * n;
    for (int64_t j = 0; j < n; ++j) {
      float v = row[j];
      if (row_scale) v = v * row_scale[i] * col_scale[j];
      v += b ? b[j] : 0.0f;
      if (act == Activation::GeluTanh) v = gelu_tanh(v);
      else if (act == Activation::Silu) v = v / (1.0f + std::exp(-v));
      row[j] = v;
    }
  }
}

}  // namespace stdit
