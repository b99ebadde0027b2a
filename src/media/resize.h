// Resizing the way Open-Sora v1.2 prepares reference images and videos ("resize_crop"):
// scale so the picture covers the target keeping its aspect ratio, then crop the centre.
#pragma once
#include "core/tensor.h"
#include "media/frames.h"

namespace stdit {

enum class ResizeFilter {
  // PIL Image.resize(..., BICUBIC) on 8-bit RGB: Keys cubic (a = -0.5), antialiased when
  // shrinking (support grows with the scale), 22-bit fixed point, horizontal pass then vertical
  // pass with an 8-bit intermediate. Open-Sora's path for reference *images*. Bit-exact with
  // Pillow.
  PilBicubic,
  // torch.nn.functional.interpolate(mode="bilinear", align_corners=False, antialias=False) on
  // float pixels in [0, 1]. Open-Sora's path for reference *videos* (.mp4/.avi/.mov/.mkv).
  TorchBilinear,
};

// Plain resize of every frame to width x height.
Frames resize_frames(const Frames& f, int width, int height,
                     ResizeFilter filter = ResizeFilter::PilBicubic);

// Where resize_crop puts things: the source is scaled to scaled_w x scaled_h, then the target
// is cut at (x, y). The offsets follow Open-Sora's two copies of resize_crop_to_fill: the image
// one rounds (round half to even), the video one floors.
struct ResizeCrop {
  int scaled_w = 0, scaled_h = 0, x = 0, y = 0;
};
ResizeCrop resize_crop_geometry(int src_w, int src_h, int target_w, int target_h,
                                ResizeFilter filter);

// Scale to cover target_w x target_h, keeping the aspect ratio, then centre crop. With
// TorchBilinear the float result is rounded to the nearest byte (Open-Sora keeps the float;
// use reference_video_tensor for that).
Frames resize_center_crop(const Frames& f, int target_w, int target_h,
                          ResizeFilter filter = ResizeFilter::PilBicubic);

// The conditioning tensor Open-Sora builds from a reference: F32 [3, F, target_h, target_w] in
// [-1, 1]. PilBicubic: resize_center_crop then video_tensor_from_frames (exactly Open-Sora's
// image path). TorchBilinear: interpolated in float from u / 255, then (x - 0.5) / 0.5, with no
// rounding to bytes in between (Open-Sora's video path).
Tensor reference_video_tensor(const Frames& f, int target_w, int target_h, ResizeFilter filter);

}  // namespace stdit
