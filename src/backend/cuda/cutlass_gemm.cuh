// What the CUTLASS 3 Hopper GEMMs share (cutlass_fp8_gemm.cu, cutlass_bf16_gemm.cu): the GELU
// functor, the kernel type built from a schedule, operand type and epilogue visitor tree, and one
// launch. Included only where STDIT_CUTLASS is defined (sm_90a, CUTLASS headers found).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace stdit::cuda::cutlass_gemm {

using namespace cute;
namespace fusion = cutlass::epilogue::fusion;

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

// GELU, tanh form: 0.5 v (1 + tanh(u)) with u = sqrt(2/pi) (v + 0.044715 v^3), in one of two ways.
// kHardwareTanh (fp8's default): with the hardware's tanh.approx.f32, one
// special-function instruction per output (relative error ~2^-11; where tanh(u) is near -1 the sum
// 1 + tanh(u) loses that much more, on outputs near 0). Else as v / (1 + exp(-2u)) (the
// same function: 0.5 (1 + tanh(u)) = sigmoid(2u)) with the fast exp and division: a third of tanhf's
// instructions, no cancellation in 1 + tanh(u) where u is very negative, a relative error of a few
// 2^-22 against cuda_common.cuh's gelu_tanh_f; exp(-2u) = inf gives -0 (the limit).
template <bool kHardwareTanh, class T>
struct GeluOf;
template <bool kHardwareTanh, int N>
struct GeluOf<kHardwareTanh, cutlass::Array<float, N>> {
  CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& x) const {
    cutlass::Array<float, N> y;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) {
      const float v = x[i];
      const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
      if constexpr (kHardwareTanh) {
        float t;
        asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(u));
        const float h = 0.5f * v;
        y[i] = fmaf(h, t, h);
      } else {
        y[i] = __fdividef(v, 1.0f + __expf(-2.0f * u));
      }
    }
    return y;
  }
};
// The functor as a one-parameter template (what an epilogue node takes): Gelu<k>::template Fn.
template <bool kHardwareTanh>
struct Gelu {
  template <class T>
  using Fn = GeluOf<kHardwareTanh, T>;
};

// Per-row (m) and per-column (n) f32 vectors, with a batch stride.
template <class Tile>
using RowVec = fusion::Sm90ColBroadcast<0, Tile, float, float, Stride<_1, _0, int64_t>>;
template <class Tile>
using ColVec = fusion::Sm90RowBroadcast<0, Tile, float, float, Stride<_0, _1, int64_t>>;
template <template <class> class Fn, class Out>
using Op = fusion::Sm90Compute<Fn, Out, float, kRound>;

// A schedule: Tile (M, N, K), Cluster, MainloopSchedule, EpilogueSchedule.
// Element: the operands' type (A [m, k] row-major, B = the weight [n, k] row-major), f32
// accumulation; D row-major ElementD, C (read by the epilogue, or void) row-major ElementC.
template <class Config, class Element, class Evt, class ElementC, class ElementD>
struct Kernel {
  using LayoutA = cutlass::layout::RowMajor;     // x [m, k]
  using LayoutB = cutlass::layout::ColumnMajor;  // w [n, k] is B (k x n) column-major
  using LayoutD = cutlass::layout::RowMajor;
  static constexpr int kAlignAB = 16 / sizeof(Element);
  static constexpr int kAlignD = 16 / sizeof(ElementD);
  static constexpr int kAlignC =
      std::is_void_v<ElementC> ? kAlignD : 16 / sizeof(std::conditional_t<std::is_void_v<ElementC>, float, ElementC>);
  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Config::Tile, typename Config::Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float, ElementC, LayoutD, kAlignC, ElementD, LayoutD,
      kAlignD, typename Config::EpilogueSchedule, Evt>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlignAB, Element, LayoutB, kAlignAB,
      float, typename Config::Tile, typename Config::Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      typename Config::MainloopSchedule>::CollectiveOp;
  using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;
};

// The epilogue's own description (its tile and stages), as the builder above derives it: what an
// auxiliary store node of the tree needs to be declared with.
template <class Config, class ElementC, class ElementD>
using EpilogueDescriptor =
    cutlass::epilogue::collective::detail::EpilogueDescriptor<typename Config::Tile,
                                                             cutlass::epilogue::collective::EpilogueTileAuto, ElementC,
                                                             ElementD, typename Config::EpilogueSchedule>;
// A node that stores its child's value (converted to Aux, row-major [m, n] per batch) through TMA
// and passes it on.
template <class Config, class ElementC, class ElementD, class Aux>
struct AuxStoreOf {
  using Desc = EpilogueDescriptor<Config, ElementC, ElementD>;
  using StoreDesc = cutlass::epilogue::collective::detail::AuxStoreDescriptor<Desc, cutlass::layout::RowMajor, Aux>;
  using Node = fusion::Sm90AuxStore<StoreDesc::Stages, typename Desc::EpilogueTile, Aux, kRound,
                                    typename StoreDesc::Stride, typename StoreDesc::SmemLayoutAtom,
                                    typename StoreDesc::CopyOpR2S>;
};

// One GEMM of the problem sizes (m, n, k, batch) on `stream`: A with its batch stride, the one
// weight B, C (ElementC not void: read from d, the same tensor) and D with their batch stride;
// evt: the tree's arguments. False, with nothing launched, when CUTLASS declines it.
template <class Config, class Element, class Evt, class ElementC, class ElementD, class EvtArgs>
bool run(int64_t m, int64_t n, int64_t k, int64_t batch, const void* a, int64_t a_batch_stride, const void* b,
         void* d, int64_t d_batch_stride, EvtArgs evt, int num_sms, cudaStream_t stream) {
  using Gemm = typename Kernel<Config, Element, Evt, ElementC, ElementD>::Gemm;
  using StrideA = typename Gemm::GemmKernel::StrideA;
  using StrideB = typename Gemm::GemmKernel::StrideB;
  using StrideC = typename Gemm::GemmKernel::StrideC;
  using StrideD = typename Gemm::GemmKernel::StrideD;
  const StrideA sa = make_stride(k, Int<1>{}, a_batch_stride);
  const StrideB sb = make_stride(k, Int<1>{}, int64_t{0});
  const StrideC sc = make_stride(n, Int<1>{}, d_batch_stride);
  const StrideD sd = make_stride(n, Int<1>{}, d_batch_stride);
  using ElemC = std::conditional_t<std::is_void_v<ElementC>, ElementD, ElementC>;
  const ElemC* c_ptr = std::is_void_v<ElementC> ? nullptr : static_cast<const ElemC*>(d);
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), static_cast<int>(batch)},
      {static_cast<const Element*>(a), sa, static_cast<const Element*>(b), sb},
      {evt, c_ptr, sc, static_cast<ElementD*>(d), sd}};
  args.hw_info.sm_count = num_sms;
  Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return false;
  if (Gemm::get_workspace_size(args) != 0) return false;  // the persistent schedules need none
  if (gemm.initialize(args, nullptr, stream) != cutlass::Status::kSuccess) return false;
  return gemm.run(stream) == cutlass::Status::kSuccess;
}

inline bool aligned16(const void* q) { return (reinterpret_cast<uintptr_t>(q) & 15u) == 0; }

}  // namespace stdit::cuda::cutlass_gemm
