// Resizing as Open-Sora does it: Pillow's bicubic resample for images, PyTorch's bilinear
// interpolate for videos. Both are written out by hand so the results match those libraries
// (see docs/MEDIA.md for how closely). Compiled with -ffp-contract=off (see media.cmake).
#include "media/resize.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace stdit {

namespace {

// ---- Pillow: libImaging/Resample.c ----------------------------------------------------------

constexpr int kPrecisionBits = 32 - 8 - 2;  // Pillow's PRECISION_BITS for 8-bit images

double bicubic_filter(double x) {  // Keys cubic with a = -0.5, support 2
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// For each output index: the first input index, how many inputs, and fixed-point weights.
struct PilTaps {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> weights;  // [out][ksize]
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for a resize of in_size to out_size.
PilTaps pil_taps(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);  // shrinking widens the filter: antialias
  const double support = 2.0 * filterscale;
  PilTaps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.first.resize(out_size);
  t.count.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    const int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    const int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      k[x] = bicubic_filter((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      t.weights[static_cast<size_t>(xx) * t.ksize + x] =
          static_cast<int32_t>(w < 0 ? -0.5 + w * (1 << kPrecisionBits)
                                     : 0.5 + w * (1 << kPrecisionBits));
    }
    t.first[xx] = xmin;
    t.count[xx] = xmax;
  }
  return t;
}

uint8_t clip8(int32_t acc) {
  return static_cast<uint8_t>(std::clamp(acc >> kPrecisionBits, 0, 255));
}

// One frame: src (sw x sh RGB) resized to the full scaled size, of which the crop
// [x0, x0 + ow) x [y0, y0 + oh) is written to dst. Computing only the kept pixels gives the
// same bytes as Pillow's full resize followed by the crop.
void pil_resize_crop(const uint8_t* src, int sw, int sh, int scaled_w, int scaled_h, int x0,
                     int y0, int ow, int oh, uint8_t* dst) {
  const bool horizontal = scaled_w != sw, vertical = scaled_h != sh;  // as Pillow decides
  const PilTaps th = pil_taps(sw, scaled_w), tv = pil_taps(sh, scaled_h);
  // Source rows the kept output rows need.
  const int row_begin = vertical ? tv.first[y0] : y0;
  const int row_end = vertical ? tv.first[y0 + oh - 1] + tv.count[y0 + oh - 1] : y0 + oh;
  const int rows = row_end - row_begin;

  // Horizontal pass (8-bit intermediate), kept columns only.
  std::vector<uint8_t> mid(static_cast<size_t>(rows) * ow * 3);
  for (int r = 0; r < rows; ++r) {
    const uint8_t* in = src + static_cast<size_t>(row_begin + r) * sw * 3;
    uint8_t* out = mid.data() + static_cast<size_t>(r) * ow * 3;
    for (int xo = 0; xo < ow; ++xo) {
      const int xs = x0 + xo;
      if (!horizontal) {
        std::copy_n(in + 3 * xs, 3, out + 3 * xo);
        continue;
      }
      const int32_t* k = &th.weights[static_cast<size_t>(xs) * th.ksize];
      int32_t acc[3] = {1 << (kPrecisionBits - 1), 1 << (kPrecisionBits - 1),
                        1 << (kPrecisionBits - 1)};
      for (int i = 0; i < th.count[xs]; ++i)
        for (int c = 0; c < 3; ++c) acc[c] += in[3 * (th.first[xs] + i) + c] * k[i];
      for (int c = 0; c < 3; ++c) out[3 * xo + c] = clip8(acc[c]);
    }
  }
  // Vertical pass.
  const size_t mid_row = static_cast<size_t>(ow) * 3;
  for (int yo = 0; yo < oh; ++yo) {
    uint8_t* out = dst + static_cast<size_t>(yo) * mid_row;
    const int ys = y0 + yo;
    if (!vertical) {
      std::copy_n(mid.data() + (ys - row_begin) * mid_row, mid_row, out);
      continue;
    }
    const int32_t* k = &tv.weights[static_cast<size_t>(ys) * tv.ksize];
    const uint8_t* in = mid.data() + (tv.first[ys] - row_begin) * mid_row;
    for (size_t j = 0; j < mid_row; ++j) {
      int32_t acc = 1 << (kPrecisionBits - 1);
      for (int i = 0; i < tv.count[ys]; ++i) acc += in[i * mid_row + j] * k[i];
      out[j] = clip8(acc);
    }
  }
}

// ---- PyTorch 1.13: aten/src/ATen/native/UpSample.h, cpu/UpSampleKernel.cpp ----------------

// Source taps of one output index for bilinear, align_corners=False.
struct LinearTap {
  int i0 = 0, i1 = 0;
  float w0 = 1, w1 = 0;
};

// scale = in / out in float; the source position is computed in double (PyTorch's accumulate
// type on CPU), and lambda1 = float(position - i0), lambda0 = 1 - lambda1 in float. Checked
// against torch 1.13 with one-hot inputs: every weight is identical.
std::vector<LinearTap> torch_linear_taps(int in_size, int out_size) {
  std::vector<LinearTap> taps(out_size);
  if (in_size == out_size) {  // PyTorch copies
    for (int i = 0; i < out_size; ++i) taps[i] = {i, i, 1.0f, 0.0f};
    return taps;
  }
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int i = 0; i < out_size; ++i) {
    double src = static_cast<double>(scale) * (i + 0.5) - 0.5;  // area_pixel_compute_source_index
    if (src < 0) src = 0;
    LinearTap& t = taps[i];
    t.i0 = static_cast<int>(src);
    t.i1 = t.i0 + (t.i0 < in_size - 1 ? 1 : 0);
    t.w1 = static_cast<float>(src - t.i0);
    t.w0 = 1.0f - t.w1;
  }
  return taps;
}

// One frame, bilinear in float on u / 255, crop only; calls emit(pixel_index, channel, value).
// Open-Sora's clip is channels-last in memory (torchvision's TCHW is a permuted THWC), so
// PyTorch runs cpu_upsample_linear_channels_last: out = w00*a + w01*b + w10*c + w11*d with
// wXY = hX * wY. The sum's rounding differs from PyTorch's compiled kernel by about one float
// ulp (PyTorch's own NCHW and channels-last kernels differ from each other by as much).
template <typename Emit>
void torch_bilinear_crop(const uint8_t* src, int sw, int sh, int scaled_w, int scaled_h, int x0,
                         int y0, int ow, int oh, Emit&& emit) {
  const auto tw = torch_linear_taps(sw, scaled_w), th = torch_linear_taps(sh, scaled_h);
  float lut[256];
  for (int u = 0; u < 256; ++u) lut[u] = static_cast<float>(u) / 255.0f;  // ToTensorVideo
  for (int yo = 0; yo < oh; ++yo) {
    const LinearTap& v = th[y0 + yo];
    for (int xo = 0; xo < ow; ++xo) {
      const LinearTap& h = tw[x0 + xo];
      const float w00 = v.w0 * h.w0, w01 = v.w0 * h.w1, w10 = v.w1 * h.w0, w11 = v.w1 * h.w1;
      const uint8_t* p00 = src + (static_cast<size_t>(v.i0) * sw + h.i0) * 3;
      const uint8_t* p01 = src + (static_cast<size_t>(v.i0) * sw + h.i1) * 3;
      const uint8_t* p10 = src + (static_cast<size_t>(v.i1) * sw + h.i0) * 3;
      const uint8_t* p11 = src + (static_cast<size_t>(v.i1) * sw + h.i1) * 3;
      for (int c = 0; c < 3; ++c) {
        float acc = w00 * lut[p00[c]];
        acc = acc + w01 * lut[p01[c]];
        acc = acc + w10 * lut[p10[c]];
        acc = acc + w11 * lut[p11[c]];
        emit(static_cast<size_t>(yo) * ow + xo, c, acc);
      }
    }
  }
}

// Python's round(): half to even (the default floating-point rounding mode).
int py_round(double x) { return static_cast<int>(std::nearbyint(x)); }

void check_target(const Frames& f, int w, int h, const char* what) {
  check_frames(f, what);
  STDIT_CHECK(w > 0 && h > 0 && static_cast<int64_t>(w) * h <= (1ll << 28), what,
              ": target size ", w, "x", h, " must be positive");
}

}  // namespace

