// CUDA layout ops: strided copy (any dtype, rank <= 8; F32 <-> BF16 conversion), patchify,
// unpatchify.
#include <algorithm>
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"

namespace stdit {

using namespace cuda;

namespace {

constexpr int kMaxRank = 8;

struct CopyDesc {
  int rank;
  int64_t shape[kMaxRank];
  int64_t ss[kMaxRank];  // source strides (elements)
  int64_t ds[kMaxRank];  // destination strides
};

template <typename D, typename S>
__device__ __forceinline__ D convert_elem(S v) {
  if constexpr (std::is_same_v<D, S>) {
    return v;
  } else {
    D d;
    store_out(&d, load_f(&v));
    return d;
  }
}

// dst = src elementwise (converting between F32, BF16 and F16 when the types differ: rounded to
// nearest even, F16 saturating).
template <typename E, typename I, typename D = E>
__global__ void copy_kernel(const E* __restrict__ src, D* __restrict__ dst, CopyDesc c, I n) {
  for (I flat = blockIdx.x * static_cast<I>(blockDim.x) + threadIdx.x; flat < n;
       flat += static_cast<I>(gridDim.x) * blockDim.x) {
    I r = flat, so = 0, dof = 0;
#pragma unroll
    for (int i = kMaxRank - 1; i >= 0; --i) {
      if (i >= c.rank) continue;
      const I sz = static_cast<I>(c.shape[i]);
      const I q = r / sz, idx = r - q * sz;
      so += idx * static_cast<I>(c.ss[i]);
      dof += idx * static_cast<I>(c.ds[i]);
      r = q;
    }
    dst[dof] = convert_elem<D>(src[so]);
  }
}

// Contiguous F32 -> BF16 or F16, 8 values per thread (two 16-byte loads, one 16-byte store);
// n8 = n / 8 groups, the tail done by the first threads. Pointers 16-byte aligned.
template <typename H>
__global__ void f32_to_half16_contig_kernel(const float* __restrict__ src, H* __restrict__ dst, int64_t n) {
  const int64_t n8 = n / 8;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n8;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 a = reinterpret_cast<const float4*>(src)[2 * i];
    const float4 b = reinterpret_cast<const float4*>(src)[2 * i + 1];
    const uint4 v = make_uint4(pack_half2<H>(a.x, a.y), pack_half2<H>(a.z, a.w), pack_half2<H>(b.x, b.y),
                               pack_half2<H>(b.z, b.w));
    reinterpret_cast<uint4*>(dst)[i] = v;
  }
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t < n - n8 * 8) store_out(dst + n8 * 8 + t, src[n8 * 8 + t]);
}

// Drops size-1 dims and merges neighbours that are contiguous in both tensors.
CopyDesc simplify(const Tensor& src, const Tensor& dst) {
  std::vector<int64_t> sh, ss, ds;
  for (int i = 0; i < src.dim(); ++i) {
    if (src.size(i) == 1) continue;
    if (!sh.empty() && ss.back() == src.stride(i) * src.size(i) &&
        ds.back() == dst.stride(i) * src.size(i)) {
      sh.back() *= src.size(i);
      ss.back() = src.stride(i);
      ds.back() = dst.stride(i);
      continue;
    }
    sh.push_back(src.size(i));
    ss.push_back(src.stride(i));
    ds.push_back(dst.stride(i));
  }
  STDIT_CHECK(sh.size() <= static_cast<size_t>(kMaxRank), "cuda copy: views of rank ", sh.size(),
              " (after merging dims) are over the supported ", kMaxRank);
  CopyDesc c{};
  c.rank = static_cast<int>(sh.size());
  for (int i = 0; i < c.rank; ++i) {
    c.shape[i] = sh[i];
    c.ss[i] = ss[i];
    c.ds[i] = ds[i];
  }
  return c;
}

// Largest element offset (+1) a view can reach, for choosing 32-bit indexing.
int64_t span(const CopyDesc& c, bool dst) {
  int64_t s = 1;
  for (int i = 0; i < c.rank; ++i) s += (c.shape[i] - 1) * std::abs(dst ? c.ds[i] : c.ss[i]);
  return s;
}

