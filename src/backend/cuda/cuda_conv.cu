// CUDA 3D convolution (2D = T of 1). F32 input and weight: cuDNN's implicit-GEMM convolutions
// (TF32 tensor cores unless the backend is in F32 mode), with asymmetric padding (causal time
// padding, the encoder's (0, 1, 0, 1) downsampling) made explicit first. At most 16 input channels
// and 256 taps: a direct F32 kernel. 1x1x1 stride-1 unpadded convolutions are one GEMM on the
// input. The fallback, and the path for BF16 weights: im2col into a bounded column buffer +
// cuBLASLt GEMM per batch index.
//
// STDIT_CUDA_CONV_PROFILE=1: the op profile (OpTimer) plus the heuristics' ranking of each new
// cuDNN geometry, printed: a diagnostic for choosing paths.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "backend/cuda/cuda_common.cuh"
#include "core/log.h"

namespace stdit {

// The heuristics' ranking for p's descriptors; takes the first algorithm that runs within
// ws_limit bytes of workspace (with fma_only, one without tensor cores) and sets p.algo,
// p.workspace, p.best_fits and the descriptor's math type. false: none fits.
bool choose_conv_algo(CudaContext& c, ConvPlan& p, size_t ws_limit, bool fma_only) {
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int n = 0;
  if (cudnnGetConvolutionForwardAlgorithm_v7(c.dnn, p.x, p.w, p.conv, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n,
                                             perf) != CUDNN_STATUS_SUCCESS)
    return false;
  if (std::getenv("STDIT_CUDA_CONV_PROFILE"))
    for (int i = 0; i < n; ++i)
      std::fprintf(stderr, "conv plan: #%d algo %d status %d mem %zu math %d\n", i, int(perf[i].algo),
                   int(perf[i].status), perf[i].memory, int(perf[i].mathType));
  bool found = false, skipped = false;
  for (int i = 0; i < n && !found; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    if (fma_only && perf[i].mathType != CUDNN_FMA_MATH) continue;
    if (perf[i].memory > ws_limit) {
      skipped = true;
      continue;
    }
    found = cudnnSetConvolutionMathType(p.conv, perf[i].mathType) == CUDNN_STATUS_SUCCESS;
    p.algo = perf[i].algo;
    p.workspace = perf[i].memory;
  }
  p.best_fits = found && !skipped;
  return found;
}
// Most workspace a convolution may take: 1 GiB; for a batch of one, up to twice its input and
// output together. The fast TF32 algorithm (IMPLICIT_PRECOMP_GEMM) wants about twice the input;
// for a batch of large NCHW planes (720p frames at 128-256 channels) that is over 1 GiB, and the
// heuristics' next choice is ~10x slower (IMPLICIT_GEMM: 23 TFLOP/s at [2,256,720,1280], measured
// on an H200), so the caller splits the batch down to single frames instead.
size_t conv_workspace_limit(int64_t batch, int64_t x_elems, int64_t y_elems) {
  const size_t base = size_t{1} << 30;
  if (batch > 1) return base;
  return std::max<size_t>(base, 2 * static_cast<size_t>(x_elems + y_elems) * sizeof(float));
}

using namespace cuda;

namespace {

struct ConvGeom {
  int64_t ci, t, h, w;          // input
  int kt, kh, kw;               // kernel
  int64_t to, ho, wo;           // output
  int st, sh, sw, pt, ph, pw;   // strides, front/top/left padding
};

// col[k * nc + jl] for k in [0, K), jl in [0, nc): input value of output column j0 + jl
// (j = (to, ho, wo)) under kernel tap k = (ci, dt, dh, dw); zero outside the input. grid.y walks
// the taps (decoded once per block), grid.x the columns; 32-bit column arithmetic (J < 2^31).
// TC: F32 columns (TF32/F32 GEMM) or BF16/F16 columns (16-bit weights).
template <typename TC>
__global__ void im2col_kernel(const float* __restrict__ x, TC* __restrict__ col, ConvGeom g,
                              int j0, int nc, int kdim) {
  const int wo_n = static_cast<int>(g.wo), hw = static_cast<int>(g.ho * g.wo);
  const int t_n = static_cast<int>(g.t), h_n = static_cast<int>(g.h), w_n = static_cast<int>(g.w);
  for (int k = blockIdx.y; k < kdim; k += gridDim.y) {
    int kk = k;
    const int dw = kk % g.kw;
    kk /= g.kw;
    const int dh = kk % g.kh;
    kk /= g.kh;
    const int dt = kk % g.kt, ci = kk / g.kt;
    const float* xc = x + static_cast<int64_t>(ci) * t_n * h_n * w_n;
    TC* cr = col + static_cast<int64_t>(k) * nc;
    for (int jl = blockIdx.x * blockDim.x + threadIdx.x; jl < nc; jl += gridDim.x * blockDim.x) {
      const int j = j0 + jl, to = j / hw, r = j - to * hw, ho = r / wo_n, wo = r - ho * wo_n;
      const int ti = to * g.st + dt - g.pt, hi = ho * g.sh + dh - g.ph, wi = wo * g.sw + dw - g.pw;
      float v = 0.0f;
      if (ti >= 0 && ti < t_n && hi >= 0 && hi < h_n && wi >= 0 && wi < w_n)
        v = xc[(static_cast<int64_t>(ti) * h_n + hi) * w_n + wi];
      store_out(cr + jl, v);
    }
  }
}

// Few input channels (the VAE's 4-channel latents into its first convolutions): a direct F32
// kernel. K = Ci * kt * kh * kw <= kSmallK taps; a block covers kSmallCo output channels (their
// weights [K][kSmallCo] in shared memory, bias folded in) for blockDim consecutive output
// positions, a thread one position: each input value (zero outside the input) read once and
// multiplied into kSmallCo accumulators, taps in the CPU's (ci, dt, dh, dw) order. cuDNN's
// choices for Ci = 4 ran 1-15 ms a call at the VAE's shapes (docs/PERF.md).
constexpr int kSmallK = 256, kSmallCo = 32, kSmallThreads = 128;
__global__ void __launch_bounds__(kSmallThreads)
    conv_small_ci_kernel(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                         float* __restrict__ out, ConvGeom g, int64_t co_n) {
  __shared__ float4 ws[kSmallK * kSmallCo / 4];
  const int K = static_cast<int>(g.ci) * g.kt * g.kh * g.kw;
  const int64_t co0 = static_cast<int64_t>(blockIdx.y) * kSmallCo, b = blockIdx.z;
  float* wsf = reinterpret_cast<float*>(ws);
  for (int i = threadIdx.x; i < K * kSmallCo; i += blockDim.x) {
    const int k = i / kSmallCo, c = i - k * kSmallCo;
    wsf[i] = co0 + c < co_n ? w[(co0 + c) * K + k] : 0.0f;
  }
  __syncthreads();
  const int64_t J = g.to * g.ho * g.wo, j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= J) return;
  const int64_t to = j / (g.ho * g.wo), r = j - to * g.ho * g.wo, ho = r / g.wo, wo = r - ho * g.wo;
  const float* xb = x + b * g.ci * g.t * g.h * g.w;
  float acc[kSmallCo];
#pragma unroll
  for (int c = 0; c < kSmallCo; ++c) acc[c] = 0.0f;
  int k = 0;
  for (int64_t ci = 0; ci < g.ci; ++ci)
    for (int dt = 0; dt < g.kt; ++dt) {
      const int64_t ti = to * g.st + dt - g.pt;
      for (int dh = 0; dh < g.kh; ++dh) {
        const int64_t hi = ho * g.sh + dh - g.ph;
        for (int dw = 0; dw < g.kw; ++dw, ++k) {
          const int64_t wi = wo * g.sw + dw - g.pw;
          if (ti < 0 || ti >= g.t || hi < 0 || hi >= g.h || wi < 0 || wi >= g.w) continue;
          const float v = xb[((ci * g.t + ti) * g.h + hi) * g.w + wi];
#pragma unroll
          for (int c4 = 0; c4 < kSmallCo / 4; ++c4) {
            const float4 wv = ws[k * (kSmallCo / 4) + c4];
            acc[4 * c4] = fmaf(v, wv.x, acc[4 * c4]);
            acc[4 * c4 + 1] = fmaf(v, wv.y, acc[4 * c4 + 1]);
            acc[4 * c4 + 2] = fmaf(v, wv.z, acc[4 * c4 + 2]);
            acc[4 * c4 + 3] = fmaf(v, wv.w, acc[4 * c4 + 3]);
          }
        }
      }
    }
  float* ob = out + (b * co_n + co0) * J + j;
#pragma unroll
  for (int c = 0; c < kSmallCo; ++c)
    if (co0 + c < co_n) ob[c * J] = acc[c] + (bias ? bias[co0 + c] : 0.0f);
}

// Whether conv_small_ci_kernel takes a convolution (F32 weights, few taps, few input channels).
bool small_ci_applies(DType wt, int64_t ci, int64_t K) { return wt == DType::F32 && ci <= 16 && K <= kSmallK; }

// out[b, co, j] += bias[co]; out viewed as [planes = B*Co, J].
__global__ void conv_bias_kernel(float* __restrict__ o, const float* __restrict__ bias,
                                 int64_t planes, int64_t co, int64_t j) {
  for (int64_t pl = blockIdx.y; pl < planes; pl += gridDim.y) {
    const float bv = bias[pl % co];
    float* op = o + pl * j;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < j;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      op[i] += bv;
  }
}

// out [planes, T + pt0 + pt1, H + ph0 + ph1, W + pw0 + pw1] = x [planes, T, H, W] with zeros
// around it.
__global__ void pad3d_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t planes,
                             int64_t t, int64_t h, int64_t w, int pt0, int pt1, int ph0, int ph1,
                             int pw0, int pw1) {
  const int64_t to = t + pt0 + pt1, ho = h + ph0 + ph1, wo = w + pw0 + pw1;
  const int64_t n = planes * to * ho * wo;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = i;
    const int64_t wi = r % wo - pw0;
    r /= wo;
    const int64_t hi = r % ho - ph0;
    r /= ho;
    const int64_t ti = r % to - pt0, pl = r / to;
    float v = 0.0f;
    if (ti >= 0 && ti < t && hi >= 0 && hi < h && wi >= 0 && wi < w)
      v = x[((pl * t + ti) * h + hi) * w + wi];
    out[i] = v;
  }
}

