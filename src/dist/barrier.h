// A reusable barrier for the n threads (ranks) of one group, which an abort releases: every
// waiting and later arrival then fails with one message instead of hanging.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>

#include "core/error.h"

namespace stdit {

class GroupBarrier {
 public:
  explicit GroupBarrier(int n) : n_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    STDIT_CHECK(!aborted_, "tensor parallel: another rank failed; this rank stops");
    const uint64_t gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    STDIT_CHECK(!aborted_, "tensor parallel: another rank failed; this rank stops");
  }
  void abort() {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  const int n_;
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  uint64_t generation_ = 0;
  bool aborted_ = false;
};

}  // namespace stdit