template <typename E, typename D = E>
void launch_copy(const void* src, void* dst, const CopyDesc& c, int64_t n, cudaStream_t stream) {
  const int threads = 256;
  const unsigned blocks = blocks_for(n, threads);
  constexpr int64_t kLim = int64_t{1} << 31;
  bool neg = false;
  for (int i = 0; i < c.rank; ++i) neg |= c.ss[i] < 0 || c.ds[i] < 0;
  if (!neg && n < kLim && span(c, false) < kLim && span(c, true) < kLim)
    copy_kernel<E, int32_t, D><<<blocks, threads, 0, stream>>>(static_cast<const E*>(src),
                                                               static_cast<D*>(dst), c,
                                                               static_cast<int32_t>(n));
  else
    copy_kernel<E, int64_t, D><<<blocks, threads, 0, stream>>>(static_cast<const E*>(src),
                                                               static_cast<D*>(dst), c, n);
  check_launch("copy");
}

__global__ void patchify_kernel(const float* __restrict__ x, float* __restrict__ o, int64_t b,
                                int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph, int pw,
                                int64_t tp, int64_t hp, int64_t wp) {
  const int64_t feat = c * pt * ph * pw, ntok = tp * hp * wp, n = b * ntok * feat;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t f = i % feat;
    const int64_t rowi = i / feat, tok = rowi % ntok, bi = rowi / ntok;
    const int64_t kw = f % pw;
    f /= pw;
    const int64_t kh = f % ph;
    f /= ph;
    const int64_t kt = f % pt, ci = f / pt;
    const int64_t ti = tok / (hp * wp), hi = tok / wp % hp, wi = tok % wp;
    const int64_t tt = ti * pt + kt, hh = hi * ph + kh, ww = wi * pw + kw;
    o[i] = (tt < t && hh < h && ww < w) ? x[(((bi * c + ci) * t + tt) * h + hh) * w + ww] : 0.0f;
  }
}

__global__ void unpatchify_kernel(const float* __restrict__ x, float* __restrict__ o, int64_t b,
                                  int64_t c, int64_t t, int64_t h, int64_t w, int pt, int ph,
                                  int pw, int64_t hp, int64_t wp, int64_t ntok) {
  const int64_t feat = static_cast<int64_t>(pt) * ph * pw * c, n = b * c * t * h * w;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t r = i;
    const int64_t ww = r % w;
    r /= w;
    const int64_t hh = r % h;
    r /= h;
    const int64_t tt = r % t;
    r /= t;
    const int64_t ci = r % c, bi = r / c;
    const int64_t tok = ((tt / pt) * hp + hh / ph) * wp + ww / pw;
    // Token features are laid out (kt, kh, kw, c_out) with c_out fastest.
    const int64_t f = (((tt % pt) * ph + hh % ph) * pw + ww % pw) * c + ci;
    o[i] = x[(bi * ntok + tok) * feat + f];
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

void CudaBackend::copy(const Tensor& src, Tensor& dst) {
  OpTimer timer_(*ctx_, "copy", src);
  const CudaContext& c = *ctx_;
  expect_device(src, c, "copy", "src");
  expect_device(dst, c, "copy", "dst");
  STDIT_CHECK(src.shape() == dst.shape(), "cuda copy: shapes ", shape_str(src.shape()), " and ",
              shape_str(dst.shape()));
  const int64_t n = src.numel();
  if (src.dtype() != dst.dtype()) {
    // The conversions the backend needs: between F32 and the 16-bit types (the 16-bit path's
    // activations; the VAE's bf16 tensors beside an fp16 run's).
    const auto fmt = [](DType t) { return t == DType::F32 || is_half16(t); };
    STDIT_CHECK(fmt(src.dtype()) && fmt(dst.dtype()), "cuda copy: cannot convert ", dtype_name(src.dtype()), " to ",
                dtype_name(dst.dtype()));
    if (n == 0) return;
    const CopyDesc d = simplify(src, dst);
    const bool aligned = ((reinterpret_cast<uintptr_t>(src.raw()) |
                           reinterpret_cast<uintptr_t>(dst.raw())) & 15u) == 0;
    const bool contig = d.rank == 1 && d.ss[0] == 1 && d.ds[0] == 1 && aligned;
    // Each pair of types as a call of f(src element, dst element) (null pointers carry the types).
    const auto with_types = [&](auto f) {
      const auto dst_as = [&](auto* s) {
        if (dst.dtype() == DType::F32) f(s, static_cast<float*>(nullptr));
        else if (dst.dtype() == DType::BF16) f(s, static_cast<__nv_bfloat16*>(nullptr));
        else f(s, static_cast<__half*>(nullptr));
      };
      if (src.dtype() == DType::F32) dst_as(static_cast<float*>(nullptr));
      else if (src.dtype() == DType::BF16) dst_as(static_cast<__nv_bfloat16*>(nullptr));
      else dst_as(static_cast<__half*>(nullptr));
    };
    with_types([&](auto* s, auto* o) {
      using S = std::remove_pointer_t<decltype(s)>;
      using D = std::remove_pointer_t<decltype(o)>;
      if constexpr (std::is_same_v<S, float> && !std::is_same_v<D, float>) {
        if (contig) {
          // The common case (an F32 activation into a 16-bit GEMM input): vectorised.
          f32_to_half16_contig_kernel<D><<<blocks_for(std::max<int64_t>(n / 8, 1), 256, 4096), 256, 0, c.stream>>>(
              src.data<float>(), static_cast<D*>(dst.raw()), n);
          check_launch("copy f32->16-bit");
          return;
        }
      }
      launch_copy<S, D>(src.raw(), dst.raw(), d, n, c.stream);
    });
    return;
  }
  if (n == 0 || (src.raw() == dst.raw() && src.strides() == dst.strides())) return;
  const size_t es = dtype_size(src.dtype());
  if (src.is_contiguous() && dst.is_contiguous()) {
    STDIT_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice,
                                     c.stream));
    return;
  }
  const CopyDesc d = simplify(src, dst);
  switch (es) {
    case 1: launch_copy<uint8_t>(src.raw(), dst.raw(), d, n, c.stream); break;
    case 2: launch_copy<uint16_t>(src.raw(), dst.raw(), d, n, c.stream); break;
    case 4: launch_copy<uint32_t>(src.raw(), dst.raw(), d, n, c.stream); break;
    case 8: launch_copy<uint64_t>(src.raw(), dst.raw(), d, n, c.stream); break;
    default: fail("cuda copy: element size ", es, " is not supported");
  }
}

