// CPU convolution family of the VAE: im2col + sgemm convolution, GroupNorm(+SiLU), nearest
// upsampling, per-channel affine, strided copy.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace stdit {

using namespace cpu;

void CpuBackend::copy(const Tensor& src, Tensor& dst) {
  STDIT_CHECK(src.shape() == dst.shape(), "cpu copy: shapes ", shape_str(src.shape()), " and ",
              shape_str(dst.shape()));
  STDIT_CHECK(src.dtype() == dst.dtype(), "cpu copy: dtypes differ");
  const size_t es = dtype_size(src.dtype());
  const auto* s = static_cast<const uint8_t*>(src.raw());
  auto* d = static_cast<uint8_t*>(dst.raw());
  if (src.is_contiguous() && dst.is_contiguous()) {
    std::memmove(d, s, src.nbytes());
    return;
  }
  std::vector<int64_t> doff(static_cast<size_t>(dst.numel()));
  for_each_offset(dst.shape(), dst.strides(), [&](int64_t flat, int64_t off) { doff[flat] = off; });
  for_each_offset(src.shape(), src.strides(), [&](int64_t flat, int64_t off) {
    std::memcpy(d + doff[flat] * static_cast<int64_t>(es), s + off * static_cast<int64_t>(es), es);
  });
}

void CpuBackend::conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
                        Tensor& out) {
  const char* op = "conv3d";
  expect_contiguous_f32(x, op, "x");
  expect_contiguous_f32(w, op, "weight");
  expect_contiguous_f32(out, op, "out");
  STDIT_CHECK(x.dim() == 5 && w.dim() == 5 && out.dim() == 5, "cpu conv3d: x, weight and out must be 5-d");
  const int64_t B = x.size(0), Ci = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Co = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  STDIT_CHECK(w.size(1) == Ci, "cpu conv3d: input has ", Ci, " channels, weight expects ", w.size(1));
  const int64_t To = (T + p.pad_t_front + p.pad_t_back - kt) / p.stride_t + 1;
  const int64_t Ho = (H + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1;
  const int64_t Wo = (W + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
  expect_shape(out, {B, Co, To, Ho, Wo}, op, "out");
  if (bias.defined()) {
    expect_contiguous_f32(bias, op, "bias");
    STDIT_CHECK(bias.numel() == Co, "cpu conv3d: bias size");
  }
  const int64_t K = Ci * kt * kh * kw, N = Ho * Wo;
  std::vector<float> col(static_cast<size_t>(K * N));
  std::vector<float> res(static_cast<size_t>(Co * N));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t to = 0; to < To; ++to) {
      // im2col: row (ci, dt, dh, dw), column (ho, wo); zero outside the input. For each output
      // row the valid input columns form one range, copied in a tight loop.
#pragma omp parallel for collapse(2) schedule(static)
      for (int64_t ci = 0; ci < Ci; ++ci)
        for (int64_t dt = 0; dt < kt; ++dt) {
          const int64_t ti = to * p.stride_t + dt - p.pad_t_front;
          const bool t_in = ti >= 0 && ti < T;
          const float* plane = t_in ? x.data<float>() + ((b * Ci + ci) * T + ti) * H * W : nullptr;
          for (int64_t dh = 0; dh < kh; ++dh)
            for (int64_t dw = 0; dw < kw; ++dw) {
              float* c = col.data() + (((ci * kt + dt) * kh + dh) * kw + dw) * N;
              // Output columns wo with 0 <= wo * stride_w + dw - pad_left < W.
              const int64_t off = dw - p.pad_left, sw = p.stride_w;
              int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
              int64_t hi = W - off <= 0 ? 0 : (W - off + sw - 1) / sw;
              lo = std::min(lo, Wo);
              hi = std::max(lo, std::min(hi, Wo));
              for (int64_t ho = 0; ho < Ho; ++ho) {
                float* cr = c + ho * Wo;
                const int64_t hi_row = ho * p.stride_h + dh - p.pad_top;
                if (!t_in || hi_row < 0 || hi_row >= H) {
                  std::fill(cr, cr + Wo, 0.0f);
                  continue;
                }
                const float* xr = plane + hi_row * W + off;
                std::fill(cr, cr + lo, 0.0f);
                if (sw == 1) {
                  std::copy(xr + lo, xr + hi, cr + lo);
                } else {
                  for (int64_t wo = lo; wo < hi; ++wo) cr[wo] = xr[wo * sw];
                }
                std::fill(cr + hi, cr + Wo, 0.0f);
              }
            }
        }
      parallel_sgemm(Co, N, K, w.data<float>(), K, col.data(), N, false, res.data(), N);
      for (int64_t co = 0; co < Co; ++co) {
        float* o = out.data<float>() + ((b * Co + co) * To + to) * N;
        const float bv = bias.defined() ? bias.data<float>()[co] : 0.0f;
        for (int64_t i = 0; i < N; ++i) o[i] = res[co * N + i] + bv;
      }
    }
}

void CpuBackend::group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                            float eps, bool silu, Tensor& out) {
  const char* op = "group_norm";
  expect_contiguous_f32(x, op, "x");
  expect_contiguous_f32(out, op, "out");
  expect_contiguous_f32(gamma, op, "gamma");
  expect_contiguous_f32(beta, op, "beta");
  STDIT_CHECK(x.dim() >= 2 && out.shape() == x.shape(), "cpu group_norm: x/out shapes");
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / (B * C);
  STDIT_CHECK(groups > 0 && C % groups == 0 && gamma.numel() == C && beta.numel() == C,
              "cpu group_norm: ", C, " channels, ", groups, " groups");
  const int64_t cg = C / groups;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const float* xs = x.data<float>() + (b * C + g * cg) * S;
      float* os = out.data<float>() + (b * C + g * cg) * S;
      const int64_t n = cg * S;
      double sum = 0, sq = 0;
      for (int64_t i = 0; i < n; ++i) sum += xs[i];
      const double mean = sum / n;
      for (int64_t i = 0; i < n; ++i) sq += (xs[i] - mean) * (xs[i] - mean);
      const float rstd = static_cast<float>(1.0 / std::sqrt(sq / n + eps));
      const float m = static_cast<float>(mean);
      for (int64_t c = 0; c < cg; ++c) {
        const float ga = gamma.data<float>()[g * cg + c], be = beta.data<float>()[g * cg + c];
        for (int64_t i = 0; i < S; ++i) {
          float v = (xs[c * S + i] - m) * rstd * ga + be;
          if (silu) v = v / (1.0f + std::exp(-v));
          os[c * S + i] = v;
        }
      }
    }
}

