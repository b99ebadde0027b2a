// `stdit inspect FILE`: the tensors and metadata of a safetensors / .bin file, or the size, frames
// and metadata (the stdit record among them) of an mp4 / PNG.
#include <cstdio>
#include <fstream>

#include "commands.h"
#include "core/error.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#ifdef STDIT_HAVE_MEDIA
#include "media/image_io.h"
#include "media/video_io.h"
#endif

namespace stdit::cli {

namespace {

// mp4 / PNG: what the file shows and the metadata it carries. False for other files.
bool inspect_media(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char m[8] = {};
  in.read(m, 8);
  const bool png = in.gcount() == 8 && std::string(m, 8) == std::string("\x89PNG\r\n\x1a\n", 8);
  const bool mp4 = in.gcount() == 8 && std::string(m + 4, 4) == "ftyp";
  if (!png && !mp4) return false;
#ifdef STDIT_HAVE_MEDIA
  const Frames f = png ? read_image(path) : read_video(path);
  if (png) std::printf("%s: PNG image, %dx%d px\n", path.c_str(), f.width, f.height);
  else std::printf("%s: video, %dx%d px, %d frames at %g fps\n", path.c_str(), f.width, f.height, f.count, f.fps);
  for (const auto& [k, v] : png ? read_png_text(path) : read_media_tags(path))
    std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
  return true;
#else
  throw Error(path + ": reading mp4 / PNG files needs a build with media libraries (STDIT_MEDIA=ON)");
#endif
}

}  // namespace

void add_inspect(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("inspect", "List the tensors (and metadata) of a safetensors or PyTorch .bin file, "
                                            "or the size, frames and metadata of an mp4 / PNG");
  auto path = std::make_shared<std::string>();
  cmd->add_option("FILE", *path, "A .safetensors, .bin, .mp4 or .png file")->required();
  cmd->callback([&action, path] {
    action = [path] {
      if (inspect_media(*path)) return;
      const auto src = open_tensor_file(*path);
      const auto* f = dynamic_cast<const SafetensorsFile*>(src.get());
      if (!f) {
        const auto entries = src->entries();
        std::printf("%s: %zu tensors (PyTorch checkpoint)\n", path->c_str(), entries.size());
        for (const auto& e : entries)
          std::printf("  %-40s %-7s %s\n", e.name.c_str(), dtype_name(e.dtype), shape_str(e.shape).c_str());
        return;
      }
      std::printf("%s: %zu tensors, %zu bytes\n", path->c_str(), f->tensors().size(), f->file_size());
      for (const auto& [k, v] : f->metadata()) std::printf("  metadata %s = %s\n", k.c_str(), v.c_str());
      uint64_t total = 0;
      size_t width = 4;
      for (const auto& t : f->tensors()) width = std::max(width, t.name.size());
      for (const auto& t : f->tensors()) {
        std::printf("  %-*s  %-7s %-22s %llu bytes\n", static_cast<int>(width), t.name.c_str(),
                    dtype_name(t.dtype), shape_str(t.shape).c_str(),
                    static_cast<unsigned long long>(t.end - t.begin));
        total += t.end - t.begin;
      }
      std::printf("  total %llu data bytes\n", static_cast<unsigned long long>(total));
    };
  });
}

}  // namespace stdit::cli
