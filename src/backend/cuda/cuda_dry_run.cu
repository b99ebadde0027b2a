// The CUDA backend's dry run (backend/dry_run.h): the device memory its ops take for themselves
// while they run, beside the tensors the models allocate. Each rule restates an allocation of the
// op it names (same file in brackets); the GPU check compares a dry run with the backend's own
// count (CudaBackend::peak_memory_bytes) for the model calls in every precision.
#include <algorithm>

#include "backend/cuda/cuda_attention.cuh"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_fp8.h"
#include "backend/cuda/cuda_fused_gemm.h"
#include "backend/dry_run.h"

namespace stdit {

namespace {

size_t bytes_of(int64_t n, DType t) { return static_cast<size_t>(n) * dtype_size(t); }

class CudaDryRun final : public DryRunBackend {
 public:
  CudaDryRun(const CudaBackend& target, std::shared_ptr<CudaContext> ctx)
      : DryRunBackend(target), ctx_(std::move(ctx)) {}

  // [cuda_linear.cu, cuda_fp8.cu] fp8 weights: x quantized with its row scales (unless it is)
  // and, unless the fused GEMM writes the BF16 output, an F32 accumulator for a non-F32 output (an
  // F8_E4M3 output: its row scales, kept with it, and their inverses);
  // else a copy of x in the weight's dtype when they differ, an F32 product for a 16-bit output of
  // another type, and a 16-bit copy of the bias for a 16-bit output.
  void linear(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out) override {
    const int64_t n = w.size(0), k = w.size(1), m = k ? x.numel() / k : 0;
    if (m == 0 || n == 0) return;
    size_t s = 0;
    if (w.dtype() == DType::F8_E4M3) {
      if (x.dtype() != DType::F8_E4M3) s += bytes_of(m * k, DType::F8_E4M3) + bytes_of(m, DType::F32);
      if (out.dtype() == DType::F8_E4M3) {  // product_dtype(): the codes' row scales, and their inverses
        DryRunBackend::linear(x, w, bias, act, out);
        return scratch(s + bytes_of(m, DType::F32));
      }
      if (out.dtype() != DType::F32 && !fused_fp8_linear_applies(*ctx_, n, k, out.dtype(), act))
        s += bytes_of(m * n, DType::F32);
    } else {
      if (x.dtype() != w.dtype()) s += bytes_of(m * k, w.dtype());
      if (cuda::is_half16(out.dtype()) && out.dtype() != w.dtype()) s += bytes_of(m * n, DType::F32);
      else if (bias.defined() && cuda::is_half16(out.dtype())) s += bytes_of(n, out.dtype());
    }
    scratch(s);
  }

  // [cuda_norm.cu] The fused projection into the residual stream folds a gate into per-sample
  // weights and biases; the unfused path is the base class's (a temporary, then the residual).
  void linear_residual(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                       const Tensor& gate0, const FrameSelect& sel, Tensor& x) override {
    // [cuda_fp8.cu] linear_residual_fp8: y quantized (unless it is), the gate folded into per-sample
    // column scales and biases.
    if (fused_fp8_residual_applies(*ctx_, y, w, bias, gate, sel, x)) {
      const int64_t b = x.size(0), rows = b * x.size(1), ch = x.size(2), k = w.size(1);
      if (rows == 0 || ch == 0) return;
      size_t s = 0;
      if (y.dtype() != DType::F8_E4M3) s += bytes_of(rows * k, DType::F8_E4M3) + bytes_of(rows, DType::F32);
      if (gate.defined()) s += bytes_of(b * ch, DType::F32) * (bias.defined() ? 2 : 1);
      return scratch(s);
    }
    // [cuda_linear.cu] linear_residual_bf16: nothing of its own.
    if (fused_bf16_residual_applies(*ctx_, y, w, bias, gate, sel, x)) return;
    const bool fits = !sel.active() && x.dim() == 3 && x.dtype() == DType::F32 && cuda::is_half16(y.dtype()) &&
                      w.dtype() == y.dtype() && w.dim() == 2 && w.size(0) == x.size(2) && w.size(1) % 8 == 0 &&
                      y.numel() == x.size(0) * x.size(1) * w.size(1) &&
                      (!bias.defined() || bias.dtype() == DType::F32);
    if (!fits) return Backend::linear_residual(y, w, bias, gate, gate0, sel, x);
    const int64_t b = x.size(0), ch = x.size(2), k = w.size(1);
    if (gate.defined() && b * x.size(1) > 0 && ch > 0)
      scratch(bytes_of(b * ch * k, w.dtype()) + bytes_of(b * ch, DType::F32));
  }

