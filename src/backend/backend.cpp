#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "core/error.h"

namespace stdit {

std::vector<std::string> backend_names() { return {"cpu"}; }

std::unique_ptr<Backend> make_backend(const std::string& name) {
  if (name == "cpu") return std::make_unique<CpuBackend>();
  std::string avail;
  for (const auto& n : backend_names()) avail += (avail.empty() ? "" : ", ") + n;
  fail("unknown backend '", name, "' (available in this build: ", avail, ")");
}

}  // namespace stdit
