// Tensor: a typed, shaped, strided view of a storage block that lives on one device.
//
// A Tensor is cheap to copy (it shares its storage). Views (view, permute, select, slice) share the
// storage and change shape/strides/offset only. Strides are counted in elements, PyTorch-style.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace stdit {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);           // "[2, 4, 3]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

enum class DeviceKind : uint8_t { CPU, CUDA };
struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  bool operator==(const Device&) const = default;
};

// A block of bytes plus whatever keeps it alive (a malloc'd buffer, an mmap, a device allocation).
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::shared_ptr<void> owner;  // releases the memory when the last Tensor goes
};

class Tensor {
 public:
  Tensor() = default;

  // New zero-filled contiguous CPU tensor.
  static Tensor zeros(const Shape& shape, DType dtype);
  // New uninitialised contiguous CPU tensor (64-byte aligned).
  static Tensor empty(const Shape& shape, DType dtype);
  // Wraps memory owned elsewhere; `owner` keeps it alive.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                          Device device = {});
  // CPU tensor holding a copy of `values`.
  static Tensor from_f32(const Shape& shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : Device{}; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return static_cast<int>(shape_.size()); }
  int64_t size(int d) const;     // negative d counts from the end
  int64_t stride(int d) const;
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* raw() const;  // address of element 0
  template <typename T>
  T* data() const { return static_cast<T*>(raw()); }

  // --- views (no copy) ---
  Tensor view(const Shape& shape) const;            // needs contiguous; one -1 allowed
  Tensor permute(const std::vector<int>& dims) const;
  Tensor select(int d, int64_t index) const;        // drops dimension d
  Tensor slice(int d, int64_t begin, int64_t end) const;

  // --- CPU copies ---
  Tensor contiguous() const;             // same dtype, packed (returns *this if already packed)
  // CPU, contiguous, converted (f32/f16/bf16 exact rules). May return *this (same storage) when
  // nothing needs converting, which can be a read-only file mapping: use clone() to write.
  Tensor to(DType dtype) const;
  Tensor clone() const;                  // CPU, contiguous, always a fresh writable copy

  const std::shared_ptr<Storage>& storage() const { return storage_; }
  int64_t offset() const { return offset_; }

  // --- quantized tensors ---
  // An FP8 (or other quantized) matrix carries its per-row dequantization scales, as PyTorch's
  // per-channel quantized tensors do: value[r, :] = code[r, :] * scales()[r] (core/fp8.h). Views
  // keep them (only whole matrices are ever quantized); new copies (clone, to) drop them.
  Tensor with_scales(const Tensor& scales) const;
  const Tensor& scales() const;  // undefined for a plain tensor

 private:
  std::shared_ptr<Storage> storage_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::F32;
  Shape shape_, strides_;
  std::shared_ptr<const Tensor> scales_;
};

// Calls fn(flat_index, element_offset) for every element of shape/strides in row-major order.
void for_each_offset(const Shape& shape, const Shape& strides,
                     const std::function<void(int64_t, int64_t)>& fn);

// Normwise relative error ||a - b|| / ||b|| (both read as f64; NaN anywhere gives +inf).
double rel_error(const Tensor& a, const Tensor& b);

}  // namespace stdit
