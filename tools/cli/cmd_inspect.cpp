// `stdit inspect FILE`: the tensors and metadata of a safetensors file.
#include <cstdio>

#include "commands.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace stdit::cli {

void add_inspect(CLI::App& app, Action& action) {
  auto* cmd = app.add_subcommand("inspect", "List the tensors (and metadata) of a safetensors or PyTorch .bin file");
  auto path = std::make_shared<std::string>();
  cmd->add_option("FILE", *path, "A .safetensors or .bin file")->required();
  cmd->callback([&action, path] {
    action = [path] {
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
