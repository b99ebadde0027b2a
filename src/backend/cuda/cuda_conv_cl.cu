// The channels-last family on CUDA (backend.h): BF16 activations [B, T, H, W, C] with channels
// fastest, the layout in which cuDNN's convolutions run on the tensor cores without transposing.
//  - conv3d_cl: cuDNN NHWC (NDHWC for 3-D kernels) BF16 convolutions, f32 accumulation, then one
//    pass that adds the bias and the residual (out = conv + bias + residual, rounded to bf16 once
//    more). Asymmetric padding (causal time padding) is made explicit in a padded copy; an output
//    channel count that is not a multiple of 8 runs on weights padded with zero filters.
//  - group_norm_cl: per-channel shifted sums (f32 per thread, f64 across threads), one small
//    kernel (a block per group) that turns them into its mean and 1/std (f64) and a scale and
//    shift per channel, then one elementwise pass (+ SiLU) with 16-byte accesses.
//  - upsample_nearest2x_cl: each input vector written to its four output pixels.
// Shapes cuDNN cannot take (or a backend without cuDNN convolutions) run the base class's
// channel-first path (permuted F32 copies).
#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "backend/cuda/cuda_common.cuh"

namespace stdit {

using namespace cuda;

namespace {

constexpr int64_t kLim = int64_t{1} << 31;  // cuDNN's 32-bit tensor sizes, our 32-bit vector indices

__device__ __forceinline__ void load8(const __nv_bfloat16* p, float* f) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void store8(__nv_bfloat16* p, const float* f) {
  uint4 u;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

// V consecutive bf16 values as floats (V = 8: one 16-byte access) and back.
template <int V>
__device__ __forceinline__ void load_v(const __nv_bfloat16* p, float* f) {
  if constexpr (V == 8) {
    load8(p, f);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) f[j] = __bfloat162float(p[j]);
  }
}
template <int V>
__device__ __forceinline__ void store_v(__nv_bfloat16* p, const float* f) {
  if constexpr (V == 8) {
    store8(p, f);
  } else {
#pragma unroll
    for (int j = 0; j < V; ++j) p[j] = __float2bfloat16_rn(f[j]);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- conv3d_cl --------------------------------------------------------------------------------

// out[p, c] = conv[p * cs + c] + bias[c] + res[p * co + c] for c < co (cs >= co: the padded
// filters' extra channels are dropped). V = 8: co == cs, co % 8 == 0, 16-byte aligned.
template <int V>
__global__ void cl_epilogue_kernel(const __nv_bfloat16* conv, const float* __restrict__ bias,
                                   const __nv_bfloat16* res, __nv_bfloat16* out, int64_t pixels, int64_t co,
                                   int64_t cs) {
  const int64_t per = co / V, n = pixels * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = i / per, c0 = (i - p * per) * V;
    float v[V];
    load_v<V>(conv + p * cs + c0, v);
    if (bias)
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] += bias[c0 + j];
    if (res) {
      float r[V];
      load_v<V>(res + p * co + c0, r);
#pragma unroll
      for (int j = 0; j < V; ++j) v[j] += r[j];
    }
    store_v<V>(out + p * co + c0, v);
  }
}

// out [B, T + t0 + t1, H + h0 + h1, W + w0 + w1, C] = x [B, T, H, W, C] with zeros around it.
__global__ void cl_pad_kernel(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ out, int64_t b,
                              int64_t t, int64_t h, int64_t w, int64_t c, int t0, int t1, int h0, int h1, int w0,
                              int w1) {
  const int64_t to = t + t0 + t1, ho = h + h0 + h1, wo = w + w0 + w1, n = b * to * ho * wo * c;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = i / c;
    const int64_t ci = i - r * c;
    const int64_t wi = r % wo - w0;
    r /= wo;
    const int64_t hi = r % ho - h0;
    r /= ho;
    const int64_t ti = r % to - t0, bi = r / to;
    __nv_bfloat16 v = __float2bfloat16_rn(0.0f);
    if (ti >= 0 && ti < t && hi >= 0 && hi < h && wi >= 0 && wi < w) v = x[(((bi * t + ti) * h + hi) * w + wi) * c + ci];
    out[i] = v;
  }
}

// The geometry of one conv3d_cl call after the padding cuDNN cannot take is made explicit.
struct ClConv {
  int64_t B, Ci, T, H, W, Co, kt, kh, kw, To, Ho, Wo;
  int st, sh, sw;              // symmetric padding left to cuDNN
  int et0, et1, eh0, eh1, ew0, ew1;  // the rest, in a padded copy
  int64_t Tp, Hp, Wp;          // the padded copy's size
  int64_t Cs;                  // output channels cuDNN computes (Co rounded up to 8)
  bool explicit_pad() const { return et0 | et1 | eh0 | eh1 | ew0 | ew1; }
  bool fits() const {
    return B * Tp * Hp * Wp * Ci < kLim && B * To * Ho * Wo * Cs < kLim && Cs * kt * kh * kw * Ci < kLim &&
           sh <= 0xffff && sw <= 0xffff;
  }
  ConvKey key(const ConvParams& p) const {
    return ConvKey{{B, Ci, Tp, Hp, Wp, Cs, kt, kh, kw, p.stride_t, p.stride_h, p.stride_w, st,
                    (int64_t{sh} << 16) | sw},
                   2};
  }
};

ClConv cl_geometry(const Shape& xs, const Shape& ws, const ConvParams& p) {
  ClConv g{};
  g.B = xs[0], g.T = xs[1], g.H = xs[2], g.W = xs[3], g.Ci = xs[4];
  g.Co = ws[0], g.kt = ws[1], g.kh = ws[2], g.kw = ws[3];
  g.To = (g.T + p.pad_t_front + p.pad_t_back - g.kt) / p.stride_t + 1;
  g.Ho = (g.H + p.pad_top + p.pad_bottom - g.kh) / p.stride_h + 1;
  g.Wo = (g.W + p.pad_left + p.pad_right - g.kw) / p.stride_w + 1;
  g.st = std::min(p.pad_t_front, p.pad_t_back), g.sh = std::min(p.pad_top, p.pad_bottom),
  g.sw = std::min(p.pad_left, p.pad_right);
  g.et0 = p.pad_t_front - g.st, g.et1 = p.pad_t_back - g.st, g.eh0 = p.pad_top - g.sh,
  g.eh1 = p.pad_bottom - g.sh, g.ew0 = p.pad_left - g.sw, g.ew1 = p.pad_right - g.sw;
  g.Tp = g.T + g.et0 + g.et1, g.Hp = g.H + g.eh0 + g.eh1, g.Wp = g.W + g.ew0 + g.ew1;
  g.Cs = (g.Co + 7) / 8 * 8;
  return g;
}

// The cuDNN plan (NHWC BF16 descriptors, f32 accumulation) for a geometry; nullptr when cuDNN
// offers nothing for it.
const ConvPlan* cl_plan(CudaContext& c, const ClConv& g, const ConvKey& key) {
  if (!dnn_handle(c)) return nullptr;
  std::lock_guard<std::mutex> lock(c.conv_mutex);
  auto [it, inserted] = c.conv_plans.try_emplace(key);
  ConvPlan& p = it->second;
  if (!inserted) return p.ok ? &p : nullptr;
  const bool two_d = g.Tp == 1 && g.kt == 1;  // cuDNN's 2-D kernels are the better tuned ones
  const int nd = two_d ? 4 : 5;
  int xd[5] = {int(g.B), int(g.Ci), int(g.Tp), int(g.Hp), int(g.Wp)};
  int wd[5] = {int(g.Cs), int(g.Ci), int(g.kt), int(g.kh), int(g.kw)};
  int pad[3] = {g.st, g.sh, g.sw}, stride[3] = {int(key.dims[9]), int(key.dims[10]), int(key.dims[11])};
  const int dil[3] = {1, 1, 1};
  if (two_d) {  // drop T
    xd[2] = xd[3], xd[3] = xd[4], wd[2] = wd[3], wd[3] = wd[4];
    pad[0] = pad[1], pad[1] = pad[2], stride[0] = stride[1], stride[1] = stride[2];
  }
  int yd[5];
  bool ok = cudnnCreateTensorDescriptor(&p.x) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateTensorDescriptor(&p.y) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateFilterDescriptor(&p.w) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateConvolutionDescriptor(&p.conv) == CUDNN_STATUS_SUCCESS &&
            cudnnSetTensorNdDescriptorEx(p.x, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, nd, xd) ==
                CUDNN_STATUS_SUCCESS &&
            cudnnSetFilterNdDescriptor(p.w, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, nd, wd) == CUDNN_STATUS_SUCCESS &&
            cudnnSetConvolutionNdDescriptor(p.conv, nd - 2, pad, stride, dil, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT) == CUDNN_STATUS_SUCCESS &&
            cudnnGetConvolutionNdForwardOutputDim(p.conv, p.x, p.w, nd, yd) == CUDNN_STATUS_SUCCESS &&
            cudnnSetTensorNdDescriptorEx(p.y, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, nd, yd) ==
                CUDNN_STATUS_SUCCESS;
  int64_t x_elems = 1, y_elems = 1;
  for (int i = 0; ok && i < nd; ++i) x_elems *= xd[i], y_elems *= yd[i];
  if (ok && std::getenv("STDIT_CUDA_CONV_PROFILE"))
    std::fprintf(stderr, "conv_cl plan x[%d,%d,%d,%d,%d] w[%d,%d,%d,%d,%d] (%d-d):\n", xd[0], xd[1], xd[2], xd[3],
                 nd == 5 ? xd[4] : 0, wd[0], wd[1], wd[2], wd[3], nd == 5 ? wd[4] : 0, nd - 2);
  // Tensor-core math asked for before the heuristics are: under CUDNN_DEFAULT_MATH cuDNN ranks
  // only BF16 kernels without tensor cores (measured: 9x slower than the F32 path's TF32 ones).
  // conv_workspace_limit counts F32 elements: the same bytes allow a BF16 call twice the room.
  ok = ok && cudnnSetConvolutionMathType(p.conv, CUDNN_TENSOR_OP_MATH) == CUDNN_STATUS_SUCCESS &&
       choose_conv_algo(c, p, conv_workspace_limit(g.B, x_elems, y_elems), false);
  p.ok = ok;
  return ok ? &p : nullptr;
}

// The cuDNN plan that runs this call, or nullptr: the base class's channel-first path.
const ConvPlan* cl_cudnn_plan(CudaContext& c, const ClConv& g, const ConvParams& p) {
  return c.options.cudnn_conv && g.B > 0 && g.fits() ? cl_plan(c, g, g.key(p)) : nullptr;
}

// Device memory a cuDNN conv3d_cl call takes for itself: the padded copy, the zero-padded filters
// and the wide output when Co % 8 != 0, cuDNN's workspace (per half when the batch is split).
size_t cl_scratch(CudaContext& c, const ClConv& g, const ConvParams& p, const ConvPlan* plan) {
  if (!plan) return 0;
  if (!plan->best_fits && g.B > 1) {
    ClConv h0 = g, h1 = g;
    h0.B = g.B / 2, h1.B = g.B - g.B / 2;
    return std::max(cl_scratch(c, h0, p, cl_plan(c, h0, h0.key(p))), cl_scratch(c, h1, p, cl_plan(c, h1, h1.key(p))));
  }
  size_t s = plan->workspace;
  if (g.explicit_pad()) s += static_cast<size_t>(g.B * g.Tp * g.Hp * g.Wp * g.Ci) * 2;
  if (g.Cs != g.Co) s += static_cast<size_t>(g.Cs * g.kt * g.kh * g.kw * g.Ci + g.B * g.To * g.Ho * g.Wo * g.Cs) * 2;
  return s;
}

// One cuDNN call (or two halves of the batch) for x [B, T, H, W, Ci] into out, then the epilogue.
void conv3d_cl_cudnn(const std::shared_ptr<CudaContext>& ctx, const ClConv& g, const ConvPlan* plan,
                     const ConvParams& p, const Tensor& x, const __nv_bfloat16* w, const Tensor& bias,
                     const Tensor& residual, Tensor& out) {
  CudaContext& c = *ctx;
  STDIT_CHECK(plan, "internal: conv3d_cl without a cuDNN plan");
  if (!plan->best_fits && g.B > 1) {  // halves of the batch, each with its own (smaller) plan
    const int64_t h = g.B / 2;
    ClConv g0 = g, g1 = g;
    g0.B = h, g1.B = g.B - h;
    Tensor o0 = out.slice(0, 0, h), o1 = out.slice(0, h, g.B);
    const Tensor r0 = residual.defined() ? residual.slice(0, 0, h) : Tensor{};
    const Tensor r1 = residual.defined() ? residual.slice(0, h, g.B) : Tensor{};
    const ConvPlan *p0 = cl_plan(c, g0, g0.key(p)), *p1 = cl_plan(c, g1, g1.key(p));
    STDIT_CHECK(p0 && p1, "cuda conv3d_cl: cuDNN takes ", shape_str(x.shape()), " but not its halves");
    conv3d_cl_cudnn(ctx, g0, p0, p, x.slice(0, 0, h), w, bias, r0, o0);
    conv3d_cl_cudnn(ctx, g1, p1, p, x.slice(0, h, g.B), w, bias, r1, o1);
    return;
  }
  const __nv_bfloat16* in = x.data<__nv_bfloat16>();
  std::shared_ptr<void> padded, wide_w, wide_out;
  if (g.explicit_pad()) {
    const int64_t n = g.B * g.Tp * g.Hp * g.Wp * g.Ci;
    padded = device_alloc(ctx, static_cast<size_t>(n) * 2);
    cl_pad_kernel<<<blocks_for(n, 256), 256, 0, c.stream>>>(in, static_cast<__nv_bfloat16*>(padded.get()), g.B, g.T,
                                                            g.H, g.W, g.Ci, g.et0, g.et1, g.eh0, g.eh1, g.ew0, g.ew1);
    check_launch("conv3d_cl pad");
    in = static_cast<const __nv_bfloat16*>(padded.get());
  }
  __nv_bfloat16* y = out.data<__nv_bfloat16>();
  if (g.Cs != g.Co) {  // zero filters up to a multiple of 8 output channels, a wide output
    const size_t filt = static_cast<size_t>(g.kt * g.kh * g.kw * g.Ci) * 2;
    wide_w = device_alloc(ctx, filt * g.Cs);
    STDIT_CUDA_CHECK(cudaMemsetAsync(wide_w.get(), 0, filt * g.Cs, c.stream));
    STDIT_CUDA_CHECK(cudaMemcpyAsync(wide_w.get(), w, filt * g.Co, cudaMemcpyDeviceToDevice, c.stream));
    w = static_cast<const __nv_bfloat16*>(wide_w.get());
    wide_out = device_alloc(ctx, static_cast<size_t>(g.B * g.To * g.Ho * g.Wo * g.Cs) * 2);
    y = static_cast<__nv_bfloat16*>(wide_out.get());
  }
  auto ws = device_alloc(ctx, plan->workspace);
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t s = cudnnConvolutionForward(c.dnn, &one, plan->x, in, plan->w, w, plan->conv, plan->algo,
                                                  ws.get(), plan->workspace, &zero, plan->y, y);
  STDIT_CHECK(s == CUDNN_STATUS_SUCCESS, "cuda conv3d_cl: cuDNN failed on ", shape_str(x.shape()), ": ",
              cudnnGetErrorString(s));
  const int64_t pixels = g.B * g.To * g.Ho * g.Wo;
  const float* pb = bias.defined() ? bias.data<float>() : nullptr;
  const __nv_bfloat16* pr = residual.defined() ? residual.data<__nv_bfloat16>() : nullptr;
  if (!pb && !pr && g.Cs == g.Co) return;
  const bool vec = g.Cs == g.Co && g.Co % 8 == 0 && aligned16(y) && aligned16(out.raw()) && (!pr || aligned16(pr));
  if (vec)
    cl_epilogue_kernel<8><<<blocks_for(pixels * g.Co / 8, 256), 256, 0, c.stream>>>(
        y, pb, pr, out.data<__nv_bfloat16>(), pixels, g.Co, g.Cs);
  else
    cl_epilogue_kernel<1><<<blocks_for(pixels * g.Co, 256), 256, 0, c.stream>>>(y, pb, pr, out.data<__nv_bfloat16>(),
                                                                              pixels, g.Co, g.Cs);
  check_launch("conv3d_cl bias/residual");
}

void expect_cl(const Tensor& t, const CudaContext& c, const char* op, const char* what) {
  expect_device(t, c, op, what);
  STDIT_CHECK(t.dtype() == DType::BF16 && t.is_contiguous() && t.dim() == 5, "cuda ", op, ": ", what,
              " must be a contiguous BF16 [B, T, H, W, C] tensor, got ", dtype_name(t.dtype()), " ",
              shape_str(t.shape()));
}

// ---- group_norm_cl ----------------------------------------------------------------------------

constexpr int kClThreads = 256;

// grid (chunks, B): per-channel sums of d = x - shift[c] and d^2 over chunk k of the pixels of
// batch b (shift[c] = the channel's value at the first pixel, against cancellation), written as
// f64 partials [B, chunks, C]. Thread layout: tpp threads per pixel (V channels each), ppb pixels
// side by side.
template <int V>
__global__ void __launch_bounds__(kClThreads)
    gn_cl_stats_kernel(const __nv_bfloat16* __restrict__ x, double* __restrict__ psum, double* __restrict__ psq,
                       int64_t P, int64_t C, int64_t chunk, int tpp, int ppb) {
  extern __shared__ float red[];  // [2][ppb][C]
  const int64_t b = blockIdx.y, k = blockIdx.x, p0 = k * chunk, p1 = min(P, p0 + chunk);
  const int tid = threadIdx.x, o = tid % tpp, r = tid / tpp;
  const __nv_bfloat16* xb = x + b * P * C;
  const int64_t c0 = static_cast<int64_t>(o) * V;
  float s[V] = {}, q[V] = {}, sh[V];
  if (r < ppb) {
#pragma unroll
    for (int j = 0; j < V; ++j) sh[j] = __bfloat162float(xb[c0 + j]);
    for (int64_t p = p0 + r; p < p1; p += ppb) {
      float v[V];
      load_v<V>(xb + p * C + c0, v);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float d = v[j] - sh[j];
        s[j] += d;
        q[j] = fmaf(d, d, q[j]);
      }
    }
#pragma unroll
    for (int j = 0; j < V; ++j) {
      red[r * C + c0 + j] = s[j];
      red[(ppb + r) * C + c0 + j] = q[j];
    }
  }
  __syncthreads();
  for (int64_t ch = tid; ch < C; ch += blockDim.x) {
    double ts = 0, tq = 0;
    for (int i = 0; i < ppb; ++i) ts += red[i * C + ch], tq += red[(ppb + i) * C + ch];
    psum[(b * gridDim.x + k) * C + ch] = ts;
    psq[(b * gridDim.x + k) * C + ch] = tq;
  }
}

