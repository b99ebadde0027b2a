// CUDA normalisation, modulation and gating: RMSNorm, modulated LayerNorm (with FrameSelect),
// gated residual, frame selection, GroupNorm(+SiLU).
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_fp8.h"
#include "backend/cuda/cuda_fused_gemm.h"

namespace stdit {

using namespace cuda;

namespace {

// A [B, C] modulation vector: rows of stride `s` (stride(1) == 1).
struct ModRow {
  const float* p = nullptr;
  int64_t s = 0;
};
ModRow mod_row(const Tensor& v) {
  if (!v.defined()) return {};
  return {v.data<float>(), v.stride(0)};
}

// Frame selection on the device: mask [B, T] U8 (nullptr = inactive).
struct Sel {
  const uint8_t* mask = nullptr;
  int64_t t = 0, tpf = 1;
};
__device__ __forceinline__ bool is_clean(const Sel& s, int64_t b, int64_t n) {
  return s.mask && s.mask[b * s.t + n / s.tpf] == 0;
}

void check_mod(const Tensor& v, const CudaContext& c, int64_t b, int64_t ch, const char* op,
               const char* what) {
  expect_f32(v, c, op, what);
  STDIT_CHECK(v.dim() == 2 && v.size(0) == b && v.size(1) == ch, "cuda ", op, ": ", what,
              " has shape ", shape_str(v.shape()), ", expected [", b, ", ", ch, "]");
}

Sel check_select(const FrameSelect& sel, const CudaContext& c, int64_t b, int64_t n,
                 const char* op) {
  if (!sel.active()) return {};
  expect_device(sel.mask, c, op, "frame mask");
  STDIT_CHECK(sel.mask.dtype() == DType::U8 && sel.mask.dim() == 2 && sel.mask.size(0) == b &&
                  sel.mask.is_contiguous(),
              "cuda ", op, ": frame mask must be contiguous U8 [B, T]");
  STDIT_CHECK(sel.tokens_per_frame > 0 && sel.mask.size(1) * sel.tokens_per_frame == n, "cuda ", op,
              ": frame mask [", b, ", ", sel.mask.size(1), "] x ", sel.tokens_per_frame,
              " tokens/frame does not cover ", n, " tokens");
  return {sel.mask.data<uint8_t>(), sel.mask.size(1), sel.tokens_per_frame};
}

constexpr int kWarps = 8;  // rows per block in the warp-per-row kernels

// A row's LayerNorm statistics, one warp per row of c: f64 sums as the CPU backend (then f32).
__device__ __forceinline__ void ln_row_stats(const float* xr, int64_t c, int lane, float eps, float& mean,
                                             float& rstd) {
  double sum = 0;
  for (int64_t i = lane; i < c; i += 32) sum += xr[i];
  sum = warp_sum(sum);
  const double mu = sum / c;
  double sq = 0;
  for (int64_t i = lane; i < c; i += 32) {
    const double d = xr[i] - mu;
    sq += d * d;
  }
  sq = warp_sum(sq);
  rstd = static_cast<float>(1.0 / sqrt(sq / c + eps));
  mean = static_cast<float>(mu);
}
__device__ __forceinline__ float ln_mod_value(float x, float mean, float rstd, float scale, float shift) {
  return (x - mean) * rstd * (1.0f + scale) + shift;
}
// Row `row` of x [B, N, c] as the modulated LayerNorm reads it: its values, statistics, and the
// shift and scale of its sample (a clean frame's own with frame selection).
struct LnModRow {
  const float* x;
  float mean, rstd;
  const float *shift, *scale;
};
__device__ __forceinline__ LnModRow ln_mod_row(const float* x, int64_t row, int64_t n, int64_t c, int lane,
                                               float eps, ModRow shift, ModRow scale, ModRow shift0,
                                               ModRow scale0, Sel sel) {
  LnModRow r;
  r.x = x + row * c;
  ln_row_stats(r.x, c, lane, eps, r.mean, r.rstd);
  const int64_t bi = row / n, ni = row - bi * n;
  const bool clean = is_clean(sel, bi, ni);
  r.shift = clean ? shift0.p + bi * shift0.s : shift.p + bi * shift.s;
  r.scale = clean ? scale0.p + bi * scale0.s : scale.p + bi * scale.s;
  return r;
}

// One warp per row of C; out may alias x. Rows [row0, row0 + rows) of x.
template <typename TO>
__global__ void __launch_bounds__(kWarps * 32)
    ln_mod_kernel(const float* x, TO* out, int64_t rows, int64_t n, int64_t c, ModRow shift,
                  ModRow scale, ModRow shift0, ModRow scale0, Sel sel, float eps,
                  int64_t row0 = 0) {
  const int lane = threadIdx.x & 31;
  const int64_t row = row0 + blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= row0 + rows) return;
  const LnModRow r = ln_mod_row(x, row, n, c, lane, eps, shift, scale, shift0, scale0, sel);
  TO* o = out + row * c;
  for (int64_t i = lane; i < c; i += 32) store_out(o + i, ln_mod_value(r.x[i], r.mean, r.rstd, r.scale[i], r.shift[i]));
}

// The same row as e4m3 codes with its scale (an fp8 GEMM's operand, c <= kNormCodesMaxChannels):
// each value rounded to bf16 as ln_mod_kernel<bf16> writes it, then quantized by core/fp8.h's
// rule as quantize_rows_e4m3 would quantize that bf16 row — the same codes and scale, without the
// bf16 copy and its pass.
constexpr int kNormCodesPerLane = static_cast<int>(kNormCodesMaxChannels / 32);
__global__ void __launch_bounds__(kWarps * 32)
    ln_mod_e4m3_kernel(const float* __restrict__ x, __nv_fp8_storage_t* __restrict__ out,
                       float* __restrict__ row_scale, int64_t rows, int64_t n, int64_t c, ModRow shift,
                       ModRow scale, ModRow shift0, ModRow scale0, Sel sel, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const LnModRow lr = ln_mod_row(x, row, n, c, lane, eps, shift, scale, shift0, scale0, sel);
  float v[kNormCodesPerLane];
  float amax = 0.0f;
  bool bad = false;
#pragma unroll
  for (int j = 0; j < kNormCodesPerLane; ++j) {
    const int64_t i = lane + 32 * j;
    if (i < c) {
      v[j] = __bfloat162float(__float2bfloat16_rn(ln_mod_value(lr.x[i], lr.mean, lr.rstd, lr.scale[i], lr.shift[i])));
      const float a = fabsf(v[j]);
      if (!isfinite(a)) bad = true;
      else amax = fmaxf(amax, a);
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    bad = __shfl_xor_sync(0xffffffffu, static_cast<int>(bad), o) || bad;
  }
  const E4m3Row r = e4m3_row_rule(amax, bad);
  if (lane == 0) row_scale[row] = r.scale;
  __nv_fp8_storage_t* o = out + row * c;
#pragma unroll
  for (int j = 0; j < kNormCodesPerLane; ++j) {
    const int64_t i = lane + 32 * j;
    if (i < c) o[i] = static_cast<__nv_fp8_storage_t>(e4m3_code(v[j], r));
  }
}

// The two kernels above for rows of c = 128 k channels (k <= kVecChunks; STDiT3's 1152 is 9) with
// 16-byte accesses: each lane holds 4 consecutive values of every 128-column chunk of its warp's row
// in registers, so the row is read once (statistics and output from the registers), its shift and
// scale 16 bytes at a time, and the output written 8 (bf16) or 4 (e4m3) bytes at a time. Per
// element the same arithmetic (ln_mod_value; the f64 sums in another order before their rounding to
// the f32 statistics); kCodes: the same codes and scale as ln_mod_e4m3_kernel.
constexpr int kVecChunks = static_cast<int>(kNormCodesMaxChannels / 128);
// H: the 16-bit output type (kCodes: the bf16 values the codes quantize).
template <bool kCodes, typename H = __nv_bfloat16>
__global__ void __launch_bounds__(kWarps * 32)
    ln_mod_vec_kernel(const float* __restrict__ x, void* __restrict__ out, float* __restrict__ row_scale,
                      int64_t rows, int64_t n, int chunks, ModRow shift, ModRow scale, ModRow shift0,
                      ModRow scale0, Sel sel, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t c = static_cast<int64_t>(chunks) * 128;
  const float4* xr = reinterpret_cast<const float4*>(x + row * c);
  float4 v[kVecChunks];
  double sum = 0;
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j)
    if (j < chunks) {
      v[j] = xr[lane + 32 * j];
      sum += v[j].x;
      sum += v[j].y;
      sum += v[j].z;
      sum += v[j].w;
    }
  sum = warp_sum(sum);
  const double mu = sum / c;
  double sq = 0;
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j)
    if (j < chunks) {
      const double d0 = v[j].x - mu, d1 = v[j].y - mu, d2 = v[j].z - mu, d3 = v[j].w - mu;
      sq += d0 * d0;
      sq += d1 * d1;
      sq += d2 * d2;
      sq += d3 * d3;
    }
  sq = warp_sum(sq);
  const float rstd = static_cast<float>(1.0 / sqrt(sq / c + eps)), mean = static_cast<float>(mu);
  const int64_t bi = row / n;
  const bool clean = is_clean(sel, bi, row - bi * n);
  const float4* sh = reinterpret_cast<const float4*>(clean ? shift0.p + bi * shift0.s : shift.p + bi * shift.s);
  const float4* sc = reinterpret_cast<const float4*>(clean ? scale0.p + bi * scale0.s : scale.p + bi * scale.s);
  float amax = 0.0f;
  bool bad = false;
#pragma unroll
  for (int j = 0; j < kVecChunks; ++j)
    if (j < chunks) {
      const float4 a = sc[lane + 32 * j], t = sh[lane + 32 * j];
      const uint32_t lo = pack_half2<H>(ln_mod_value(v[j].x, mean, rstd, a.x, t.x),
                                        ln_mod_value(v[j].y, mean, rstd, a.y, t.y));
      const uint32_t hi = pack_half2<H>(ln_mod_value(v[j].z, mean, rstd, a.z, t.z),
                                        ln_mod_value(v[j].w, mean, rstd, a.w, t.w));
      if constexpr (!kCodes) {
        reinterpret_cast<uint2*>(static_cast<H*>(out) + row * c)[lane + 32 * j] = make_uint2(lo, hi);
      } else {
        static_assert(std::is_same_v<H, __nv_bfloat16>, "the e4m3 codes quantize the bf16 row");
        const float2 l = unpack_half2<H>(lo), h = unpack_half2<H>(hi);
        v[j] = make_float4(l.x, l.y, h.x, h.y);  // the bf16 values the codes quantize
        const float q[4] = {l.x, l.y, h.x, h.y};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float aq = fabsf(q[e]);
          if (!isfinite(aq)) bad = true;
          else amax = fmaxf(amax, aq);
        }
      }
    }
  if constexpr (kCodes) {
    for (int o = 16; o > 0; o >>= 1) {
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      bad = __shfl_xor_sync(0xffffffffu, static_cast<int>(bad), o) || bad;
    }
    const E4m3Row r = e4m3_row_rule(amax, bad);
    if (lane == 0) row_scale[row] = r.scale;
    uint32_t* o = reinterpret_cast<uint32_t*>(static_cast<__nv_fp8_storage_t*>(out) + row * c);
#pragma unroll
    for (int j = 0; j < kVecChunks; ++j)
      if (j < chunks)
        o[lane + 32 * j] = e4m3_code(v[j].x, r) | (e4m3_code(v[j].y, r) << 8) | (e4m3_code(v[j].z, r) << 16) |
                           (e4m3_code(v[j].w, r) << 24);
  }
}

