// The fp8 precision on the GPU: per-row e4m3 quantization (core/fp8.h's rule, bit for bit) and the
// FP8 GEMM with its scales, bias and activation. On Hopper (policy fused_fp8_gemm) the GEMM applies
// them in its epilogue (cutlass_fp8_gemm.h), residual and gate included; elsewhere cuBLASLt's FP8
// GEMM writes an f32 product and a second pass applies them (cuBLASLt 13.1 offers no FP8 GEMM with
// per-row scales in its epilogue on sm_90 at our shapes: docs/PERF.md). The activation is
// quantized in its own pass unless it arrives quantized.
#include <algorithm>
#include <array>
#include <mutex>
#include <set>

#include "backend/cuda/cuda_fp8.h"
#include "backend/cuda/cutlass_fp8_gemm.h"
#include "core/log.h"

namespace stdit {

using namespace cuda;

namespace {

// One block per row: amax (and whether any value is not finite), then the codes. With `given`
// (tensor parallelism: each row's amax over every rank's columns, +infinity for a row holding a NaN
// or an infinity) the row's amax is taken from there; with `amax_out` only the amax is written (in
// that form), no codes.
template <typename T>
__global__ void quantize_rows_kernel(const T* __restrict__ x, int64_t k, __nv_fp8_storage_t* __restrict__ q,
                                     float* __restrict__ scale, const float* __restrict__ given,
                                     float* __restrict__ amax_out) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * k;
  float amax = 0.0f;
  int bad = 0;
  for (int64_t i = threadIdx.x; i < k && !given; i += blockDim.x) {
    const float a = fabsf(load_f(xr + i));
    if (!isfinite(a)) bad = 1;
    else amax = fmaxf(amax, a);
  }
  __shared__ float s_max[32];
  __shared__ int s_bad[32];
  __shared__ float s_inv;
  __shared__ int s_mode;  // 0 scaled, 1 zero row, 2 not finite
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
  if (lane == 0) {
    s_max[warp] = amax;
    s_bad[warp] = bad;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float m = 0.0f;
    int b = 0;
    for (int w = 0; w < warps; ++w) {
      m = fmaxf(m, s_max[w]);
      b |= s_bad[w];
    }
    if (given) {
      m = given[row];
      b = isinf(m);
    }
    if (amax_out) {
      amax_out[row] = b ? INFINITY : m;
      s_mode = 3;  // the amax only
    } else {
      const E4m3Row r = e4m3_row_rule(m, b);
      s_mode = r.mode;
      s_inv = r.inv;
      scale[row] = r.scale;
    }
  }
  __syncthreads();
  if (s_mode == 3) return;
  const E4m3Row r{s_mode, s_inv, 0.0f};
  __nv_fp8_storage_t* qr = q + row * k;
  for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
    qr[i] = static_cast<__nv_fp8_storage_t>(e4m3_code(load_f(xr + i), r));
}

// quantize_rows_kernel over the m rows of x (F32 or BF16), one block each.
void launch_quantize_rows_block(const Tensor& x, int64_t m, int64_t k, __nv_fp8_storage_t* q, float* scale,
                                const float* given, float* amax_out, cudaStream_t stream) {
  if (x.dtype() == DType::BF16)
    quantize_rows_kernel<<<static_cast<unsigned>(m), 256, 0, stream>>>(x.data<__nv_bfloat16>(), k, q, scale, given,
                                                                       amax_out);
  else
    quantize_rows_kernel<<<static_cast<unsigned>(m), 256, 0, stream>>>(x.data<float>(), k, q, scale, given, amax_out);
}

// The same rule, W warps per row, for rows of k = 128 * W * v (v <= 9: W = 1 for k up to 1152,
// the block linears' inputs; W = 4 for fc2's 4608) with 8- or 16-byte aligned rows: each thread
// loads its v groups of 4 values once (vector loads), keeps them in registers for the amax and the
// codes, and stores 4 codes at a time; the W warps of a row meet in shared memory for the amax.
// Bit for bit the kernel above. (One warp per 4608-value row needed 36 groups, 231 registers, and
// ran slower than the block-per-row kernel on an H100: docs/PERF.md.)
constexpr int kQuantWarps = 8, kQuantMaxGroups = 9;
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
template <int W, typename T>
__global__ void __launch_bounds__(kQuantWarps * 32)
    quantize_rows_warp_kernel(const T* __restrict__ x, int64_t rows, int groups, __nv_fp8_storage_t* __restrict__ q,
                              float* __restrict__ scale) {
  static_assert(kQuantWarps % W == 0, "a block holds whole rows");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int t = (warp % W) * 32 + lane;  // this thread's place in its row
  const int64_t row = blockIdx.x * static_cast<int64_t>(kQuantWarps / W) + warp / W;
  const bool valid = row < rows;  // (no early return: the row's warps meet at a barrier)
  const int64_t k = static_cast<int64_t>(groups) * 128 * W;
  const T* xr = x + (valid ? row : 0) * k;
  float4 v[kQuantMaxGroups];
  float amax = 0.0f;
  int bad = 0;
#pragma unroll
  for (int g = 0; g < kQuantMaxGroups; ++g) {
    if (valid && g < groups) {
      v[g] = load4(xr + (static_cast<int64_t>(g) * 32 * W + t) * 4);
      for (const float e : {v[g].x, v[g].y, v[g].z, v[g].w}) {
        const float a = fabsf(e);
        if (!isfinite(a)) bad = 1;
        else amax = fmaxf(amax, a);
      }
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    bad |= __shfl_xor_sync(0xffffffffu, bad, o);
  }
  if constexpr (W > 1) {
    __shared__ float s_amax[kQuantWarps];
    __shared__ int s_bad[kQuantWarps];
    if (lane == 0) {
      s_amax[warp] = amax;
      s_bad[warp] = bad;
    }
    __syncthreads();
    const int first = warp - warp % W;
#pragma unroll
    for (int i = 0; i < W; ++i) {
      amax = fmaxf(amax, s_amax[first + i]);
      bad |= s_bad[first + i];
    }
  }
  if (!valid) return;
  const E4m3Row r = e4m3_row_rule(amax, bad);
  if (t == 0) scale[row] = r.scale;
  uint32_t* qr = reinterpret_cast<uint32_t*>(q + row * k);
  auto code = [&](float e) { return e4m3_code(e, r); };
#pragma unroll
  for (int g = 0; g < kQuantMaxGroups; ++g)
    if (g < groups)
      qr[g * 32 * W + t] = code(v[g].x) | code(v[g].y) << 8 | code(v[g].z) << 16 | code(v[g].w) << 24;
}
template <int W, typename T>
void launch_quantize_rows_warp(const T* x, int64_t m, int64_t k, __nv_fp8_storage_t* q, float* s, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((m + kQuantWarps / W - 1) / (kQuantWarps / W));
  quantize_rows_warp_kernel<W><<<blocks, kQuantWarps * 32, 0, stream>>>(x, m, static_cast<int>(k / (128 * W)), q, s);
}

// out[r, c] = act(acc[r, c] * sx[r] * sw[c] + bias[c]), rounded as the CPU emulation (no FMA).
template <typename TO>
__global__ void fp8_epilogue_kernel(const float* __restrict__ acc, const float* __restrict__ sx,
                                    const float* __restrict__ sw, const float* __restrict__ bias, TO* __restrict__ out,
                                    int64_t m, int64_t n, int act) {
  const int64_t total = m * n;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = t / n, c = t - r * n;
    float v = __fmul_rn(__fmul_rn(acc[t], sx[r]), sw[c]);
    if (bias) v = __fadd_rn(v, bias[c]);
    if (act == 1) v = gelu_tanh_f(v);
    else if (act == 2) v = silu_f(v);
    store_out(out + t, v);
  }
}

// A gated residual's gate folded into the FP8 GEMM's column scales and bias, per sample:
// sout[b, c] = sw[c] * gate[b, c], bout[b, c] = bias[c] * gate[b, c] (bout only with a bias).
__global__ void fold_gate_scales_kernel(const float* __restrict__ sw, const float* __restrict__ bias,
                                        const float* __restrict__ gate, int64_t gate_stride, int64_t ch,
                                        int64_t batch, float* __restrict__ sout, float* __restrict__ bout) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < batch * ch;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / ch, c = t - b * ch;
    const float g = gate[b * gate_stride + c];
    sout[t] = sw[c] * g;
    if (bias) bout[t] = bias[c] * g;
  }
}