constexpr int kFinThreads = 128;

__device__ double block_sum_d(double v, double* sh /* [kFinThreads / 32] */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // sh may still be read from a previous call
  if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
  __syncthreads();
  double t = 0;
  for (int w = 0; w < kFinThreads / 32; ++w) t += sh[w];
  return t;
}

// grid (groups, B): group g's mean and variance from its channels' shifted sums (f64), then per
// channel scale = gamma / std and shift = beta - mean * scale, [B, C] F32. With S_c = sum d,
// Q_c = sum d^2 (d = x - s_c): mean = sum_c (S_c + P s_c) / n and
// sum (x - mean)^2 = sum_c (Q_c + 2 (s_c - mean) S_c + P (s_c - mean)^2).
__global__ void __launch_bounds__(kFinThreads)
    gn_cl_finalize_kernel(const __nv_bfloat16* __restrict__ x, const double* __restrict__ psum,
                          const double* __restrict__ psq, const float* __restrict__ gamma,
                          const float* __restrict__ beta, float* __restrict__ scale, float* __restrict__ shift,
                          int64_t P, int64_t C, int64_t chunks, int groups, float eps) {
  __shared__ double sh[kFinThreads / 32];
  const int64_t g = blockIdx.x, b = blockIdx.y, cg = C / groups, c0 = g * cg, items = cg * chunks;
  const __nv_bfloat16* xb = x + b * P * C;  // s_c = xb[c], the channel's first pixel
  auto at = [&](int64_t idx) { return (b * chunks + idx % chunks) * C + c0 + idx / chunks; };
  double v = 0, s0 = 0;
  for (int64_t idx = threadIdx.x; idx < items; idx += blockDim.x) v += psum[at(idx)];
  for (int64_t ch = threadIdx.x; ch < cg; ch += blockDim.x) s0 += __bfloat162float(xb[c0 + ch]);
  const double n = static_cast<double>(P) * cg;
  const double mean = (block_sum_d(v, sh) + static_cast<double>(P) * block_sum_d(s0, sh)) / n;
  double q = 0, dms = 0, dm2 = 0;
  for (int64_t idx = threadIdx.x; idx < items; idx += blockDim.x) {
    const double dm = static_cast<double>(__bfloat162float(xb[c0 + idx / chunks])) - mean;
    q += psq[at(idx)];
    dms += dm * psum[at(idx)];
  }
  for (int64_t ch = threadIdx.x; ch < cg; ch += blockDim.x) {
    const double dm = static_cast<double>(__bfloat162float(xb[c0 + ch])) - mean;
    dm2 += dm * dm;
  }
  const double m2 = block_sum_d(q, sh) + 2 * block_sum_d(dms, sh) + static_cast<double>(P) * block_sum_d(dm2, sh);
  const double rstd = 1.0 / sqrt(fmax(m2 / n, 0.0) + eps);
  for (int64_t ch = c0 + threadIdx.x; ch < c0 + cg; ch += blockDim.x) {
    const double a = rstd * gamma[ch];
    scale[b * C + ch] = static_cast<float>(a);
    shift[b * C + ch] = static_cast<float>(beta[ch] - mean * a);
  }
}

