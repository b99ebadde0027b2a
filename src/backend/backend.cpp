#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"
#ifdef STDIT_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace stdit {

std::vector<std::string> backend_names() {
#ifdef STDIT_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>();
#ifdef STDIT_HAVE_CUDA
  if (name == "cuda") return make_cuda_backend(0);
#endif
  std::string avail;
  for (const auto& n : backend_names()) avail += (avail.empty() ? "" : ", ") + n;
  fail("unknown backend '", name, "' (available in this build: ", avail, ")");
}

}  // namespace stdit