// The row scales of a product written as e4m3 codes (Backend::product_dtype): per row i,
// s[i] = (k448sq * sx[i] * max_j sw[j] + max_j |bias[j]| + g) / 448 and inv[i] = 1 / s[i], with
// k448sq = K * 448^2 (so K 448 sx[i] 448 sw[j] bounds |sum_k x[i, k] w[j, k]|) and g the
// activation's largest negative magnitude. A zero bound (all weights and biases zero) gives 1.
// Each block first reduces the n column scales and biases (from L2), then takes rows.
__global__ void product_scales_kernel(const float* __restrict__ sx, int64_t m, const float* __restrict__ sw,
                                      const float* __restrict__ bias, int64_t n, float k448sq, float g,
                                      float* __restrict__ s_out, float* __restrict__ inv_out) {
  float wmax = 0.0f, bmax = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    wmax = fmaxf(wmax, fabsf(sw[j]));
    if (bias) bmax = fmaxf(bmax, fabsf(bias[j]));
  }
  for (int o = 16; o > 0; o >>= 1) {
    wmax = fmaxf(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
    bmax = fmaxf(bmax, __shfl_xor_sync(0xffffffffu, bmax, o));
  }
  __shared__ float s_w[32], s_b[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s_w[warp] = wmax, s_b[warp] = bmax;
  __syncthreads();
  wmax = bmax = 0.0f;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) wmax = fmaxf(wmax, s_w[i]), bmax = fmaxf(bmax, s_b[i]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = __fdiv_rn(__fadd_rn(__fadd_rn(__fmul_rn(__fmul_rn(k448sq, sx[i]), wmax), bmax), g), 448.0f);
    if (s == 0.0f) s = 1.0f;
    s_out[i] = s;
    inv_out[i] = __frcp_rn(s);
  }
}

