// T5 tokenizer (assets/t5/spiece.model) on arbitrary bytes; the first byte picks max_length.
#include "fuzz_common.h"
#include "text/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const stdit::T5Tokenizer tok(stdit::default_spiece_model());
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  const int max_length = data[0] % 64 == 0 ? 300 : data[0] % 64;
  fuzz::expect_stdit_error_only([&] {
    stdit::Tokens t = tok.encode(text, max_length);
    if (static_cast<int>(t.ids.size()) != max_length || t.mask.size() != t.ids.size()) {
      std::fprintf(stderr, "FINDING: encode returned %zu ids for max_length %d\n", t.ids.size(), max_length);
      std::abort();
    }
  });
  return 0;
}