ResizeCrop resize_crop_geometry(int src_w, int src_h, int target_w, int target_h,
                                ResizeFilter filter) {
  // Open-Sora resize_crop_to_fill: rh, rw = th / h, tw / w; scale by the larger.
  const double rh = static_cast<double>(target_h) / src_h, rw = static_cast<double>(target_w) / src_w;
  ResizeCrop g;
  if (rh > rw) {
    g.scaled_h = target_h;
    g.scaled_w = py_round(src_w * rh);
  } else {
    g.scaled_h = py_round(src_h * rw);
    g.scaled_w = target_w;
  }
  g.scaled_w = std::max(g.scaled_w, target_w);  // guards rounding; Open-Sora asserts this
  g.scaled_h = std::max(g.scaled_h, target_h);
  const int dx = g.scaled_w - target_w, dy = g.scaled_h - target_h;
  if (filter == ResizeFilter::PilBicubic) {  // int(round((sw - tw) / 2.0))
    g.x = py_round(dx / 2.0);
    g.y = py_round(dy / 2.0);
  } else {  // int(round(sw - tw) / 2.0): floors
    g.x = dx / 2;
    g.y = dy / 2;
  }
  return g;
}

Frames resize_frames(const Frames& f, int width, int height, ResizeFilter filter) {
  check_target(f, width, height, "resize_frames");
  Frames out = make_frames(width, height, f.count, f.fps);
  for (int i = 0; i < f.count; ++i) {
    if (filter == ResizeFilter::PilBicubic) {
      pil_resize_crop(f.frame(i), f.width, f.height, width, height, 0, 0, width, height,
                      out.frame(i));
    } else {
      uint8_t* dst = out.frame(i);
      torch_bilinear_crop(f.frame(i), f.width, f.height, width, height, 0, 0, width, height,
                          [&](size_t p, int c, float v) {
                            dst[p * 3 + c] = static_cast<uint8_t>(
                                std::lrint(std::clamp(v * 255.0f, 0.0f, 255.0f)));
                          });
    }
  }
  return out;
}

