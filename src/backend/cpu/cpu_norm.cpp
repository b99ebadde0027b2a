// CPU normalisation, modulation and gating (STDiT3's adaLN-single path).
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/fp8.h"

namespace stdit {

using namespace cpu;

namespace {

// Checks x [B, N, C] and a [B, C] modulation vector (strided rows allowed).
void check_mod(const Tensor& v, int64_t b, int64_t c, const char* op, const char* what) {
  expect_f32(v, op, what);
  STDIT_CHECK(v.dim() == 2 && v.size(0) == b && v.size(1) == c, "cpu ", op, ": ", what,
              " has shape ", shape_str(v.shape()), ", expected [", b, ", ", c, "]");
}

void check_select(const FrameSelect& sel, int64_t b, int64_t n, const char* op) {
  if (!sel.active()) return;
  STDIT_CHECK(sel.mask.dtype() == DType::U8 && sel.mask.dim() == 2 && sel.mask.size(0) == b &&
                  sel.mask.is_contiguous(),
              "cpu ", op, ": frame mask must be contiguous U8 [B, T]");
  STDIT_CHECK(sel.tokens_per_frame > 0 && sel.mask.size(1) * sel.tokens_per_frame == n, "cpu ", op,
              ": frame mask [", b, ", ", sel.mask.size(1), "] x ", sel.tokens_per_frame,
              " tokens/frame does not cover ", n, " tokens");
}

// True when token n of sample b belongs to a conditioning (x_mask False) frame.
inline bool is_clean(const FrameSelect& sel, int64_t b, int64_t n) {
  return sel.active() &&
         sel.mask.data<uint8_t>()[b * sel.mask.size(1) + n / sel.tokens_per_frame] == 0;
}

inline const float* row(const Tensor& v, int64_t b) { return v.data<float>() + b * v.stride(0); }

}  // namespace

void CpuBackend::layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                    const Tensor& shift0, const Tensor& scale0,
                                    const FrameSelect& sel, float eps, Tensor& out) {
  const char* op = "layernorm_modulate";
  expect_contiguous_f32(x, op, "x");
  // F8_E4M3 (operand_dtype() of a quantized weight): each row's values quantized as linear() would
  // quantize them (core/fp8.h), the codes in `out` and the row scales attached to it.
  const bool codes = out.dtype() == DType::F8_E4M3;
  if (!codes) expect_contiguous_f32(out, op, "out");
  STDIT_CHECK(!codes || (out.device().kind == DeviceKind::CPU && out.is_contiguous()), "cpu ", op,
              ": an F8_E4M3 out must be a contiguous host tensor");
  STDIT_CHECK(x.dim() == 3, "cpu ", op, ": x must be [B, N, C]");
  expect_shape(out, x.shape(), op, "out");
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  Tensor scales;
  if (codes) scales = alloc({b * n});
  check_mod(shift, b, c, op, "shift");
  check_mod(scale, b, c, op, "scale");
  check_select(sel, b, n, op);
  if (sel.active()) {
    check_mod(shift0, b, c, op, "shift0");
    check_mod(scale0, b, c, op, "scale0");
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ni = 0; ni < n; ++ni) {
      const int64_t r = bi * n + ni;
      const float* xr = x.data<float>() + r * c;
      std::vector<float> row_values(codes ? static_cast<size_t>(c) : 0);
      float* o = codes ? row_values.data() : out.data<float>() + r * c;
      double sum = 0, sq = 0;
      for (int64_t i = 0; i < c; ++i) sum += xr[i];
      const double mean = sum / c;
      for (int64_t i = 0; i < c; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(sq / c + eps));
      const float m = static_cast<float>(mean);
      const bool clean = is_clean(sel, bi, ni);
      const float* sh = row(clean ? shift0 : shift, bi);
      const float* sc = row(clean ? scale0 : scale, bi);
      for (int64_t i = 0; i < c; ++i) o[i] = (xr[i] - m) * rstd * (1.0f + sc[i]) + sh[i];
      if (codes) scales.data<float>()[r] = quantize_row_e4m3(o, c, out.data<uint8_t>() + r * c);
    }
  if (codes) out = out.with_scales(scales);
}

void CpuBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  expect_contiguous_f32(x, "rms_norm", "x");
  expect_contiguous_f32(weight, "rms_norm", "weight");
  expect_contiguous_f32(out, "rms_norm", "out");
  const int64_t c = weight.numel();
  STDIT_CHECK(x.size(-1) == c && out.numel() == x.numel(), "cpu rms_norm: x ", shape_str(x.shape()),
              " vs weight ", shape_str(weight.shape()));
  const int64_t rows = x.numel() / c;
  const float* w = weight.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x.data<float>() + r * c;
    float* o = out.data<float>() + r * c;
    float ss = 0;
    for (int64_t i = 0; i < c; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(c) + eps);
    for (int64_t i = 0; i < c; ++i) o[i] = w[i] * (xr[i] * inv);
  }
}

void CpuBackend::gated_residual(Tensor& x, const Tensor& y, const Tensor& gate, const Tensor& gate0,
                                const FrameSelect& sel) {
  const char* op = "gated_residual";
  expect_contiguous_f32(x, op, "x");
  expect_contiguous_f32(y, op, "y");
  STDIT_CHECK(x.dim() == 3, "cpu ", op, ": x must be [B, N, C]");
  expect_shape(y, x.shape(), op, "y");
  const int64_t b = x.size(0), n = x.size(1), c = x.size(2);
  check_mod(gate, b, c, op, "gate");
  check_select(sel, b, n, op);
  if (sel.active()) check_mod(gate0, b, c, op, "gate0");
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ni = 0; ni < n; ++ni) {
      float* xr = x.data<float>() + (bi * n + ni) * c;
      const float* yr = y.data<float>() + (bi * n + ni) * c;
      const float* g = row(is_clean(sel, bi, ni) ? gate0 : gate, bi);
      for (int64_t i = 0; i < c; ++i) xr[i] += g[i] * yr[i];
    }
}

void CpuBackend::select_frames(Tensor& dst, const Tensor& src, const FrameSelect& sel) {
  const char* op = "select_frames";
  expect_contiguous_f32(dst, op, "dst");
  expect_contiguous_f32(src, op, "src");
  STDIT_CHECK(dst.dim() == 3, "cpu ", op, ": dst must be [B, N, C]");
  expect_shape(src, dst.shape(), op, "src");
  const int64_t b = dst.size(0), n = dst.size(1), c = dst.size(2);
  check_select(sel, b, n, op);
  if (!sel.active()) return;
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ni = 0; ni < n; ++ni)
      if (is_clean(sel, bi, ni))
        std::memcpy(dst.data<float>() + (bi * n + ni) * c, src.data<float>() + (bi * n + ni) * c,
                    c * 4);
}

}  // namespace stdit
