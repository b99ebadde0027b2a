#include "dist/rank_ops.h"

#include <tuple>
#include <utility>

#include "core/error.h"

namespace stdit {

RankOps::RankOps(Backend& be, Communicator* tp, const Shape& x_shape, bool rows_split)
    : be_(be), tp_(tp && tp->size() > 1 ? tp : nullptr), x_shape_(x_shape), split_(rows_split && tp_) {
  STDIT_CHECK(x_shape.size() == 3, "internal: RankOps needs the residual stream's [B, N, C] shape");
  rows_ = x_shape[0] * x_shape[1];
  hi_ = rows_;
  if (split_) {
    std::tie(lo_, hi_) = tp_->own_rows(rows_);
    plo_ = lo_ == 0 ? hi_ : 0;
    phi_ = lo_ == 0 ? rows_ : lo_;
    xq_ = be_.alloc(x_shape, be_.matmul_dtype());
  }
}

bool RankOps::rows_split_applies(const Communicator* tp, const FrameSelect& sel, int64_t channels) {
  return tp && tp->size() > 1 && !sel.active() && tp->splits_rows(channels);
}

Tensor RankOps::rows(const Tensor& t, int64_t a, int64_t b) const {
  const Tensor v = t.view({rows_, t.numel() / rows_}).slice(0, a, b);
  return t.scales().defined() ? v.with_scales(t.scales().slice(0, a, b)) : v;  // an e4m3 operand's rows
}

Tensor RankOps::quantized_over_ranks(const Tensor& in) {
  const int64_t k = in.size(-1), m = in.numel() / k;
  Tensor amax = be_.alloc({m}, DType::F32);
  be_.row_amax(in, amax);
  tp_->all_reduce_max(amax);  // each token's amax over every rank's columns of its row
  Tensor q = be_.alloc(in.shape(), DType::F8_E4M3);
  be_.quantize_rows_with_amax(in, amax, q);
  return q;
}

void RankOps::linear_rows(const Tensor& in, const Tensor& w, const Tensor& b, Activation act, Tensor& out,
                          int64_t a0, int64_t a1) {
  if (a1 <= a0) return;
  Tensor o = rows(out, a0, a1);
  be_.linear(rows(in, a0, a1), w, b, act, o);
}

void RankOps::modulated_norm(const Tensor& x, const Tensor& shift, const Tensor& scale, const Tensor& shift0,
                             const Tensor& scale0, const FrameSelect& sel, float eps, Tensor& a) {
  if (!split_) return be_.layernorm_modulate(x, shift, scale, shift0, scale0, sel, eps, a);
  tp_->layernorm_modulate_own_rows(x, shift, scale, eps, a);
  tp_->start_row_exchange(a, lo_, hi_, a, lo_);
}

void RankOps::column_linear(const Tensor& in, const Tensor& w, const Tensor& b, Activation act, Tensor& out) {
  if (!split_) return be_.linear(in, w, b, act, out);
  // The input's own rows are here; the other rank's are arriving (its producer started the exchange).
  linear_rows(in, w, b, act, out, lo_, hi_);
  tp_->finish_row_exchange();
  linear_rows(in, w, b, act, out, plo_, phi_);
}

void RankOps::row_linear_residual(const Tensor& in, const Tensor& w, const Tensor& b, const Tensor& gate,
                                  const Tensor& gate0, const FrameSelect& sel, Tensor& x, bool keep_for_q) {
  if (!tp_) {
    if (!keep_for_q || sel.active() || !be_.fuses_residual_copy(w))
      return be_.linear_residual(in, w, b, gate, gate0, sel, x);
    xq_ = be_.alloc(x_shape_, be_.matmul_dtype());
    return be_.linear_residual_copy(in, w, b, gate, gate0, sel, x, xq_);
  }
  // fp8: `in` holds this rank's columns of each row; quantized with the whole row's amax, its codes
  // are one device's (a per-rank amax would quantize each part on its own, a finer rounding).
  const Tensor xin = w.scales().defined() ? quantized_over_ranks(in) : in;
  const DType red = be_.matmul_dtype();  // partial sums in the matmul dtype (half the bytes on the wire)
  Tensor p = be_.alloc(x_shape_, red);
  if (!split_) {
    be_.linear(xin, w, b, Activation::None, p);
    return tp_->reduce_into_residual(p, x, gate, gate0, sel, be_);
  }
  // The other rank's rows first, sent while this rank's are computed.
  Tensor recv = be_.alloc({hi_ - lo_, x_shape_[2]}, red);
  linear_rows(xin, w, b, Activation::None, p, plo_, phi_);
  tp_->start_row_exchange(p, plo_, phi_, recv, 0);
  linear_rows(xin, w, b, Activation::None, p, lo_, hi_);
  tp_->finish_row_exchange();
  tp_->add_partials_to_own_rows(p, recv, x, gate, keep_for_q ? &xq_ : nullptr);
  if (keep_for_q) tp_->start_row_exchange(xq_, lo_, hi_, xq_, lo_);
}

Tensor RankOps::take_cross_q_input(const Tensor& x) { return xq_.defined() ? std::exchange(xq_, Tensor{}) : x; }

void RankOps::make_rows_whole(Communicator* tp, bool rows_split, Tensor& x) {
  if (!rows_split || !tp || tp->size() <= 1) return;
  const auto [lo, hi] = tp->own_rows(x.size(0) * x.size(1));
  tp->start_row_exchange(x, lo, hi, x, lo);
  tp->finish_row_exchange();
}

}  // namespace stdit
