// Still images: PNG writing (libpng), PNG/JPEG/... reading (libavcodec), preview grids.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "media/frames.h"

namespace stdit {

// Writes frame `frame_index` of `f` as an 8-bit RGB PNG, via `<path>.tmp.<pid>` + rename; `text`
// goes into iTXt chunks (UTF-8 values, keys of 1..79 Latin-1 characters).
void write_png(const std::string& path, const Frames& f, int frame_index = 0,
               const std::map<std::string, std::string>& text = {});

// The text chunks (tEXt, zTXt, iTXt) of a PNG file before its image data.
std::map<std::string, std::string> read_png_text(const std::string& path);

// Reads a still image (png, jpg, bmp, webp, tiff, ... whatever libavcodec decodes; for an
// animation or a video, its first frame) as one RGB24 frame. Alpha is dropped, as PIL's
// convert("RGB") does. fps is left at Frames' default (24).
Frames read_image(const std::string& path);

// A preview PNG: up to cols * rows evenly spaced frames (first and last included), each scaled
// to at most kGridThumbWidth px wide (PIL-bicubic), on a dark grid with kGridSeparator px lines.
// With n = min(count, cols * rows) thumbnails of tw x th, the image is
//   (c * tw + (c + 1) * sep) x (r * th + (r + 1) * sep),  c = min(cols, n), r = ceil(n / cols).
constexpr int kGridThumbWidth = 256;
constexpr int kGridSeparator = 2;
void write_frame_grid_png(const std::string& path, const Frames& f, int cols = 4, int rows = 4);

// The frame indices write_frame_grid_png shows (exposed for tests and callers).
std::vector<int> grid_frame_indices(int count, int cells);

}  // namespace stdit
