// The process's peak resident memory (the host side of the memory figures generate and bench print).
#pragma once
#include <sys/resource.h>

#include <cstddef>

namespace stdit {

inline size_t peak_host_memory_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<size_t>(ru.ru_maxrss) * 1024;  // ru_maxrss is in KiB on Linux
}

}  // namespace stdit
