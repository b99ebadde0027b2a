// Frames: decoded video or images as packed 8-bit RGB, plus the pixel mapping between model
// tensors (F32 [3, F, H, W] in [-1, 1]) and those pixels, exactly as Open-Sora v1.2 does it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stdit {

struct Frames {
  int width = 0, height = 0, count = 0;
  double fps = 24;
  std::vector<uint8_t> rgb;  // packed RGB24, [count][height][width][3]

  size_t frame_bytes() const { return static_cast<size_t>(width) * height * 3; }
  uint8_t* frame(int i) { return rgb.data() + frame_bytes() * i; }
  const uint8_t* frame(int i) const { return rgb.data() + frame_bytes() * i; }
};

// New zero-filled frames of the given size.
Frames make_frames(int width, int height, int count, double fps = 24);

// Throws stdit::Error ("<where>: ...") unless the sizes are positive and rgb holds exactly
// count * height * width * 3 bytes.
void check_frames(const Frames& f, const std::string& where);

// Open-Sora's save_sample(): clamp to [-1, 1], (x + 1) / 2, * 255, + 0.5, clamp to [0, 255],
// truncate; every step rounded to float32 as PyTorch does. NaN maps to 0 (what PyTorch's
// float -> uint8 cast gives on x86). `video` is F32 (or F16/BF16/F64, converted) [3, F, H, W].
uint8_t pixel_from_unit(float x);
Frames frames_from_video_tensor(const Tensor& video, double fps);

// The inverse used to encode references: ToTensorVideo (u / 255) then Normalize(0.5, 0.5)
// ((x - 0.5) / 0.5), in float32. Returns F32 [3, F, H, W]. For every byte u,
// pixel_from_unit(unit_from_pixel(u)) == u.
float unit_from_pixel(uint8_t u);
Tensor video_tensor_from_frames(const Frames& f);

}  // namespace stdit