// Whether ln_mod_vec_kernel takes rows of ch channels with these operands (16-byte aligned rows and
// modulation rows).
bool ln_mod_vec_applies(int64_t ch, const void* x, const void* out, ModRow shift, ModRow scale, ModRow shift0,
                        ModRow scale0) {
  auto al = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; };
  auto mod_ok = [&](ModRow m) { return !m.p || (al(m.p) && m.s % 4 == 0); };
  return ch % 128 == 0 && ch / 128 <= kVecChunks && al(x) && al(out) && mod_ok(shift) && mod_ok(scale) &&
         mod_ok(shift0) && mod_ok(scale0);
}

// One warp per row; f32 sum of squares.
__global__ void __launch_bounds__(kWarps * 32)
    rms_norm_kernel(const float* x, const float* __restrict__ w, float* out, int64_t rows,
                    int64_t c, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t row = blockIdx.x * static_cast<int64_t>(kWarps) + (threadIdx.x >> 5);
  if (row >= rows) return;
  const float* xr = x + row * c;
  float* o = out + row * c;
  float ss = 0;
  for (int64_t i = lane; i < c; i += 32) ss += xr[i] * xr[i];
  ss = warp_sum(ss);
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(c) + eps);
  for (int64_t i = lane; i < c; i += 32) o[i] = w[i] * (xr[i] * inv);
}