// out = x * scale[b, c] + shift[b, c] (then SiLU), V channels per thread.
template <int V>
__global__ void gn_cl_apply_kernel(const __nv_bfloat16* x, const float* __restrict__ scale,
                                   const float* __restrict__ shift, __nv_bfloat16* out, int64_t B, int64_t P,
                                   int64_t C, bool silu) {
  const int64_t per = C / V, n = B * P * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / per, c0 = (i - row * per) * V, b = row / P;
    float v[V];
    load_v<V>(x + row * C + c0, v);
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float y = fmaf(v[j], scale[b * C + c0 + j], shift[b * C + c0 + j]);
      v[j] = silu ? silu_f(y) : y;
    }
    store_v<V>(out + row * C + c0, v);
  }
}

// The launch geometry of group_norm_cl: V channels per thread (8 when C % 8 == 0), tpp threads per
// pixel, ppb pixels per block, chunks of pixels per batch index. tpp > 256 (C > 2048, or an odd C
// over 256): the base class's path.
struct GnCl {
  int V = 1, tpp = 0, ppb = 0;
  int64_t chunks = 0, chunk = 0;
  bool ok = false;
  size_t scratch(int64_t B, int64_t C) const {
    return ok ? static_cast<size_t>(2 * B * chunks * C) * sizeof(double) + static_cast<size_t>(2 * B * C) * sizeof(float)
              : 0;
  }
};
GnCl gn_cl_geometry(const CudaContext& c, int64_t B, int64_t P, int64_t C, bool aligned) {
  GnCl g;
  g.V = C % 8 == 0 && aligned ? 8 : 1;
  g.tpp = static_cast<int>(C / g.V);
  if (g.tpp > kClThreads || B == 0 || P == 0 || C == 0) return g;
  g.ppb = kClThreads / g.tpp;
  const int64_t want = std::max<int64_t>(1, (4 * c.num_sms + B - 1) / B);
  g.chunks = std::max<int64_t>(1, std::min<int64_t>({want, (P + 4 * g.ppb - 1) / (4 * g.ppb), 1024}));
  g.chunk = (P + g.chunks - 1) / g.chunks;
  g.chunks = (P + g.chunk - 1) / g.chunk;
  g.ok = true;
  return g;
}

}  // namespace

