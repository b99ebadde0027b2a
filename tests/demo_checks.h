// What a demo-model video shows (tests/test_demo_model.cpp, tests/test_conditioning.cpp): the
// object's colour and path measured as tools/train/dataset.py does, and PSNR / SSIM between videos.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "media/frames.h"

namespace stdit::testing {

// The palette of tools/train/dataset.py (COLOURS): the model was trained on these.
struct Named {
  const char* name;
  double r, g, b;
};
inline constexpr Named kPalette[] = {{"red", 220, 35, 35},     {"green", 35, 170, 60},   {"blue", 35, 75, 225},
                              {"yellow", 240, 210, 30}, {"orange", 245, 130, 25}, {"purple", 145, 55, 195},
                              {"white", 240, 240, 240}, {"black", 20, 20, 20}};

// What a video shows, measured as tools/train/dataset.py's object_track/meaning_check do:
// background = per-channel median of the border pixels of every frame; object = the pixels
// farther than 60 (RGB distance) from it; its colour = the nearest palette entry to their mean;
// its path = the centroid per frame.
struct Seen {
  std::string colour;
  double area_min = 0, area_max = 0;  // share of the frame, over the frames
  double dx = 0, dy = 0;              // centroid shift, last quarter minus first quarter of the frames, / size
  bool ok = false;
  std::string str() const {
    std::ostringstream s;
    s << "colour " << colour << ", area " << area_min << ".." << area_max << ", shift (" << dx << ", " << dy << ")";
    return s.str();
  }
};

inline Seen look(const Frames& f, const std::string& colour, const std::string& motion) {
  const int W = f.width, H = f.height, F = f.count;
  double bg[3];
  for (int c = 0; c < 3; ++c) {
    std::vector<uint8_t> v;
    for (int i = 0; i < F; ++i)
      for (int y = 0; y < H; ++y)
        for (int x = 0; x < W; ++x)
          if (x == 0 || y == 0 || x == W - 1 || y == H - 1) v.push_back(f.frame(i)[(y * W + x) * 3 + c]);
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    bg[c] = v[v.size() / 2];
  }
  Seen s;
  s.area_min = 1;
  double sum[3] = {0, 0, 0}, n_all = 0;
  std::vector<double> cx(F, NAN), cy(F, NAN);
  for (int i = 0; i < F; ++i) {
    double n = 0, sx = 0, sy = 0;
    for (int y = 0; y < H; ++y)
      for (int x = 0; x < W; ++x) {
        const uint8_t* p = f.frame(i) + (y * W + x) * 3;
        const double d = std::sqrt((p[0] - bg[0]) * (p[0] - bg[0]) + (p[1] - bg[1]) * (p[1] - bg[1]) +
                                   (p[2] - bg[2]) * (p[2] - bg[2]));
        if (d <= 60) continue;
        n += 1;
        sx += x + 0.5;
        sy += y + 0.5;
        for (int c = 0; c < 3; ++c) sum[c] += p[c];
      }
    n_all += n;
    s.area_min = std::min(s.area_min, n / (W * H));
    s.area_max = std::max(s.area_max, n / (W * H));
    if (n > 0) cx[i] = sx / n, cy[i] = sy / n;
  }
  if (n_all == 0) return s;
  double best = 1e30;
  for (const auto& c : kPalette) {
    const double d = std::hypot(sum[0] / n_all - c.r, sum[1] / n_all - c.g, sum[2] / n_all - c.b);
    if (d < best) best = d, s.colour = c.name;
  }
  const int q = std::max(1, F / 4);
  auto mean = [&](const std::vector<double>& v, int from, int to) {
    double m = 0;
    for (int i = from; i < to; ++i) m += v[i];
    return m / (to - from);
  };
  s.dx = (mean(cx, F - q, F) - mean(cx, 0, q)) / W;
  s.dy = (mean(cy, F - q, F) - mean(cy, 0, q)) / H;
  if (s.colour != colour || !(s.area_min > 0.005) || !(s.area_max < 0.35)) return s;
  const double min_shift = 0.08;
  if (motion == "still") {
    s.ok = std::abs(s.dx) < min_shift / 2 && std::abs(s.dy) < min_shift / 2;
  } else {
    const double ux = motion == "right" ? 1 : motion == "left" ? -1 : 0;
    const double uy = motion == "down" ? 1 : motion == "up" ? -1 : 0;
    const double along = s.dx * ux + s.dy * uy, across = std::abs(s.dx * uy) + std::abs(s.dy * ux);
    s.ok = along > min_shift && across < along / 2;
  }
  return s;
}

// Luma (BT.601) of frame i as doubles.
inline std::vector<double> luma(const Frames& f, int i) {
  std::vector<double> y(static_cast<size_t>(f.width) * f.height);
  for (size_t k = 0; k < y.size(); ++k) {
    const uint8_t* p = f.frame(i) + k * 3;
    y[k] = 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2];
  }
  return y;
}
// PSNR (dB, over RGB, 255 peak) of the worst frame, and SSIM (luma, 11x11 Gaussian window of
// sigma 1.5, K1 0.01, K2 0.03, valid positions only) averaged over the frames.
inline std::pair<double, double> psnr_ssim(const Frames& a, const Frames& b) {
  double worst = 1e9, ssim_sum = 0;
  const int W = a.width, H = a.height, n = a.width * a.height * 3;
  double g[11], gs = 0;
  for (int i = 0; i < 11; ++i) gs += g[i] = std::exp(-(i - 5) * (i - 5) / (2 * 1.5 * 1.5));
  for (double& v : g) v /= gs;
  const double c1 = (0.01 * 255) * (0.01 * 255), c2 = (0.03 * 255) * (0.03 * 255);
  for (int i = 0; i < a.count; ++i) {
    double se = 0;
    for (int k = 0; k < n; ++k) se += (a.frame(i)[k] - b.frame(i)[k]) * double(a.frame(i)[k] - b.frame(i)[k]);
    worst = std::min(worst, se == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 * n / se));
    const auto x = luma(a, i), y = luma(b, i);
    double s = 0;
    int cnt = 0;
    for (int y0 = 0; y0 + 11 <= H; ++y0)
      for (int x0 = 0; x0 + 11 <= W; ++x0) {
        double mx = 0, my = 0, sxx = 0, syy = 0, sxy = 0;
        for (int u = 0; u < 11; ++u)
          for (int v = 0; v < 11; ++v) {
            const double w = g[u] * g[v], px = x[(y0 + u) * W + x0 + v], py = y[(y0 + u) * W + x0 + v];
            mx += w * px, my += w * py, sxx += w * px * px, syy += w * py * py, sxy += w * px * py;
          }
        sxx -= mx * mx, syy -= my * my, sxy -= mx * my;
        s += ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
        ++cnt;
      }
    ssim_sum += s / cnt;
  }
  return {worst, ssim_sum / a.count};
}

}  // namespace stdit::testing
