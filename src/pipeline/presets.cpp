#include "pipeline/presets.h"

#include <array>
#include <cstdlib>

#include "core/error.h"

namespace stdit {

namespace {
struct AspectRow {
  const char* ratio;  // H:W
  const char* key;    // Open-Sora's decimal key
  std::array<std::pair<int, int>, 5> hw;  // 144p, 240p, 360p, 480p, 720p
};
// spec seed_system.md §15.5 (Open-Sora opensora/datasets/aspect.py).
const AspectRow kAspects[] = {
    {"3:8", "0.38", {{{117, 312}, {196, 522}, {294, 784}, {392, 1046}, {588, 1568}}}},
    {"9:21", "0.43", {{{125, 291}, {210, 490}, {314, 732}, {420, 980}, {628, 1466}}}},
    {"12:25", "0.48", {{{133, 277}, {222, 462}, {332, 692}, {444, 925}, {666, 1388}}}},
    {"1:2", "0.50", {{{135, 270}, {226, 452}, {340, 680}, {452, 904}, {678, 1356}}}},
    {"9:17", "0.53", {{{139, 262}, {232, 438}, {350, 662}, {466, 880}, {698, 1318}}}},
    {"27:50", "0.54", {{{141, 260}, {236, 436}, {352, 652}, {470, 870}, {706, 1306}}}},
    {"9:16", "0.56", {{{144, 256}, {240, 426}, {360, 640}, {480, 854}, {720, 1280}}}},
    {"5:8", "0.62", {{{151, 241}, {252, 404}, {380, 608}, {506, 810}, {758, 1212}}}},
    {"2:3", "0.67", {{{156, 234}, {262, 393}, {392, 588}, {522, 784}, {784, 1176}}}},
    {"3:4", "0.75", {{{166, 221}, {276, 368}, {416, 554}, {554, 738}, {832, 1110}}}},
    {"1:1", "1.00", {{{192, 192}, {320, 320}, {480, 480}, {640, 640}, {960, 960}}}},
    {"4:3", "1.33", {{{221, 165}, {370, 278}, {554, 416}, {740, 555}, {1108, 832}}}},
    {"3:2", "1.50", {{{235, 156}, {392, 262}, {588, 392}, {784, 522}, {1176, 784}}}},
    {"16:9", "1.78", {{{256, 144}, {426, 240}, {640, 360}, {854, 480}, {1280, 720}}}},
    {"17:9", "1.89", {{{263, 139}, {440, 232}, {660, 350}, {880, 466}, {1320, 698}}}},
    {"2:1", "2.00", {{{271, 135}, {452, 226}, {678, 340}, {906, 454}, {1358, 680}}}},
    {"50:27", "2.08", {{{277, 132}, {462, 222}, {692, 332}, {924, 444}, {1386, 666}}}},
};
const char* kResolutions[] = {"144p", "240p", "360p", "480p", "720p"};

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}
}  // namespace

std::vector<std::string> resolution_names() { return {std::begin(kResolutions), std::end(kResolutions)}; }

std::vector<std::string> aspect_ratio_names() {
  std::vector<std::string> v;
  for (const auto& a : kAspects) v.push_back(a.ratio);
  return v;
}

std::pair<int, int> image_size(const std::string& resolution, const std::string& aspect) {
  int ri = -1;
  for (int i = 0; i < 5; ++i)
    if (resolution == kResolutions[i]) ri = i;
  STDIT_CHECK(ri >= 0, "unknown resolution '", resolution, "' (one of: ", join(resolution_names()),
              "; or give -W and -H)");
  for (const auto& a : kAspects)
    if (aspect == a.ratio || aspect == a.key) return a.hw[ri];
  fail("unknown aspect ratio '", aspect, "' (H:W, one of: ", join(aspect_ratio_names()), ")");
}

int parse_num_frames(const std::string& s) {
  static const std::pair<const char*, int> kPresets[] = {
      {"1x", 51}, {"2x", 102}, {"4x", 204}, {"8x", 408}, {"16x", 816},
      {"2s", 51}, {"4s", 102}, {"8s", 204}, {"16s", 408}, {"32s", 816}};
  for (const auto& [name, n] : kPresets)
    if (s == name) return n;
  char* end = nullptr;
  const long v = std::strtol(s.c_str(), &end, 10);
  STDIT_CHECK(!s.empty() && end && *end == '\0' && v >= 1 && v <= 100000, "invalid --num-frames '", s,
              "' (a positive integer, or 2s, 4s, 8s, 16s, 32s)");
  return static_cast<int>(v);
}

}  // namespace stdit