// One block per token row: x[row, :] += gate[b, :] * y[row, :]; y F32, BF16 or F16.
template <typename TY>
__global__ void gated_residual_kernel(float* x, const TY* y, int64_t rows, int64_t n,
                                      int64_t c, ModRow gate, ModRow gate0, Sel sel) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t bi = row / n, ni = row - bi * n;
    const float* g = is_clean(sel, bi, ni) ? gate0.p + bi * gate0.s : gate.p + bi * gate.s;
    float* xr = x + row * c;
    const TY* yr = y + row * c;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) xr[i] += g[i] * load_f(yr + i);
  }
}

// The gate of a gated residual folded into per-sample weights (CudaBackend::linear_residual):
// wout[b, c, k] = H(gate[b, c] * w[c, k]) and bout[b, c] = gate[b, c] * bias[c] (0 without a
// bias), H the weights' 16-bit type. k is a multiple of 8: each thread scales 8 weights (one
// 16-byte load).
template <typename H>
__global__ void fold_gate_kernel(const H* __restrict__ w, const float* __restrict__ bias, ModRow gate, int64_t ch,
                                 int64_t k, int64_t batch, H* __restrict__ wout, float* __restrict__ bout) {
  const int64_t per = ch * k / 8, total = batch * per;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = t / per, e = (t - b * per) * 8, c = e / k;
    const float g = gate.p[b * gate.s + c];
    uint4 v = *reinterpret_cast<const uint4*>(w + e);
    uint32_t* h = reinterpret_cast<uint32_t*>(&v);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = unpack_half2<H>(h[j]);
      h[j] = pack_half2<H>(g * f.x, g * f.y);
    }
    *reinterpret_cast<uint4*>(wout + b * ch * k + e) = v;
    if (t < batch * ch) {
      const int64_t bb = t / ch, cc = t - bb * ch;
      bout[t] = bias ? gate.p[bb * gate.s + cc] * bias[cc] : 0.0f;
    }
  }
}

