// The device's own view of its memory: cudaMemGetInfo sampled on a background thread.
#pragma once
#include <atomic>
#include <chrono>
#include <cstddef>
#include <thread>

namespace stdit {

// Samples total - free of one device every `period` (so the CUDA context, library workspaces,
// the stream-ordered pool's slack and anything else on the device count, as nvidia-smi shows);
// peak() is the largest sample so far, including one taken at the call. Peaks shorter than the
// period can be missed; the pool keeps freed blocks, so stdit's own peaks stay visible.
class DeviceMemoryMonitor {
 public:
  explicit DeviceMemoryMonitor(int device, std::chrono::milliseconds period = std::chrono::milliseconds(5));
  ~DeviceMemoryMonitor();
  DeviceMemoryMonitor(const DeviceMemoryMonitor&) = delete;
  DeviceMemoryMonitor& operator=(const DeviceMemoryMonitor&) = delete;
  size_t peak() const;

 private:
  void sample() const;          // from any thread (restores the caller's device)
  void record_current() const;  // on a thread already bound to the device
  int device_;
  std::chrono::milliseconds period_;
  mutable std::atomic<size_t> peak_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace stdit
