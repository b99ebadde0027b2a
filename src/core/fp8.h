// FP8 (e4m3) quantization with one scale per row: the rule the fp8 precision uses for weights
// (per output channel, at load or by `convert --dtype fp8`) and for activations (per token, in the
// op that consumes them). Exact and deterministic, so that a GPU kernel can be tested against it
// bit for bit; written down in docs/NUMERICS.md ("FP8").
//
// For a row x[0..n) (f32 values):
//   amax  = max |x[i]|
//   scale = amax / 448            (f32 division; 448 is e4m3's largest finite value)
//   inv   = 448 / amax            (f32 division)
//   q[i]  = e4m3(x[i] * inv)      (f32 product, then round to nearest even, saturating)
// and x[i] ~ q[i] * scale. A row whose amax is 0, or so small that inv is not finite (below
// 448 / FLT_MAX ~ 1.3e-36), is all zeros with scale 1. A row holding a NaN or an infinity gives
// NaN scale (the GEMM's output row is NaN, as an unquantized GEMM's would be).
#pragma once
#include <cstdint>

#include "core/tensor.h"

namespace stdit {

constexpr float kE4M3Max = 448.0f;

// Quantizes one row into q[0..n); returns its scale.
float quantize_row_e4m3(const float* x, int64_t n, uint8_t* q);
// The rule's amax of a row, +infinity when the row holds a NaN or an infinity: the amax of a row
// whose parts live on several tensor-parallel ranks is the maximum of its parts' amax.
float row_amax_e4m3(const float* x, int64_t n);
// A row (or a part of one) quantized with a given amax (row_amax_e4m3's over the whole row): the
// codes and scale quantize_row_e4m3 gives that part within the whole row. Returns the scale.
float quantize_row_e4m3_with_amax(const float* x, int64_t n, float amax, uint8_t* q);

// The value of every e4m3 code (f8e4m3_to_f32 of 0..255), for decoding many codes.
const float* e4m3_values();

// A 2-D host matrix (any float dtype) quantized row by row: an F8_E4M3 tensor of the same shape
// carrying its F32 [rows] scales (Tensor::scales()). `what` names the tensor in errors: weights
// must be finite.
Tensor quantize_rows_e4m3(const Tensor& w, const std::string& what);

// The F32 values q[r, :] * scales[r] of a quantized host matrix (scales attached or given).
Tensor dequantize_rows_e4m3(const Tensor& q, const Tensor& scales);

}  // namespace stdit
