// The two exceptions of stdit's public API.
#pragma once
#include <stdexcept>
#include <string>
#include <vector>

namespace stdit {

// Every failure a caller can cause (bad settings, missing or corrupt files, out of memory, ...):
// one clear message, meant to be shown as is.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A run stopped by cancellation (api::CancelToken, or SIGINT / SIGTERM in a program that
// installed stdit's handlers) at a step boundary. The files finished before it are kept (`saved`,
// out of `planned` videos); temporaries and unused name reservations are removed.
class Cancelled : public std::runtime_error {
 public:
  Cancelled() : std::runtime_error("cancelled") {}
  Cancelled(std::vector<std::string> saved_paths, int planned_videos)
      : std::runtime_error("cancelled"), saved(std::move(saved_paths)), planned(planned_videos) {}
  std::vector<std::string> saved;
  int planned = 0;
};

}  // namespace stdit
