#include "core/dtype.h"

#include <cmath>
#include <limits>

#include "core/error.h"

namespace stdit {

namespace {
struct DTypeInfo {
  DType t;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, "F32", 4},       {DType::F16, "F16", 2},         {DType::BF16, "BF16", 2},
    {DType::F64, "F64", 8},       {DType::F8_E4M3, "F8_E4M3", 1}, {DType::F8_E5M2, "F8_E5M2", 1},
    {DType::I64, "I64", 8},       {DType::I32, "I32", 4},         {DType::I16, "I16", 2},
    {DType::I8, "I8", 1},         {DType::U8, "U8", 1},           {DType::BOOL, "BOOL", 1},
};
const DTypeInfo& info(DType t) {
  for (const auto& i : kInfo)
    if (i.t == t) return i;
  fail("internal: unknown dtype ", static_cast<int>(t));
}
}  // namespace

size_t dtype_size(DType t) { return info(t).size; }
const char* dtype_name(DType t) { return info(t).name; }

bool parse_dtype(const std::string& name, DType* out) {
  for (const auto& i : kInfo)
    if (name == i.name) {
      *out = i.t;
      return true;
    }
  return false;
}

bool is_float(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::BF16 || t == DType::F64 ||
         t == DType::F8_E4M3 || t == DType::F8_E5M2;
}
bool is_integer(DType t) { return !is_float(t); }

float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp == 0) {
    // zero or subnormal: man * 2^-24, exact in f32
    const float v = std::ldexp(static_cast<float>(man), -24);
    return sign ? -v : v;
  }
  return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((abs >> 13) & 0x3ffu);  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to inf (and inf itself)
  if (abs < 0x38800000u) {
    // Result is subnormal (or zero) in f16: value / 2^-24 rounded to nearest even integer.
    if (abs < 0x33000000u) return sign;  // < 2^-25: rounds to zero (2^-25 exactly ties to 0)
    const uint32_t e = abs >> 23;                 // biased f32 exponent, 102..112
    const uint32_t m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - e;              // so that result = m >> shift (units of 2^-24)
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  // Normal: rebias exponent, round mantissa from 23 to 10 bits (carry may bump the exponent).
  uint32_t v = abs - (112u << 23);
  const uint32_t rem = v & 0x1fffu;
  v >>= 13;
  if (rem > 0x1000u || (rem == 0x1000u && (v & 1u))) ++v;
  return sign | static_cast<uint16_t>(v);
}

float f8e4m3_to_f32(uint8_t v) {
  const float sign = (v & 0x80u) ? -1.0f : 1.0f;
  const int e = (v >> 3) & 0xF, m = v & 0x7;
  if (e == 0xF && m == 0x7) return sign * std::numeric_limits<float>::quiet_NaN();
  if (e == 0) return sign * std::ldexp(static_cast<float>(m), -9);  // subnormal: m * 2^-9
  return sign * std::ldexp(1.0f + static_cast<float>(m) / 8.0f, e - 7);
}

uint8_t f32_to_f8e4m3(float f) {
  const uint32_t u = f32_bits(f);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7Fu;           // NaN
  if (abs >= 0x43E00000u) return sign | 0x7Eu;          // >= 448 (and inf): saturate to 448
  const float a = bits_f32(abs);
  if (a < std::ldexp(1.0f, -6)) {
    // Subnormal range of e4m3 (below 2^-6): units of 2^-9, round to nearest even integer (exact
    // in f32: a * 2^9 is exact, and so is the comparison with the half-way point).
    const float q = a * 512.0f;
    float r = std::floor(q);
    const float rem = q - r;
    if (rem > 0.5f || (rem == 0.5f && std::fmod(r, 2.0f) != 0.0f)) r += 1.0f;
    return sign | static_cast<uint8_t>(r);  // r == 8 gives 0x08 = 2^-6, the smallest normal
  }
  // Normal: keep 3 of the 23 mantissa bits, round to nearest even (a carry may bump the exponent;
  // values that round to 480 and beyond were saturated above: 448 <= a is handled, and a < 448
  // rounds at most to 448).
  uint32_t e = (abs >> 23) - 127 + 7;  // 1 .. 15
  uint32_t m = abs & 0x7fffffu;
  uint32_t q = m >> 20;
  const uint32_t rem = m & 0xfffffu;
  if (rem > 0x80000u || (rem == 0x80000u && (q & 1u))) ++q;
  if (q == 8) {
    q = 0;
    ++e;
  }
  if (e > 15 || (e == 15 && q == 7)) return sign | 0x7Eu;  // would be NaN's code: saturate
  return sign | static_cast<uint8_t>((e << 3) | q);
}

double load_as_double(const void* base, DType t, size_t i) {
  const auto* p = static_cast<const uint8_t*>(base) + i * dtype_size(t);
  auto rd = [p](auto v) { std::memcpy(&v, p, sizeof(v)); return v; };
  switch (t) {
    case DType::F32: return rd(float{});
    case DType::F64: return rd(double{});
    case DType::F16: return f16_to_f32(rd(uint16_t{}));
    case DType::BF16: return bf16_to_f32(rd(uint16_t{}));
    case DType::I64: return static_cast<double>(rd(int64_t{}));
    case DType::I32: return rd(int32_t{});
    case DType::I16: return rd(int16_t{});
    case DType::I8: return rd(int8_t{});
    case DType::U8: return rd(uint8_t{});
    case DType::BOOL: return rd(uint8_t{}) != 0 ? 1.0 : 0.0;
    case DType::F8_E4M3: return f8e4m3_to_f32(rd(uint8_t{}));
    case DType::F8_E5M2: break;
  }
  fail("reading ", dtype_name(t), " values is not supported yet");
}

}  // namespace stdit
