// Errors: every failure the user can cause is a stdit::Error with one clear message.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

#include "stdit/error.h"  // Error (public: the API throws it)

namespace stdit {

// cat("a", 1, "b") -> "a1b": builds messages without iostream noise at call sites.
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Error(cat(args...));
}

}  // namespace stdit

// Internal invariant or user-input check with a message built from the remaining arguments.
#define STDIT_CHECK(cond, ...)                 \
  do {                                         \
    if (!(cond)) ::stdit::fail(__VA_ARGS__);   \
  } while (0)
