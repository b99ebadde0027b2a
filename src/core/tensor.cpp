#include "core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <sstream>

#include "core/error.h"

namespace stdit {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype) {
  for (int64_t d : shape) STDIT_CHECK(d >= 0, "negative dimension in shape ", shape_str(shape));
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  STDIT_CHECK(p || rounded == 0, "out of host memory allocating ", bytes, " bytes");
  std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
  return from_blob(p, shape, dtype, std::move(owner));
}

Tensor Tensor::zeros(const Shape& shape, DType dtype) {
  Tensor t = empty(shape, dtype);
  if (t.nbytes()) std::memset(t.raw(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> owner,
                         Device device) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>();
  t.storage_->data = data;
  t.storage_->bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  t.storage_->device = device;
  t.storage_->owner = std::move(owner);
  t.dtype_ = dtype;
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  return t;
}

Tensor Tensor::from_f32(const Shape& shape, const std::vector<float>& values) {
  STDIT_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_f32: ",
              values.size(), " values for shape ", shape_str(shape));
  Tensor t = empty(shape, DType::F32);
  if (!values.empty()) std::memcpy(t.raw(), values.data(), values.size() * 4);
  return t;
}

static int wrap_dim(int d, int n) {
  const int w = d < 0 ? d + n : d;
  STDIT_CHECK(w >= 0 && w < n, "dimension ", d, " out of range for a ", n, "-d tensor");
  return w;
}

int64_t Tensor::size(int d) const { return shape_[wrap_dim(d, dim())]; }
int64_t Tensor::stride(int d) const { return strides_[wrap_dim(d, dim())]; }