DType CudaBackend::channels_last_dtype() const { return DType::BF16; }

void CudaBackend::conv3d_cl(const Tensor& x, const Tensor& w, const Tensor& bias, const Tensor& residual,
                            const ConvParams& p, Tensor& out) {
  OpTimer timer(*ctx_, "conv3d_cl", x);
  const char* op = "conv3d_cl";
  CudaContext& c = *ctx_;
  expect_cl(x, c, op, "x");
  expect_cl(w, c, op, "weight");
  expect_cl(out, c, op, "out");
  STDIT_CHECK(w.size(4) == x.size(4), "cuda conv3d_cl: input has ", x.size(4), " channels, weight expects ",
              w.size(4));
  STDIT_CHECK(p.stride_t > 0 && p.stride_h > 0 && p.stride_w > 0, "cuda conv3d_cl: strides must be positive");
  const ClConv g = cl_geometry(x.shape(), w.shape(), p);
  expect_shape(out, {g.B, g.To, g.Ho, g.Wo, g.Co}, op, "out");
  if (bias.defined()) {
    expect_contiguous_f32(bias, c, op, "bias");
    STDIT_CHECK(bias.numel() == g.Co, "cuda conv3d_cl: bias has ", bias.numel(), " values for ", g.Co, " channels");
  }
  if (residual.defined()) {
    expect_cl(residual, c, op, "residual");
    expect_shape(residual, out.shape(), op, "residual");
  }
  if (out.numel() == 0) return;
  const ConvPlan* plan = cl_cudnn_plan(c, g, p);
  if (!plan) {
    if (timer.active()) timer.detail = cat("* ", shape_str(w.shape()), " channel-first");
    return Backend::conv3d_cl(x, w, bias, residual, p, out);
  }
  if (timer.active()) timer.detail = cat("* ", shape_str(w.shape()), " s", p.stride_h, " cudnn");
  conv3d_cl_cudnn(ctx_, g, plan, p, x, w.data<__nv_bfloat16>(), bias, residual, out);
}