// x[row, :] += gate[b, :] * (p0[row, :] + p1[row, :]) (no gate: 1), 8 channels per thread:
// the two ranks' partial sums of a tensor-parallel projection, p1 possibly in a peer device's
// memory. Same expression, so same bits, on both ranks.
// Rows [row0, row0 + rows) of x, whose partial sums are rows 0.. of p0 and p1; with x16, the
// updated rows also go there (at the rows of x) in H (the partial sums' 16-bit type).
template <typename H>
__global__ void residual_sum2_kernel(float* __restrict__ x, const H* __restrict__ p0, const H* __restrict__ p1,
                                     int64_t rows, int64_t n, int64_t c, ModRow gate, int64_t row0, H* x16) {
  const int64_t per = c / 8, total = rows * per;
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = row0 + t / per, e = (t - (row - row0) * per) * 8;
    const uint4 a = *reinterpret_cast<const uint4*>(p0 + (row - row0) * c + e);
    const uint4 b = *reinterpret_cast<const uint4*>(p1 + (row - row0) * c + e);
    const uint32_t* a2 = reinterpret_cast<const uint32_t*>(&a);
    const uint32_t* b2 = reinterpret_cast<const uint32_t*>(&b);
    float4* xr = reinterpret_cast<float4*>(x + row * c + e);
    const float* g = gate.p ? gate.p + (row / n) * gate.s + e : nullptr;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float2 a0 = unpack_half2<H>(a2[2 * h]), a1 = unpack_half2<H>(a2[2 * h + 1]);
      const float2 b0 = unpack_half2<H>(b2[2 * h]), b1 = unpack_half2<H>(b2[2 * h + 1]);
      float4 v = xr[h];
      const float s0 = a0.x + b0.x, s1 = a0.y + b0.y, s2 = a1.x + b1.x, s3 = a1.y + b1.y;
      if (g) {
        v.x += g[4 * h] * s0;
        v.y += g[4 * h + 1] * s1;
        v.z += g[4 * h + 2] * s2;
        v.w += g[4 * h + 3] * s3;
      } else {
        v.x += s0;
        v.y += s1;
        v.z += s2;
        v.w += s3;
      }
      xr[h] = v;
      if (x16)
        *reinterpret_cast<uint2*>(x16 + row * c + e + 4 * h) =
            make_uint2(pack_half2<H>(v.x, v.y), pack_half2<H>(v.z, v.w));
    }
  }
}

__global__ void select_frames_kernel(float* dst, const float* src, int64_t rows, int64_t n,
                                     int64_t c, Sel sel) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t bi = row / n, ni = row - bi * n;
    if (!is_clean(sel, bi, ni)) continue;
    for (int64_t i = threadIdx.x; i < c; i += blockDim.x) dst[row * c + i] = src[row * c + i];
  }
}

// ---- GroupNorm: per (batch, group) statistics over a contiguous range of n = C/G * S values ----

constexpr int kGnThreads = 256;

__device__ double block_sum(double v, double* shared /* [32] */) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) / 32;
  v = lane < nw ? shared[lane] : 0.0;
  return warp_sum(v);  // every warp holds the total
}

// Sum of the partials of group g (P of them), by the whole block.
__device__ double sum_partials(const double* part, int64_t p, double* shared) {
  double v = 0;
  for (int64_t i = threadIdx.x; i < p; i += blockDim.x) v += part[i];
  return block_sum(v, shared);
}

