// BF16 attention on Hopper's asynchronous tensor cores (wgmma) for head dims 64, 72 and 80: the
// spatial attention of STDiT3 (3,600 tokens per frame at 720p, head dim 72), its temporal
// attention from 64 latent frames on, and cross-attention to texts of more than 64 tokens (k/v
// rows packed per sample: kv_begin). BF16 only: F16 calls (AttnArgs::f16, --precision fp16) are
// declined and run on the other kernels.
//
// One block per (query tile of 64 * kWG rows, head, batch index): kWG consumer warpgroups of 64
// query rows each, plus a producer warpgroup (one thread of it works; setmaxnreg lowers its
// registers and raises the consumers'). The producer loads the block's Q tile once and
// streams K/V tiles of BK keys through kStages shared-memory stages with the tensor memory
// accelerator (TMA); "full" and "empty" mbarriers hand each stage from the producer to the
// consumers and back. Each consumer warpgroup, per key tile:
//   S = Q K^T     wgmma, both operands in shared memory, head dim zero-padded to DK (a multiple
//                 of 16) by TMA's zero fill past the tensor's end;
//   softmax       online, in f32 registers, base 2 (scores scaled by scale * log2 e);
//   O += P V      wgmma, P rounded to bf16 in registers, V in shared memory MN-major.
// The consumers never synchronise with each other, so one warpgroup's softmax runs while another
// warpgroup's products occupy the tensor cores.
//
// Shared-memory layout. Head dims 0-63 of every tile use the 128-byte swizzle (one TMA box of
// {64 dims, rows} per tile, rows 128 bytes apart, 8-row atoms of 1,024 bytes): for Q and K
// (K-major operands, K = head dim) the k-th 16-dim step starts 32 k bytes into the tile, stride
// byte offset 1,024; for V (MN-major: K = keys, N = head dim) a 16-key step starts 2,048 bytes
// further, stride byte offset 1,024 (8 keys), leading byte offset = the distance to the block of
// dims 64-127, which holds V's dims past 64 (head dim 72/80, a box of {8 or 16, rows} into the
// same swizzled layout). Q's and K's dims 64-79 (head dim 72/80, zero-padded by TMA past the
// head dim) use the 32-byte swizzle: one box of {16, rows}, rows 32 bytes apart, stride byte
// offset 256 (8 rows).
#include <cuda.h>
// The sm_80 pass compiles the helpers below without the kernel that uses them (it is sm_90a only).
#pragma nv_diag_suppress 177
#include <cudaTypedefs.h>

#include <cmath>

#include "backend/cuda/cuda_attention.cuh"

namespace stdit::cuda {

namespace {

#include "backend/cuda/cuda_wgmma.inc"

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) { return pack_half2<__nv_bfloat16>(lo, hi); }

template <int N>
struct Wgmma;
template <>
struct Wgmma<128> {
  static __device__ __forceinline__ void ss(float (&d)[64], uint64_t a, uint64_t b, int acc) {
    wgmma_m64n128k16_ss(d, a, b, acc);
  }
};
template <>
struct Wgmma<64> {
  static __device__ __forceinline__ void rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
    wgmma_m64n64k16_rs(d, a, b);
  }
};
template <>
struct Wgmma<72> {
  static __device__ __forceinline__ void rs(float (&d)[36], const uint32_t (&a)[4], uint64_t b) {
    wgmma_m64n72k16_rs(d, a, b);
  }
};
template <>
struct Wgmma<80> {
  static __device__ __forceinline__ void rs(float (&d)[40], const uint32_t (&a)[4], uint64_t b) {
    wgmma_m64n80k16_rs(d, a, b);
  }
};

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// wgmma shared-memory matrix descriptor without swizzle: start address, leading byte offset
// (between core matrices along K), stride byte offset (along M or N); all in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((addr >> 4) & 0x3FFFu) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFFu) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFFu) << 32);
}

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
        "selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
// One TMA box of a 4-d tensor map into shared memory, completing on `bar`.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                         int c2, int c3, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes "
      "[%0], [%1, {%2, %3, %4, %5}], [%6];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Registers an asynchronous wgmma reads or writes: pinned in place until after the wait.