void add_bias(CudaContext& c, float* po, const float* bias, int64_t B, int64_t Co, int64_t J) {
  dim3 grid(blocks_for(J, 256, 64), static_cast<unsigned>(std::min<int64_t>(B * Co, 65535)));
  conv_bias_kernel<<<grid, 256, 0, c.stream>>>(po, bias, B * Co, Co, J);
  check_launch("conv3d bias");
}


// The cuDNN plan for an unpadded-or-symmetrically-padded F32 convolution of this geometry, or
// nullptr when cuDNN cannot run it here (then the caller takes the im2col path).
const ConvPlan* cudnn_plan(CudaContext& c, const ConvKey& key) {
  if (!dnn_handle(c)) return nullptr;
  std::lock_guard<std::mutex> lock(c.conv_mutex);
  auto [it, inserted] = c.conv_plans.try_emplace(key);
  ConvPlan& p = it->second;
  if (!inserted) return p.ok ? &p : nullptr;
  const int64_t* d = key.dims;
  // A convolution over single frames (T = kt = 1) is given to cuDNN as 2-D (NCHW): its 2-D
  // kernels are the better tuned ones.
  const bool two_d = d[2] == 1 && d[6] == 1;
  const int nd = two_d ? 4 : 5, ns = nd - 2;
  int xd[5] = {int(d[0]), int(d[1]), int(d[2]), int(d[3]), int(d[4])};
  int wd[5] = {int(d[5]), int(d[1]), int(d[6]), int(d[7]), int(d[8])};
  int stride[3] = {int(d[9]), int(d[10]), int(d[11])};
  int pad[3] = {int(d[12]), int(d[13]) >> 16, int(d[13] & 0xffff)};
  const int dil[3] = {1, 1, 1};
  if (two_d) {  // drop T
    xd[2] = xd[3], xd[3] = xd[4];
    wd[2] = wd[3], wd[3] = wd[4];
    stride[0] = stride[1], stride[1] = stride[2];
    pad[0] = pad[1], pad[1] = pad[2];
  }
  auto strides_of = [nd](const int* dims, int* st) {
    st[nd - 1] = 1;
    for (int i = nd - 2; i >= 0; --i) st[i] = st[i + 1] * dims[i + 1];
  };
  int xs[5], yd[5], ys[5];
  strides_of(xd, xs);
  bool ok = cudnnCreateTensorDescriptor(&p.x) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateTensorDescriptor(&p.y) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateFilterDescriptor(&p.w) == CUDNN_STATUS_SUCCESS &&
            cudnnCreateConvolutionDescriptor(&p.conv) == CUDNN_STATUS_SUCCESS &&
            cudnnSetTensorNdDescriptor(p.x, CUDNN_DATA_FLOAT, nd, xd, xs) == CUDNN_STATUS_SUCCESS &&
            cudnnSetFilterNdDescriptor(p.w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, nd, wd) ==
                CUDNN_STATUS_SUCCESS &&
            cudnnSetConvolutionNdDescriptor(p.conv, ns, pad, stride, dil, CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT) == CUDNN_STATUS_SUCCESS &&
            cudnnSetConvolutionMathType(p.conv, key.mode ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH) ==
                CUDNN_STATUS_SUCCESS &&
            cudnnGetConvolutionNdForwardOutputDim(p.conv, p.x, p.w, nd, yd) == CUDNN_STATUS_SUCCESS;
  int64_t x_elems = 1, y_elems = 1;
  for (int i = 0; ok && i < nd; ++i) x_elems *= xd[i], y_elems *= yd[i];
  const size_t ws_limit = conv_workspace_limit(xd[0], x_elems, y_elems);
  if (ok) {
    strides_of(yd, ys);
    ok = cudnnSetTensorNdDescriptor(p.y, CUDNN_DATA_FLOAT, nd, yd, ys) == CUDNN_STATUS_SUCCESS;
  }
  if (ok && std::getenv("STDIT_CUDA_CONV_PROFILE"))
    std::fprintf(stderr, "conv plan x[%d,%d,%d,%d] w[%d,%d,%d,%d]:\n", xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[2],
                 wd[3]);
  ok = ok && choose_conv_algo(c, p, ws_limit, key.mode == 0);
  p.ok = ok;
  return ok ? &p : nullptr;
}

