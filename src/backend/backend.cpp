#include "backend/backend.h"

#include "backend/cpu/cpu_backend.h"
#include "backend/dry_run.h"
#include "core/error.h"
#include "core/log.h"
#ifdef STDIT_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace stdit {

std::unique_ptr<DryRunBackend> Backend::dry_run() const { return std::make_unique<DryRunBackend>(*this); }

DType Backend::operand_dtype(const Tensor& w) const {
  return policy().fp8_norm_quantizes && w.defined() && w.scales().defined() ? DType::F8_E4M3 : matmul_dtype();
}

DType Backend::product_dtype(const Tensor&, Activation, const Tensor&) const { return matmul_dtype(); }

void Backend::row_amax(const Tensor&, Tensor&) {
  fail(name(), " backend: row_amax (fp8 under tensor parallelism) is not supported");
}
void Backend::quantize_rows_with_amax(const Tensor&, const Tensor&, Tensor&) {
  fail(name(), " backend: quantize_rows_with_amax (fp8 under tensor parallelism) is not supported");
}

void Backend::linear_residual(const Tensor& y, const Tensor& w, const Tensor& bias,
                              const Tensor& gate, const Tensor& gate0, const FrameSelect& sel,
                              Tensor& x) {
  Tensor p = alloc(x.shape(), matmul_dtype());
  linear(y, w, bias, Activation::None, p);
  if (gate.defined())
    gated_residual(x, p, gate, gate0, sel);
  else
    add(x, p, x);
}

void Backend::linear_residual_copy(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                                   const Tensor& gate0, const FrameSelect& sel, Tensor& x, Tensor& x_copy) {
  linear_residual(y, w, bias, gate, gate0, sel, x);
  copy(x, x_copy);
}

bool Backend::fuses_residual_copy(const Tensor&) const { return false; }

// ---- channels-last family through the channel-first ops (backend.h) ----
namespace {
// t [B, T, H, W, C] (any float dtype the backend copies) -> a contiguous F32 [B, C, T, H, W].
Tensor channels_first(Backend& be, const Tensor& t, const char* op, const char* what) {
  STDIT_CHECK(t.defined() && t.dim() == 5, be.name(), " ", op, ": ", what, " must be [B, T, H, W, C], got ",
              t.defined() ? shape_str(t.shape()) : "nothing");
  Tensor out = be.alloc({t.size(0), t.size(4), t.size(1), t.size(2), t.size(3)});
  be.copy(t.permute({0, 4, 1, 2, 3}), out);
  return out;
}
// cf [B, C, T, H, W] -> out [B, T, H, W, C].
void to_channels_last(Backend& be, const Tensor& cf, Tensor& out, const char* op) {
  STDIT_CHECK(out.defined() && out.dim() == 5 && out.size(0) == cf.size(0) && out.size(4) == cf.size(1) &&
                  out.size(1) == cf.size(2) && out.size(2) == cf.size(3) && out.size(3) == cf.size(4),
              be.name(), " ", op, ": out ", out.defined() ? shape_str(out.shape()) : "nothing", " should be [",
              cf.size(0), ", ", cf.size(2), ", ", cf.size(3), ", ", cf.size(4), ", ", cf.size(1), "]");
  Tensor view = out.permute({0, 4, 1, 2, 3});
  be.copy(cf, view);
}
}  // namespace

void Backend::conv3d_cl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual,
                        const ConvParams& p, Tensor& out) {
  const char* op = "conv3d_cl";
  const Tensor xc = channels_first(*this, x, op, "x");
  const Tensor wc = channels_first(*this, w, op, "weight");
  STDIT_CHECK(out.defined() && out.dim() == 5, name(), " ", op, ": out must be [B, To, Ho, Wo, Co]");
  Tensor oc = alloc({out.size(0), out.size(4), out.size(1), out.size(2), out.size(3)});
  conv3d(xc, wc, bias, p, oc);
  if (residual.defined()) {
    STDIT_CHECK(residual.shape() == out.shape(), name(), " ", op, ": residual ", shape_str(residual.shape()),
                " must have out's shape ", shape_str(out.shape()));
    add(oc, channels_first(*this, residual, op, "residual"), oc);
  }
  to_channels_last(*this, oc, out, op);
}

