#include "backend/cuda/device_memory.h"

#include <cuda_runtime_api.h>

namespace stdit {

DeviceMemoryMonitor::DeviceMemoryMonitor(int device, std::chrono::milliseconds period)
    : device_(device), period_(period) {
  sample();
  thread_ = std::thread([this] {
    if (cudaSetDevice(device_) != cudaSuccess) return;  // this thread stays on the device
    while (!stop_.load()) {
      record_current();
      std::this_thread::sleep_for(period_);
    }
  });
}

DeviceMemoryMonitor::~DeviceMemoryMonitor() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void DeviceMemoryMonitor::record_current() const {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return;
  const size_t used = total - free;
  size_t p = peak_.load();
  while (used > p && !peak_.compare_exchange_weak(p, used)) {
  }
}

void DeviceMemoryMonitor::sample() const {
  // From any thread: switch to the device for the reading, then back to the caller's.
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) return;
  if (current != device_ && cudaSetDevice(device_) != cudaSuccess) return;
  record_current();
  if (current != device_) cudaSetDevice(current);
}

size_t DeviceMemoryMonitor::peak() const {
  sample();
  return peak_.load();
}

}  // namespace stdit
