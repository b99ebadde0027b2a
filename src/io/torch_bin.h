// PyTorch `.bin` checkpoints (torch.save of a state_dict, zip format) read WITHOUT executing
// anything: a restricted unpickler that knows only the opcodes and globals a state_dict of tensors
// uses. Any other global, or a call of anything but tensor rebuilding, is refused.
#pragma once
#include <map>
#include <memory>

#include "io/tensor_source.h"
#include "io/zip.h"

namespace stdit {

class TorchBinFile final : public TensorSource {
 public:
  static std::shared_ptr<TorchBinFile> open(const std::string& path);
  static std::shared_ptr<TorchBinFile> parse(const std::string& label, const uint8_t* bytes,
                                             size_t size, std::shared_ptr<void> owner);

  const std::string& path() const override { return path_; }
  std::vector<TensorEntry> entries() const override;
  bool contains(const std::string& name) const override { return tensors_.count(name) != 0; }
  Tensor get(const std::string& name) const override;

  struct TensorRef {
    DType dtype;
    std::string storage_key;
    uint64_t storage_numel = 0;
    int64_t offset = 0;
    Shape shape, strides;
  };

 private:
  std::string path_;
  std::shared_ptr<void> owner_;
  std::unique_ptr<ZipArchive> zip_;
  std::string prefix_;  // "archive/" or whatever directory holds data.pkl
  std::map<std::string, TensorRef> tensors_;
  std::vector<std::string> order_;
};

// Limits of the unpickler (documented in docs/FORMATS.md).
constexpr size_t kPickleMaxStack = 1u << 20;
constexpr size_t kPickleMaxMemo = 1u << 22;
constexpr int kPickleMaxDepth = 64;
constexpr size_t kPickleMaxValues = 1u << 22;  // values built in all (bounds memory)

}  // namespace stdit
