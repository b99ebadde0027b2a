// CUDA attention: q/k RMSNorm + interleaved RoPE in place, flash-style self-attention over strided
// [..., N, H, D] views (optional T5 bias and key mask), block-diagonal cross-attention.
//
// The attention kernel is F32 on the CUDA cores: one block per (batch index, head, query tile);
// TPQ threads share one query row (each holds DPT of its D values in registers); key/value tiles
// of BK rows stream through shared memory; online softmax in f32. NaN propagates as on the CPU.
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace stdit {

using namespace cuda;

namespace {

// ---------------------------------------------------------------------------- qk_norm_rope -----

constexpr int kRopeWarps = 8;

// One warp per (batch, n, head) vector of D values.
__global__ void __launch_bounds__(kRopeWarps * 32)
    qk_norm_rope_kernel(float* q, LeadShape lsh, LeadStrides lst, int64_t nvec, int64_t n,
                        int64_t h, int64_t d, int64_t sn, int64_t sh,
                        const float* __restrict__ w, const float* __restrict__ freqs, float eps) {
  const int lane = threadIdx.x & 31;
  const int64_t vec = blockIdx.x * static_cast<int64_t>(kRopeWarps) + (threadIdx.x >> 5);
  if (vec >= nvec) return;
  const int64_t b = vec / (n * h), rem = vec - b * n * h, i = rem / h, head = rem - i * h;
  float* x = q + lead_offset(lsh, lst, b) + i * sn + head * sh;
  float ss = 0;
  for (int64_t e = lane; e < d; e += 32) ss += x[e] * x[e];
  ss = warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(d) + eps);
  if (!freqs) {
    for (int64_t e = lane; e < d; e += 32) x[e] = w[e] * (x[e] * r);
    return;
  }
  // Interleaved pairs (x[2j], x[2j+1]) rotate by angle i * freqs[j], angle in f32.
  for (int64_t j = lane; j < d / 2; j += 32) {
    const float x0 = w[2 * j] * (x[2 * j] * r), x1 = w[2 * j + 1] * (x[2 * j + 1] * r);
    const float a = static_cast<float>(i) * freqs[j];
    const float c = cosf(a), s = sinf(a);
    x[2 * j] = x0 * c - x1 * s;
    x[2 * j + 1] = x1 * c + x0 * s;
  }
}

// ---------------------------------------------------------------------------- attention --------

// Where a [..., N, H, D] operand lives: leading-dim strides plus the N and H strides.
struct Operand {
  const float* p;
  LeadStrides lead;
  int64_t sn, sh;
};

struct AttnArgs {
  Operand q, k, v;
  float* out;
  LeadStrides out_lead;
  int64_t out_sn, out_sh;
  LeadShape lead;             // shared leading ("batch") shape of q and out (and k/v unless packed)
  bool kv_packed;             // cross-attention: k/v have no leading dims; rows [begin[b], begin[b+1])
  const int* kv_begin;        // device [batch + 1] when kv_packed
  int64_t h, nq, nk, d;       // nk: keys per batch index (self-attention)
  float scale;
  const float* bias;          // [H, Nq, Nk] or nullptr
  const uint8_t* key_mask;    // [batch, Nk] or nullptr
};

// Shared-memory layout of one key (or value) row: TPQ segments of DPT values, segment stride SS
// (padded so that the TPQ float4 reads of one query land in distinct bank groups).
template <int TPQ, int DPT>
struct RowLayout {
  static constexpr int SS = (DPT % 32 == 0 || DPT % 32 == 16) ? DPT + 4 : DPT;
  static constexpr int RS = TPQ * SS;  // row stride (floats)
  __device__ static int index(int e) { return (e / DPT) * SS + (e % DPT); }
};

template <int TPQ, int DPT, int BQ, int BK>
__global__ void __launch_bounds__(BQ * TPQ) attention_kernel(AttnArgs a) {
  static_assert(DPT % 4 == 0, "DPT must be a multiple of 4");
  static_assert(TPQ <= 32 && (TPQ & (TPQ - 1)) == 0, "TPQ must be a power of two <= 32");
  using L = RowLayout<TPQ, DPT>;
  constexpr int kThreads = BQ * TPQ;
  extern __shared__ float4 smem4[];
  float* ks = reinterpret_cast<float*>(smem4);
  float* vs = ks + BK * L::RS;

  const int tid = threadIdx.x, sub = tid % TPQ, ql = tid / TPQ;
  const int64_t bh = blockIdx.x, b = bh / a.h, head = bh - b * a.h;
  const int64_t qi = blockIdx.y * static_cast<int64_t>(BQ) + ql;
  const bool valid_q = qi < a.nq;
  const int64_t d = a.d;

  // Key range of this batch index.
  int64_t k_begin = 0, k_end = a.nk;
  int64_t k_off = 0, v_off = 0;
  if (a.kv_packed) {
    k_begin = a.kv_begin[b];
    k_end = a.kv_begin[b + 1];
  } else {
    k_off = lead_offset(a.lead, a.k.lead, b);
    v_off = lead_offset(a.lead, a.v.lead, b);
  }
  const float* kbase = a.k.p + k_off + head * a.k.sh;
  const float* vbase = a.v.p + v_off + head * a.v.sh;

  // Key mask of this batch index; ignored when it masks every key (as the CPU backend does).
  const uint8_t* mask = a.key_mask ? a.key_mask + b * a.nk : nullptr;
  if (mask) {
    int any = 0;
    for (int64_t j = tid; j < a.nk; j += kThreads) any |= mask[j] != 0;
    if (!__syncthreads_or(any)) mask = nullptr;
  }

  // This thread's slice of its query row (zero beyond D and for rows past Nq).
  float qr[DPT], o[DPT];
  {
    const float* qp = a.q.p + lead_offset(a.lead, a.q.lead, b) + qi * a.q.sn + head * a.q.sh;
#pragma unroll
    for (int i = 0; i < DPT; ++i) {
      const int64_t e = static_cast<int64_t>(sub) * DPT + i;
      qr[i] = (valid_q && e < d) ? qp[e] : 0.0f;
      o[i] = 0.0f;
    }
  }
  const float* brow = (a.bias && valid_q) ? a.bias + (head * a.nq + qi) * a.nk : nullptr;
  float m = -INFINITY, l = 0.0f;

  // Zero the padding of the shared rows once (never overwritten by the tile loads).
  for (int idx = tid; idx < 2 * BK * L::RS; idx += kThreads) ks[idx] = 0.0f;

  for (int64_t j0 = k_begin; j0 < k_end; j0 += BK) {
    __syncthreads();
    const int64_t rows = min(static_cast<int64_t>(BK), k_end - j0);
    for (int64_t idx = tid; idx < BK * d; idx += kThreads) {
      const int64_t jj = idx / d, e = idx - jj * d;
      const int si = static_cast<int>(jj) * L::RS + L::index(static_cast<int>(e));
      if (jj < rows) {
        ks[si] = kbase[(j0 + jj) * a.k.sn + e];
        vs[si] = vbase[(j0 + jj) * a.v.sn + e];
      } else {
        ks[si] = 0.0f;
        vs[si] = 0.0f;
      }
    }
    __syncthreads();

    float s[BK];
    float tile_max = -INFINITY;
#pragma unroll
    for (int jj = 0; jj < BK; ++jj) {
      const float4* kr = reinterpret_cast<const float4*>(ks + jj * L::RS + sub * L::SS);
      float part = 0.0f;
#pragma unroll
      for (int i = 0; i < DPT / 4; ++i) {
        const float4 kv = kr[i];
        part += qr[4 * i] * kv.x;
        part += qr[4 * i + 1] * kv.y;
        part += qr[4 * i + 2] * kv.z;
        part += qr[4 * i + 3] * kv.w;
      }
#pragma unroll
      for (int off = TPQ / 2; off > 0; off >>= 1) part += __shfl_xor_sync(0xffffffffu, part, off);
      const int64_t j = j0 + jj;
      bool valid_k = jj < rows;
      float sc = part * a.scale;
      if (valid_k) {
        const int64_t jr = j - k_begin;  // key index within this batch index's range
        if (brow) sc += brow[jr];
        if (mask && !mask[jr]) valid_k = false;
      }
      s[jj] = valid_k ? sc : -INFINITY;
      tile_max = fmaxf(tile_max, s[jj]);
    }
    const float m_new = fmaxf(m, tile_max);
    const float corr = (m_new == -INFINITY) ? 1.0f : expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < DPT; ++i) o[i] *= corr;
#pragma unroll
    for (int jj = 0; jj < BK; ++jj) {
      const float p = (s[jj] == -INFINITY) ? 0.0f : expf(s[jj] - m_new);
      l += p;
      const float4* vr = reinterpret_cast<const float4*>(vs + jj * L::RS + sub * L::SS);
#pragma unroll
      for (int i = 0; i < DPT / 4; ++i) {
        const float4 vv = vr[i];
        o[4 * i] += p * vv.x;
        o[4 * i + 1] += p * vv.y;
        o[4 * i + 2] += p * vv.z;
        o[4 * i + 3] += p * vv.w;
      }
    }
    m = m_new;
  }

  if (!valid_q) return;
  float* op = a.out + lead_offset(a.lead, a.out_lead, b) + qi * a.out_sn + head * a.out_sh;
  const bool empty = k_end <= k_begin;  // no keys: the CPU backend writes zeros
#pragma unroll
  for (int i = 0; i < DPT; ++i) {
    const int64_t e = static_cast<int64_t>(sub) * DPT + i;
    if (e < d) op[e] = empty ? 0.0f : o[i] / l;
  }
}