// grid (P, G): partial sums of chunk p of group g, shifted by the group's first value (one pass
// for both moments; the shift keeps E[d^2] - E[d]^2 free of cancellation when |mean| >> std).
__global__ void __launch_bounds__(kGnThreads)
    gn_stats_kernel(const float* __restrict__ x, double* __restrict__ psum,
                    double* __restrict__ psq, double* __restrict__ shifts, int64_t n, int64_t chunk,
                    int64_t p) {
  __shared__ double sh[32];
  const int64_t g = blockIdx.y, i0 = blockIdx.x * chunk, i1 = min(n, i0 + chunk);
  const float* xs = x + g * n;
  const double shift = xs[0];
  double v = 0, q = 0;
  for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) {
    const double d = static_cast<double>(xs[i]) - shift;
    v += d;
    q += d * d;
  }
  v = block_sum(v, sh);
  q = block_sum(q, sh);
  if (threadIdx.x == 0) {
    psum[g * p + blockIdx.x] = v;
    psq[g * p + blockIdx.x] = q;
    if (blockIdx.x == 0) shifts[g] = shift;  // for the apply pass (x may be overwritten there)
  }
}

// grid (P, G): normalise chunk p of group g; s = values per channel, cg = channels per group.
// vec4: n, s and chunk multiples of 4 and x/out 16-byte aligned (then 4 values per step, all in
// one channel).
__global__ void __launch_bounds__(kGnThreads)
    gn_apply_kernel(const float* x, const double* __restrict__ psum, const double* __restrict__ psq,
                    const double* __restrict__ shifts, const float* __restrict__ gamma, const float* __restrict__ beta, float* out,
                    int64_t n, int64_t chunk, int64_t p, int64_t s, int64_t cg, int64_t groups,
                    float eps, bool silu, bool vec4) {
  __shared__ double sh[32];
  const int64_t g = blockIdx.y, i0 = blockIdx.x * chunk, i1 = min(n, i0 + chunk);
  const float* xs = x + g * n;
  const double shift = shifts[g];
  const double md = sum_partials(psum + g * p, p, sh) / n;
  const double var = fmax(sum_partials(psq + g * p, p, sh) / n - md * md, 0.0);
  const float rstd = static_cast<float>(1.0 / sqrt(var + eps));
  const float m = static_cast<float>(shift + md);
  const int64_t c0 = (g % groups) * cg;
  float* os = out + g * n;
  auto one = [&](float xv, int64_t ch) {
    const float v = (xv - m) * rstd * gamma[ch] + beta[ch];
    return silu ? silu_f(v) : v;
  };
  if (vec4) {
    for (int64_t i = i0 + 4 * threadIdx.x; i < i1; i += 4 * blockDim.x) {
      const int64_t ch = c0 + i / s;
      const float4 v = *reinterpret_cast<const float4*>(xs + i);
      *reinterpret_cast<float4*>(os + i) =
          make_float4(one(v.x, ch), one(v.y, ch), one(v.z, ch), one(v.w, ch));
    }
  } else {
    for (int64_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) os[i] = one(xs[i], c0 + i / s);
  }
}

}  // namespace

void CudaBackend::layernorm_modulate(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                     const Tensor& shift0, const Tensor& scale0,
                                     const FrameSelect& sel, float eps, Tensor& out) {
  OpTimer timer_(*ctx_, "layernorm_modulate", x);
  const char* op = "layernorm_modulate";
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, op, "x");
  // F8_E4M3 (operand_dtype() of an fp8 weight): the codes and, attached to out, the row scales.
  const bool codes = out.dtype() == DType::F8_E4M3;
  if (codes) {
    expect_device(out, c, op, "out");
    STDIT_CHECK(out.is_contiguous() && x.size(-1) <= kNormCodesMaxChannels, "cuda ", op,
                ": an F8_E4M3 out must be contiguous with at most ", kNormCodesMaxChannels, " channels");
  } else {
    expect_contiguous_float(out, c, op, "out");
  }
  STDIT_CHECK(x.dim() == 3, "cuda ", op, ": x must be [B, N, C]");
  expect_shape(out, x.shape(), op, "out");
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2);
  check_mod(shift, c, b, ch, op, "shift");
  check_mod(scale, c, b, ch, op, "scale");
  const Sel s = check_select(sel, c, b, n, op);
  if (sel.active()) {
    check_mod(shift0, c, b, ch, op, "shift0");
    check_mod(scale0, c, b, ch, op, "scale0");
  }
  const int64_t rows = b * n;
  if (codes) {
    const Tensor scales = alloc({rows}, DType::F32);
    out = out.with_scales(scales);
    if (rows == 0 || ch == 0) return;
    if (ln_mod_vec_applies(ch, x.raw(), out.raw(), mod_row(shift), mod_row(scale), mod_row(shift0), mod_row(scale0))) {
      ln_mod_vec_kernel<true><<<blocks_for(rows, kWarps, 2147483647), kWarps * 32, 0, c.stream>>>(
          x.data<float>(), out.raw(), scales.data<float>(), rows, n, static_cast<int>(ch / 128), mod_row(shift),
          mod_row(scale), mod_row(shift0), mod_row(scale0), s, eps);
      return check_launch("layernorm_modulate (e4m3)");
    }
    ln_mod_e4m3_kernel<<<blocks_for(rows, kWarps, 2147483647), kWarps * 32, 0, c.stream>>>(
        x.data<float>(), static_cast<__nv_fp8_storage_t*>(out.raw()), scales.data<float>(), rows, n, ch,
        mod_row(shift), mod_row(scale), mod_row(shift0), mod_row(scale0), s, eps);
    return check_launch("layernorm_modulate (e4m3)");
  }
  if (rows == 0 || ch == 0) return;
  const unsigned blocks = blocks_for(rows, kWarps, 2147483647);
  const bool vec = is_half16(out.dtype()) && ln_mod_vec_applies(ch, x.raw(), out.raw(), mod_row(shift),
                                                                  mod_row(scale), mod_row(shift0), mod_row(scale0));
  if (is_half16(out.dtype()))
    with_half16(out.dtype() == DType::F16, [&](auto h) {
      using H = decltype(h);
      if (vec)
        ln_mod_vec_kernel<false, H><<<blocks, kWarps * 32, 0, c.stream>>>(
            x.data<float>(), out.raw(), nullptr, rows, n, static_cast<int>(ch / 128), mod_row(shift),
            mod_row(scale), mod_row(shift0), mod_row(scale0), s, eps);
      else
        ln_mod_kernel<<<blocks, kWarps * 32, 0, c.stream>>>(x.data<float>(), out.data<H>(), rows, n, ch,
                                                            mod_row(shift), mod_row(scale), mod_row(shift0),
                                                            mod_row(scale0), s, eps);
    });
  else
    ln_mod_kernel<<<blocks, kWarps * 32, 0, c.stream>>>(
        x.data<float>(), out.data<float>(), rows, n, ch, mod_row(shift), mod_row(scale),
        mod_row(shift0), mod_row(scale0), s, eps);
  check_launch(op);
}

