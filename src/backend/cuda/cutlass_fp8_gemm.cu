// The fp8 precision's fused GEMM (cutlass_fp8_gemm.h): CUTLASS 3 Hopper kernels (TMA loads,
// warp-specialized wgmma main loop with f32 accumulation promoted every few k-blocks, the scales,
// bias and activation as an epilogue visitor tree). Compiled for sm_90a only, and only when the
// CUTLASS headers were found (STDIT_CUTLASS); otherwise the two functions say "not built".
#include "backend/cuda/cutlass_fp8_gemm.h"

#if defined(STDIT_CUTLASS)

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace stdit::cuda {

namespace {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// GELU, tanh form, as the other kernels compute it (cuda_common.cuh's gelu_tanh_f).
template <class T>
struct GeluTanh;
template <int N>
struct GeluTanh<cutlass::Array<float, N>> {
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& x) const {
    cutlass::Array<float, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
    return y;
  }
};

// Two schedules (Fp8GemmProblem::config). Both keep a consumer warpgroup's accumulators at 64 x 128
// (64 f32 per thread, and as many again for the promotion that keeps f32 accuracy): a 128 x 128
// tile per warpgroup would spill (measured: ~320 TFLOP/s).
//   0: cooperative, 128 x 128 x 128 tiles (two warpgroups on one tile), clusters of 2 along M;
//   1: ping-pong, 64 x 128 x 128 tiles (each warpgroup its own tile, one's epilogue overlapping the
//      other's main loop), clusters of 2 along M.
struct Cooperative128 {
  using Tile = Shape<_128, _128, _128>;
  using Cluster = Shape<_2, _1, _1>;
  using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecializedCooperative;
};
struct Pingpong64 {
  using Tile = Shape<_64, _128, _128>;
  using Cluster = Shape<_2, _1, _1>;
  using MainloopSchedule = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;
};

// Per-row (m) and per-column (n) f32 vectors, with a batch stride.
template <class Tile>
using RowScale = fusion::Sm90ColBroadcast<0, Tile, float, float, Stride<_1, _0, int64_t>>;
template <class Tile>
using ColVec = fusion::Sm90RowBroadcast<0, Tile, float, float, Stride<_0, _1, int64_t>>;
template <template <class> class Fn, class Out>
using Op = fusion::Sm90Compute<Fn, Out, float, kRound>;

// (acc * row_scale) * col_scale + bias, in this order (the unfused path's rounding order).
template <class Tile>
using Scaled = fusion::Sm90EVT<Op<cutlass::multiplies, float>,
                               fusion::Sm90EVT<Op<cutlass::multiplies, float>, fusion::Sm90AccFetch, RowScale<Tile>>,
                               ColVec<Tile>>;
template <class Tile, class Out>
using Biased = fusion::Sm90EVT<Op<cutlass::plus, Out>, Scaled<Tile>, ColVec<Tile>>;

template <class Tile>
using EvtBf16 = Biased<Tile, cutlass::bfloat16_t>;
template <class Tile>
using EvtBf16Gelu = fusion::Sm90EVT<Op<GeluTanh, cutlass::bfloat16_t>, Biased<Tile, float>>;
template <class Tile>
using EvtAccumulate = fusion::Sm90EVT<Op<cutlass::plus, float>, Biased<Tile, float>, fusion::Sm90SrcFetch<float>>;

template <class Config, class Evt, class ElementC, class ElementD>
struct Kernel {
  using ElementA = cutlass::float_e4m3_t;
  using ElementB = cutlass::float_e4m3_t;
  using LayoutA = cutlass::layout::RowMajor;     // x [m, k]
  using LayoutB = cutlass::layout::ColumnMajor;  // w [n, k] is B (k x n) column-major
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignD = 16 / sizeof(ElementD);
  static constexpr int kAlignC =
      std::is_void_v<ElementC> ? kAlignD : 16 / sizeof(std::conditional_t<std::is_void_v<ElementC>, float, ElementC>);
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Config::Tile, typename Config::Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, LayoutD, kAlignC, ElementD, LayoutD,
      kAlignD, typename Config::EpilogueSchedule, Evt>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, LayoutA, 16, ElementB, LayoutB, 16, float,
      typename Config::Tile, typename Config::Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      typename Config::MainloopSchedule>::CollectiveOp;
  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
};

template <class Config, class Evt, class ElementC, class ElementD, class EvtArgs>
bool run(const Fp8GemmProblem& p, EvtArgs evt, int num_sms, cudaStream_t stream) {
  using Gemm = typename Kernel<Config, Evt, ElementC, ElementD>::Gemm;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideC = typename Gemm::GemmKernel::StrideC;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  const StrideA sa = make_stride(p.k, Int<1>{}, p.a_batch_stride);
  const StrideB sb = make_stride(p.k, Int<1>{}, int64_t{0});
  const StrideC sc = make_stride(p.n, Int<1>{}, p.d_batch_stride);
  const StrideD sd = make_stride(p.n, Int<1>{}, p.d_batch_stride);
  using ElemC = std::conditional_t<std::is_void_v<ElementC>, ElementD, ElementC>;
  const ElemC* c_ptr = std::is_void_v<ElementC> ? nullptr : static_cast<const ElemC*>(p.d);
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {static_cast<int>(p.m), static_cast<int>(p.n), static_cast<int>(p.k), static_cast<int>(p.batch)},
      {static_cast<const cutlass::float_e4m3_t*>(p.a), sa, static_cast<const cutlass::float_e4m3_t*>(p.b), sb},
      {evt, c_ptr, sc, static_cast<ElementD*>(p.d), sd}};
  args.hw_info.sm_count = num_sms;
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  if (Gemm::get_workspace_size(args) != 0) return false;  // the persistent schedule needs none
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return false;
  return gemm.run(stream) == cutlass::Status::kSuccess;
}

