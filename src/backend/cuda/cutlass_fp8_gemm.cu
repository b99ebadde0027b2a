// The fp8 precision's fused GEMM (cutlass_fp8_gemm.h): CUTLASS 3 Hopper kernels (TMA loads,
// warp-specialized wgmma main loop, the scales, bias and activation as an epilogue visitor tree).
// Compiled for sm_90a only, and only when the CUTLASS headers were found (STDIT_CUTLASS);
// otherwise the two functions say "not built".
#include "backend/cuda/cutlass_fp8_gemm.h"

#if defined(STDIT_CUTLASS)

#include "backend/cuda/cutlass_gemm.cuh"

namespace stdit::cuda {

namespace {

using namespace cutlass_gemm;

// A schedule: tiles (M, N, K = 128), clusters of 2 along M, the main loop's and the epilogue's kinds.
template <int TileM, int TileN, class Mainloop, class Epilogue>
struct Schedule {
  using Tile = Shape<Int<TileM>, Int<TileN>, _128>;
  using Cluster = Shape<_2, _1, _1>;
  using MainloopSchedule = Mainloop;
  using EpilogueSchedule = Epilogue;
};
using cutlass::epilogue::TmaWarpSpecialized;
using cutlass::epilogue::TmaWarpSpecializedCooperative;
namespace gemm = cutlass::gemm;

// The schedules (Fp8GemmProblem::config). By default FP8 "fast accumulation": the tensor cores' own
// accumulator holds the whole sum over k (with fewer mantissa bits than f32; no promotion into a
// second set of f32 registers every few k-blocks), which halves the accumulator registers, so a
// warpgroup holds a 128 x 128 tile. Measured at 720p shapes on an H100 (docs/PERF.md, CudaPerf.
// RealShapes): ping-pong 128 x 128 (each warpgroup its own tile, one's epilogue overlapping the
// other's main loop) is the fastest for K = 1152 (qkv 1,083, fc1 + GELU 821 — 1,019 with the GELU
// through the hardware's tanh, cutlass_gemm.cuh's Gelu<true> —, proj 835 TFLOP/s) and the fastest 720p step (951.9
// ms; cooperative 256 x 128 for every GEMM 965.8, the promoted cooperative 128 x 128 of before
// 1,038.6); cooperative 256 x 128 (two warpgroups on one tile) is faster for fc2's K = 4608 alone
// (1,287 against 1,159 TFLOP/s), but chosen for fc2 alone it did not change the step (docs/PERF.md).
// Error against the CPU's f32 sums: linear[fp8] rows of the GPU check.
//   0: fast, ping-pong 128 x 128;
//   1: promoted f32 accumulation, cooperative 128 x 128 (64 x 128 accumulators per warpgroup, as
//      many again for the promotion: a 128 x 128 tile per warpgroup would spill);
//   2: fast, cooperative 256 x 128.
using Cooperative128 = Schedule<128, 128, gemm::KernelTmaWarpSpecializedCooperative, TmaWarpSpecializedCooperative>;
using FastCooperative256x128 =
    Schedule<256, 128, gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum, TmaWarpSpecializedCooperative>;
using FastPingpong128 = Schedule<128, 128, gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum, TmaWarpSpecialized>;

// (acc * row_scale) * col_scale + bias, in this order (the unfused path's rounding order).
template <class Tile>
using Scaled = fusion::Sm90EVT<Op<cutlass::multiplies, float>,
                               fusion::Sm90EVT<Op<cutlass::multiplies, float>, fusion::Sm90AccFetch, RowVec<Tile>>,
                               ColVec<Tile>>;
template <class Tile, class Out>
using Biased = fusion::Sm90EVT<Op<cutlass::plus, Out>, Scaled<Tile>, ColVec<Tile>>;

template <class Tile>
using EvtBf16 = Biased<Tile, cutlass::bfloat16_t>;
template <class Tile, bool kHardwareTanh>
using EvtBf16Gelu = fusion::Sm90EVT<Op<Gelu<kHardwareTanh>::template Fn, cutlass::bfloat16_t>, Biased<Tile, float>>;
// The product quantized for the next GEMM: e4m3(act(v) * out_inv_scale[i]) (saturating, to nearest).
template <class Tile>
using EvtE4m3 = fusion::Sm90EVT<Op<cutlass::multiplies, cutlass::float_e4m3_t>, Biased<Tile, float>, RowVec<Tile>>;
template <class Tile, bool kHardwareTanh>
using EvtE4m3Gelu =
    fusion::Sm90EVT<Op<cutlass::multiplies, cutlass::float_e4m3_t>,
                    fusion::Sm90EVT<Op<Gelu<kHardwareTanh>::template Fn, float>, Biased<Tile, float>>, RowVec<Tile>>;
template <class Tile>
using EvtAccumulate = fusion::Sm90EVT<Op<cutlass::plus, float>, Biased<Tile, float>, fusion::Sm90SrcFetch<float>>;

template <class Config, class Evt, class ElementC, class ElementD, class EvtArgs>
bool run(const Fp8GemmProblem& p, EvtArgs evt, int num_sms, cudaStream_t stream) {
  return cutlass_gemm::run<Config, cutlass::float_e4m3_t, Evt, ElementC, ElementD>(
      p.m, p.n, p.k, p.batch, p.a, p.a_batch_stride, p.b, p.d, p.d_batch_stride, evt, num_sms, stream);
}

// Per-row f32 arguments (the row scales of x, or the inverse scales of an e4m3 output).
template <class Tile>
typename RowVec<Tile>::Arguments row_args(const float* v, int64_t m) {
  return {v, 0.0f, {_1{}, _0{}, m}};
}

// The GELU epilogues (Bf16Gelu, E4m3Gelu) with the GELU's exponential or hardware-tanh form.
template <class Config, bool kHardwareTanh, class ScaledArgs, class BiasArgs>
bool run_gelu(const Fp8GemmProblem& p, const ScaledArgs& scaled, const BiasArgs& bs, int num_sms, cudaStream_t stream) {
  using Tile = typename Config::Tile;
  if (p.epilogue == Fp8Epilogue::Bf16Gelu) {
    using Evt = EvtBf16Gelu<Tile, kHardwareTanh>;
    return run<Config, Evt, void, cutlass::bfloat16_t>(p, typename Evt::Arguments{{scaled, bs, {}}, {}}, num_sms,
                                                       stream);
  }
  if (!p.out_inv_scale) return false;
  using Evt = EvtE4m3Gelu<Tile, kHardwareTanh>;
  return run<Config, Evt, void, cutlass::float_e4m3_t>(
      p, typename Evt::Arguments{{{scaled, bs, {}}, {}}, row_args<Tile>(p.out_inv_scale, p.m), {}}, num_sms, stream);
}

template <class Config>
bool dispatch(const Fp8GemmProblem& p, int num_sms, cudaStream_t stream) {
  using Tile = typename Config::Tile;
  const typename ColVec<Tile>::Arguments cs{p.col_scale, 0.0f, {_0{}, _1{}, p.col_scale_batch_stride}};
  const typename ColVec<Tile>::Arguments bs{p.bias, 0.0f, {_0{}, _1{}, p.bias_batch_stride}};
  // Each node's arguments: its children's, then its own.
  const typename Scaled<Tile>::Arguments scaled{{{}, row_args<Tile>(p.row_scale, p.m), {}}, cs, {}};
  switch (p.epilogue) {
    case Fp8Epilogue::Bf16:
      return run<Config, EvtBf16<Tile>, void, cutlass::bfloat16_t>(p, typename EvtBf16<Tile>::Arguments{scaled, bs, {}},
                                                                  num_sms, stream);
    case Fp8Epilogue::Bf16Gelu:
    case Fp8Epilogue::E4m3Gelu:
      // The hardware tanh on the ping-pong schedule (the default) only: no other is built with it.
      if constexpr (std::is_same_v<Config, FastPingpong128>)
        if (p.tanh_gelu) return run_gelu<Config, true>(p, scaled, bs, num_sms, stream);
      return run_gelu<Config, false>(p, scaled, bs, num_sms, stream);
    case Fp8Epilogue::E4m3:
      if (!p.out_inv_scale) return false;
      return run<Config, EvtE4m3<Tile>, void, cutlass::float_e4m3_t>(
          p, typename EvtE4m3<Tile>::Arguments{{scaled, bs, {}}, row_args<Tile>(p.out_inv_scale, p.m), {}}, num_sms,
          stream);
    case Fp8Epilogue::F32Accumulate:
      return run<Config, EvtAccumulate<Tile>, float, float>(
          p, typename EvtAccumulate<Tile>::Arguments{{scaled, bs, {}}, {}, {}}, num_sms, stream);
  }
  return false;
}

}  // namespace

bool cutlass_fp8_built() { return true; }

bool cutlass_fp8_gemm(const Fp8GemmProblem& p, int num_sms, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.batch <= 0) return false;
  if (p.m > 0x7fffffff || p.n > 0x7fffffff || p.k > 0x7fffffff || p.batch > 0xffff) return false;
  if (p.k % 16 || p.n % 16 || !aligned16(p.a) || !aligned16(p.b) || !aligned16(p.d) ||
      !aligned16(p.col_scale) || (p.bias && !aligned16(p.bias)) || !p.row_scale)
    return false;
  if (p.batch > 1 && (p.a_batch_stride % 16 || p.d_batch_stride % 16)) return false;
  switch (p.config) {
    case 1: return dispatch<Cooperative128>(p, num_sms, stream);
    case 2: return dispatch<FastCooperative256x128>(p, num_sms, stream);
    default: return dispatch<FastPingpong128>(p, num_sms, stream);
  }
}

}  // namespace stdit::cuda

#else  // built without CUTLASS (or for an architecture without wgmma)

namespace stdit::cuda {
bool cutlass_fp8_built() { return false; }
bool cutlass_fp8_gemm(const Fp8GemmProblem&, int, cudaStream_t) { return false; }
}  // namespace stdit::cuda

#endif