void CudaBackend::rms_norm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  OpTimer timer_(*ctx_, "rms_norm", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "rms_norm", "x");
  expect_contiguous_f32(weight, c, "rms_norm", "weight");
  expect_contiguous_f32(out, c, "rms_norm", "out");
  const int64_t ch = weight.numel();
  STDIT_CHECK(x.size(-1) == ch && out.numel() == x.numel(), "cuda rms_norm: x ",
              shape_str(x.shape()), " vs weight ", shape_str(weight.shape()));
  if (ch == 0) return;
  const int64_t rows = x.numel() / ch;
  if (rows == 0) return;
  rms_norm_kernel<<<blocks_for(rows, kWarps, 2147483647), kWarps * 32, 0, c.stream>>>(
      x.data<float>(), weight.data<float>(), out.data<float>(), rows, ch, eps);
  check_launch("rms_norm");
}

void CudaBackend::gated_residual(Tensor& x, const Tensor& y, const Tensor& gate,
                                 const Tensor& gate0, const FrameSelect& sel) {
  OpTimer timer_(*ctx_, "gated_residual", x);
  const char* op = "gated_residual";
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, op, "x");
  expect_contiguous_float(y, c, op, "y");
  STDIT_CHECK(x.dim() == 3, "cuda ", op, ": x must be [B, N, C]");
  expect_shape(y, x.shape(), op, "y");
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2);
  check_mod(gate, c, b, ch, op, "gate");
  const Sel s = check_select(sel, c, b, n, op);
  if (sel.active()) check_mod(gate0, c, b, ch, op, "gate0");
  const int64_t rows = b * n;
  if (rows == 0 || ch == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, (ch + 31) / 32 * 32));
  const unsigned blocks = blocks_for(rows, 1, int64_t{1} << 30);
  if (is_half16(y.dtype()))
    with_half16(y.dtype() == DType::F16, [&](auto h) {
      gated_residual_kernel<<<blocks, threads, 0, c.stream>>>(x.data<float>(), y.data<decltype(h)>(), rows, n, ch,
                                                              mod_row(gate), mod_row(gate0), s);
    });
  else
    gated_residual_kernel<<<blocks, threads, 0, c.stream>>>(x.data<float>(), y.data<float>(), rows, n,
                                                            ch, mod_row(gate), mod_row(gate0), s);
  check_launch(op);
}

