// The bf16 linear layer into a bf16 output on Hopper (cutlass_bf16_gemm.h, Bf16LinearProblem):
// CUTLASS 3 kernels (TMA loads, warp-specialized wgmma main loop, the bias and GELU as an
// epilogue visitor tree). Compiled for sm_90a only, and only when the CUTLASS headers were found
// (STDIT_CUTLASS); otherwise cutlass_bf16_linear says "not run" and cuBLASLt takes the layer.
#include "backend/cuda/cutlass_bf16_gemm.h"

#if defined(STDIT_CUTLASS)

#include "backend/cuda/cutlass_gemm.cuh"

namespace stdit::cuda {

namespace {

using namespace cutlass_gemm;
using Bf16 = cutlass::bfloat16_t;
namespace gemm = cutlass::gemm;

// A schedule: tiles (M, N, K = 64), clusters of 2 along M (B's tiles multicast).
template <int TileM, int TileN, class Mainloop, class Epilogue>
struct Schedule {
  using Tile = Shape<Int<TileM>, Int<TileN>, _64>;
  using Cluster = Shape<_2, _1, _1>;
  using MainloopSchedule = Mainloop;
  using EpilogueSchedule = Epilogue;
};
// The schedules (Bf16LinearProblem::config), each warpgroup holding 128 f32 accumulators per thread:
//   0: ping-pong 128 x 128 (each warpgroup its own tile, one's epilogue overlapping the other's
//      main loop: the residual projections' kernel, cutlass_bf16_gemm.cu);
//   1: cooperative 128 x 256 (two warpgroups on one tile, 64 x 256 each);
//   2: cooperative 256 x 128 (128 x 128 each).
using Pingpong128 = Schedule<128, 128, gemm::KernelTmaWarpSpecializedPingpong, cutlass::epilogue::TmaWarpSpecialized>;
using Cooperative128x256 = Schedule<128, 256, gemm::KernelTmaWarpSpecializedCooperative,
                                    cutlass::epilogue::TmaWarpSpecializedCooperative>;
using Cooperative256x128 = Schedule<256, 128, gemm::KernelTmaWarpSpecializedCooperative,
                                    cutlass::epilogue::TmaWarpSpecializedCooperative>;

// acc + bias, rounded once to bf16 (or through the GELU, in f32, then rounded).
template <class Tile, class Out>
using Biased = fusion::Sm90EVT<Op<cutlass::plus, Out>, fusion::Sm90AccFetch, ColVec<Tile>>;
template <class Tile>
using EvtGelu = fusion::Sm90EVT<Op<GeluTanh, Bf16>, Biased<Tile, float>>;

template <class Config>
bool dispatch(const Bf16LinearProblem& p, int num_sms, cudaStream_t stream) {
  using Tile = typename Config::Tile;
  const typename ColVec<Tile>::Arguments bias{p.bias, 0.0f, {_0{}, _1{}, 0}};
  const typename Biased<Tile, float>::Arguments biased{{}, bias, {}};
  if (p.epilogue == Bf16Epilogue::Bf16Gelu)
    return cutlass_gemm::run<Config, Bf16, EvtGelu<Tile>, void, Bf16>(p.m, p.n, p.k, 1, p.a, 0, p.b, p.d, 0,
                                                                     typename EvtGelu<Tile>::Arguments{biased, {}},
                                                                     num_sms, stream);
  return cutlass_gemm::run<Config, Bf16, Biased<Tile, Bf16>, void, Bf16>(
      p.m, p.n, p.k, 1, p.a, 0, p.b, p.d, 0, typename Biased<Tile, Bf16>::Arguments{{}, bias, {}}, num_sms, stream);
}

}  // namespace

bool cutlass_bf16_linear(const Bf16LinearProblem& p, int num_sms, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0) return false;
  if (p.m > 0x7fffffff || p.n > 0x7fffffff || p.k > 0x7fffffff) return false;
  if (p.k % 8 || p.n % 8 || !aligned16(p.a) || !aligned16(p.b) || !aligned16(p.d) || (p.bias && !aligned16(p.bias)))
    return false;
  switch (p.config) {
    case 1: return dispatch<Cooperative128x256>(p, num_sms, stream);
    case 2: return dispatch<Cooperative256x128>(p, num_sms, stream);
    default: return dispatch<Pingpong128>(p, num_sms, stream);
  }
}

}  // namespace stdit::cuda

#else  // built without CUTLASS (or for an architecture without wgmma)

namespace stdit::cuda {
bool cutlass_bf16_linear(const Bf16LinearProblem&, int, cudaStream_t) { return false; }
}  // namespace stdit::cuda

#endif