// x (F32, [B, Ci, T, H, W]) convolved with the F32 weight by cuDNN into out; false when cuDNN
// cannot run it (nothing was written).
bool conv3d_cudnn(const std::shared_ptr<CudaContext>& ctx, const Tensor& x, const Tensor& w,
                  const ConvParams& p, Tensor& out) {
  CudaContext& c = *ctx;
  const int64_t B = x.size(0), Ci = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  // Symmetric padding goes to cuDNN; the rest is made explicit in a padded copy of x.
  const int st = std::min(p.pad_t_front, p.pad_t_back), sh = std::min(p.pad_top, p.pad_bottom),
            sw = std::min(p.pad_left, p.pad_right);
  const int et0 = p.pad_t_front - st, et1 = p.pad_t_back - st, eh0 = p.pad_top - sh,
            eh1 = p.pad_bottom - sh, ew0 = p.pad_left - sw, ew1 = p.pad_right - sw;
  const bool explicit_pad = et0 | et1 | eh0 | eh1 | ew0 | ew1;
  const int64_t Tp = T + et0 + et1, Hp = H + eh0 + eh1, Wp = W + ew0 + ew1;
  constexpr int64_t kLim = int64_t{1} << 31;  // cuDNN's 32-bit tensor sizes
  if (B * Ci * Tp * Hp * Wp >= kLim || out.numel() >= kLim || w.numel() >= kLim || sh > 0xffff ||
      sw > 0xffff)
    return false;
  const ConvKey key{{B, Ci, Tp, Hp, Wp, w.size(0), w.size(2), w.size(3), w.size(4), p.stride_t,
                     p.stride_h, p.stride_w, st, (int64_t{sh} << 16) | sw},
                    c.options.tf32 ? 1 : 0};
  const ConvPlan* plan = cudnn_plan(c, key);
  if (!plan) return false;
  if (!plan->best_fits && B > 1) {
    // Two halves of the batch (contiguous slices), each with its own (smaller) plan.
    const int64_t h = B / 2;
    Tensor o0 = out.slice(0, 0, h), o1 = out.slice(0, h, B);
    if (!conv3d_cudnn(ctx, x.slice(0, 0, h), w, p, o0)) return false;
    if (!conv3d_cudnn(ctx, x.slice(0, h, B), w, p, o1))
      fail("cuda conv3d: cuDNN ran the first half of ", shape_str(x.shape()), " but not the second");
    return true;
  }
  const float* in = x.data<float>();
  std::shared_ptr<void> padded;
  if (explicit_pad) {
    padded = device_alloc(ctx, static_cast<size_t>(B * Ci * Tp * Hp * Wp) * sizeof(float));
    pad3d_kernel<<<blocks_for(B * Ci * Tp * Hp * Wp, 256), 256, 0, c.stream>>>(
        in, static_cast<float*>(padded.get()), B * Ci, T, H, W, et0, et1, eh0, eh1, ew0, ew1);
    check_launch("conv3d pad");
    in = static_cast<const float*>(padded.get());
  }
  auto ws = device_alloc(ctx, plan->workspace);
  const float one = 1.0f, zero = 0.0f;
  const cudnnStatus_t s2 =
      cudnnConvolutionForward(c.dnn, &one, plan->x, in, plan->w, w.data<float>(), plan->conv,
                              plan->algo, ws.get(), plan->workspace, &zero, plan->y,
                              out.data<float>());
  STDIT_CHECK(s2 == CUDNN_STATUS_SUCCESS, "cuda conv3d: cuDNN failed on ", shape_str(x.shape()),
              " -> ", shape_str(out.shape()), ": ", cudnnGetErrorString(s2));
  return true;
}

}  // namespace

