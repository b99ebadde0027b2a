// Safetensors header + tensor-table parser (SafetensorsFile::parse), tensor views (get) and the
// float decoders (small float tensors converted to F32).
#include "fuzz_common.h"
#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_stdit_error_only([&] {
    auto f = stdit::SafetensorsFile::parse("fuzz.safetensors", data, size, nullptr);
    for (const auto& e : f->entries()) {
      stdit::Tensor t = f->get(e.name);
      if (t.nbytes() <= (16u << 20)) fuzz::touch(t.raw(), t.nbytes());
      // Float tensors read as F32 (every decoder: F16, BF16, F8_E4M3, ...) when small.
      if (stdit::is_float(t.dtype()) && t.numel() <= (1 << 16)) {
        const stdit::Tensor f32 = t.to(stdit::DType::F32);
        fuzz::touch(f32.raw(), f32.nbytes());
      }
    }
    for (const auto& [k, v] : f->metadata()) fuzz::touch(v.data(), v.size());
  });
  return 0;
}
