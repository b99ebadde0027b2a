// PNG writing with libpng's simplified API; image reading through the video reader (libavcodec
// decodes png, jpeg, bmp, webp, ...); preview grids.
#include "media/image_io.h"

#include <png.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "media/libav.h"
#include "media/resize.h"
#include "media/video_io.h"

namespace stdit {

namespace {

// Writes one packed RGB24 image to `path` atomically.
void write_rgb_png(const std::string& path, const uint8_t* rgb, int width, int height) {
  media::TempOutput out(path);
  FILE* fp = std::fopen(out.temp_path().c_str(), "wb");
  STDIT_CHECK(fp, path, ": cannot create ", out.temp_path(), ": ", std::strerror(errno));
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  img.width = static_cast<png_uint_32>(width);
  img.height = static_cast<png_uint_32>(height);
  img.format = PNG_FORMAT_RGB;
  errno = 0;
  const int ok = png_image_write_to_stdio(&img, fp, /*convert_to_8bit=*/0, rgb,
                                          /*row_stride=*/width * 3, /*colormap=*/nullptr);
  std::string message = img.message;
  if (!ok && errno != 0) message += cat(" (", std::strerror(errno), ")");
  png_image_free(&img);
  const bool flushed = std::fflush(fp) == 0 && !std::ferror(fp);
  const int close_err = std::fclose(fp) == 0 ? 0 : errno;
  STDIT_CHECK(ok, path, ": libpng could not write the image: ", message);
  STDIT_CHECK(flushed && close_err == 0, path, ": write failed (disk full?): ",
              std::strerror(close_err ? close_err : EIO));
  out.commit();
}

}  // namespace

void write_png(const std::string& path, const Frames& f, int frame_index) {
  check_frames(f, path);
  STDIT_CHECK(frame_index >= 0 && frame_index < f.count, path, ": frame index ", frame_index,
              " out of range (", f.count, " frames)");
  write_rgb_png(path, f.frame(frame_index), f.width, f.height);
}

Frames read_image(const std::string& path) {
  Frames f = read_video(path, 1);
  f.fps = Frames{}.fps;
  return f;
}

std::vector<int> grid_frame_indices(int count, int cells) {
  const int n = std::min(count, cells);
  std::vector<int> idx(std::max(n, 0));
  for (int k = 0; k < n; ++k)  // round(k * (count - 1) / (n - 1)), in integers
    idx[k] = n == 1 ? 0
                    : static_cast<int>((static_cast<int64_t>(k) * (count - 1) * 2 + (n - 1)) /
                                       (2 * static_cast<int64_t>(n - 1)));
  return idx;
}

void write_frame_grid_png(const std::string& path, const Frames& f, int cols, int rows) {
  check_frames(f, path);
  STDIT_CHECK(cols >= 1 && rows >= 1 && cols <= 64 && rows <= 64, path, ": grid of ", cols, "x",
              rows, " cells is out of range (1 .. 64 each way)");
  const std::vector<int> idx = grid_frame_indices(f.count, cols * rows);
  const int n = static_cast<int>(idx.size());
  const int c = std::min(cols, n), r = (n + cols - 1) / cols;
  const int tw = std::min(f.width, kGridThumbWidth);
  const int th = std::max(1, static_cast<int>(std::lround(static_cast<double>(f.height) * tw / f.width)));
  const int sep = kGridSeparator;
  const int W = c * tw + (c + 1) * sep, H = r * th + (r + 1) * sep;

  // Pick the frames, shrink them together, then paste each into its cell.
  Frames picked = make_frames(f.width, f.height, n, f.fps);
  for (int k = 0; k < n; ++k) std::copy_n(f.frame(idx[k]), f.frame_bytes(), picked.frame(k));
  const Frames thumbs = (tw == f.width && th == f.height) ? picked : resize_frames(picked, tw, th);

  std::vector<uint8_t> canvas(static_cast<size_t>(W) * H * 3, 40);  // dark grey lines
  for (int k = 0; k < n; ++k) {
    const int x0 = sep + (k % cols) * (tw + sep), y0 = sep + (k / cols) * (th + sep);
    for (int y = 0; y < th; ++y)
      std::copy_n(thumbs.frame(k) + static_cast<size_t>(y) * tw * 3, static_cast<size_t>(tw) * 3,
                  canvas.data() + (static_cast<size_t>(y0 + y) * W + x0) * 3);
  }
  write_rgb_png(path, canvas.data(), W, H);
}

}  // namespace stdit