void CudaBackend::conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
                         Tensor& out) {
  OpTimer timer(*ctx_, "conv3d", x);
  const std::string path = conv3d_impl(x, w, bias, p, out);
  if (timer.active()) timer.detail = cat("* ", shape_str(w.shape()), " s", p.stride_h, " ", path);
}

std::string CudaBackend::conv3d_impl(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
                         Tensor& out) {
  const char* op = "conv3d";
  CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, op, "x");
  expect_contiguous_float(w, c, op, "weight");  // BF16/F16 from upload_weight: 16-bit GEMMs
  expect_contiguous_f32(out, c, op, "out");
  STDIT_CHECK(x.dim() == 5 && w.dim() == 5 && out.dim() == 5,
              "cuda conv3d: x, weight and out must be 5-d");
  const int64_t B = x.size(0), Ci = x.size(1), T = x.size(2), H = x.size(3), W = x.size(4);
  const int64_t Co = w.size(0), kt = w.size(2), kh = w.size(3), kw = w.size(4);
  STDIT_CHECK(w.size(1) == Ci, "cuda conv3d: input has ", Ci, " channels, weight expects ",
              w.size(1));
  STDIT_CHECK(p.stride_t > 0 && p.stride_h > 0 && p.stride_w > 0, "cuda conv3d: strides must be positive");
  const int64_t To = (T + p.pad_t_front + p.pad_t_back - kt) / p.stride_t + 1;
  const int64_t Ho = (H + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1;
  const int64_t Wo = (W + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
  expect_shape(out, {B, Co, To, Ho, Wo}, op, "out");
  if (bias.defined()) {
    expect_contiguous_f32(bias, c, op, "bias");
    STDIT_CHECK(bias.numel() == Co, "cuda conv3d: bias size");
  }
  const int64_t K = Ci * kt * kh * kw, J = To * Ho * Wo;
  if (B == 0 || Co == 0 || J == 0) return "empty";
  STDIT_CHECK(J < (int64_t{1} << 31) && K < (int64_t{1} << 31) && T * H * W < (int64_t{1} << 31),
              "cuda conv3d: ", shape_str(x.shape()), " -> ", shape_str(out.shape()),
              " is over the 2^31-element planes the kernels index");
  const float* px = x.data<float>();
  const void* pw = w.raw();
  float* po = out.data<float>();
  const DType wt = w.dtype();  // the GEMM's input type: columns (and a direct input) follow it
  const size_t esz = dtype_size(wt);
  // Row-major out[b] [Co, J] = W [Co, K] x col [K, J], as column-major out^T (J x Co) =
  // col^T (J x K) * W^T (K x Co): A = col (column-major J x K), B = W (column-major K x Co).
  const bool direct = kt == 1 && kh == 1 && kw == 1 && p.stride_t == 1 && p.stride_h == 1 &&
                      p.stride_w == 1 && p.pad_t_front == 0 && p.pad_t_back == 0 &&
                      p.pad_top == 0 && p.pad_bottom == 0 && p.pad_left == 0 && p.pad_right == 0;
  std::string path = "im2col";
  const ConvGeom g{Ci, T, H, W, static_cast<int>(kt), static_cast<int>(kh), static_cast<int>(kw), To, Ho, Wo,
                   p.stride_t, p.stride_h, p.stride_w, p.pad_t_front, p.pad_top, p.pad_left};
  if (small_ci_applies(wt, Ci, K)) {
    STDIT_CHECK(B <= 65535 && (Co + kSmallCo - 1) / kSmallCo <= 65535, "cuda conv3d: grid too large");
    const dim3 grid(static_cast<unsigned>((J + kSmallThreads - 1) / kSmallThreads),
                    static_cast<unsigned>((Co + kSmallCo - 1) / kSmallCo), static_cast<unsigned>(B));
    conv_small_ci_kernel<<<grid, kSmallThreads, 0, c.stream>>>(px, static_cast<const float*>(pw),
                                                                bias.defined() ? bias.data<float>() : nullptr, po, g, Co);
    check_launch("conv3d (few input channels)");
    return "direct, few input channels";
  }
  if (!direct && wt == DType::F32 && c.options.cudnn_conv && conv3d_cudnn(ctx_, x, w, p, out)) {
    path = "cudnn";
  } else if (direct) {
    path = "gemm";
    for (int64_t b = 0; b < B; ++b) {
      const Tensor xb = x.select(0, b);
      Tensor xin = xb;
      if (wt != DType::F32) {
        xin = alloc(xb.shape(), wt);
        copy(xb, xin);
      }
      gemm_typed(c, wt, DType::F32, false, false, J, Co, K, xin.raw(), J, pw, K, po + b * Co * J, J);
    }
  } else {
    // Column buffer of at most 64 Mi floats (256 MiB): nc output columns at a time.
    const int64_t budget = int64_t{64} << 20;
    // nc a multiple of 32 (when chunking) keeps the GEMM's leading dimension 16-byte aligned.
    int64_t nc = std::max<int64_t>(256, budget / std::max<int64_t>(K, 1)) / 32 * 32;
    if (nc >= J) nc = J;
    auto colmem = device_alloc(ctx_, static_cast<size_t>(K * nc) * esz);
    void* col = colmem.get();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j0 = 0; j0 < J; j0 += nc) {
        const int64_t n = std::min(nc, J - j0);
        const dim3 grid(blocks_for(n, 256, 1024), static_cast<unsigned>(std::min<int64_t>(K, 65535)));
        if (wt == DType::BF16)
          im2col_kernel<<<grid, 256, 0, c.stream>>>(px + b * Ci * T * H * W,
                                                     static_cast<__nv_bfloat16*>(col), g,
                                                     static_cast<int>(j0), static_cast<int>(n),
                                                     static_cast<int>(K));
        else if (wt == DType::F16)
          im2col_kernel<<<grid, 256, 0, c.stream>>>(px + b * Ci * T * H * W, static_cast<__half*>(col), g,
                                                     static_cast<int>(j0), static_cast<int>(n), static_cast<int>(K));
        else
          im2col_kernel<<<grid, 256, 0, c.stream>>>(px + b * Ci * T * H * W,
                                                     static_cast<float*>(col), g,
                                                     static_cast<int>(j0), static_cast<int>(n),
                                                     static_cast<int>(K));
        check_launch("conv3d im2col");
        gemm_typed(c, wt, DType::F32, false, false, n, Co, K, col, n, pw, K, po + b * Co * J + j0, J);
      }
  }
  if (bias.defined()) add_bias(c, po, bias.data<float>(), B, Co, J);
  return path;
}