template <int N>
__device__ __forceinline__ void keep(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void keep(uint32_t (&r)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) asm volatile("" : "+r"(r[i][j])::"memory");
}
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// The six TMA maps of one call: Q, K, V over head dims 0-63 (128-byte swizzle), Q's and K's
// dims 64-79 (32-byte swizzle), V's dims 64-79 (128-byte swizzle).
struct WgmmaMaps {
  CUtensorMap q, qt, k, kt, v, vt;
};

template <int DK, int DV, int BK, int kWG, int kStages>
struct WgmmaTiles {
  static_assert(DK >= 64 && DK <= 80 && DV >= 64 && DV <= 80 && DK % 16 == 0 && DV % 8 == 0);
  static constexpr int kRows = 64 * kWG;         // query rows per block
  static constexpr int KT = (DK - 64) / 16;      // 16-dim steps of Q and K past dim 64 (0 or 1)
  static constexpr int VT = DV - 64;             // V's dims in the second swizzled block
  static constexpr int kQBytes = kRows * 128 + KT * kRows * 32;
  static constexpr int kK128 = BK * 128, kKBytes = kK128 + KT * BK * 32;
  static constexpr int kVBytes = BK * 128 * (VT > 0 ? 2 : 1);
  static constexpr int kStageBytes = kKBytes + kVBytes;
  static constexpr int kStageTx = kKBytes + BK * 128 + BK * VT * 2;  // bytes TMA writes per stage
  static_assert(kQBytes % 1024 == 0 && kKBytes % 1024 == 0 && kStageBytes % 1024 == 0);
  static constexpr int kBarBytes = (2 * kStages + 1) * 8;
  static constexpr int kSmem = 1024 + kQBytes + kStages * kStageBytes + kBarBytes;
  static constexpr int kThreads = 128 * (kWG + 1);
};

// Descriptors of tiles with the 128-byte (layout type 1) and the 32-byte swizzle (type 3).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr, uint32_t lbo) {
  return smem_desc(addr, lbo, 1024) | (uint64_t{1} << 62);
}
__device__ __forceinline__ uint64_t smem_desc_sw32(uint32_t addr) {
  return smem_desc(addr, 16, 256) | (uint64_t{3} << 62);
}

