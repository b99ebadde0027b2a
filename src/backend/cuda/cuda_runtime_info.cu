// Placeholder translation unit of the CUDA backend: proves the .cu toolchain and the CUDA link
// line work in every build. The CUDA backend itself lands with the CUDA issue.
#include <cuda_runtime.h>

namespace stdit {

// Number of visible CUDA devices; 0 when there is no driver or no device.
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) return 0;
  return n;
}

}  // namespace stdit
