// PNG writing with libpng's simplified API; image reading through the video reader (libavcodec
// decodes png, jpeg, bmp, webp, ...); preview grids.
#include "media/image_io.h"

#include <png.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <vector>

#include "core/error.h"
#include "media/libav.h"
#include "media/resize.h"
#include "media/video_io.h"

namespace stdit {

namespace {

struct PngWriteState {
  std::string message;
};

void png_error_fn(png_structp png, png_const_charp msg) {
  static_cast<PngWriteState*>(png_get_error_ptr(png))->message = msg ? msg : "unknown libpng error";
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

// Writes one packed RGB24 image to `path` atomically, with `text` as UTF-8 iTXt chunks.
void write_rgb_png(const std::string& path, const uint8_t* rgb, int width, int height,
                   const std::map<std::string, std::string>& text = {}) {
  for (const auto& [k, v] : text)
    STDIT_CHECK(!k.empty() && k.size() <= 79 && k.find('\0') == std::string::npos && v.find('\0') == std::string::npos,
                path, ": invalid PNG text key '", k, "'");
  media::TempOutput out(path);
  FILE* fp = std::fopen(out.temp_path().c_str(), "wb");
  STDIT_CHECK(fp, path, ": cannot create ", out.temp_path(), ": ", std::strerror(errno));
  PngWriteState state;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, png_error_fn, png_warning_fn);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  std::vector<png_text> chunks;
  volatile bool ok = png && info;  // read after a longjmp
  if (ok && setjmp(png_jmpbuf(png)) == 0) {
    png_init_io(png, fp);
    png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (const auto& [k, v] : text) {
      png_text t;
      std::memset(&t, 0, sizeof t);
      t.compression = PNG_ITXT_COMPRESSION_NONE;  // UTF-8, as prompts are
      t.key = const_cast<char*>(k.c_str());
      t.text = const_cast<char*>(v.c_str());
      t.itxt_length = v.size();
      t.lang = const_cast<char*>("");
      t.lang_key = const_cast<char*>("");
      chunks.push_back(t);
    }
    if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
    png_write_info(png, info);
    for (int y = 0; y < height; ++y)
      png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
    png_write_end(png, info);
  } else {
    ok = false;
    if (!png || !info) state.message = "out of memory";
  }
  png_destroy_write_struct(&png, &info);
  const int write_err = errno;
  const bool flushed = std::fflush(fp) == 0 && !std::ferror(fp);
  const int close_err = std::fclose(fp) == 0 ? 0 : errno;
  STDIT_CHECK(ok, path, ": libpng could not write the image: ", state.message,
              write_err ? cat(" (", std::strerror(write_err), ")") : std::string());
  STDIT_CHECK(flushed && close_err == 0, path, ": write failed (disk full?): ",
              std::strerror(close_err ? close_err : EIO));
  out.commit();
}

}  // namespace

void write_png(const std::string& path, const Frames& f, int frame_index,
               const std::map<std::string, std::string>& text) {
  check_frames(f, path);
  STDIT_CHECK(frame_index >= 0 && frame_index < f.count, path, ": frame index ", frame_index,
              " out of range (", f.count, " frames)");
  write_rgb_png(path, f.frame(frame_index), f.width, f.height, text);
}

std::map<std::string, std::string> read_png_text(const std::string& path) {
  // The chunks before the image data, read by hand: a chunk header can claim any length (the
  // media fuzzer found libpng allocating a claimed 1.8 GB iTXt), so text chunks above 4 MiB are
  // refused and everything else is skipped without being read.
  media::check_input_file(path);
  std::ifstream in(path, std::ios::binary);
  STDIT_CHECK(in, path, ": cannot read: ", std::strerror(errno));
  char sig[8] = {};
  in.read(sig, 8);
  STDIT_CHECK(in && std::memcmp(sig, "\x89PNG\r\n\x1a\n", 8) == 0, path, ": not a PNG file");
  std::map<std::string, std::string> out;
  for (;;) {
    unsigned char head[8];
    in.read(reinterpret_cast<char*>(head), 8);
    STDIT_CHECK(in, path, ": truncated PNG file (no image data)");
    const uint32_t len = (uint32_t{head[0]} << 24) | (uint32_t{head[1]} << 16) | (uint32_t{head[2]} << 8) | head[3];
    const std::string type(reinterpret_cast<char*>(head + 4), 4);
    STDIT_CHECK(len <= 0x7fffffffu, path, ": corrupt PNG chunk length");
    if (type == "IDAT" || type == "IEND") break;
    if (type != "tEXt" && type != "iTXt") {
      in.seekg(static_cast<std::streamoff>(len) + 4, std::ios::cur);  // data + CRC
      STDIT_CHECK(in, path, ": truncated PNG chunk ", type);
      continue;
    }
    STDIT_CHECK(len <= (4u << 20), path, ": PNG text chunk of ", len, " bytes (more than 4 MiB)");
    std::string data(len, '\0');
    in.read(data.data(), len);
    in.seekg(4, std::ios::cur);  // CRC
    STDIT_CHECK(in, path, ": truncated PNG chunk ", type);
    const size_t k = data.find('\0');
    STDIT_CHECK(k != std::string::npos && k >= 1 && k <= 79, path, ": malformed PNG ", type, " chunk");
    const std::string key = data.substr(0, k);
    if (type == "tEXt") {
      out[key] = data.substr(k + 1);
      continue;
    }
    // iTXt: key \0 compression-flag method language \0 translated-key \0 text
    STDIT_CHECK(data.size() >= k + 3, path, ": malformed PNG iTXt chunk");
    if (data[k + 1] != 0) continue;  // compressed: stdit writes none
    const size_t lang_end = data.find('\0', k + 3);
    const size_t trans_end = lang_end == std::string::npos ? lang_end : data.find('\0', lang_end + 1);
    STDIT_CHECK(trans_end != std::string::npos, path, ": malformed PNG iTXt chunk");
    out[key] = data.substr(trans_end + 1);
  }
  return out;
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
