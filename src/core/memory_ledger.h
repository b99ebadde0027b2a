// Bytes held by a backend's allocations: now, and the peak since the last reset (thread-safe).
// The CPU backend counts its tensors with it and the dry run (backend/dry_run.h) counts the
// tensors it pretends to allocate, so the two can be compared call for call.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>

namespace stdit {

class MemoryLedger {
 public:
  // An owner for a tensor's storage: counts `bytes` while it lives and keeps `inner` alive.
  std::shared_ptr<void> hold(size_t bytes, std::shared_ptr<void> inner = {}) {
    raise(s_->now.fetch_add(bytes) + bytes);
    std::shared_ptr<State> s = s_;
    return std::shared_ptr<void>(new char(0), [s, bytes, inner](void* p) {
      delete static_cast<char*>(p);
      s->now.fetch_sub(bytes);
    });
  }
  // Memory an operation takes for itself while it runs (freed when it returns): counted in the
  // peak on top of what is held now.
  void transient(size_t bytes) { raise(s_->now.load() + bytes); }
  size_t now() const { return s_->now.load(); }
  size_t peak() const { return s_->peak.load(); }
  // The peak starts again from what is held now.
  void reset_peak() { s_->peak.store(s_->now.load()); }

 private:
  struct State {
    std::atomic<size_t> now{0}, peak{0};
  };
  void raise(size_t v) {
    size_t p = s_->peak.load();
    while (v > p && !s_->peak.compare_exchange_weak(p, v)) {
    }
  }
  std::shared_ptr<State> s_ = std::make_shared<State>();
};

}  // namespace stdit
