// CPU backend: memory, elementwise ops, embeddings.
#include "backend/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace stdit {

namespace cpu {
void expect_f32(const Tensor& t, const char* op, const char* what) {
  STDIT_CHECK(t.defined(), "cpu ", op, ": ", what, " is missing");
  STDIT_CHECK(t.dtype() == DType::F32, "cpu ", op, ": ", what, " must be F32, got ",
              dtype_name(t.dtype()));
  STDIT_CHECK(t.dim() == 0 || t.stride(-1) == 1 || t.size(-1) == 1, "cpu ", op, ": ", what,
              " must have a contiguous last dimension");
}
void expect_contiguous_f32(const Tensor& t, const char* op, const char* what) {
  expect_f32(t, op, what);
  STDIT_CHECK(t.is_contiguous(), "cpu ", op, ": ", what, " must be contiguous");
}
void expect_shape(const Tensor& t, const Shape& s, const char* op, const char* what) {
  STDIT_CHECK(t.shape() == s, "cpu ", op, ": ", what, " has shape ", shape_str(t.shape()),
              ", expected ", shape_str(s));
}
std::vector<int64_t> leading_offsets(const Tensor& t, int lead) {
  Shape sh(t.shape().begin(), t.shape().begin() + lead);
  Shape st(t.strides().begin(), t.strides().begin() + lead);
  std::vector<int64_t> offs(static_cast<size_t>(shape_numel(sh)));
  for_each_offset(sh, st, [&](int64_t flat, int64_t off) { offs[flat] = off; });
  return offs;
}
}  // namespace cpu

using namespace cpu;

CpuBackend::CpuBackend() : CpuBackend(resolve_policy({}, "cpu", 0)) {}

CpuBackend::CpuBackend(ExecutionPolicy policy) : policy_(std::move(policy)) { openblas_set_num_threads(1); }

Tensor CpuBackend::counted(const Tensor& packed) {
  return Tensor::from_blob(packed.raw(), packed.shape(), packed.dtype(), ledger_.hold(packed.nbytes(), packed.storage()));
}

Tensor CpuBackend::alloc(const Shape& shape, DType dtype) { return counted(Tensor::empty(shape, dtype)); }

Tensor CpuBackend::upload(const Tensor& host) {
  STDIT_CHECK(host.device().kind == DeviceKind::CPU, "cpu upload: source is not a host tensor");
  // Floats are widened to F32 (bf16/f16 exactly); integers keep their type. A tensor that is
  // already packed F32 is used in place (zero copy: an mmap'd f32 checkpoint costs no extra
  // memory), so callers never modify an uploaded tensor in place.
  const DType target = is_float(host.dtype()) ? DType::F32 : host.dtype();
  return counted(host.to(target));
}

Tensor CpuBackend::upload_weight(const Tensor& host) {
  if (host.dtype() != DType::F8_E4M3) return upload(host);
  STDIT_CHECK(host.device().kind == DeviceKind::CPU && host.scales().defined(),
              "cpu upload: an F8_E4M3 weight needs its row scales");
  // Held as its e4m3 values in F32 (exact) with the row scales: linear() multiplies them directly.
  return counted(host.to(DType::F32)).with_scales(counted(host.scales().to(DType::F32)));
}

Tensor CpuBackend::download(const Tensor& t) {
  Tensor c = t.contiguous();
  if (c.storage() == t.storage()) {
    Tensor copy = Tensor::empty(c.shape(), c.dtype());
    if (c.nbytes()) std::memcpy(copy.raw(), c.raw(), c.nbytes());
    return copy;
  }
  return c;
}

void CpuBackend::add(const Tensor& a, const Tensor& b, Tensor& out) {
  expect_contiguous_f32(a, "add", "a");
  expect_contiguous_f32(b, "add", "b");
  expect_contiguous_f32(out, "add", "out");
  const int64_t n = a.numel(), m = b.numel();
  STDIT_CHECK(out.numel() == n && m > 0 && n % m == 0, "cpu add: cannot broadcast ",
              shape_str(b.shape()), " over ", shape_str(a.shape()));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i % m];
}

void CpuBackend::silu(const Tensor& x, Tensor& out) {
  expect_contiguous_f32(x, "silu", "x");
  expect_contiguous_f32(out, "silu", "out");
  STDIT_CHECK(x.numel() == out.numel(), "cpu silu: size mismatch");
  const float* px = x.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < x.numel(); ++i) po[i] = px[i] / (1.0f + std::exp(-px[i]));
}

void CpuBackend::mul(const Tensor& a, const Tensor& b, Tensor& out) {
  expect_contiguous_f32(a, "mul", "a");
  expect_contiguous_f32(b, "mul", "b");
  expect_contiguous_f32(out, "mul", "out");
  STDIT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "cpu mul: sizes ",
              shape_str(a.shape()), ", ", shape_str(b.shape()), ", ", shape_str(out.shape()));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < a.numel(); ++i) po[i] = pa[i] * pb[i];
}

void CpuBackend::sub(const Tensor& a, const Tensor& b, Tensor& out) {
  expect_contiguous_f32(a, "sub", "a");
  expect_contiguous_f32(b, "sub", "b");
  expect_contiguous_f32(out, "sub", "out");
  STDIT_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "cpu sub: sizes ",
              shape_str(a.shape()), ", ", shape_str(b.shape()), ", ", shape_str(out.shape()));
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  float* po = out.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < a.numel(); ++i) po[i] = pa[i] - pb[i];
}

