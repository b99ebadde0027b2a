#include "backend/cuda/device_memory.h"

#include <cuda_runtime_api.h>

namespace stdit {

DeviceMemoryMonitor::DeviceMemoryMonitor(int device, std::chrono::milliseconds period)
    : device_(device), period_(period) {
  sample();
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      sample();
      std::this_thread::sleep_for(period_);
    }
  });
}

DeviceMemoryMonitor::~DeviceMemoryMonitor() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
}

void DeviceMemoryMonitor::sample() const {
  // The sampling thread binds itself once; the calling thread (peak()) keeps its own device.
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) return;
  if (current != device_ && cudaSetDevice(device_) != cudaSuccess) return;
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) == cudaSuccess) {
    const size_t used = total - free;
    size_t p = peak_.load();
    while (used > p && !peak_.compare_exchange_weak(p, used)) {
    }
  }
  if (current != device_) cudaSetDevice(current);
}

size_t DeviceMemoryMonitor::peak() const {
  sample();
  return peak_.load();
}

}  // namespace stdit
