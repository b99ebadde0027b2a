// safetensors files: a validating mmap reader and an atomic writer.
//
// Format: 8-byte little-endian header length N, N bytes of JSON object
//   {"__metadata__": {str: str}, name: {"dtype": "F32", "shape": [..], "data_offsets": [b, e]}, ...}
// then the data section; offsets are relative to its start. See docs/FORMATS.md.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"
#include "io/tensor_source.h"

namespace stdit {

struct TensorInfo {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets inside the data section
};

class SafetensorsFile final : public TensorSource {
 public:
  // Maps and validates the file. Every malformed file raises one Error naming the file.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  // Validates an in-memory image of a file (used by open and by tests/fuzzers). `bytes` must stay
  // alive as long as the returned object; `owner` keeps it so.
  static std::shared_ptr<SafetensorsFile> parse(const std::string& label, const uint8_t* bytes,
                                                size_t size, std::shared_ptr<void> owner);

  const std::string& path() const override { return path_; }
  std::vector<TensorEntry> entries() const override;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data-offset order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  bool contains(const std::string& name) const override { return find(name) != nullptr; }
  // CPU tensor of `name`, a view into the mapping (an aligned copy if the bytes are misaligned).
  Tensor get(const std::string& name) const override;
  size_t file_size() const { return size_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;  // start of the data section
  size_t size_ = 0;
  std::shared_ptr<void> owner_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Writes CPU tensors (any strides) to `path` through a temporary file + rename, so a failure never
// leaves a partial file under the final name.
void write_safetensors(const std::string& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Streaming writer: the header is planned from names/dtypes/shapes, then `produce(i)` is called
// for each tensor in order and its bytes written, so peak memory is one tensor. `produce` must
// return a CPU tensor of exactly the planned dtype and shape. Temporary file + rename, as above.
struct PlannedTensor {
  std::string name;
  DType dtype;
  Shape shape;
};
void write_safetensors_streaming(const std::string& path, const std::vector<PlannedTensor>& plan,
                                 const std::function<Tensor(size_t)>& produce,
                                 const std::map<std::string, std::string>& metadata = {});

// The largest header we accept (same bound as the reference implementation).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

// A file's header alone (its JSON text), read without mapping or checking the data section: for
// identities and metadata of files whose data another process reads. Errors name the file.
std::string read_safetensors_header(const std::string& path);
// The header's "__metadata__" strings (empty when it has none).
std::map<std::string, std::string> read_safetensors_metadata(const std::string& path);

}  // namespace stdit