void CpuBackend::cfg_euler_step(Tensor& z, const Tensor& v, bool cfg, float guidance, float dt) {
  const EulerGeometry g = euler_geometry(z, v, cfg, "cpu");
  const int64_t per = g.channels * g.plane;
  float* pz = z.data<float>();
  const float* pv = v.data<float>();
  for (int64_t b = 0; b < g.rows; ++b)
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < per; ++k) {
      const int64_t c = k / g.plane, r = k - c * g.plane;
      const float vc = pv[(b * g.v_channels + c) * g.plane + r];
      float step = vc;
      if (cfg) {
        const float vu = pv[((g.rows + b) * g.v_channels + c) * g.plane + r];
        const float diff = vc - vu;
        const float scaled = guidance * diff;
        step = vu + scaled;
      }
      const float inc = step * dt;
      pz[b * per + k] = pz[b * per + k] + inc;
    }
}

void CpuBackend::l1_distance(const Tensor& a, const Tensor& b, Tensor& out) {
  expect_contiguous_f32(a, "l1_distance", "a");
  expect_contiguous_f32(b, "l1_distance", "b");
  expect_contiguous_f32(out, "l1_distance", "out");
  STDIT_CHECK(a.shape() == b.shape() && a.numel() > 0 && out.numel() == 2, "cpu l1_distance: a ",
              shape_str(a.shape()), ", b ", shape_str(b.shape()), ", out ", shape_str(out.shape()));
  const int64_t n = a.numel();
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  // Fixed chunks summed in order: the same result for any thread count.
  const int64_t chunk = 1 << 16, nc = (n + chunk - 1) / chunk;
  std::vector<double> d(nc), r(nc);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < nc; ++c) {
    double sd = 0, sr = 0;
    for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
      sd += std::fabs(pa[i] - pb[i]);
      sr += std::fabs(pb[i]);
    }
    d[c] = sd;
    r[c] = sr;
  }
  double sd = 0, sr = 0;
  for (int64_t c = 0; c < nc; ++c) {
    sd += d[c];
    sr += r[c];
  }
  out.data<float>()[0] = static_cast<float>(sd / static_cast<double>(n));
  out.data<float>()[1] = static_cast<float>(sr / static_cast<double>(n));
}

void CpuBackend::timestep_embedding(const Tensor& t, float max_period, Tensor& out) {
  expect_contiguous_f32(t, "timestep_embedding", "t");
  expect_contiguous_f32(out, "timestep_embedding", "out");
  const int64_t b = t.numel(), dim = out.size(-1), half = dim / 2;
  STDIT_CHECK(out.dim() == 2 && out.size(0) == b && dim % 2 == 0,
              "cpu timestep_embedding: out must be [B, even dim]");
  // f32 step by step, in the order PyTorch evaluates exp(-ln(P) * arange(half) / half).
  const float neg_log_p = static_cast<float>(-std::log(static_cast<double>(max_period)));
  std::vector<float> freq(half);
  for (int64_t i = 0; i < half; ++i)
    freq[i] = std::exp(neg_log_p * static_cast<float>(i) / static_cast<float>(half));
  for (int64_t r = 0; r < b; ++r) {
    const float v = t.data<float>()[r];
    float* o = out.data<float>() + r * dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v * freq[i];
      o[i] = std::cos(a);         // cos first (spec §3.4)
      o[half + i] = std::sin(a);
    }
  }
}

void CpuBackend::sincos_pos_embed_2d(int64_t hp, int64_t wp, float scale, float base_size,
                                     Tensor& out) {
  expect_contiguous_f32(out, "sincos_pos_embed_2d", "out");
  const int64_t c = out.size(-1);
  STDIT_CHECK(out.dim() == 2 && out.size(0) == hp * wp && c % 4 == 0,
              "cpu sincos_pos_embed_2d: out must be [Hp*Wp, C] with C divisible by 4");
  const int64_t q = c / 4;  // frequencies per sin/cos part
  std::vector<float> omega(q);
  for (int64_t k = 0; k < q; ++k)
    omega[k] = 1.0f / std::pow(10000.0f, static_cast<float>(2 * k) / static_cast<float>(c / 2));
  const float row_ratio = static_cast<float>(static_cast<double>(base_size) / static_cast<double>(hp));
  const float col_ratio = static_cast<float>(static_cast<double>(base_size) / static_cast<double>(wp));
  for (int64_t r = 0; r < hp; ++r)
    for (int64_t col = 0; col < wp; ++col) {
      const float rho = static_cast<float>(r) / scale * row_ratio;
      const float gamma = static_cast<float>(col) / scale * col_ratio;
      float* o = out.data<float>() + (r * wp + col) * c;
      for (int64_t k = 0; k < q; ++k) {
        const float ag = gamma * omega[k], ar = rho * omega[k];
        o[k] = std::sin(ag);  // column coordinate first (spec §3.3)
        o[q + k] = std::cos(ag);
        o[2 * q + k] = std::sin(ar);
        o[3 * q + k] = std::cos(ar);
      }
    }
}

void CpuBackend::gather_rows(const Tensor& src, const std::vector<int64_t>& rows, Tensor& out) {
  expect_contiguous_f32(src, "gather_rows", "src");
  expect_contiguous_f32(out, "gather_rows", "out");
  const int64_t c = src.size(-1), r = src.numel() / std::max<int64_t>(c, 1);
  STDIT_CHECK(out.numel() == static_cast<int64_t>(rows.size()) * c, "cpu gather_rows: out size");
  for (size_t i = 0; i < rows.size(); ++i) {
    STDIT_CHECK(rows[i] >= 0 && rows[i] < r, "cpu gather_rows: row ", rows[i], " out of ", r);
    std::memcpy(out.data<float>() + i * c, src.data<float>() + rows[i] * c, c * 4);
  }
}

}  // namespace stdit