template <int TPQ, int DPT, int BQ, int BK>
void launch_attention(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  using L = RowLayout<TPQ, DPT>;
  const size_t smem = 2 * BK * L::RS * sizeof(float);
  auto kern = attention_kernel<TPQ, DPT, BQ, BK>;
  if (smem > 48 * 1024) {
    STDIT_CHECK(smem <= c.smem_optin, "cuda attention: needs ", smem, " bytes of shared memory");
    STDIT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
  }
  const int64_t bh = batch * a.h, qt = (a.nq + BQ - 1) / BQ;
  STDIT_CHECK(bh < (int64_t{1} << 31) && qt <= 65535, "cuda attention: grid too large (", bh,
              " x ", qt, ")");
  kern<<<dim3(static_cast<unsigned>(bh), static_cast<unsigned>(qt)), BQ * TPQ, smem, c.stream>>>(a);
  check_launch("attention");
}

// D <= 128: 4 threads per query; dims per thread rounded up to a multiple of 4.
template <int DPT>
void launch_small(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (a.nq <= 32)
    launch_attention<4, DPT, 32, 32>(c, a, batch);
  else
    launch_attention<4, DPT, 64, 32>(c, a, batch);
}

void dispatch_attention(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  if (batch == 0 || a.h == 0 || a.nq == 0) return;
  const int64_t d = a.d;
  STDIT_CHECK(d > 0, "cuda attention: head dim must be positive");
  if (d <= 16) launch_small<4>(c, a, batch);
  else if (d <= 32) launch_small<8>(c, a, batch);
  else if (d <= 48) launch_small<12>(c, a, batch);
  else if (d <= 64) launch_small<16>(c, a, batch);
  else if (d <= 80) launch_small<20>(c, a, batch);
  else if (d <= 96) launch_small<24>(c, a, batch);
  else if (d <= 128) launch_small<32>(c, a, batch);
  else if (d <= 512) launch_attention<16, 32, 16, 16>(c, a, batch);   // VAE mid-block (H = 1)
  else if (d <= 1024) launch_attention<32, 32, 8, 16>(c, a, batch);
  else fail("cuda attention: head dim ", d, " is over the supported 1024");
}