bool Tensor::is_contiguous() const {
  int64_t acc = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

void* Tensor::raw() const {
  STDIT_CHECK(storage_, "internal: use of an undefined tensor");
  return static_cast<uint8_t*>(storage_->data) + offset_ * static_cast<int64_t>(dtype_size(dtype_));
}

Tensor Tensor::with_scales(const Tensor& scales) const {
  Tensor t = *this;
  t.scales_ = scales.defined() ? std::make_shared<const Tensor>(scales) : nullptr;
  return t;
}

const Tensor& Tensor::scales() const {
  static const Tensor none;
  return scales_ ? *scales_ : none;
}

Tensor Tensor::view(const Shape& shape) const {
  STDIT_CHECK(is_contiguous(), "internal: view() of a non-contiguous tensor ", shape_str(shape_));
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      STDIT_CHECK(infer < 0, "internal: view() with two -1");
      infer = static_cast<int>(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) s[infer] = known ? numel() / known : 0;
  STDIT_CHECK(shape_numel(s) == numel(), "internal: cannot view ", shape_str(shape_), " as ",
              shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  STDIT_CHECK(static_cast<int>(dims.size()) == dim(), "internal: permute rank mismatch");
  Tensor t = *this;
  std::vector<bool> seen(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    const int d = wrap_dim(dims[i], dim());
    STDIT_CHECK(!seen[d], "internal: permute repeats a dimension");
    seen[d] = true;
    t.shape_[i] = shape_[d];
    t.strides_[i] = strides_[d];
  }
  return t;
}

Tensor Tensor::select(int d, int64_t index) const {
  d = wrap_dim(d, dim());
  STDIT_CHECK(index >= 0 && index < shape_[d], "internal: select index ", index, " out of ",
              shape_[d]);
  Tensor t = *this;
  t.offset_ += index * strides_[d];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

Tensor Tensor::slice(int d, int64_t begin, int64_t end) const {
  d = wrap_dim(d, dim());
  STDIT_CHECK(0 <= begin && begin <= end && end <= shape_[d], "internal: slice [", begin, ", ",
              end, ") out of ", shape_[d]);
  Tensor t = *this;
  t.offset_ += begin * strides_[d];
  t.shape_[d] = end - begin;
  return t;
}

void for_each_offset(const Shape& shape, const Shape& strides,
                     const std::function<void(int64_t, int64_t)>& fn) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const int r = static_cast<int>(shape.size());
  std::vector<int64_t> idx(r, 0);
  int64_t off = 0;
  for (int64_t flat = 0; flat < n; ++flat) {
    fn(flat, off);
    for (int d = r - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) {
        off += strides[d];
        break;
      }
      off -= strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

Tensor Tensor::contiguous() const {
  STDIT_CHECK(device().kind == DeviceKind::CPU, "internal: contiguous() of a device tensor");
  if (is_contiguous()) return *this;
  Tensor out = empty(shape_, dtype_);
  const size_t es = dtype_size(dtype_);
  const auto* src = static_cast<const uint8_t*>(raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for_each_offset(shape_, strides_, [&](int64_t flat, int64_t off) {
    std::memcpy(dst + flat * es, src + off * static_cast<int64_t>(es), es);
  });
  return out;
}

Tensor Tensor::clone() const {
  const Tensor c = contiguous();
  Tensor out = empty(shape_, dtype_);
  if (out.nbytes()) std::memcpy(out.raw(), c.raw(), out.nbytes());
  return out;
}

Tensor Tensor::to(DType target) const {
  Tensor src = contiguous();
  if (target == dtype_) return src;
  Tensor out = empty(shape_, target);
  const int64_t n = numel();
  const void* s = src.raw();
  void* d = out.raw();
  // Element i's conversion; an unsupported pair fails on the first element, before the threads
  // (a model's weights are converted at load: 1.2 billion elements for the denoiser's fp8 codes).
  auto convert = [&](int64_t i) {
    // Float -> float keeps exact rounding rules; everything passes through f64, which is exact for
    // every value of the narrower formats and for integers up to 2^53.
    float f;
    switch (dtype_) {
      case DType::F32: std::memcpy(&f, static_cast<const float*>(s) + i, 4); break;
      default: f = static_cast<float>(load_as_double(s, dtype_, i)); break;
    }
    switch (target) {
      case DType::F32:
        if (dtype_ == DType::F64)
          static_cast<float*>(d)[i] = static_cast<float>(load_as_double(s, dtype_, i));
        else
          static_cast<float*>(d)[i] = f;
        break;
      case DType::BF16: static_cast<uint16_t*>(d)[i] = f32_to_bf16(f); break;
      case DType::F16: static_cast<uint16_t*>(d)[i] = f32_to_f16(f); break;
      case DType::F8_E4M3: static_cast<uint8_t*>(d)[i] = f32_to_f8e4m3(f); break;
      case DType::I64: static_cast<int64_t*>(d)[i] = static_cast<int64_t>(load_as_double(s, dtype_, i)); break;
      case DType::I32: static_cast<int32_t*>(d)[i] = static_cast<int32_t>(load_as_double(s, dtype_, i)); break;
      case DType::U8: static_cast<uint8_t*>(d)[i] = static_cast<uint8_t>(load_as_double(s, dtype_, i)); break;
      case DType::BOOL: static_cast<uint8_t*>(d)[i] = load_as_double(s, dtype_, i) != 0.0; break;
      default: fail("conversion to ", dtype_name(target), " is not supported");
    }
  };
  if (n == 0) return out;
  if (dtype_ == DType::BF16 && target == DType::F32) {  // the common case, exact: the high half of an f32
    const uint16_t* b = static_cast<const uint16_t*>(s);
    uint32_t* o = static_cast<uint32_t*>(d);
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 18))
    for (int64_t i = 0; i < n; ++i) o[i] = uint32_t{b[i]} << 16;
    return out;
  }
  convert(0);
#pragma omp parallel for schedule(static) if (n > (int64_t{1} << 18))
  for (int64_t i = 1; i < n; ++i) convert(i);
  return out;
}

double rel_error(const Tensor& a, const Tensor& b) {
  STDIT_CHECK(a.shape() == b.shape(), "rel_error: shapes ", shape_str(a.shape()), " and ",
              shape_str(b.shape()));
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  double num = 0, den = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double x = load_as_double(ac.raw(), ac.dtype(), i);
    const double y = load_as_double(bc.raw(), bc.dtype(), i);
    if (std::isnan(x) || std::isnan(y)) return std::numeric_limits<double>::infinity();
    num += (x - y) * (x - y);
    den += y * y;
  }
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(num / den);
}

}  // namespace stdit