  // [cuda_attention.cu] qk_norm_rope: rotary embedding's (cos, sin) table, [N, D / 2] pairs of F32.
  void qk_norm_rope(Tensor& q, const Tensor&, float, const Tensor& rope_freqs) override {
    if (rope_freqs.defined() && q.dim() >= 3 && q.numel() > 0) scratch(bytes_of(q.size(-3) * ((q.size(-1) + 1) / 2) * 2, DType::F32));
  }

  // [cuda_attention.cu] kernel_inputs / out_target: F32 copies of BF16 operands and an F32 output
  // converted afterwards off the bf16 path; attention_by_gemm's scores (head dims > 128);
  // cross-attention's offsets.
  void attention(const Tensor& q, const Tensor& k, const Tensor& v, float, Tensor& out,
                 const AttentionExtras&) override {
    scratch(conversions(q, k, v, out) + gemm_scores(q, k, v, k.size(-3)));
  }
  void cross_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<int>& kv_lens,
                       float, Tensor& out) override {
    const int64_t longest = kv_lens.empty() ? 0 : *std::max_element(kv_lens.begin(), kv_lens.end());
    scratch(conversions(q, k, v, out) + gemm_scores(q, k, v, longest) + (kv_lens.size() + 1) * sizeof(int));
  }

  // [cuda_conv.cu] the padded copy and cuDNN's workspace, or the im2col columns (its own rule,
  // conv3d_scratch_bytes, beside the code it restates).
  void conv3d(const Tensor& x, const Tensor& w, const Tensor&, const ConvParams& p, Tensor&) override {
    scratch(conv3d_scratch_bytes(ctx_, x.shape(), w.shape(), w.dtype(), p));
  }

  // [cuda_norm.cu] per-chunk partial sums (f64) of each group's statistics.
  void group_norm(const Tensor& x, const Tensor&, const Tensor&, int groups, float, bool, Tensor&) override {
    if (x.numel() == 0 || groups <= 0) return;
    const int64_t B = x.size(0), C = x.size(1), S = x.numel() / (B * C), n = C / groups * S, G = B * groups;
    const int64_t want = std::max<int64_t>(1, (8 * ctx_->num_sms + G - 1) / G);
    const int64_t p = std::max<int64_t>(1, std::min<int64_t>({want, (n + 2047) / 2048, 1024}));
    scratch(static_cast<size_t>(2 * G * p + G) * sizeof(double));
  }

  // [cuda_conv_cl.cu] the channels-last family: conv3d_cl's padded copy, zero-padded filters and
  // cuDNN's workspace (conv3d_cl_scratch_bytes), group_norm_cl's partial sums and per-channel
  // scales (group_norm_cl_scratch_bytes).
  void conv3d_cl(const Tensor& x, const Tensor& w, const Tensor&, const Tensor& residual, const ConvParams& p,
                 Tensor&) override {
    scratch(conv3d_cl_scratch_bytes(ctx_, x.shape(), w.shape(), p, residual.defined()));
  }
  void group_norm_cl(const Tensor& x, const Tensor&, const Tensor&, int, float, bool, Tensor&) override {
    scratch(group_norm_cl_scratch_bytes(*ctx_, x.shape()));
  }

  // [cuda_backend.cu] a non-contiguous tensor is packed on the device before the copy.
  Tensor download(const Tensor& t) override {
    if (!t.is_contiguous()) scratch(t.nbytes());
    return DryRunBackend::download(t);
  }

 private:
  size_t conversions(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out) const {
    const bool keep = cuda::bf16_attention_operands(*ctx_);
    size_t s = 0;
    const bool all16 = cuda::is_half16(q.dtype()) && k.dtype() == q.dtype() && v.dtype() == q.dtype();
    if (!(all16 && keep))
      for (const Tensor* t : {&q, &k, &v})
        if (t->dtype() != DType::F32) s += bytes_of(t->numel(), DType::F32);
    if (cuda::attention_out_converted(*ctx_, out.dtype(), q.size(-1), all16 && keep)) s += bytes_of(out.numel(), DType::F32);
    return s;
  }
  size_t gemm_scores(const Tensor& q, const Tensor& k, const Tensor& v, int64_t max_nk) const {
    const bool all16 = cuda::is_half16(q.dtype()) && k.dtype() == q.dtype() && v.dtype() == q.dtype() &&
                       cuda::bf16_attention_operands(*ctx_);
    return q.dim() >= 3 ? cuda::attention_gemm_scratch_bytes(q.size(-3), max_nk, q.size(-1), all16) : 0;
  }
  std::shared_ptr<CudaContext> ctx_;
};

}  // namespace

std::unique_ptr<DryRunBackend> CudaBackend::dry_run() const { return std::make_unique<CudaDryRun>(*this, ctx_); }

}  // namespace stdit