struct HeadDims {
  int64_t n, h, d, sn, sh;
};
HeadDims head_dims(const Tensor& t, const CudaContext& c, const char* op, const char* what) {
  expect_f32(t, c, op, what);
  STDIT_CHECK(t.dim() >= 3, "cuda ", op, ": ", what, " must be [..., N, H, D], got ",
              shape_str(t.shape()));
  return {t.size(-3), t.size(-2), t.size(-1), t.stride(-3), t.stride(-2)};
}

}  // namespace

void CudaBackend::qk_norm_rope(Tensor& q, const Tensor& weight, float eps, const Tensor& rope_freqs) {
  const char* op = "qk_norm_rope";
  const CudaContext& c = *ctx_;
  const HeadDims hv = head_dims(q, c, op, "q");
  expect_contiguous_f32(weight, c, op, "weight");
  STDIT_CHECK(weight.numel() == hv.d, "cuda ", op, ": weight has ", weight.numel(),
              " values for head dim ", hv.d);
  if (rope_freqs.defined()) {
    expect_contiguous_f32(rope_freqs, c, op, "rope_freqs");
    STDIT_CHECK(hv.d % 2 == 0 && rope_freqs.numel() == hv.d / 2, "cuda ", op, ": rope_freqs has ",
                rope_freqs.numel(), " values for head dim ", hv.d);
  }
  const int lead = q.dim() - 3;
  const LeadShape lsh = lead_shape(q, lead);
  const LeadStrides lst = lead_strides(q, lead);
  const int64_t nvec = q.numel() / std::max<int64_t>(hv.d, 1);
  if (nvec == 0 || hv.d == 0) return;
  qk_norm_rope_kernel<<<blocks_for(nvec, kRopeWarps, 2147483647), kRopeWarps * 32, 0, c.stream>>>(
      q.data<float>(), lsh, lst, nvec, hv.n, hv.h, hv.d, hv.sn, hv.sh, weight.data<float>(),
      rope_freqs.defined() ? rope_freqs.data<float>() : nullptr, eps);
  check_launch(op);
}