void CudaBackend::linear_residual(const Tensor& y, const Tensor& w, const Tensor& bias,
                                  const Tensor& gate, const Tensor& gate0, const FrameSelect& sel,
                                  Tensor& x) {
  CudaContext& c = *ctx_;
  if (fused_fp8_residual_applies(c, y, w, bias, gate, sel, x) && linear_residual_fp8(*this, c, y, w, bias, gate, x))
    return;
  if (fused_bf16_residual_applies(c, y, w, bias, gate, sel, x) && linear_residual_bf16(c, y, w, bias, gate, x, nullptr))
    return;
  // Fused when every token has the same gate and the operands suit the 16-bit GEMM: the sum goes
  // straight into x (cuBLASLt with beta = 1, F32 C/D), the gate folded into the weights of each
  // sample (and its bias), so no projection tensor is written and no residual pass runs.
  const bool fits = !sel.active() && x.dim() == 3 && x.dtype() == DType::F32 &&
                    x.is_contiguous() && is_half16(y.dtype()) && y.is_contiguous() &&
                    w.dtype() == y.dtype() && w.dim() == 2 && w.is_contiguous() &&
                    (reinterpret_cast<uintptr_t>(w.raw()) & 15u) == 0 &&  // fold_gate's 16-byte loads
                    w.size(0) == x.size(2) && w.size(1) % 8 == 0 && y.numel() == x.size(0) * x.size(1) * w.size(1) &&
                    (!bias.defined() || (bias.dtype() == DType::F32 && bias.is_contiguous()));
  if (!fits) return Backend::linear_residual(y, w, bias, gate, gate0, sel, x);
  OpTimer timer_(c, "linear_residual", x);
  if (timer_.active()) timer_.detail = cat("w ", shape_str(w.shape()), gate.defined() ? " gated" : "");
  expect_device(x, c, "linear_residual", "x");
  expect_device(y, c, "linear_residual", "y");
  expect_device(w, c, "linear_residual", "weight");
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2), k = w.size(1);
  if (b * n == 0 || ch == 0) return;
  bool done;
  if (gate.defined()) {
    check_mod(gate, c, b, ch, "linear_residual", "gate");
    if (bias.defined()) expect_device(bias, c, "linear_residual", "bias");
    Tensor wg = alloc({b, ch, k}, w.dtype());
    Tensor bg = alloc({b, ch}, DType::F32);
    const float* bp = bias.defined() ? bias.data<float>() : nullptr;
    with_half16(w.dtype() == DType::F16, [&](auto h) {
      using H = decltype(h);
      fold_gate_kernel<<<blocks_for(b * ch * k / 8, 256), 256, 0, c.stream>>>(
          w.data<H>(), bp, mod_row(gate), ch, k, b, wg.data<H>(), bg.data<float>());
    });
    check_launch("linear_residual (fold gate)");
    done = gemm_accumulate(c, w.dtype(), DType::F32, true, false, ch, n, k, b, wg.raw(), k,
                           ch * k, y.raw(), k, n * k, x.raw(), ch, n * ch, bg.raw(), ch);
  } else {
    if (bias.defined()) expect_device(bias, c, "linear_residual", "bias");
    done = gemm_accumulate(c, w.dtype(), DType::F32, true, false, ch, b * n, k, 1, w.raw(), k,
                           0, y.raw(), k, 0, x.raw(), ch, 0,
                           bias.defined() ? bias.raw() : nullptr, 0);
  }
  if (!done) Backend::linear_residual(y, w, bias, gate, gate0, sel, x);
}

void CudaBackend::linear_residual_copy(const Tensor& y, const Tensor& w, const Tensor& bias, const Tensor& gate,
                                       const Tensor& gate0, const FrameSelect& sel, Tensor& x, Tensor& x_copy) {
  if (fused_bf16_residual_applies(*ctx_, y, w, bias, gate, sel, x) &&
      linear_residual_bf16(*ctx_, y, w, bias, gate, x, &x_copy))
    return;
  Backend::linear_residual_copy(y, w, bias, gate, gate0, sel, x, x_copy);
}

bool CudaBackend::fuses_residual_copy(const Tensor& w) const {
  return matmul_dtype() == DType::BF16 && fused_bf16_gemm_applies(*ctx_, w);
}

bool residual_sum2_applies(const Tensor& x, const Tensor& p) {
  auto al = [](const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; };
  return x.dim() == 3 && x.dtype() == DType::F32 && x.is_contiguous() && x.size(2) % 8 == 0 &&
         is_half16(p.dtype()) && p.is_contiguous() && p.numel() == x.numel() && al(x.raw()) &&
         al(p.raw());
}

void residual_sum2(const CudaContext& c, Tensor& x, DType half, const void* p0, const void* p1, const Tensor& gate,
                   int64_t row_begin, int64_t row_end, void* x16) {
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2);
  if (gate.defined()) check_mod(gate, c, b, ch, "reduce_into_residual", "gate");
  if (row_end < 0) row_end = b * n;
  const int64_t rows = row_end - row_begin;
  if (rows <= 0 || ch == 0) return;
  const unsigned blocks = blocks_for(rows * ch / 8, 256);
  with_half16(half == DType::F16, [&](auto h) {
    using H = decltype(h);
    residual_sum2_kernel<<<blocks, 256, 0, c.stream>>>(x.data<float>(), static_cast<const H*>(p0),
                                                       static_cast<const H*>(p1), rows, n, ch, mod_row(gate),
                                                       row_begin, static_cast<H*>(x16));
  });
  check_launch("reduce_into_residual");
}

