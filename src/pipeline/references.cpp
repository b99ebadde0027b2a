#include "pipeline/references.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "core/philox.h"
#include "models/vae/config.h"
#include "models/vae/vae.h"
#include "pipeline/conditioning.h"
#ifdef STDIT_HAVE_MEDIA
#include "media/image_io.h"
#include "media/resize.h"
#include "media/video_io.h"
#endif

namespace stdit {

namespace fs = std::filesystem;

namespace {

std::string lower_extension(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  std::transform(e.begin(), e.end(), e.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return e;
}

#ifdef STDIT_HAVE_MEDIA
// Open-Sora's read_from_path: videos resized bilinearly in float, images with PIL's bicubic.
ResizeFilter filter_of(bool video) { return video ? ResizeFilter::TorchBilinear : ResizeFilter::PilBicubic; }
#endif

}  // namespace

Reference read_reference(const std::string& path, int target_w, int target_h, const VaeConfig& vae,
                         const std::string& where) {
  static const char* videos[] = {".mp4", ".avi", ".mov", ".mkv"};
  static const char* images[] = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"};
  Reference r;
  r.path = path;
  const std::string ext = lower_extension(path);
  r.video = std::find(std::begin(videos), std::end(videos), ext) != std::end(videos);
  const bool image = std::find(std::begin(images), std::end(images), ext) != std::end(images);
  STDIT_CHECK(r.video || image, where, ": reference '", path, "' has an unknown type '", ext,
              "' (videos: .mp4 .avi .mov .mkv; images: .jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)");
  std::error_code ec;
  STDIT_CHECK(fs::is_regular_file(path, ec), where, ": reference '", path, "' does not exist or is not a file");
#ifdef STDIT_HAVE_MEDIA
  try {
    r.frames = r.video ? read_video(path) : read_image(path);
  } catch (const Error& e) {
    fail(where, ": cannot read reference '", path, "': ", e.what());
  }
  STDIT_CHECK(r.frames.count >= 1, where, ": reference '", path, "' holds no frame");
  try {
    const ResizeCrop g = resize_crop_geometry(r.frames.width, r.frames.height, target_w, target_h,
                                              filter_of(r.video));
    STDIT_CHECK(g.scaled_w >= target_w && g.scaled_h >= target_h && g.x >= 0 && g.y >= 0, "the crop falls outside");
  } catch (const Error& e) {
    fail(where, ": reference '", path, "' (", r.frames.width, "x", r.frames.height, ") cannot be resized to ",
         target_w, "x", target_h, ": ", e.what());
  }
  r.latent_frames = vae.latent_frames(r.frames.count);
  return r;
#else
  (void)target_w, (void)target_h, (void)vae;
  fail(where, ": reference '", path, "': this build has no media libraries (reading images and videos needs libav)");
#endif
}

Tensor reference_pixels(const Reference& r, int target_w, int target_h) {
#ifdef STDIT_HAVE_MEDIA
  const Tensor t = reference_video_tensor(r.frames, target_w, target_h,
                                          filter_of(r.video));
  return t.view({1, t.size(0), t.size(1), t.size(2), t.size(3)});
#else
  (void)target_w, (void)target_h;
  fail("reference '", r.path, "': this build has no media libraries");
#endif
}

Tensor encode_clip_tail(OpenSoraVae& vae, const Tensor& video, const MaskEntry& e, int T, std::optional<int> align,
                        uint64_t key) {
  const Placement p = place(e, T, std::vector<int>(e.ref_id + 1, T), align, "loop");
  const VaeConfig& c = vae.config();
  const int per_chunk = c.latent_frames(c.micro_frame_size);  // latent frames of a full chunk
  const int chunk = p.ref_start / per_chunk;
  const int64_t first = static_cast<int64_t>(chunk) * c.micro_frame_size, F = video.size(2);
  STDIT_CHECK(video.dim() == 5 && video.size(0) == 1 && first < F, "encode_clip_tail: clip ", shape_str(video.shape()),
              " has no frame ", first);
  const Tensor zt = vae.encode(video.slice(2, first, F).contiguous(), {}, key, first);  // [1, 4, T - chunk * per_chunk, h, w]
  STDIT_CHECK(zt.size(2) == T - chunk * per_chunk, "encode_clip_tail: ", zt.size(2), " latent frames from ", F - first,
              " frames, expected ", T - chunk * per_chunk);
  Tensor out = Tensor::zeros({4, T, zt.size(3), zt.size(4)}, DType::F32);
  const int64_t plane = zt.size(3) * zt.size(4), n = zt.size(2);
  for (int ch = 0; ch < 4; ++ch)
    std::memcpy(out.data<float>() + (ch * T + chunk * per_chunk) * plane, zt.data<float>() + ch * n * plane,
                n * plane * sizeof(float));
  return out;
}

void append_clip(Frames& acc, const Frames& clip, int drop) {
  STDIT_CHECK(drop >= 0 && drop < clip.count, "a clip of ", clip.count, " frames cannot drop its first ", drop);
  const auto skip = static_cast<std::ptrdiff_t>(clip.frame_bytes() * drop);
  if (acc.count == 0) {
    acc = clip;
    acc.rgb.erase(acc.rgb.begin(), acc.rgb.begin() + skip);
    acc.count -= drop;
    return;
  }
  STDIT_CHECK(acc.width == clip.width && acc.height == clip.height, "clips of different sizes: ", acc.width, "x",
              acc.height, " and ", clip.width, "x", clip.height);
  acc.rgb.insert(acc.rgb.end(), clip.rgb.begin() + skip, clip.rgb.end());
  acc.count += clip.count - drop;
}

Frames reference_frames(const Reference& r, int target_w, int target_h) {
#ifdef STDIT_HAVE_MEDIA
  return resize_center_crop(r.frames, target_w, target_h,
                            filter_of(r.video));
#else
  (void)target_w, (void)target_h;
  fail("reference '", r.path, "': this build has no media libraries");
#endif
}

uint64_t reference_key(uint64_t seed, uint32_t noise_index, uint32_t r) {
  return splitmix64(seed ^ splitmix64((static_cast<uint64_t>(noise_index) << 32) | r));
}

}  // namespace stdit