template <class Config>
bool dispatch(const Fp8GemmProblem& p, int num_sms, cudaStream_t stream) {
  using Tile = typename Config::Tile;
  const typename RowScale<Tile>::Arguments rs{p.row_scale, 0.0f, {_1{}, _0{}, p.m}};
  const typename ColVec<Tile>::Arguments cs{p.col_scale, 0.0f, {_0{}, _1{}, p.col_scale_batch_stride}};
  const typename ColVec<Tile>::Arguments bs{p.bias, 0.0f, {_0{}, _1{}, p.bias_batch_stride}};
  // Each node's arguments: its children's, then its own.
  const typename Scaled<Tile>::Arguments scaled{{{}, rs, {}}, cs, {}};
  switch (p.epilogue) {
    case Fp8Epilogue::Bf16:
      return run<Config, EvtBf16<Tile>, void, cutlass::bfloat16_t>(p, typename EvtBf16<Tile>::Arguments{scaled, bs, {}},
                                                                  num_sms, stream);
    case Fp8Epilogue::Bf16Gelu:
      return run<Config, EvtBf16Gelu<Tile>, void, cutlass::bfloat16_t>(
          p, typename EvtBf16Gelu<Tile>::Arguments{{scaled, bs, {}}, {}}, num_sms, stream);
    case Fp8Epilogue::F32Accumulate:
      return run<Config, EvtAccumulate<Tile>, float, float>(
          p, typename EvtAccumulate<Tile>::Arguments{{scaled, bs, {}}, {}, {}}, num_sms, stream);
  }
  return false;
}

bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; }

}  // namespace

bool cutlass_fp8_built() { return true; }

bool cutlass_fp8_gemm(const Fp8GemmProblem& p, int num_sms, cudaStream_t stream) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0 || p.batch <= 0) return false;
  if (p.m > 0x7fffffff || p.n > 0x7fffffff || p.k > 0x7fffffff || p.batch > 0xffff) return false;
  if (p.k % 16 || p.n % 16 || !aligned16(p.a) || !aligned16(p.b) || !aligned16(p.d) ||
      !aligned16(p.col_scale) || (p.bias && !aligned16(p.bias)) || !p.row_scale)
    return false;
  if (p.batch > 1 && (p.a_batch_stride % 16 || p.d_batch_stride % 16)) return false;
  return p.config == 1 ? dispatch<Pingpong64>(p, num_sms, stream) : dispatch<Cooperative128>(p, num_sms, stream);
}

}  // namespace stdit::cuda

#else  // built without CUTLASS (or for an architecture without wgmma)

namespace stdit::cuda {
bool cutlass_fp8_built() { return false; }
bool cutlass_fp8_gemm(const Fp8GemmProblem&, int, cudaStream_t) { return false; }
}  // namespace stdit::cuda

#endif
