// FNV-1a, 64 bit: the project's one non-cryptographic hash (synthetic weights' per-name seeds,
// engine identities, the rank files' shard_set id).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace stdit {

struct Fnv1a64 {
  // The standard offset basis. Engine identities and shard_set ids start from kIdBasis instead
  // (the standard basis' decimal digits less the last, as they were first written); kept so that
  // the ids in records and rank files written before stay what they are.
  static constexpr uint64_t kBasis = 0xcbf29ce484222325ull, kIdBasis = 1469598103934665603ull;
  explicit Fnv1a64(uint64_t basis = kBasis) : h(basis) {}
  uint64_t h;
  void add(uint64_t v) { h = (h ^ v) * 0x100000001b3ull; }  // one byte, or a whole 64-bit word
  void add_bytes(const std::string& s) {
    for (const unsigned char c : s) add(c);
  }
  std::string hex() const {  // 16 lowercase hex digits
    char buf[20];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return buf;
  }
};

inline uint64_t fnv1a64(const std::string& s) {
  Fnv1a64 f;
  f.add_bytes(s);
  return f.h;
}

}  // namespace stdit