// The fused kernel's schedule (Fp8GemmProblem::config): STDIT_CUDA_FP8_GEMM_SCHEDULE=N, a developer
// switch for timing them against each other (docs/CLI.md); 0 otherwise.
int fp8_gemm_schedule() {
  static const int s = env_choice("STDIT_CUDA_FP8_GEMM_SCHEDULE", {1, 2});
  return s;
}

// Said once per shape (-v): the fused kernel declined a GEMM the policy gave it (an operand's
// alignment or a size CUTLASS cannot take), so it ran unfused.
void tell_unfused(int64_t m, int64_t n, int64_t k) {
  static std::mutex mu;
  static std::set<std::array<int64_t, 3>> told;
  std::lock_guard<std::mutex> lock(mu);
  if (told.insert({m, n, k}).second)
    log_info("cuda: the fused FP8 GEMM declined ", m, "x", n, "x", k, "; it runs unfused (cuBLASLt and a pass)");
}

}  // namespace

bool fused_fp8_gemm_applies(const CudaContext& ctx, int64_t n, int64_t k) {
  return ctx.policy.fused_fp8_gemm && cutlass_fp8_built() && n % 16 == 0 && k % 16 == 0;
}

bool fused_fp8_linear_applies(const CudaContext& ctx, int64_t n, int64_t k, DType out, Activation act) {
  return out == DType::BF16 && (act == Activation::None || act == Activation::GeluTanh) &&
         fused_fp8_gemm_applies(ctx, n, k);
}

bool fused_fp8_residual_applies(const CudaContext& ctx, const Tensor& y, const Tensor& w, const Tensor& bias,
                                const Tensor& gate, const FrameSelect& sel, const Tensor& x) {
  return w.dtype() == DType::F8_E4M3 && !sel.active() && x.dim() == 3 && x.dtype() == DType::F32 &&
         x.is_contiguous() && y.is_contiguous() && w.dim() == 2 && w.is_contiguous() && w.size(0) == x.size(2) &&
         y.numel() == x.size(0) * x.size(1) * w.size(1) &&
         (!bias.defined() || (bias.dtype() == DType::F32 && bias.is_contiguous())) &&
         (!gate.defined() || (gate.dtype() == DType::F32 && gate.dim() == 2 && gate.size(0) == x.size(0) &&
                              gate.size(1) == x.size(2) && gate.stride(1) == 1)) &&
         fused_fp8_gemm_applies(ctx, w.size(0), w.size(1));
}

DType CudaBackend::product_dtype(const Tensor& w, Activation act, const Tensor& next) const {
  const CudaContext& c = *ctx_;
  auto fp8 = [](const Tensor& t) {
    return t.defined() && t.dtype() == DType::F8_E4M3 && t.dim() == 2 && t.scales().defined();
  };
  return c.policy.fp8_hidden && fp8(w) && fp8(next) && (act == Activation::None || act == Activation::GeluTanh) &&
                 next.size(1) == w.size(0) && fused_fp8_gemm_applies(c, w.size(0), w.size(1)) &&
                 fused_fp8_gemm_applies(c, next.size(0), next.size(1))
             ? DType::F8_E4M3
             : matmul_dtype();
}

