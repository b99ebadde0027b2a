// The command line's view of an api::Engine run: progress bars on a terminal (plain lines
// otherwise), "Saved to PATH" on stdout per file.
#pragma once
#include <chrono>
#include <string>

#include "stdit/stdit.h"

namespace stdit::cli {

class ProgressPrinter {
 public:
  explicit ProgressPrinter(bool quiet);
  void operator()(const api::Event& e);

 private:
  void draw(const std::string& label, int done, int total);
  bool quiet_, tty_;
  std::string label_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace stdit::cli
