// The ops of a transformer block as one rank of a tensor-parallel group runs them, so that the
// model calls the same four ops on one device and on many (models/stdit3/stdit3.cpp's block):
//
//   modulated_norm        LayerNorm + modulate of the residual stream (rows split: this rank's
//                         own rows, then sent to the other rank)
//   column_linear         a column-parallel GEMM (qkv, cross-attention q and kv, fc1): this rank's
//                         output columns (rows split: its own input rows first, the other rank's
//                         once they have arrived)
//   row_linear_residual   a row-parallel projection added to the residual stream (attention and
//                         cross-attention out, fc2): one fused op on one device; with tensor
//                         parallelism the partial sums (in the matmul dtype) are summed over the
//                         ranks and added by the communicator; with rows split each rank adds the
//                         two partials of its own rows
//   take_cross_q_input    what cross-attention's q reads: the matmul-dtype copy of x that the
//                         self-attention residual update wrote (with rows split: and sent; on one
//                         device: from its GEMM's epilogue, where the backend fuses it), else x
//
// Sequence parallelism ("rows split", Communicator::splits_rows): this rank owns token rows
// [lo, hi) of the R = B * N rows of x inside the blocks; rows travel on copy engines while the
// GEMMs run. make_rows_whole() ends it (every rank's rows to the other).
#pragma once
#include <cstdint>

#include "backend/backend.h"
#include "dist/comm.h"

namespace stdit {

class RankOps {
 public:
  // x_shape: the residual stream [B, N, C]; tp: the tensor-parallel group (nullptr: one device);
  // rows_split: sequence parallelism for this call (rows_split_applies()).
  RankOps(Backend& be, Communicator* tp, const Shape& x_shape, bool rows_split);

  // Whether a call of C channels with this frame selection splits rows over `tp`.
  static bool rows_split_applies(const Communicator* tp, const FrameSelect& sel, int64_t channels);

  // The dtype to allocate modulated_norm's `a` in when `a` feeds only column_linear(a, w): the
  // backend's operand_dtype(w) (the norm may write the GEMM's quantized operand), or with rows split
  // the matmul dtype (the norm's rows travel to the other rank in it).
  DType norm_dtype_for(const Tensor& w) const { return split_ ? be_.matmul_dtype() : be_.operand_dtype(w); }
  // The dtype to allocate column_linear(in, w, b, act, out)'s `out` in when `out` feeds only
  // row_linear_residual(out, next, ...): the backend's product_dtype() on one device (the GEMM may
  // write next's quantized operand), else the matmul dtype (the ranks' rows of an fp8 operand are
  // quantized with their amax reduced over the group: quantized_over_ranks).
  DType hidden_dtype_for(const Tensor& w, Activation act, const Tensor& next) const {
    return tp_ ? be_.matmul_dtype() : be_.product_dtype(w, act, next);
  }
  void modulated_norm(const Tensor& x, const Tensor& shift, const Tensor& scale, const Tensor& shift0,
                      const Tensor& scale0, const FrameSelect& sel, float eps, Tensor& a);
  void column_linear(const Tensor& in, const Tensor& w, const Tensor& b, Activation act, Tensor& out);
  // x += gate * (in w^T + b) over the group (gate absent: x += in w^T + b). keep_for_q: also write
  // x in the matmul dtype for take_cross_q_input(): with rows split the new own rows (and send
  // them), on one device where the backend writes the copy from the GEMM
  // (Backend::fuses_residual_copy).
  void row_linear_residual(const Tensor& in, const Tensor& w, const Tensor& b, const Tensor& gate,
                           const Tensor& gate0, const FrameSelect& sel, Tensor& x, bool keep_for_q = false);
  // The copy kept for q (handed over: this RankOps holds it no longer, so that it is freed once
  // q's GEMM has read it), or x when none was kept.
  Tensor take_cross_q_input(const Tensor& x);
  // After the blocks, with rows split over `tp`: every rank's own rows of x to the other, x whole
  // again (no RankOps needed: it would allocate the q copy).
  static void make_rows_whole(Communicator* tp, bool rows_split, Tensor& x);

 private:
  Tensor rows(const Tensor& t, int64_t a, int64_t b) const;
  // fp8: the e4m3 operand of a row-parallel GEMM whose input rows are cut by columns over the
  // ranks, with each row's amax reduced over them (Backend::row_amax, quantize_rows_with_amax).
  Tensor quantized_over_ranks(const Tensor& in);
  void linear_rows(const Tensor& in, const Tensor& w, const Tensor& b, Activation act, Tensor& out,
                   int64_t a0, int64_t a1);

  Backend& be_;
  Communicator* tp_;
  Shape x_shape_;
  bool split_;
  int64_t rows_ = 0, lo_ = 0, hi_ = 0, plo_ = 0, phi_ = 0;  // own rows [lo, hi), the other's [plo, phi)
  Tensor xq_;  // the matmul-dtype copy of x for cross-attention's q (rows split, or written by the GEMM)
};

}  // namespace stdit