DType CudaBackend::operand_dtype(const Tensor& w) const {
  const DType d = Backend::operand_dtype(w);
  return d == DType::F8_E4M3 && w.dtype() == DType::F8_E4M3 && w.dim() == 2 && w.size(1) <= kNormCodesMaxChannels
             ? d
             : matmul_dtype();
}

Tensor CudaBackend::quantize_rows_e4m3(const Tensor& x) {
  CudaContext& c = *ctx_;
  expect_contiguous_float(x, c, "quantize_rows_e4m3", "x");
  const int64_t k = x.dim() ? x.size(-1) : 1, m = k ? x.numel() / k : 0;
  Tensor q = alloc(x.shape(), DType::F8_E4M3);
  Tensor s = alloc({m}, DType::F32);
  if (m == 0) return q.with_scales(s);
  STDIT_CHECK(m <= 0x7fffffff, "cuda quantize_rows_e4m3: too many rows (", m, ")");
  auto* qp = static_cast<__nv_fp8_storage_t*>(q.raw());
  const size_t vec = x.dtype() == DType::BF16 ? 8 : 16;  // bytes of 4 values
  const bool aligned = reinterpret_cast<uintptr_t>(x.raw()) % vec == 0 && reinterpret_cast<uintptr_t>(qp) % 4 == 0;
  const bool bf16 = x.dtype() == DType::BF16;
  auto fits = [&](int w) { return aligned && k % (128 * w) == 0 && k / (128 * w) <= kQuantMaxGroups; };
  if (fits(1) || fits(4)) {
    if (fits(1) && bf16) launch_quantize_rows_warp<1>(x.data<__nv_bfloat16>(), m, k, qp, s.data<float>(), c.stream);
    else if (fits(1)) launch_quantize_rows_warp<1>(x.data<float>(), m, k, qp, s.data<float>(), c.stream);
    else if (bf16) launch_quantize_rows_warp<4>(x.data<__nv_bfloat16>(), m, k, qp, s.data<float>(), c.stream);
    else launch_quantize_rows_warp<4>(x.data<float>(), m, k, qp, s.data<float>(), c.stream);
    check_launch("quantize_rows_e4m3");
    return q.with_scales(s);
  }
  launch_quantize_rows_block(x, m, k, qp, s.data<float>(), nullptr, nullptr, c.stream);
  check_launch("quantize_rows_e4m3");
  return q.with_scales(s);
}

void CudaBackend::row_amax(const Tensor& x, Tensor& amax) {
  CudaContext& c = *ctx_;
  expect_contiguous_float(x, c, "row_amax", "x");
  expect_contiguous_float(amax, c, "row_amax", "amax");
  const int64_t k = x.dim() ? x.size(-1) : 1, m = k ? x.numel() / k : 0;
  STDIT_CHECK(amax.dtype() == DType::F32 && amax.numel() == m && m <= 0x7fffffff,
              "cuda row_amax: amax must be F32 with one value per row of x");
  if (m == 0) return;
  launch_quantize_rows_block(x, m, k, nullptr, nullptr, nullptr, amax.data<float>(), c.stream);
  check_launch("row_amax");
}

void CudaBackend::quantize_rows_with_amax(const Tensor& x, const Tensor& amax, Tensor& out) {
  CudaContext& c = *ctx_;
  expect_contiguous_float(x, c, "quantize_rows_with_amax", "x");
  expect_contiguous_float(amax, c, "quantize_rows_with_amax", "amax");
  expect_device(out, c, "quantize_rows_with_amax", "out");
  const int64_t k = x.dim() ? x.size(-1) : 1, m = k ? x.numel() / k : 0;
  STDIT_CHECK(amax.dtype() == DType::F32 && amax.numel() == m && m <= 0x7fffffff && out.dtype() == DType::F8_E4M3 &&
                  out.is_contiguous() && out.shape() == x.shape(),
              "cuda quantize_rows_with_amax: out must be a contiguous F8_E4M3 tensor of x's shape and amax F32 "
              "with one value per row");
  Tensor s = alloc({m}, DType::F32);
  if (m > 0) {
    launch_quantize_rows_block(x, m, k, static_cast<__nv_fp8_storage_t*>(out.raw()), s.data<float>(),
                               amax.data<float>(), nullptr, c.stream);
    check_launch("quantize_rows_with_amax");
  }
  out = out.with_scales(s);
}