// The device memory conv3d takes for itself with these shapes, for the dry run (backend/dry_run.h):
// the same path choice as conv3d_impl and conv3d_cudnn above — the padded copy and the cuDNN
// plan's workspace (a batch split into halves when the plan's best algorithm does not fit), the
// im2col column buffer, or the per-sample input copies of a 1x1x1 GEMM in another dtype.
size_t conv3d_scratch_bytes(const std::shared_ptr<CudaContext>& ctx, const Shape& xs, const Shape& ws, DType wt,
                            const ConvParams& p) {
  CudaContext& c = *ctx;
  const int64_t B = xs[0], Ci = xs[1], T = xs[2], H = xs[3], W = xs[4];
  const int64_t Co = ws[0], kt = ws[2], kh = ws[3], kw = ws[4];
  const int64_t To = (T + p.pad_t_front + p.pad_t_back - kt) / p.stride_t + 1;
  const int64_t Ho = (H + p.pad_top + p.pad_bottom - kh) / p.stride_h + 1;
  const int64_t Wo = (W + p.pad_left + p.pad_right - kw) / p.stride_w + 1;
  const int64_t K = Ci * kt * kh * kw, J = To * Ho * Wo;
  if (B == 0 || Co == 0 || J == 0) return 0;
  const size_t esz = dtype_size(wt);
  if (small_ci_applies(wt, Ci, K)) return 0;
  const bool direct = kt == 1 && kh == 1 && kw == 1 && p.stride_t == 1 && p.stride_h == 1 && p.stride_w == 1 &&
                      p.pad_t_front == 0 && p.pad_t_back == 0 && p.pad_top == 0 && p.pad_bottom == 0 &&
                      p.pad_left == 0 && p.pad_right == 0;
  if (!direct && wt == DType::F32 && c.options.cudnn_conv) {
    const int st = std::min(p.pad_t_front, p.pad_t_back), sh = std::min(p.pad_top, p.pad_bottom),
              sw = std::min(p.pad_left, p.pad_right);
    const int64_t Tp = T + (p.pad_t_front - st) + (p.pad_t_back - st), Hp = H + (p.pad_top - sh) + (p.pad_bottom - sh),
                  Wp = W + (p.pad_left - sw) + (p.pad_right - sw);
    const bool explicit_pad = Tp != T || Hp != H || Wp != W;
    constexpr int64_t kLim = int64_t{1} << 31;
    const bool sizes_ok = B * Ci * Tp * Hp * Wp < kLim && B * Co * J < kLim && Co * K < kLim && sh <= 0xffff &&
                          sw <= 0xffff;
    const ConvKey key{{B, Ci, Tp, Hp, Wp, Co, kt, kh, kw, p.stride_t, p.stride_h, p.stride_w, st,
                       (int64_t{sh} << 16) | sw},
                      c.options.tf32 ? 1 : 0};
    const ConvPlan* plan = sizes_ok ? cudnn_plan(c, key) : nullptr;
    if (plan) {
      if (!plan->best_fits && B > 1) {
        Shape h0 = xs, h1 = xs;
        h0[0] = B / 2;
        h1[0] = B - B / 2;
        return std::max(conv3d_scratch_bytes(ctx, h0, ws, wt, p), conv3d_scratch_bytes(ctx, h1, ws, wt, p));
      }
      return (explicit_pad ? static_cast<size_t>(B * Ci * Tp * Hp * Wp) * sizeof(float) : 0) + plan->workspace;
    }
  }
  if (direct) return wt != DType::F32 ? static_cast<size_t>(Ci * T * H * W) * esz : 0;
  const int64_t budget = int64_t{64} << 20;
  int64_t nc = std::max<int64_t>(256, budget / std::max<int64_t>(K, 1)) / 32 * 32;
  if (nc >= J) nc = J;
  return static_cast<size_t>(K * nc) * esz;
}

}  // namespace stdit