template <int DK, int DV, int BK, int kWG, int kStages>
__global__ void __launch_bounds__(128 * (kWG + 1), 1)
    attention_wgmma_kernel(const __grid_constant__ WgmmaMaps maps, __nv_bfloat16* out,
                           int64_t out_sb, int64_t out_sn, int64_t out_sh, int nq, int nk,
                           const int* __restrict__ kv_begin, float sl2) {
  // wgmma, TMA and mbarriers exist on sm_90a only: the other targets of the build (sm_80 SASS,
  // compute_80 PTX) hold an empty kernel, which the policy never launches (wgmma_attention is
  // chosen for sm_90 alone).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using L = WgmmaTiles<DK, DV, BK, kWG, kStages>;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;  // swizzle atoms: 1,024-aligned
  const uint32_t s_q = base, s_kv = base + L::kQBytes;
  const uint32_t bars = s_kv + kStages * L::kStageBytes;
  auto full = [&](int s) { return bars + 8u * s; };
  auto empty = [&](int s) { return bars + 8u * (kStages + s); };
  const uint32_t qbar = bars + 16u * kStages;

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int q0 = blockIdx.x * L::kRows, head = blockIdx.y, b = blockIdx.z;
  // Cross-attention (kv_begin): this sample's keys are rows [kv_begin[b], kv_begin[b + 1]) of
  // k/v, which have no batch dim; rows of the next sample in a tile are masked like the end.
  int k0 = 0, kb = b;
  if (kv_begin) {
    k0 = kv_begin[b];
    nk = kv_begin[b + 1] - k0;
    kb = 0;
  }
  const int tiles = (nk + BK - 1) / BK;
  if (tid == 0) {
    for (int s = 0; s < kStages; ++s) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), 4 * kWG);  // one arrival per consumer warp
    }
    mbar_init(qbar, 1);
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (warp >= 4 * kWG) {  // the producer warpgroup: one thread issues every load
    asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
    if (warp == 4 * kWG && lane == 0) {
      mbar_expect_tx(qbar, L::kQBytes);
      tma_load(s_q, &maps.q, 0, head, q0, b, qbar);
      if (L::KT > 0) tma_load(s_q + L::kRows * 128, &maps.qt, 64, head, q0, b, qbar);
      for (int t = 0; t < tiles; ++t) {
        const int s = t % kStages, j0 = k0 + t * BK;
        if (t >= kStages) mbar_wait(empty(s), ((t / kStages) - 1) & 1);
        mbar_expect_tx(full(s), L::kStageTx);
        const uint32_t ks = s_kv + s * L::kStageBytes, vs = ks + L::kKBytes;
        tma_load(ks, &maps.k, 0, head, j0, kb, full(s));
        if (L::KT > 0) tma_load(ks + L::kK128, &maps.kt, 64, head, j0, kb, full(s));
        tma_load(vs, &maps.v, 0, head, j0, kb, full(s));
        if (L::VT > 0) tma_load(vs + BK * 128, &maps.vt, 64, head, j0, kb, full(s));
      }
    }
    return;
  }

  // The registers the producer gave up: the block's 64K as 3 x 128 x 160 + 128 x 24. (ptxas
  // compiles the whole kernel within the launch bound's 128 per thread, which the consumers fit
  // without spills; the 160 is headroom the runtime grants, not what the code uses.)
  static_assert(kWG == 3, "register split below is for three consumer warpgroups");
  asm volatile("setmaxnreg.inc.sync.aligned.u32 160;\n" ::: "memory");
  const int wg = warp >> 2, g = lane >> 2, t4 = lane & 3;
  float o[DV / 2];
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) o[i] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;  // l: this thread's columns
  const uint32_t q_tile = s_q + wg * 64 * 128, q_tail = s_q + L::kRows * 128 + wg * 64 * 32;
  mbar_wait(qbar, 0);

  // S = Q K^T of tile t into sc (asynchronous; committed as one group).
  float sc[BK / 2];
  auto issue_qk = [&](int t) {
    const uint32_t ks = s_kv + (t % kStages) * L::kStageBytes;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < 4; ++k)  // dims 0-63
      Wgmma<BK>::ss(sc, smem_desc_sw128(q_tile + 32 * k, 16), smem_desc_sw128(ks + 32 * k, 16), k > 0);
    if (L::KT > 0)  // dims 64-79
      Wgmma<BK>::ss(sc, smem_desc_sw32(q_tail), smem_desc_sw32(ks + L::kK128), 1);
    wgmma_commit();
  };
  // Online softmax of tile t's scores in place: sc becomes 2^(S sl2 - m) (f32); the running
  // maxima move to the tile's and c_a / c_b get the factors that rescale O and l.
  float c_a, c_b;
  auto softmax = [&](int t) {
    const int keys = min(BK, nk - t * BK);
    if (keys < BK) {
#pragma unroll
      for (int i = 0; i < BK / 2; ++i)
        if ((i >> 2) * 8 + 2 * t4 + (i & 1) >= keys) sc[i] = -INFINITY;
    }
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int j = 0; j < BK / 8; ++j) {
      mx_a = fmaxf(mx_a, fmaxf(sc[4 * j], sc[4 * j + 1]));
      mx_b = fmaxf(mx_b, fmaxf(sc[4 * j + 2], sc[4 * j + 3]));
    }
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 1));
    mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, 2));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 1));
    mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, 2));
    // Every tile holds at least one key, so the new maxima are finite.
    const float mn_a = fmaxf(m_a, mx_a * sl2), mn_b = fmaxf(m_b, mx_b * sl2);
    c_a = ex2(m_a - mn_a);
    c_b = ex2(m_b - mn_b);
    m_a = mn_a;
    m_b = mn_b;
    float sa = 0.0f, sb = 0.0f;
