// The bf16 precision's projection into the residual stream (cutlass_bf16_gemm.h): a CUTLASS 3
// Hopper kernel (TMA loads, warp-specialized ping-pong wgmma main loop, the bias, gate, f32 sum
// and the bf16 copy of the sum as an epilogue visitor tree). Compiled for sm_90a only, and only
// when the CUTLASS headers were found (STDIT_CUTLASS); otherwise the two functions say "not built".
#include "backend/cuda/cutlass_bf16_gemm.h"

#if defined(STDIT_CUTLASS)

#include "backend/cuda/cutlass_gemm.cuh"

namespace stdit::cuda {

namespace {

using namespace cutlass_gemm;
using Bf16 = cutlass::bfloat16_t;

// Ping-pong, 128 x 128 x 64 tiles per warpgroup, clusters of 2 along M (B's tiles multicast): one
// warpgroup's epilogue overlaps the other's main loop. Measured at [28800, 1152] x [1152, 1152] on
// an H100 (CudaPerf.RealShapes): 407 TFLOP/s with the gated sum (cooperative 128 x 192: 337,
// 128 x 128: 355; cuBLASLt with beta = 1: 322), 371 with the copy too (cuBLASLt and a pass: 262).
struct Pingpong128 {
  using Tile = Shape<_128, _128, _64>;
  using Cluster = Shape<_2, _1, _1>;
  using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};
using Tile = Pingpong128::Tile;

// x + (acc + bias) * gate: the reference's order (the projection, then the gate, then the sum).
using Biased = fusion::Sm90EVT<Op<cutlass::plus, float>, fusion::Sm90AccFetch, ColVec<Tile>>;
using Accumulate = fusion::Sm90EVT<Op<cutlass::plus, float>,
                                   fusion::Sm90EVT<Op<cutlass::multiplies, float>, Biased, ColVec<Tile>>,
                                   fusion::Sm90SrcFetch<float>>;
// ... and the sum stored once more, rounded to bf16.
using CopyStore = AuxStoreOf<Pingpong128, float, float, Bf16>::Node;
using AccumulateCopy = fusion::Sm90EVT<CopyStore, Accumulate>;

template <class Evt, class EvtArgs>
bool run(const Bf16GemmProblem& p, EvtArgs evt, int num_sms, cudaStream_t stream) {
  return cutlass_gemm::run<Pingpong128, Bf16, Evt, float, float>(p.m, p.n, p.k, p.batch, p.a, p.a_batch_stride, p.b,
                                                                 p.d, p.d_batch_stride, evt, num_sms, stream);
}

}  // namespace

bool cutlass_bf16_built() { return true; }

bool cutlass_bf16_residual_gemm(const Bf16GemmProblem& p, int num_sms, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.batch <= 0) return false;
  if (p.m > 0x7fffffff || p.n > 0x7fffffff || p.k > 0x7fffffff || p.batch > 0xffff) return false;
  if (p.k % 8 || p.n % 8 || !aligned16(p.a) || !aligned16(p.b) || !aligned16(p.d) ||
      (p.bias && !aligned16(p.bias)) || (p.gate && !aligned16(p.gate)) || (p.d_copy && !aligned16(p.d_copy)))
    return false;
  if (p.batch > 1 && (p.a_batch_stride % 8 || p.d_batch_stride % 8 || p.bias_batch_stride % 4 ||
                      p.gate_batch_stride % 4))
    return false;
  // Each node's arguments: its children's, then its own.
  const ColVec<Tile>::Arguments bias{p.bias, 0.0f, {_0{}, _1{}, p.bias_batch_stride}};
  const ColVec<Tile>::Arguments gate{p.gate, 1.0f, {_0{}, _1{}, p.gate_batch_stride}};
  const Accumulate::Arguments acc{{{{}, bias, {}}, gate, {}}, {}, {}};
  if (!p.d_copy) return run<Accumulate>(p, acc, num_sms, stream);
  const CopyStore::Arguments store{static_cast<Bf16*>(p.d_copy), {p.n, _1{}, p.d_batch_stride}};
  return run<AccumulateCopy>(p, AccumulateCopy::Arguments{acc, store}, num_sms, stream);
}

}  // namespace stdit::cuda

#else  // built without CUTLASS (or for an architecture without wgmma)

namespace stdit::cuda {
bool cutlass_bf16_built() { return false; }
bool cutlass_bf16_residual_gemm(const Bf16GemmProblem&, int, cudaStream_t) { return false; }
}  // namespace stdit::cuda

#endif