void CudaBackend::patchify(const Tensor& x, int pt, int ph, int pw, Tensor& out) {
  OpTimer timer_(*ctx_, "patchify", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "patchify", "x");
  expect_contiguous_f32(out, c, "patchify", "out");
  STDIT_CHECK(x.dim() == 5, "cuda patchify: x must be [B, C, T, H, W]");
  STDIT_CHECK(pt > 0 && ph > 0 && pw > 0, "cuda patchify: patch sizes must be positive");
  const int64_t b = x.size(0), ch = x.size(1), t = x.size(2), h = x.size(3), w = x.size(4);
  const int64_t tp = ceil_div(t, pt), hp = ceil_div(h, ph), wp = ceil_div(w, pw);
  const int64_t feat = ch * pt * ph * pw;
  expect_shape(out, {b, tp * hp * wp, feat}, "patchify", "out");
  if (out.numel() == 0) return;
  patchify_kernel<<<blocks_for(out.numel(), 256), 256, 0, c.stream>>>(
      x.data<float>(), out.data<float>(), b, ch, t, h, w, pt, ph, pw, tp, hp, wp);
  check_launch("patchify");
}

void CudaBackend::unpatchify(const Tensor& x, int64_t tp, int64_t hp, int64_t wp, int pt, int ph,
                             int pw, Tensor& out) {
  OpTimer timer_(*ctx_, "unpatchify", x);
  const CudaContext& c = *ctx_;
  expect_contiguous_f32(x, c, "unpatchify", "x");
  expect_contiguous_f32(out, c, "unpatchify", "out");
  STDIT_CHECK(out.dim() == 5, "cuda unpatchify: out must be [B, C, T, H, W]");
  const int64_t b = out.size(0), ch = out.size(1), t = out.size(2), h = out.size(3),
                w = out.size(4);
  STDIT_CHECK(t <= tp * pt && h <= hp * ph && w <= wp * pw && t > (tp - 1) * pt &&
                  h > (hp - 1) * ph && w > (wp - 1) * pw,
              "cuda unpatchify: output ", shape_str(out.shape()), " does not crop the patch grid");
  const int64_t feat = static_cast<int64_t>(pt) * ph * pw * ch;
  expect_shape(x, {b, tp * hp * wp, feat}, "unpatchify", "x");
  if (out.numel() == 0) return;
  unpatchify_kernel<<<blocks_for(out.numel(), 256), 256, 0, c.stream>>>(
      x.data<float>(), out.data<float>(), b, ch, t, h, w, pt, ph, pw, hp, wp, tp * hp * wp);
  check_launch("unpatchify");
}

}  // namespace stdit