size_t conv3d_cl_scratch_bytes(const std::shared_ptr<CudaContext>& ctx, const Shape& xs, const Shape& ws,
                               const ConvParams& p, bool residual) {
  const ClConv g = cl_geometry(xs, ws, p);
  if (g.B * g.To * g.Ho * g.Wo * g.Co == 0) return 0;
  if (const ConvPlan* plan = cl_cudnn_plan(*ctx, g, p)) return cl_scratch(*ctx, g, p, plan);
  // The base class's path (backend.cpp): F32 channel-first copies of x, w, the output and the
  // residual, then conv3d's own scratch while the copies of x, w and the output are held.
  const int64_t xn = g.B * g.T * g.H * g.W * g.Ci, wn = g.Co * g.kt * g.kh * g.kw * g.Ci, on = g.B * g.To * g.Ho * g.Wo * g.Co;
  const size_t copies = static_cast<size_t>(xn + wn + on) * sizeof(float);
  const size_t conv = conv3d_scratch_bytes(ctx, {g.B, g.Ci, g.T, g.H, g.W}, {g.Co, g.Ci, g.kt, g.kh, g.kw}, DType::F32, p);
  return copies + std::max(conv, residual ? static_cast<size_t>(on) * sizeof(float) : size_t{0});
}

void CudaBackend::group_norm_cl(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups, float eps,
                                bool silu, Tensor& out) {
  OpTimer timer(*ctx_, "group_norm_cl", x);
  const char* op = "group_norm_cl";
  const CudaContext& c = *ctx_;
  expect_cl(x, c, op, "x");
  expect_cl(out, c, op, "out");
  expect_shape(out, x.shape(), op, "out");
  expect_contiguous_f32(gamma, c, op, "gamma");
  expect_contiguous_f32(beta, c, op, "beta");
  const int64_t B = x.size(0), C = x.size(4), P = x.size(1) * x.size(2) * x.size(3);
  STDIT_CHECK(groups > 0 && C % groups == 0 && gamma.numel() == C && beta.numel() == C, "cuda group_norm_cl: ", C,
              " channels, ", groups, " groups");
  if (x.numel() == 0) return;
  const GnCl g = gn_cl_geometry(c, B, P, C, aligned16(x.raw()) && aligned16(out.raw()));
  if (!g.ok) return Backend::group_norm_cl(x, gamma, beta, groups, eps, silu, out);
  auto mem = device_alloc(ctx_, g.scratch(B, C));
  double* psum = static_cast<double*>(mem.get());
  double* psq = psum + B * g.chunks * C;
  float* scale = reinterpret_cast<float*>(psq + B * g.chunks * C);
  float* shift = scale + B * C;
  const dim3 grid(static_cast<unsigned>(g.chunks), static_cast<unsigned>(B));
  const size_t smem = static_cast<size_t>(2 * g.ppb * C) * sizeof(float);
  const auto* px = x.data<__nv_bfloat16>();
  if (g.V == 8)
    gn_cl_stats_kernel<8><<<grid, kClThreads, smem, c.stream>>>(px, psum, psq, P, C, g.chunk, g.tpp, g.ppb);
  else
    gn_cl_stats_kernel<1><<<grid, kClThreads, smem, c.stream>>>(px, psum, psq, P, C, g.chunk, g.tpp, g.ppb);
  check_launch(op);
  gn_cl_finalize_kernel<<<dim3(static_cast<unsigned>(groups), static_cast<unsigned>(B)), kFinThreads, 0, c.stream>>>(
      px, psum, psq, gamma.data<float>(), beta.data<float>(), scale, shift, P, C, g.chunks, groups, eps);
  check_launch(op);
  const int64_t vecs = B * P * C / g.V;
  if (g.V == 8)
    gn_cl_apply_kernel<8><<<blocks_for(vecs, 256), 256, 0, c.stream>>>(px, scale, shift, out.data<__nv_bfloat16>(),
                                                                      B, P, C, silu);
  else
    gn_cl_apply_kernel<1><<<blocks_for(vecs, 256), 256, 0, c.stream>>>(px, scale, shift, out.data<__nv_bfloat16>(),
                                                                      B, P, C, silu);
  check_launch(op);
}