#pragma unroll
    for (int i = 0; i < BK / 2; ++i) {
      sc[i] = ex2(fmaf(sc[i], sl2, (i & 2) ? -mn_b : -mn_a));
      if (i & 2) sb += sc[i];
      else sa += sc[i];
    }
    l_a = l_a * c_a + sa;
    l_b = l_b * c_b + sb;
  };
  auto rescale_o = [&] {
#pragma unroll
    for (int j = 0; j < DV / 8; ++j) {
      o[4 * j] *= c_a;
      o[4 * j + 1] *= c_a;
      o[4 * j + 2] *= c_b;
      o[4 * j + 3] *= c_b;
    }
  };
  // P as bf16 A fragments: 16 keys = two 8-key groups of the accumulator.
  uint32_t p[BK / 16][4];
  auto pack_p = [&] {
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk)
#pragma unroll
      for (int r = 0; r < 4; ++r) p[kk][r] = pack_bf16(sc[8 * kk + 2 * r], sc[8 * kk + 2 * r + 1]);
  };
  // O += P V of tile t (asynchronous; one group).
  auto issue_pv = [&](int t) {
    const uint32_t vs = s_kv + (t % kStages) * L::kStageBytes + L::kKBytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) Wgmma<DV>::rs(o, p[kk], smem_desc_sw128(vs + kk * 2048, BK * 128));
    wgmma_commit();
  };
  auto release = [&](int t) {
    if (lane == 0) mbar_arrive(empty(t % kStages));
  };

  for (int t = 0; t < tiles; ++t) {
    mbar_wait(full(t % kStages), (t / kStages) & 1);
    issue_qk(t);
    wgmma_wait<0>();
    keep(sc);
    softmax(t);
    rescale_o();
    pack_p();
    issue_pv(t);
    wgmma_wait<0>();
    keep(o);
    keep(p);
    release(t);
  }

  l_a += __shfl_xor_sync(0xffffffffu, l_a, 1);
  l_a += __shfl_xor_sync(0xffffffffu, l_a, 2);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 1);
  l_b += __shfl_xor_sync(0xffffffffu, l_b, 2);
  const float inv_a = 1.0f / l_a, inv_b = 1.0f / l_b;
  const int row_a = q0 + wg * 64 + (warp & 3) * 16 + g, row_b = row_a + 8;
  __nv_bfloat16* ob = out + b * out_sb + head * out_sh;
#pragma unroll
  for (int j = 0; j < DV / 8; ++j) {
    const int col = 8 * j + 2 * t4;
    if (row_a < nq)
      *reinterpret_cast<uint32_t*>(ob + row_a * out_sn + col) = pack_bf16(o[4 * j] * inv_a, o[4 * j + 1] * inv_a);
    if (row_b < nq)
      *reinterpret_cast<uint32_t*>(ob + row_b * out_sn + col) = pack_bf16(o[4 * j + 2] * inv_b, o[4 * j + 3] * inv_b);
  }
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* p = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) !=
            cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      p = nullptr;
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  }();
  return fn;
}

// A [b][n][h][d] BF16 operand (element strides sb, sn, sh; d contiguous) as a 4-d TMA map with
// dims ordered (d, h, n, b) and boxes of {box_d, 1, rows, 1}; false where TMA cannot describe it.
bool encode_operand(CUtensorMap& map, const void* p, int64_t nb, int64_t n, int64_t h, int64_t d,
                    int64_t sb, int64_t sn, int64_t sh, int box_d, int rows,
                    CUtensorMapSwizzle swizzle) {
  auto enc = tensor_map_encoder();
  if (!enc) return false;
  const cuuint64_t dims[4] = {static_cast<cuuint64_t>(d), static_cast<cuuint64_t>(h),
                              static_cast<cuuint64_t>(n), static_cast<cuuint64_t>(nb)};
  const cuuint64_t strides[3] = {static_cast<cuuint64_t>(sh * 2), static_cast<cuuint64_t>(sn * 2),
                                 static_cast<cuuint64_t>(sb * 2)};
  for (cuuint64_t s : strides)
    if (s % 16 != 0 || s >= (cuuint64_t{1} << 40)) return false;
  const cuuint32_t box[4] = {static_cast<cuuint32_t>(box_d), 1, static_cast<cuuint32_t>(rows), 1};
  const cuuint32_t estr[4] = {1, 1, 1, 1};
  return enc(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, const_cast<void*>(p), dims, strides, box,
             estr, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <int DK, int DV>
bool launch_dims(const CudaContext& c, const AttnArgs& a, int64_t nb, int64_t sq, int64_t sk,
                 int64_t sv, int64_t so) {
  // Three consumer warpgroups (192 query rows) share each key tile: measured at 720p on an H100,
  // two (128 rows) made the step ~110 ms slower; 4 stages or issuing the next tile's Q K^T
  // beside P V gained nothing.
  constexpr int BK = 128, kWG = 3, kStages = 2;
  using L = WgmmaTiles<DK, DV, BK, kWG, kStages>;
  WgmmaMaps m;
  constexpr auto sw128 = CU_TENSOR_MAP_SWIZZLE_128B;
  // k/v of a cross-attention: one batch index holding every sample's rows.
  const int64_t nbk = a.kv_packed ? 1 : nb;
  auto enc = [&](CUtensorMap& map, const Operand& t, int64_t n, int64_t sb, int box_d, int rows,
                 CUtensorMapSwizzle sw, int64_t batches) {
    return encode_operand(map, t.p, batches, n, a.h, a.d, sb, t.sn, t.sh, box_d, rows, sw);
  };
  if (!enc(m.q, a.q, a.nq, sq, 64, L::kRows, sw128, nb) || !enc(m.k, a.k, a.nk, sk, 64, BK, sw128, nbk) ||
      !enc(m.v, a.v, a.nk, sv, 64, BK, sw128, nbk))
    return false;
  if (L::KT > 0 && (!enc(m.qt, a.q, a.nq, sq, 16, L::kRows, CU_TENSOR_MAP_SWIZZLE_32B, nb) ||
                    !enc(m.kt, a.k, a.nk, sk, 16, BK, CU_TENSOR_MAP_SWIZZLE_32B, nbk)))
    return false;
  if (L::VT > 0 && !enc(m.vt, a.v, a.nk, sv, L::VT, BK, sw128, nbk)) return false;
  auto kernel = attention_wgmma_kernel<DK, DV, BK, kWG, kStages>;
  // Per device (tensor parallelism runs it on several): cheap, so on every launch.
  STDIT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, L::kSmem));
  const dim3 grid(static_cast<unsigned>((a.nq + L::kRows - 1) / L::kRows), static_cast<unsigned>(a.h),
                  static_cast<unsigned>(nb));
  constexpr float kLog2e = 1.4426950408889634f;
  kernel<<<grid, L::kThreads, L::kSmem, c.stream>>>(m, a.out16<__nv_bfloat16>(), so, a.out_sn, a.out_sh,
                                                    static_cast<int>(a.nq), static_cast<int>(a.nk),
                                                    a.kv_packed ? a.kv_begin : nullptr,
                                                    a.scale * kLog2e);
  check_launch("attention (wgmma)");
  return true;
}

}  // namespace

