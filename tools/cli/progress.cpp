#include "progress.h"

#include <unistd.h>

#include <cstdio>

namespace stdit::cli {

ProgressPrinter::ProgressPrinter(bool quiet) : quiet_(quiet), tty_(isatty(2)) {}

void ProgressPrinter::operator()(const api::Event& e) {
  if (e.stage == "saved") {
    if (!e.path.empty()) std::printf("Saved to %s\n", e.path.c_str());
    if (!e.preview.empty()) std::printf("Preview: %s\n", e.preview.c_str());
    std::fflush(stdout);
    return;
  }
  if (e.stage == "latents") {
    std::printf("Saved latents to %s\n", e.path.c_str());
    std::fflush(stdout);
    return;
  }
  if (quiet_ || e.stage == "text") return;
  const std::string label =
      e.stage == "decode" && e.videos > 1 ? "decode " + std::to_string(e.video + 1) + "/" + std::to_string(e.videos)
                                          : e.stage;
  if (label != label_) {
    label_ = label;
    t0_ = std::chrono::steady_clock::now();
  }
  draw(label, e.done, e.total);
}

void ProgressPrinter::draw(const std::string& label, int done, int total) {
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  const double per = done ? el / done : 0.0;
  const double eta = per * (total - done);
  if (tty_) {
    const int width = 30, fill = total ? width * done / total : width;
    std::fprintf(stderr, "\r%s [%s%s] %d/%d  %.2f s/it  ETA %.0f s   ", label.c_str(), std::string(fill, '#').c_str(),
                 std::string(width - fill, '.').c_str(), done, total, per, eta);
    if (done == total) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "%s %d/%d  %.2f s/it  ETA %.0f s\n", label.c_str(), done, total, per, eta);
  }
  std::fflush(stderr);
}

}  // namespace stdit::cli