Frames resize_center_crop(const Frames& f, int target_w, int target_h, ResizeFilter filter) {
  check_target(f, target_w, target_h, "resize_center_crop");
  const ResizeCrop g = resize_crop_geometry(f.width, f.height, target_w, target_h, filter);
  Frames out = make_frames(target_w, target_h, f.count, f.fps);
  for (int i = 0; i < f.count; ++i) {
    if (filter == ResizeFilter::PilBicubic) {
      pil_resize_crop(f.frame(i), f.width, f.height, g.scaled_w, g.scaled_h, g.x, g.y, target_w,
                      target_h, out.frame(i));
    } else {
      uint8_t* dst = out.frame(i);
      torch_bilinear_crop(f.frame(i), f.width, f.height, g.scaled_w, g.scaled_h, g.x, g.y,
                          target_w, target_h, [&](size_t p, int c, float v) {
                            dst[p * 3 + c] = static_cast<uint8_t>(
                                std::lrint(std::clamp(v * 255.0f, 0.0f, 255.0f)));
                          });
    }
  }
  return out;
}

Tensor reference_video_tensor(const Frames& f, int target_w, int target_h, ResizeFilter filter) {
  check_target(f, target_w, target_h, "reference_video_tensor");
  if (filter == ResizeFilter::PilBicubic)
    return video_tensor_from_frames(resize_center_crop(f, target_w, target_h, filter));
  const ResizeCrop g = resize_crop_geometry(f.width, f.height, target_w, target_h, filter);
  Tensor t = Tensor::empty({3, f.count, target_h, target_w}, DType::F32);
  float* out = t.data<float>();
  const size_t frame = static_cast<size_t>(target_w) * target_h;
  const size_t plane = frame * f.count;
  for (int i = 0; i < f.count; ++i) {
    torch_bilinear_crop(f.frame(i), f.width, f.height, g.scaled_w, g.scaled_h, g.x, g.y, target_w,
                        target_h, [&](size_t p, int c, float v) {
                          out[c * plane + i * frame + p] = (v - 0.5f) / 0.5f;  // Normalize
                        });
  }
  return t;
}

}  // namespace stdit