void Backend::group_norm_cl(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                            bool silu, Tensor& out) {
  const char* op = "group_norm_cl";
  const Tensor xc = channels_first(*this, x, op, "x");
  Tensor oc = alloc(xc.shape());
  group_norm(xc, gamma, beta, groups, eps, silu, oc);
  to_channels_last(*this, oc, out, op);
}

void Backend::upsample_nearest2x_cl(const Tensor& x, Tensor& out) {
  const char* op = "upsample_nearest2x_cl";
  const Tensor xc = channels_first(*this, x, op, "x");
  Tensor oc = alloc({xc.size(0), xc.size(1), xc.size(2), 2 * xc.size(3), 2 * xc.size(4)});
  upsample_nearest2x(xc, oc);
  to_channels_last(*this, oc, out, op);
}

EulerGeometry euler_geometry(const Tensor& z, const Tensor& v, bool cfg, const char* backend) {
  STDIT_CHECK(z.defined() && v.defined() && z.dtype() == DType::F32 && v.dtype() == DType::F32 && z.is_contiguous() &&
                  v.is_contiguous(),
              backend, " cfg_euler_step: z and v must be contiguous F32 tensors");
  STDIT_CHECK(z.dim() >= 2 && v.dim() == z.dim(), backend, " cfg_euler_step: z ", shape_str(z.shape()), " and v ",
              shape_str(v.shape()), " must be [B, C, ...] of one rank");
  EulerGeometry g{z.size(0), z.size(1), z.size(1) ? z.numel() / (z.size(0) * z.size(1)) : 0, v.size(1)};
  bool same_trailing = true;
  for (int d = 2; d < z.dim(); ++d) same_trailing &= z.size(d) == v.size(d);
  STDIT_CHECK(same_trailing && v.size(0) == (cfg ? 2 : 1) * g.rows && g.v_channels >= g.channels, backend,
              " cfg_euler_step: v ", shape_str(v.shape()), " does not fit z ", shape_str(z.shape()),
              cfg ? " (with guidance v holds two halves of z's rows)" : "");
  return g;
}

int cuda_devices_visible() {
#ifdef STDIT_HAVE_CUDA
  return cuda_device_count();
#else
  return 0;
#endif
}

std::vector<std::string> backend_names() {
#ifdef STDIT_HAVE_CUDA
  return {"cpu", "cuda"};
#else
  return {"cpu"};
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, const PolicyRequest& request) {
  // The developers' STDIT_CUDA_* switches apply unless the request overrides the same family.
  PolicyRequest req = request;
  for (const auto& [k, v] : overrides_from_env()) req.overrides.emplace(k, v);
  if (name == "auto") {
    // The GPU when one is usable, else the CPU.
#ifdef STDIT_HAVE_CUDA
    if (cuda_device_count() > 0) {
      try {
        return make_cuda_backend(0, resolve_policy(req, "cuda", cuda_device_sm(0)));
      } catch (const Error& e) {
        log_warn("GPU present but not usable (", e.what(), "); using the CPU backend");
      }
    }
#endif
    return std::make_unique<CpuBackend>(resolve_policy(req, "cpu", 0));
  }
  if (name == "cpu") return std::make_unique<CpuBackend>(resolve_policy(req, "cpu", 0));
#ifdef STDIT_HAVE_CUDA
  // The device first: without one, the policy would judge a GPU of "sm_0" (fp8: "needs FP8 tensor cores").
  auto cuda = [&](int d) {
    const std::string problem = cuda_device_problem(d);
    STDIT_CHECK(problem.empty(), "cuda backend: ", problem);
    return make_cuda_backend(d, resolve_policy(req, "cuda", cuda_device_sm(d)));
  };
  if (name == "cuda") return cuda(0);
  if (name.rfind("cuda:", 0) == 0) {  // cuda:N, the N-th visible GPU
    const std::string idx = name.substr(5);
    STDIT_CHECK(!idx.empty() && idx.size() <= 6 && idx.find_first_not_of("0123456789") == std::string::npos,
                "invalid backend '", name, "' (cuda:N with N a GPU index)");
    return cuda(std::stoi(idx));
  }
#endif
  std::string avail;
  for (const auto& n : backend_names()) avail += (avail.empty() ? "" : ", ") + n;
  fail("unknown backend '", name, "' (available in this build: ", avail, ", or auto)");
}

}  // namespace stdit