void CudaBackend::linear_fp8(const Tensor& x, const Tensor& w, const Tensor& bias, Activation act, Tensor& out) {
  OpTimer timer_(*ctx_, "linear_fp8", x);
  if (timer_.active()) timer_.detail = cat("w ", shape_str(w.shape()), act == Activation::None ? "" : " +act");
  CudaContext& c = *ctx_;
  expect_device(w, c, "linear", "weight");
  STDIT_CHECK(w.dim() == 2 && w.is_contiguous() && w.scales().defined() && w.scales().numel() == w.size(0) &&
                  w.scales().dtype() == DType::F32,
              "cuda linear: an F8_E4M3 weight must be a contiguous matrix with F32 row scales");
  const bool codes_out = out.dtype() == DType::F8_E4M3;  // product_dtype(): next GEMM's operand
  if (codes_out) {
    expect_device(out, c, "linear", "out");
    STDIT_CHECK(out.is_contiguous() && (act == Activation::None || act == Activation::GeluTanh),
                "cuda linear: an F8_E4M3 output must be contiguous, with no activation or GELU");
  } else {
    expect_contiguous_float(out, c, "linear", "out");
  }
  const int64_t n = w.size(0), k = w.size(1);
  STDIT_CHECK(x.size(-1) == k, "cuda linear: input ", shape_str(x.shape()), " does not match weight ",
              shape_str(w.shape()));
  const int64_t m = k ? x.numel() / k : 0;
  STDIT_CHECK(out.numel() == m * n, "cuda linear: output ", shape_str(out.shape()), " is not [", m, ", ", n, "]");
  if (bias.defined()) {
    expect_contiguous_f32(bias, c, "linear", "bias");
    STDIT_CHECK(bias.numel() == n, "cuda linear: bias has ", bias.numel(), " values, expected ", n);
  }
  if (m == 0 || n == 0) return;
  // x quantized here, or already (an F8_E4M3 tensor with its row scales).
  const Tensor xq = x.dtype() == DType::F8_E4M3 ? x : quantize_rows_e4m3(x);
  STDIT_CHECK(xq.is_contiguous() && xq.scales().defined() && xq.scales().numel() == m,
              "cuda linear: an F8_E4M3 input must be contiguous with one F32 scale per row");
  const float* bp = bias.defined() ? bias.data<float>() : nullptr;
  if (codes_out) {
    Tensor s = alloc({m}, DType::F32), inv = alloc({m}, DType::F32);
    product_scales_kernel<<<static_cast<int>(std::min<int64_t>(blocks_for(m, 256), 2 * c.num_sms)), 256, 0,
                            c.stream>>>(xq.scales().data<float>(), m, w.scales().data<float>(), bp, n,
                                        static_cast<float>(static_cast<double>(k) * 448.0 * 448.0),
                                        act == Activation::GeluTanh ? 0.171f : 0.0f, s.data<float>(),
                                        inv.data<float>());
    check_launch("linear fp8 (product scales)");
    out = out.with_scales(s);
    if (fused_fp8_gemm_applies(c, n, k)) {
      Fp8GemmProblem p;
      p.m = m, p.n = n, p.k = k;
      p.a = xq.raw(), p.b = w.raw();
      p.row_scale = xq.scales().data<float>(), p.col_scale = w.scales().data<float>(), p.bias = bp;
      p.out_inv_scale = inv.data<float>();
      p.d = out.raw();
      p.epilogue = act == Activation::GeluTanh ? Fp8Epilogue::E4m3Gelu : Fp8Epilogue::E4m3;
      p.config = fp8_gemm_schedule();
      p.tanh_gelu = c.policy.fp8_tanh_gelu;
      if (cutlass_fp8_gemm(p, c.num_sms, c.stream)) return check_launch("linear fp8 (fused, e4m3 out)");
      tell_unfused(m, n, k);
    }
    // Declined (an alignment): the bf16 product, quantized by its rows' own amax.
    Tensor t = alloc(out.shape(), DType::BF16);
    linear_fp8(xq, w, bias, act, t);
    out = quantize_rows_e4m3(t);
    return;
  }
  if (fused_fp8_linear_applies(c, n, k, out.dtype(), act)) {
    Fp8GemmProblem p;
    p.m = m, p.n = n, p.k = k;
    p.a = xq.raw(), p.b = w.raw();
    p.row_scale = xq.scales().data<float>(), p.col_scale = w.scales().data<float>(), p.bias = bp;
    p.d = out.raw();
    p.epilogue = act == Activation::GeluTanh ? Fp8Epilogue::Bf16Gelu : Fp8Epilogue::Bf16;
    p.config = fp8_gemm_schedule();
    p.tanh_gelu = c.policy.fp8_tanh_gelu;
    if (cutlass_fp8_gemm(p, c.num_sms, c.stream)) return check_launch("linear fp8 (fused)");
    tell_unfused(m, n, k);
  }
  // Row-major acc[m, n] = xq[m, k] w[n, k]^T is column-major acc^T[n, m] = w^T xq^T.
  Tensor acc = out.dtype() == DType::F32 ? out : alloc({m, n}, DType::F32);
  gemm_fp8(c, n, m, k, w.raw(), xq.raw(), acc.data<float>());
  const int code = act == Activation::GeluTanh ? 1 : act == Activation::Silu ? 2 : 0;
  if (out.dtype() == DType::BF16)
    fp8_epilogue_kernel<<<blocks_for(m * n, 256), 256, 0, c.stream>>>(
        acc.data<float>(), xq.scales().data<float>(), w.scales().data<float>(), bp, out.data<__nv_bfloat16>(), m, n, code);
  else
    fp8_epilogue_kernel<<<blocks_for(m * n, 256), 256, 0, c.stream>>>(
        acc.data<float>(), xq.scales().data<float>(), w.scales().data<float>(), bp, out.data<float>(), m, n, code);
  check_launch("linear fp8 epilogue");
}

