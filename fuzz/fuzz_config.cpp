// config.json parsing into model configs. The first byte picks the parser; the rest is the text.
#include "fuzz_common.h"
#include "io/config_json.h"
#include "models/stdit3/config.h"
#include "models/vae/config.h"
#include "text/t5.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  fuzz::expect_stdit_error_only([&] {
    switch (data[0] % 4) {
      case 0: (void)stdit::parse_stdit3_config(text, "fuzz/config.json"); break;
      case 1: (void)stdit::parse_t5_config(text, "fuzz/config.json"); break;
      case 2: (void)stdit::parse_vae_config(text, "fuzz/config.json"); break;
      default: {
        auto j = stdit::parse_json_object(text, "fuzz/config.json");
        (void)stdit::json_int(j, "hidden_size", 1, "fuzz", -5, 1 << 20);
        (void)stdit::json_bool(j, "enable_flash_attn", false, "fuzz");
      }
    }
  });
  return 0;
}
