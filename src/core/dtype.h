// Element types and exact conversions between the float formats.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace stdit {

// Every dtype a safetensors file can declare. Arithmetic happens in F32 (CPU) or BF16/F16/F8 with
// F32 accumulation (GPU); the integer types carry ids and masks.
enum class DType : uint8_t { F32, F16, BF16, F64, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType t);
// Name as safetensors spells it ("F32", "BF16", "BOOL", ...).
const char* dtype_name(DType t);
// Parses a safetensors dtype name; returns false for anything unknown.
bool parse_dtype(const std::string& name, DType* out);
bool is_float(DType t);     // F32, F16, BF16, F64, F8_*
bool is_integer(DType t);   // I*, U8, BOOL

// --- exact conversions -------------------------------------------------------------------------
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// bf16 is the top half of an f32; widening is exact.
inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
// Round to nearest, ties to even. NaN stays NaN (quiet, sign kept); overflow gives inf.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float f16_to_f32(uint16_t h);     // exact, subnormals included
uint16_t f32_to_f16(float f);     // round to nearest even; overflow -> inf; NaN -> quiet NaN

// FP8 E4M3 (the "fn" variant of the OCP FP8 spec, as NVIDIA's e4m3 and PyTorch's float8_e4m3fn):
// 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities; S.1111.111 is NaN; largest 448,
// smallest subnormal 2^-9.
float f8e4m3_to_f32(uint8_t v);  // exact
// Round to nearest, ties to even, saturating: finite values beyond +-448 and infinities give +-448
// (as the GPU's cvt.rn.satfinite); NaN gives NaN (sign kept).
uint8_t f32_to_f8e4m3(float f);

// Reads element i of a buffer of dtype t as a double (all integer types and all floats).
double load_as_double(const void* base, DType t, size_t i);

}  // namespace stdit
