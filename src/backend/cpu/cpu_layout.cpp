// CPU patch embedding layout (im2col of the (1,2,2) Conv3d) and unpatchify.
#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace stdit {

using namespace cpu;

namespace {
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
}  // namespace

void CpuBackend::patchify(const Tensor& x, int pt, int ph, int pw, Tensor& out) {
  expect_contiguous_f32(x, "patchify", "x");
  expect_contiguous_f32(out, "patchify", "out");
  STDIT_CHECK(x.dim() == 5, "cpu patchify: x must be [B, C, T, H, W]");
  const int64_t b = x.size(0), c = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t tp = ceil_div(t, pt), hp = ceil_div(h, ph), wp = ceil_div(w, pw);
  const int64_t feat = c * pt * ph * pw;
  expect_shape(out, {b, tp * hp * wp, feat}, "patchify", "out");
  const float* px = x.data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t tok = 0; tok < tp * hp * wp; ++tok) {
      const int64_t ti = tok / (hp * wp), hi = tok / wp % hp, wi = tok % wp;
      float* o = out.data<float>() + (bi * tp * hp * wp + tok) * feat;
      for (int64_t ci = 0; ci < c; ++ci)
        for (int kt = 0; kt < pt; ++kt)
          for (int kh = 0; kh < ph; ++kh)
            for (int kw = 0; kw < pw; ++kw) {
              const int64_t tt = ti * pt + kt, hh = hi * ph + kh, ww = wi * pw + kw;
              const bool inside = tt < t && hh < h && ww < w;  // zero padding at the end
              *o++ = inside ? px[(((bi * c + ci) * t + tt) * h + hh) * w + ww] : 0.0f;
            }
    }
}

void CpuBackend::unpatchify(const Tensor& x, int64_t tp, int64_t hp, int64_t wp, int pt, int ph,
                            int pw, Tensor& out) {
  expect_contiguous_f32(x, "unpatchify", "x");
  expect_contiguous_f32(out, "unpatchify", "out");
  STDIT_CHECK(out.dim() == 5, "cpu unpatchify: out must be [B, C, T, H, W]");
  const int64_t b = out.size(0), c = out.size(1), t = out.size(2), h = out.size(3), w = out.size(4);
  STDIT_CHECK(t <= tp * pt && h <= hp * ph && w <= wp * pw && t > (tp - 1) * pt &&
                  h > (hp - 1) * ph && w > (wp - 1) * pw,
              "cpu unpatchify: output ", shape_str(out.shape()), " does not crop the patch grid");
  const int64_t feat = static_cast<int64_t>(pt) * ph * pw * c;
  expect_shape(x, {b, tp * hp * wp, feat}, "unpatchify", "x");
  float* po = out.data<float>();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t ci = 0; ci < c; ++ci)
      for (int64_t tt = 0; tt < t; ++tt)
        for (int64_t hh = 0; hh < h; ++hh)
          for (int64_t ww = 0; ww < w; ++ww) {
            const int64_t tok = ((tt / pt) * hp + hh / ph) * wp + ww / pw;
            // Token features are laid out (kt, kh, kw, c_out) with c_out fastest.
            const int64_t f = (((tt % pt) * ph + hh % ph) * pw + ww % pw) * c + ci;
            po[(((bi * c + ci) * t + tt) * h + hh) * w + ww] =
                x.data<float>()[(bi * tp * hp * wp + tok) * feat + f];
          }
}

}  // namespace stdit
