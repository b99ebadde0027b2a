// Our wrappers around libpng / libav: read_image, read_video, read_png_text and the run record
// reader behind `generate --from` on arbitrary file bytes. The first byte picks the reader and
// file extension. libav/libpng themselves are not
// instrumented (system libraries); our code around them is.
#include "fuzz_common.h"
#include "media/image_io.h"
#include "media/video_io.h"
#include "pipeline/run_record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  static const char* ext[4] = {"png", "jpg", "mp4", "gif"};
  const int k = data[0] % 4;
  const auto dir = fuzz::scratch_dir("media");
  const auto path = dir / (std::string("in.") + ext[k]);
  fuzz::write_file(path, data + 1, size - 1);
  fuzz::expect_stdit_error_only([&] {
    if (data[0] & 8) {
      auto r = stdit::read_run_record(path.string());  // mp4 tags / PNG text / safetensors metadata
      (void)r;
    } else if (data[0] & 16) {
      auto t = stdit::read_png_text(path.string());
      (void)t;
    } else if (data[0] & 4) {
      auto f = stdit::read_video(path.string(), 3);
      (void)f;
    } else {
      auto f = stdit::read_image(path.string());
      (void)f;
    }
  });
  return 0;
}
