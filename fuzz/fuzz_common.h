// Shared helpers for the libFuzzer harnesses (see docs/RELIABILITY.md).
// Contract under test: every malformed input raises stdit::Error. Any other exception is a
// finding, so it is reported and the process aborts (libFuzzer then saves the input).
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"
#include "core/log.h"

namespace fuzz {

template <typename F>
inline void expect_stdit_error_only(F&& f) {
  try {
    f();
  } catch (const stdit::Error&) {
    // the documented failure mode
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: non-stdit exception escaped: %s\n", e.what());
    std::abort();
  } catch (...) {
    std::fprintf(stderr, "FINDING: unknown exception escaped\n");
    std::abort();
  }
}

// Touches every byte of a buffer so ASan checks the whole range is addressable.
inline uint64_t touch(const void* p, size_t n) {
  const volatile uint8_t* b = static_cast<const volatile uint8_t*>(p);
  uint64_t s = 0;
  for (size_t i = 0; i < n; ++i) s += b[i];
  return s;
}

// A private scratch directory (per process), emptied on each call.
inline std::filesystem::path scratch_dir(const char* name) {
  namespace fs = std::filesystem;
  static const fs::path base = [&] {
    const char* t = std::getenv("TMPDIR");
    fs::path p = fs::path(t && *t ? t : "/tmp") / (std::string("stdit_fuzz_") + name + "_" +
                                                   std::to_string(::getpid()));
    return p;
  }();
  std::error_code ec;
  fs::remove_all(base, ec);
  fs::create_directories(base);
  return base;
}

inline void write_file(const std::filesystem::path& p, const uint8_t* data, size_t size) {
  std::ofstream o(p, std::ios::binary | std::ios::trunc);
  o.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Splits an input into parts at a marker line (used by the multi-file harnesses).
inline std::vector<std::string_view> split(const uint8_t* data, size_t size, std::string_view sep) {
  std::vector<std::string_view> out;
  std::string_view s(reinterpret_cast<const char*>(data), size);
  size_t start = 0;
  while (true) {
    size_t k = s.find(sep, start);
    if (k == std::string_view::npos) {
      out.push_back(s.substr(start));
      break;
    }
    out.push_back(s.substr(start, k - start));
    start = k + sep.size();
  }
  return out;
}

}  // namespace fuzz

// Warnings (e.g. "ignoring unknown key") would flood the fuzzer's output: errors only.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  stdit::set_log_level(stdit::LogLevel::Quiet);
  return 0;
}
