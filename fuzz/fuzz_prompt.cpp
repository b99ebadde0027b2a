// Prompt preparation: append_scores + clean_caption (with and without ftfy) + prepare_prompt on
// arbitrary bytes, including invalid UTF-8. The first 3 bytes drive the optional scores.
#include "fuzz_common.h"
#include "text/prompt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  stdit::PromptScores s;
  if (data[0] & 1) s.aes = (data[0] >> 1) / 12.7 - 1.0;
  if (data[1] & 1) s.flow = (data[1] >> 1) * 1.9 - 3.0;
  if (data[2] & 1) {
    const auto& m = stdit::camera_motions();
    const size_t i = data[2] >> 1;
    s.camera_motion = i < m.size() ? m[i] : std::string("bogus") + char(data[2]);
  }
  const std::string text(reinterpret_cast<const char*>(data + 3), size - 3);
  fuzz::expect_stdit_error_only([&] { (void)stdit::clean_caption(text, (data[0] & 2) != 0); });
  fuzz::expect_stdit_error_only([&] { (void)stdit::append_scores(text, s); });
  fuzz::expect_stdit_error_only([&] { (void)stdit::prepare_prompt(text, s); });
  return 0;
}