bool launch_attention_wgmma(const CudaContext& c, const AttnArgs& a, int64_t batch) {
  // BF16 only: the TMA maps and the kernel's wgmma instructions are bf16's.
  if (!c.options.wgmma_attention || !a.in_bf16 || !a.out_bf16 || a.f16 || a.bias || a.key_mask) return false;
  // Self-attention over fewer than 64 keys (temporal attention up to 4 s): the short kernel.
  if (a.nq < 64 || (!a.kv_packed && a.nk < 64) || a.nq > (1 << 30) || a.nk > (1 << 30) ||
      a.h > 65535 || batch > 65535)
    return false;
  // Every lead dim must fold into one batch stride (the model's [B, T] of a spatial view does).
  int64_t inner = 1;
  if (fold_lead(a, inner) != a.lead.rank) return false;
  const int r = a.lead.rank;
  auto lead = [&](const LeadStrides& s, int64_t sn, int64_t n, int64_t sh, int64_t h) {
    return r > 0 ? s.s[r - 1] : (std::max(sn * n, sh * h) + 7) / 8 * 8;  // (one batch index)
  };
  const int64_t sq = lead(a.q.lead, a.q.sn, a.nq, a.q.sh, a.h);
  auto kv_lead = [&](const Operand& t) {
    return a.kv_packed ? (std::max(t.sn * a.nk, t.sh * a.h) + 7) / 8 * 8 : lead(t.lead, t.sn, a.nk, t.sh, a.h);
  };
  const int64_t sk = kv_lead(a.k), sv = kv_lead(a.v);
  const int64_t so = r > 0 ? a.out_lead.s[r - 1] : 0;
  // 16-byte aligned bases (TMA); 4-byte output stores.
  auto aligned = [](const void* p, uintptr_t n) { return (reinterpret_cast<uintptr_t>(p) % n) == 0; };
  if (!aligned(a.q.p, 16) || !aligned(a.k.p, 16) || !aligned(a.v.p, 16) || !aligned(a.out_bf16, 4) ||
      a.out_sn % 2 != 0 || a.out_sh % 2 != 0 || so % 2 != 0)
    return false;
  switch (a.d) {
    case 64: return launch_dims<64, 64>(c, a, batch, sq, sk, sv, so);
    case 72: return launch_dims<80, 72>(c, a, batch, sq, sk, sv, so);
    case 80: return launch_dims<80, 80>(c, a, batch, sq, sk, sv, so);
    default: return false;
  }
}

}  // namespace stdit::cuda
