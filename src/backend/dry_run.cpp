#include "backend/dry_run.h"

#include <algorithm>

#include "core/error.h"

namespace stdit {

DryRunBackend::DryRunBackend(const Backend& target)
    : target_(target),
      target_name_(target.name()),
      device_(target.device()),
      policy_(target.policy()),
      matmul_(target.matmul_dtype()) {}

Tensor DryRunBackend::alloc(const Shape& shape, DType dtype) {
  for (int64_t d : shape) STDIT_CHECK(d >= 0, "dry run alloc: negative dimension in ", shape_str(shape));
  const size_t bytes = static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype);
  return Tensor::from_blob(nullptr, shape, dtype, ledger_.hold(bytes), device_);
}

Tensor DryRunBackend::upload(const Tensor& host) {
  STDIT_CHECK(host.defined(), "dry run upload: tensor is missing");
  return alloc(host.shape(), is_float(host.dtype()) ? DType::F32 : host.dtype());
}

Tensor DryRunBackend::upload_weight(const Tensor& host) {
  STDIT_CHECK(host.defined(), "dry run upload: tensor is missing");
  if (host.dtype() == DType::F8_E4M3) {
    // CUDA keeps the codes; the CPU backend their values in F32. Both keep the row scales.
    const Tensor codes = alloc(host.shape(), device_.kind == DeviceKind::CUDA ? DType::F8_E4M3 : DType::F32);
    return codes.with_scales(upload(host.scales()));
  }
  return is_float(host.dtype()) ? alloc(host.shape(), matmul_) : upload(host);
}

void DryRunBackend::layernorm_modulate(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                       const FrameSelect&, float, Tensor& out) {
  if (out.dtype() == DType::F8_E4M3) {  // one scale per row of [B, N, C]
    int64_t rows = 1;
    for (int d = 0; d + 1 < out.dim(); ++d) rows *= out.size(d);
    out = out.with_scales(alloc({rows}, DType::F32));
  }
}

void DryRunBackend::linear(const Tensor&, const Tensor&, const Tensor&, Activation, Tensor& out) {
  if (out.dtype() == DType::F8_E4M3)  // product_dtype(): one scale per row
    out = out.with_scales(alloc({out.dim() ? out.numel() / std::max<int64_t>(out.size(-1), 1) : 1}, DType::F32));
}

void DryRunBackend::quantize_rows_with_amax(const Tensor&, const Tensor& amax, Tensor& out) {
  out = out.with_scales(alloc({amax.numel()}, DType::F32));
}

Tensor DryRunBackend::download(const Tensor& t) {
  // Zeros; a large one (a whole decoded video) is left uninitialised, so that its pages are never
  // touched and a plan costs no host memory: nothing reads what a dry run computed.
  const DType dt = is_float(t.dtype()) ? DType::F32 : t.dtype();
  const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(dt);
  return bytes <= (size_t{16} << 20) ? Tensor::zeros(t.shape(), dt) : Tensor::empty(t.shape(), dt);
}

}  // namespace stdit
