// CUDA 3D convolution (2D = T of 1): im2col into a bounded column buffer + cuBLASLt GEMM per
// batch index; 1x1x1 stride-1 unpadded convolutions read the input directly. With a BF16 weight
// (upload_weight, the bf16 path) the columns are BF16 and the GEMM runs on the bf16 tensor cores.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace stdit {

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
// TC: F32 columns (TF32/F32 GEMM) or BF16 columns (bf16 weights).
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

}  // namespace

void CudaBackend::conv3d(const Tensor& x, const Tensor& w, const Tensor& bias, const ConvParams& p,
                         Tensor& out) {
  const char* op = "conv3d";
  CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, op, "x");
  expect_contiguous_float(w, c, op, "weight");  // BF16 from upload_weight: bf16 GEMMs
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
  if (B == 0 || Co == 0 || J == 0) return;
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
  if (direct) {
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
    const ConvGeom g{Ci, T, H, W, static_cast<int>(kt), static_cast<int>(kh), static_cast<int>(kw), To, Ho, Wo, p.stride_t, p.stride_h, p.stride_w,
                     p.pad_t_front, p.pad_top, p.pad_left};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j0 = 0; j0 < J; j0 += nc) {
        const int64_t n = std::min(nc, J - j0);
        const dim3 grid(blocks_for(n, 256, 1024), static_cast<unsigned>(std::min<int64_t>(K, 65535)));
        if (wt == DType::BF16)
          im2col_kernel<<<grid, 256, 0, c.stream>>>(px + b * Ci * T * H * W,
                                                     static_cast<__nv_bfloat16*>(col), g,
                                                     static_cast<int>(j0), static_cast<int>(n),
                                                     static_cast<int>(K));
        else
          im2col_kernel<<<grid, 256, 0, c.stream>>>(px + b * Ci * T * H * W,
                                                     static_cast<float*>(col), g,
                                                     static_cast<int>(j0), static_cast<int>(n),
                                                     static_cast<int>(K));
        check_launch("conv3d im2col");
        gemm_typed(c, wt, DType::F32, false, false, n, Co, K, col, n, pw, K, po + b * Co * J + j0, J);
      }
  }
  if (bias.defined()) {
    dim3 grid(blocks_for(J, 256, 64), static_cast<unsigned>(std::min<int64_t>(B * Co, 65535)));
    conv_bias_kernel<<<grid, 256, 0, c.stream>>>(po, bias.data<float>(), B * Co, Co, J);
    check_launch("conv3d bias");
  }
}

}  // namespace stdit
