// The two exceptions of stdit's public API.
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace stdit {

namespace api {
struct Result;  // stdit/stdit.h
}

// Every failure a caller can cause (bad settings, missing or corrupt files, out of memory, ...):
// one clear message, meant to be shown as is.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// A request whose settings, inputs or output names are refused (nothing was loaded or written).
class InvalidRequest : public Error {
 public:
  explicit InvalidRequest(const std::string& msg) : Error(msg) {}
};

// An engine directory (or another named input) that does not exist.
class NotFound : public Error {
 public:
  explicit NotFound(const std::string& msg) : Error(msg) {}
};

// Under mpirun: another process (`rank`) refused the request or failed before the run began; that
// process reports the error, this one only stops.
class RefusedElsewhere : public Error {
 public:
  explicit RefusedElsewhere(int failed_rank)
      : Error("process " + std::to_string(failed_rank) + " refused the request"), rank(failed_rank) {}
  int rank;
};

// A run stopped by cancellation (api::CancelToken, or SIGINT / SIGTERM in a program that
// installed stdit's handlers) at a step boundary. The files finished before it are kept (`saved`,
// out of `planned` videos); temporaries and unused name reservations are removed.
class Cancelled : public std::runtime_error {
 public:
  Cancelled() : std::runtime_error("cancelled") {}
  Cancelled(std::vector<std::string> saved_paths, int planned_videos, std::shared_ptr<api::Result> finished = {})
      : std::runtime_error("cancelled"), saved(std::move(saved_paths)), planned(planned_videos),
        partial(std::move(finished)) {}
  std::vector<std::string> saved;
  int planned = 0;
  std::shared_ptr<api::Result> partial;  // the videos finished before the stop (from api::Engine)
};

}  // namespace stdit
