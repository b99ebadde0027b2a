// Open-Sora 1.2's resolution buckets (aspect.py) and duration presets.
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace stdit {

// (height, width) in pixels for a resolution ("144p" ... "720p") and an aspect ratio given as
// H:W ("9:16", Open-Sora's convention: 9:16 is a landscape 240x426 at 240p) or its decimal key
// ("0.56"). Unknown names are an Error listing the valid ones.
std::pair<int, int> image_size(const std::string& resolution, const std::string& aspect_ratio);
std::vector<std::string> resolution_names();
std::vector<std::string> aspect_ratio_names();

// "2s" -> 51, "4s" -> 102, "8s" -> 204, "16s" -> 408, "32s" -> 816; "1x".."16x" likewise;
// a plain positive integer is taken as is.
int parse_num_frames(const std::string& s);

}  // namespace stdit