void CudaBackend::attention(const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                            Tensor& out, const AttentionExtras& extras) {
  const char* op = "attention";
  const CudaContext& c = *ctx_;
  const HeadDims qv = head_dims(q, c, op, "q"), kv = head_dims(k, c, op, "k"),
                 vv = head_dims(v, c, op, "v"), ov = head_dims(out, c, op, "out");
  const Shape lead(q.shape().begin(), q.shape().end() - 3);
  for (const Tensor* t : std::initializer_list<const Tensor*>{&k, &v, &out})
    STDIT_CHECK(Shape(t->shape().begin(), t->shape().end() - 3) == lead && t->size(-1) == qv.d &&
                    t->size(-2) == qv.h,
                "cuda attention: q ", shape_str(q.shape()), ", k ", shape_str(k.shape()), ", v ",
                shape_str(v.shape()), ", out ", shape_str(out.shape()), " are inconsistent");
  STDIT_CHECK(kv.n == vv.n && ov.n == qv.n, "cuda attention: sequence lengths differ");
  const int nl = q.dim() - 3;
  const int64_t nb = shape_numel(lead);
  AttnArgs a{};
  a.lead = lead_shape(q, nl);
  a.q = {q.data<float>(), lead_strides(q, nl), qv.sn, qv.sh};
  a.k = {k.data<float>(), lead_strides(k, nl), kv.sn, kv.sh};
  a.v = {v.data<float>(), lead_strides(v, nl), vv.sn, vv.sh};
  a.out = out.data<float>();
  a.out_lead = lead_strides(out, nl);
  a.out_sn = ov.sn;
  a.out_sh = ov.sh;
  a.kv_packed = false;
  a.kv_begin = nullptr;
  a.h = qv.h;
  a.nq = qv.n;
  a.nk = kv.n;
  a.d = qv.d;
  a.scale = scale;
  a.bias = nullptr;
  a.key_mask = nullptr;
  if (extras.bias.defined()) {
    expect_contiguous_f32(extras.bias, c, op, "bias");
    expect_shape(extras.bias, {qv.h, qv.n, kv.n}, op, "bias");
    a.bias = extras.bias.data<float>();
  }
  if (extras.key_mask.defined()) {
    expect_device(extras.key_mask, c, op, "key_mask");
    STDIT_CHECK(extras.key_mask.dtype() == DType::U8 && extras.key_mask.is_contiguous(),
                "cuda attention: key_mask must be contiguous U8");
    expect_shape(extras.key_mask, {nb, kv.n}, op, "key_mask");
    a.key_mask = extras.key_mask.data<uint8_t>();
  }
  dispatch_attention(c, a, nb);
}

void CudaBackend::cross_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const std::vector<int>& kv_lens, float scale, Tensor& out) {
  const char* op = "cross_attention";
  const CudaContext& c = *ctx_;
  STDIT_CHECK(q.dim() == 4 && out.shape() == q.shape(), "cuda ", op,
              ": q/out must be [B, N, H, D]");
  STDIT_CHECK(k.dim() == 3 && v.shape() == k.shape(), "cuda ", op, ": k/v must be [L, H, D]");
  const HeadDims qv = head_dims(q, c, op, "q"), ov = head_dims(out, c, op, "out");
  expect_f32(k, c, op, "k");
  expect_f32(v, c, op, "v");
  STDIT_CHECK(k.size(1) == qv.h && k.size(2) == qv.d, "cuda ", op,
              ": heads/head dim of q and k differ");
  const int64_t nb = q.size(0);
  STDIT_CHECK(static_cast<int64_t>(kv_lens.size()) == nb, "cuda ", op, ": ", kv_lens.size(),
              " kv lengths for batch ", nb);
  std::vector<int> begin(nb + 1, 0);
  for (int64_t b = 0; b < nb; ++b) {
    STDIT_CHECK(kv_lens[b] > 0, "cuda ", op, ": sample ", b, " has no text tokens");
    begin[b + 1] = begin[b] + kv_lens[b];
  }
  STDIT_CHECK(begin[nb] == k.size(0), "cuda ", op, ": kv lengths sum to ", begin[nb],
              " but k has ", k.size(0), " rows");
  if (nb == 0 || qv.n == 0 || qv.h == 0) return;
  auto dbegin = device_copy_of(ctx_, begin.data(), begin.size() * sizeof(int));
  AttnArgs a{};
  a.lead = lead_shape(q, 1);
  a.q = {q.data<float>(), lead_strides(q, 1), qv.sn, qv.sh};
  a.k = {k.data<float>(), LeadStrides{}, k.stride(0), k.stride(1)};
  a.v = {v.data<float>(), LeadStrides{}, v.stride(0), v.stride(1)};
  a.out = out.data<float>();
  a.out_lead = lead_strides(out, 1);
  a.out_sn = ov.sn;
  a.out_sh = ov.sh;
  a.kv_packed = true;
  a.kv_begin = static_cast<const int*>(dbegin.get());
  a.h = qv.h;
  a.nq = qv.n;
  a.nk = k.size(0);
  a.d = qv.d;
  a.scale = scale;
  a.bias = nullptr;
  a.key_mask = nullptr;
  dispatch_attention(c, a, nb);
}

}  // namespace stdit
