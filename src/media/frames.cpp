// Pixel mapping between model tensors and 8-bit RGB frames. This file is compiled with
// -ffp-contract=off (see media.cmake): a fused multiply-add would round differently from
// PyTorch's separate mul/add kernels and change about 7 in a million pixels.
#include "media/frames.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace stdit {

Frames make_frames(int width, int height, int count, double fps) {
  Frames f;
  f.width = width;
  f.height = height;
  f.count = count;
  f.fps = fps;
  STDIT_CHECK(width > 0 && height > 0 && count > 0 &&
                  static_cast<uint64_t>(width) * static_cast<uint64_t>(height) <= (1ull << 28),
              "make_frames: unusable size ", width, "x", height, " x ", count, " frames");
  f.rgb.assign(f.frame_bytes() * static_cast<size_t>(count), 0);
  return f;
}

void check_frames(const Frames& f, const std::string& where) {
  STDIT_CHECK(f.width > 0 && f.height > 0, where, ": frames have size ", f.width, "x", f.height,
              ", expected a positive width and height");
  STDIT_CHECK(f.count > 0, where, ": no frames (count is ", f.count, ")");
  const uint64_t pixels = static_cast<uint64_t>(f.width) * static_cast<uint64_t>(f.height);
  STDIT_CHECK(pixels <= (1ull << 28), where, ": frame size ", f.width, "x", f.height,
              " is too large");
  const uint64_t bytes = pixels * 3 * static_cast<uint64_t>(f.count);
  STDIT_CHECK(f.rgb.size() == bytes, where, ": rgb holds ", f.rgb.size(), " bytes but ", f.count,
              " frames of ", f.width, "x", f.height, " RGB need ", bytes);
}

uint8_t pixel_from_unit(float x) {
  if (std::isnan(x)) return 0;
  // The clamps as comparisons (x is not NaN here, so they equal fmin/fmax, which compile to
  // library calls without -ffast-math).
  float v = x < -1.0f ? -1.0f : x > 1.0f ? 1.0f : x;  // clamp_(min=-1, max=1)
  v = (v + 1.0f) / 2.0f;                              // sub_(low).div_(high - low)
  v = v * 255.0f;                                     // mul(255)
  v = v + 0.5f;                                       // add_(0.5)
  v = v < 0.0f ? 0.0f : v > 255.0f ? 255.0f : v;      // clamp_(0, 255)
  return static_cast<uint8_t>(v);                     // .to(torch.uint8) truncates
}

float unit_from_pixel(uint8_t u) {
  const float x = static_cast<float>(u) / 255.0f;  // ToTensorVideo: clip.float() / 255.0
  return (x - 0.5f) / 0.5f;                        // Normalize(mean=0.5, std=0.5)
}

Frames frames_from_video_tensor(const Tensor& video, double fps) {
  const std::string where = "frames_from_video_tensor";
  STDIT_CHECK(video.defined() && video.device().kind == DeviceKind::CPU, where,
              ": expected a CPU tensor");
  STDIT_CHECK(video.dim() == 4 && video.size(0) == 3, where,
              ": expected a video tensor [3, F, H, W], got ", shape_str(video.shape()));
  STDIT_CHECK(is_float(video.dtype()), where, ": expected a float tensor, got ",
              dtype_name(video.dtype()));
  const int64_t F = video.size(1), H = video.size(2), W = video.size(3);
  STDIT_CHECK(F > 0 && H > 0 && W > 0 && F <= std::numeric_limits<int>::max() &&
                  H * W <= (1ll << 28),
              where, ": unusable video shape ", shape_str(video.shape()));
  const Tensor v = video.to(DType::F32);  // contiguous copy
  const float* src = v.data<float>();
  Frames f;
  f.width = static_cast<int>(W);
  f.height = static_cast<int>(H);
  f.count = static_cast<int>(F);
  f.fps = fps;
  f.rgb.resize(static_cast<size_t>(F * H * W * 3));
  const int64_t plane = F * H * W;  // elements per channel
  // Every pixel on its own (a 720p 16s video is 1.1 billion values: one thread took seconds).
  const float *r = src, *g = src + plane, *b = src + 2 * plane;
  uint8_t* out = f.rgb.data();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < plane; ++p) {
    out[p * 3] = pixel_from_unit(r[p]);
    out[p * 3 + 1] = pixel_from_unit(g[p]);
    out[p * 3 + 2] = pixel_from_unit(b[p]);
  }
  return f;
}

Tensor video_tensor_from_frames(const Frames& f) {
  check_frames(f, "video_tensor_from_frames");
  const int64_t plane = static_cast<int64_t>(f.count) * f.height * f.width;
  Tensor t = Tensor::empty({3, f.count, f.height, f.width}, DType::F32);
  float* dst = t.data<float>();
  const uint8_t* in = f.rgb.data();
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < plane; ++p)
    for (int c = 0; c < 3; ++c) dst[c * plane + p] = unit_from_pixel(in[p * 3 + c]);
  return t;
}

}  // namespace stdit