size_t group_norm_cl_scratch_bytes(const CudaContext& c, const Shape& xs) {
  const int64_t B = xs[0], C = xs[4], P = xs[1] * xs[2] * xs[3];
  const GnCl g = gn_cl_geometry(c, B, P, C, true);
  if (g.ok || B * P * C == 0) return g.scratch(B, C);
  return static_cast<size_t>(2 * B * P * C) * sizeof(float);  // the base class's F32 copies
}

namespace {
// out [B, T, 2H, 2W, C] from x [B, T, H, W, C]: each of x's V-channel vectors to four pixels.
template <int V>
__global__ void upsample_cl_kernel(const __nv_bfloat16* __restrict__ x, __nv_bfloat16* __restrict__ out,
                                   int64_t rows /* B*T*H */, int64_t h, int64_t w, int64_t c) {
  const int64_t per = c / V, n = rows * w * per;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t cv = i % per, px = i / per, wi = px % w, r = px / w, hi = r % h, bt = r / h;
    const int64_t src = px * c + cv * V;
    const int64_t o00 = ((bt * 2 * h + 2 * hi) * 2 * w + 2 * wi) * c + cv * V, down = 2 * w * c;
    if constexpr (V == 8) {
      const uint4 v = *reinterpret_cast<const uint4*>(x + src);
      *reinterpret_cast<uint4*>(out + o00) = v;
      *reinterpret_cast<uint4*>(out + o00 + c) = v;
      *reinterpret_cast<uint4*>(out + o00 + down) = v;
      *reinterpret_cast<uint4*>(out + o00 + down + c) = v;
    } else {
      const __nv_bfloat16 v = x[src];
      out[o00] = v, out[o00 + c] = v, out[o00 + down] = v, out[o00 + down + c] = v;
    }
  }
}
}  // namespace

void CudaBackend::upsample_nearest2x_cl(const Tensor& x, Tensor& out) {
  OpTimer timer(*ctx_, "upsample_nearest2x_cl", x);
  const char* op = "upsample_nearest2x_cl";
  const CudaContext& c = *ctx_;
  expect_cl(x, c, op, "x");
  expect_cl(out, c, op, "out");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), W = x.size(3), C = x.size(4);
  expect_shape(out, {B, T, 2 * H, 2 * W, C}, op, "out");
  if (x.numel() == 0) return;
  const bool vec = C % 8 == 0 && aligned16(x.raw()) && aligned16(out.raw());
  if (vec)
    upsample_cl_kernel<8><<<blocks_for(x.numel() / 8, 256), 256, 0, c.stream>>>(
        x.data<__nv_bfloat16>(), out.data<__nv_bfloat16>(), B * T * H, H, W, C);
  else
    upsample_cl_kernel<1><<<blocks_for(x.numel(), 256), 256, 0, c.stream>>>(
        x.data<__nv_bfloat16>(), out.data<__nv_bfloat16>(), B * T * H, H, W, C);
  check_launch(op);
}

}  // namespace stdit
