// CUDA runtime queries that need no backend object. Compiled into stdit_core by the top-level
// CMakeLists.txt in every CUDA build (plain C++17, no project headers beyond <string>).
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace stdit {

// Number of visible CUDA devices; 0 when there is no driver or no device.
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

// Why device `device` cannot be used ("no usable CUDA device (...)", "device 2 requested, 1
// visible"); "" when it can be opened.
std::string cuda_device_problem(int device) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    return std::string("no usable CUDA device (") + (e == cudaSuccess ? "none found" : cudaGetErrorString(e)) + ")";
  }
  if (device < 0 || device >= n)
    return "device " + std::to_string(device) + " requested, " + std::to_string(n) + " visible";
  return "";
}

// Compute capability as 10 * major + minor (90 for H100/H200); 0 when it cannot be queried.
int cuda_device_sm(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return 10 * p.major + p.minor;
}

// "NVIDIA H100 80GB HBM3, sm_90, 132 SMs, 79.1 GiB" or "" when the device cannot be queried.
std::string cuda_device_description(int device) {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, sm_%d%d, %d SMs, %.1f GiB, driver %d.%d, runtime %d.%d",
                p.name, p.major, p.minor, p.multiProcessorCount,
                static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), driver / 1000,
                (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10);
  return buf;
}

}  // namespace stdit
