// Safetensors header + tensor-table parser (SafetensorsFile::parse) and tensor views (get).
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_stdit_error_only([&] {
    auto f = stdit::SafetensorsFile::parse("fuzz.safetensors", data, size, nullptr);
    for (const auto& e : f->entries()) {
      stdit::Tensor t = f->get(e.name);
      if (t.nbytes() <= (16u << 20)) fuzz::touch(t.raw(), t.nbytes());
    }
    for (const auto& [k, v] : f->metadata()) fuzz::touch(v.data(), v.size());
  });
  return 0;
}
