// A file (or set of shards) that holds named tensors: safetensors, PyTorch .bin, sharded indexes.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"

namespace stdit {

struct TensorEntry {
  std::string name;
  DType dtype;
  Shape shape;
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual const std::string& path() const = 0;
  virtual std::vector<TensorEntry> entries() const = 0;
  virtual bool contains(const std::string& name) const = 0;
  // CPU tensor; a view into the mapped file where possible.
  virtual Tensor get(const std::string& name) const = 0;
};

}  // namespace stdit
