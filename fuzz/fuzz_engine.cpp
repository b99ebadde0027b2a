// The engine-directory loader (open_engine): config.json text of an engine directory; byte 0's
// low bits choose which of the component files exist.
#include "fuzz_common.h"
#include "pipeline/engine.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  namespace fs = std::filesystem;
  const auto dir = fuzz::scratch_dir("engine");
  fuzz::write_file(dir / "config.json", data + 1, size - 1);
  const char* files[7] = {"dit/config.json", "dit/model.safetensors", "t5/config.json",
                          "t5/model.safetensors", "t5/spiece.model", "vae/config.json",
                          "vae/model.safetensors"};
  for (int i = 0; i < 7; ++i) {
    if (data[0] == 0xff || (i < 7 && !(data[0] >> (i % 8) & 1))) {
      fs::create_directories((dir / files[i]).parent_path());
      fuzz::write_file(dir / files[i], nullptr, 0);
    }
  }
  fuzz::expect_stdit_error_only([&] { (void)stdit::open_engine(dir.string()); });
  return 0;
}
