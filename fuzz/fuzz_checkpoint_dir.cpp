// Hugging Face model directories (open_model_weights): shard index JSON + shard files.
// Input: parts separated by "\n@@@@\n". Part 0 picks the layout by its first byte and the rest of
// it is the index JSON (or the single weights file); parts 1.. become shard files named
// model-0000k-of-0000n.safetensors or pytorch_model-0000k-of-0000n.bin.
#include <cstdio>

#include "fuzz_common.h"
#include "core/fp8.h"
#include "io/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const auto parts = fuzz::split(data, size, "\n@@@@\n");
  if (parts.size() > 8) return 0;
  const auto dir = fuzz::scratch_dir("ckpt");
  const int layout = parts[0].empty() ? 0 : static_cast<uint8_t>(parts[0][0]) % 4;
  const std::string_view head = parts[0].empty() ? parts[0] : parts[0].substr(1);
  static const char* names[4] = {"model.safetensors.index.json", "pytorch_model.bin.index.json",
                                 "model.safetensors", "pytorch_model.bin"};
  fuzz::write_file(dir / names[layout], reinterpret_cast<const uint8_t*>(head.data()), head.size());
  const size_t n = parts.size() - 1;
  for (size_t k = 1; k < parts.size(); ++k) {
    char name[96];
    if (layout == 1)
      std::snprintf(name, sizeof name, "pytorch_model-%05zu-of-%05zu.bin", k, n);
    else
      std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", k, n);
    fuzz::write_file(dir / name, reinterpret_cast<const uint8_t*>(parts[k].data()), parts[k].size());
  }
  fuzz::expect_stdit_error_only([&] {
    auto src = stdit::open_model_weights(dir.string(), "--fuzz");
    for (const auto& e : src->entries()) {
      if (stdit::shape_numel(e.shape) > (4 << 20)) continue;
      stdit::Tensor t = src->get(e.name).contiguous();
      fuzz::touch(t.raw(), t.nbytes());
    }
    // The strict load of a model with one quantizable weight: FP8 needs its row scales.
    const std::vector<stdit::ParamSpec> specs = {{"q", {2, 2}, false, "qkv"}, {"a", {2}, true}};
    const stdit::WeightMap w = stdit::load_checked(*src, specs, "--fuzz");
    if (w.count("q") && w.at("q").dtype() == stdit::DType::F8_E4M3) {
      const stdit::Tensor d = stdit::dequantize_rows_e4m3(w.at("q"), w.at("q").scales());
      fuzz::touch(d.raw(), d.nbytes());
    }
  });
  return 0;
}