void layernorm_modulate_rows(const CudaContext& c, const Tensor& x, const Tensor& shift,
                             const Tensor& scale, float eps, int64_t row_begin, int64_t row_end,
                             DType half, void* out) {
  const int64_t b = x.size(0), n = x.size(1), ch = x.size(2);
  check_mod(shift, c, b, ch, "layernorm_modulate", "shift");
  check_mod(scale, c, b, ch, "layernorm_modulate", "scale");
  const int64_t rows = row_end - row_begin;
  if (rows <= 0 || ch == 0) return;
  const unsigned blocks = blocks_for(rows, kWarps, 2147483647);
  with_half16(half == DType::F16, [&](auto h) {
    ln_mod_kernel<<<blocks, kWarps * 32, 0, c.stream>>>(x.data<float>(), static_cast<decltype(h)*>(out), rows, n,
                                                        ch, mod_row(shift), mod_row(scale), ModRow{}, ModRow{},
                                                        Sel{}, eps, row_begin);
  });
  check_launch("layernorm_modulate (rows)");
}

void CudaBackend::select_frames(Tensor& dst, const Tensor& src, const FrameSelect& sel) {
  const char* op = "select_frames";
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(dst, c, op, "dst");
  expect_contiguous_f32(src, c, op, "src");
  STDIT_CHECK(dst.dim() == 3, "cuda ", op, ": dst must be [B, N, C]");
  expect_shape(src, dst.shape(), op, "src");
  const int64_t b = dst.size(0), n = dst.size(1), ch = dst.size(2);
  const Sel s = check_select(sel, c, b, n, op);
  if (!sel.active() || b * n == 0 || ch == 0) return;
  const int threads = static_cast<int>(std::min<int64_t>(256, (ch + 31) / 32 * 32));
  select_frames_kernel<<<blocks_for(b * n, 1, int64_t{1} << 30), threads, 0, c.stream>>>(
      dst.data<float>(), src.data<float>(), b * n, n, ch, s);
  check_launch(op);
}

void CudaBackend::group_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, int groups,
                             float eps, bool silu, Tensor& out) {
  OpTimer timer_(*ctx_, "group_norm", x);
  const char* op = "group_norm";
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, op, "x");
  expect_contiguous_f32(out, c, op, "out");
  expect_contiguous_f32(gamma, c, op, "gamma");
  expect_contiguous_f32(beta, c, op, "beta");
  STDIT_CHECK(x.dim() >= 2 && out.shape() == x.shape(), "cuda group_norm: x/out shapes");
  const int64_t B = x.size(0), C = x.size(1);
  STDIT_CHECK(groups > 0 && C % groups == 0 && gamma.numel() == C && beta.numel() == C,
              "cuda group_norm: ", C, " channels, ", groups, " groups");
  if (x.numel() == 0) return;
  const int64_t S = x.numel() / (B * C), cg = C / groups, n = cg * S, G = B * groups;
  STDIT_CHECK(G <= 65535, "cuda group_norm: ", G, " (batch x groups) is more than one launch covers");
  // Enough chunks per group to fill the GPU several times over, each at least 2048 values.
  const int64_t want = std::max<int64_t>(1, (8 * c.num_sms + G - 1) / G);
  const int64_t p = std::max<int64_t>(1, std::min<int64_t>({want, (n + 2047) / 2048, 1024}));
  int64_t chunk = (n + p - 1) / p;
  const bool vec4 = n % 4 == 0 && S % 4 == 0 &&
                    ((reinterpret_cast<uintptr_t>(x.raw()) | reinterpret_cast<uintptr_t>(out.raw())) & 15u) == 0;
  if (vec4) chunk = (chunk + 3) / 4 * 4;
  auto part = device_alloc(ctx_, static_cast<size_t>(2 * G * p + G) * sizeof(double));
  double* psum = static_cast<double*>(part.get());
  double* psq = psum + G * p;
  double* shifts = psq + G * p;
  const dim3 grid(static_cast<unsigned>(p), static_cast<unsigned>(G));
  gn_stats_kernel<<<grid, kGnThreads, 0, c.stream>>>(x.data<float>(), psum, psq, shifts, n, chunk,
                                                     p);
  check_launch(op);
  gn_apply_kernel<<<grid, kGnThreads, 0, c.stream>>>(x.data<float>(), psum, psq, shifts, gamma.data<float>(),
                                                     beta.data<float>(), out.data<float>(), n, chunk,
                                                     p, S, cg, groups, eps, silu, vec4);
  check_launch(op);
}

}  // namespace stdit