void CpuBackend::upsample_nearest2x(const Tensor& x, Tensor& out) {
  expect_contiguous_f32(x, "upsample_nearest2x", "x");
  expect_contiguous_f32(out, "upsample_nearest2x", "out");
  STDIT_CHECK(x.dim() >= 2, "cpu upsample_nearest2x: x must have H and W");
  Shape want = x.shape();
  want[want.size() - 1] *= 2;
  want[want.size() - 2] *= 2;
  expect_shape(out, want, "upsample_nearest2x", "out");
  const int64_t H = x.size(-2), W = x.size(-1), planes = x.numel() / (H * W);
#pragma omp parallel for schedule(static)
  for (int64_t pl = 0; pl < planes; ++pl)
    for (int64_t h = 0; h < 2 * H; ++h)
      for (int64_t w = 0; w < 2 * W; ++w)
        out.data<float>()[(pl * 2 * H + h) * 2 * W + w] = x.data<float>()[(pl * H + h / 2) * W + w / 2];
}

void CpuBackend::channel_affine(const Tensor& x, const Tensor& scale, const Tensor& shift,
                                Tensor& out) {
  expect_contiguous_f32(x, "channel_affine", "x");
  expect_contiguous_f32(out, "channel_affine", "out");
  expect_contiguous_f32(scale, "channel_affine", "scale");
  expect_contiguous_f32(shift, "channel_affine", "shift");
  STDIT_CHECK(x.dim() >= 2 && out.numel() == x.numel() && scale.numel() == x.size(1) &&
                  shift.numel() == x.size(1),
              "cpu channel_affine: x ", shape_str(x.shape()), ", scale ", scale.numel(), ", shift ",
              shift.numel());
  const int64_t B = x.size(0), C = x.size(1), S = x.numel() / (B * C);
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      const float a = scale.data<float>()[c], s = shift.data<float>()[c];
      const float* xs = x.data<float>() + (b * C + c) * S;
      float* os = out.data<float>() + (b * C + c) * S;
      for (int64_t i = 0; i < S; ++i) os[i] = xs[i] * a + s;
    }
}

}  // namespace stdit