bool linear_residual_fp8(CudaBackend& be, CudaContext& c, const Tensor& y, const Tensor& w, const Tensor& bias,
                         const Tensor& gate, Tensor& x) {
  STDIT_CHECK(w.scales().defined() && w.scales().numel() == w.size(0) && w.scales().dtype() == DType::F32,
              "cuda linear_residual: an F8_E4M3 weight must carry F32 row scales");
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2), k = w.size(1);
  if (b * n == 0 || ch == 0) return true;
  OpTimer timer_(c, "linear_residual_fp8", x);
  if (timer_.active()) timer_.detail = cat("w ", shape_str(w.shape()), gate.defined() ? " gated" : "");
  expect_device(x, c, "linear_residual", "x");
  expect_device(w, c, "linear_residual", "weight");
  if (gate.defined()) expect_device(gate, c, "linear_residual", "gate");
  if (bias.defined()) expect_device(bias, c, "linear_residual", "bias");
  const Tensor yq = y.dtype() == DType::F8_E4M3 ? y : be.quantize_rows_e4m3(y);
  if (!yq.scales().defined() || yq.scales().numel() != b * n) return false;
  Fp8GemmProblem p;
  p.n = ch, p.k = k;
  p.a = yq.raw(), p.b = w.raw(), p.row_scale = yq.scales().data<float>();
  p.d = x.raw();
  p.epilogue = Fp8Epilogue::F32Accumulate;
  p.config = fp8_gemm_schedule();
  Tensor sg, bg;
  if (gate.defined()) {  // one batch entry per sample: its own column scales and bias
    sg = be.alloc({b, ch}, DType::F32);
    if (bias.defined()) bg = be.alloc({b, ch}, DType::F32);
    fold_gate_scales_kernel<<<blocks_for(b * ch, 256), 256, 0, c.stream>>>(
        w.scales().data<float>(), bias.defined() ? bias.data<float>() : nullptr, gate.data<float>(), gate.stride(0),
        ch, b, sg.data<float>(), bias.defined() ? bg.data<float>() : nullptr);
    check_launch("linear_residual fp8 (fold gate)");
    p.m = n, p.batch = b, p.a_batch_stride = n * k, p.d_batch_stride = n * ch;
    p.col_scale = sg.data<float>(), p.col_scale_batch_stride = ch;
    p.bias = bias.defined() ? bg.data<float>() : nullptr, p.bias_batch_stride = ch;
  } else {
    p.m = b * n;
    p.col_scale = w.scales().data<float>();
    p.bias = bias.defined() ? bias.data<float>() : nullptr;
  }
  if (!cutlass_fp8_gemm(p, c.num_sms, c.stream)) {
    tell_unfused(p.m, ch, k);
    return false;
  }
  check_launch("linear_residual fp8 (fused)");
  return true;
}

}  // namespace stdit
