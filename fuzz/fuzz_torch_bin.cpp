// PyTorch zip container (ZipArchive) + restricted unpickler (TorchBinFile::parse) + get.
#include "fuzz_common.h"
#include "io/torch_bin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_stdit_error_only([&] {
    auto f = stdit::TorchBinFile::parse("fuzz.bin", data, size, nullptr);
    for (const auto& e : f->entries()) {
      if (stdit::shape_numel(e.shape) > (4 << 20)) continue;  // a valid but big tensor: skip the copy
      stdit::Tensor t = f->get(e.name).contiguous();
      fuzz::touch(t.raw(), t.nbytes());
    }
  });
  return 0;
}
