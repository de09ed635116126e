// DType facts, PyTorch's promotion lattice, IEEE half conversion and Scalar printing.
#include <cmath>
#include <sstream>

#include "loom/dtype.h"
#include "loom/error.h"

namespace loom {

size_t element_size(DType t) {
  switch (t) {
    case DType::Float32: return 4;
    case DType::Float64: return 8;
    case DType::Float16: return 2;
    case DType::BFloat16: return 2;
    case DType::Int32: return 4;
    case DType::Int64: return 8;
    case DType::UInt8: return 1;
    case DType::Bool: return 1;
    case DType::Int8: return 1;
  }
  LOOM_ASSERT(false, "unknown dtype ", static_cast<int>(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Int32: return "int32";
    case DType::Int64: return "int64";
    case DType::UInt8: return "uint8";
    case DType::Bool: return "bool";
    case DType::Int8: return "int8";
  }
  return "unknown";
}

namespace {
// Height in the promotion lattice; float16 and bfloat16 share a level and
// meet at float32 (neither holds the other's values).
int promotion_rank(DType t) {
  switch (t) {
    case DType::Bool: return 0;
    case DType::UInt8: return 1;
    case DType::Int8: return 1;
    case DType::Int32: return 2;
    case DType::Int64: return 3;
    case DType::Float16: return 4;
    case DType::BFloat16: return 4;
    case DType::Float32: return 5;
    case DType::Float64: return 6;
  }
  LOOM_ASSERT(false, "unknown dtype ", static_cast<int>(t));
}
}  // namespace

DType promote_types(DType a, DType b) {
  if (a == b) return a;
  if ((a == kFloat16 && b == kBFloat16) || (a == kBFloat16 && b == kFloat16)) return kFloat32;
  if ((a == kUInt8 && b == kInt8) || (a == kInt8 && b == kUInt8)) return kInt32;  // PyTorch: int16
  return promotion_rank(a) >= promotion_rank(b) ? a : b;
}

DType default_dtype() { return kFloat32; }

// Note [Half conversion]
// float32: 1 sign, 8 exponent (bias 127), 23 mantissa bits.
// float16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; normals cover
// [2^-14, 65504], subnormals are multiples of 2^-24. Conversion rounds to
// nearest, ties to even, like the hardware instruction (F16C vcvtps2ph).
Half::Half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) {  // NaN: keep the top payload bits, force quiet
    bits = static_cast<uint16_t>(sign | 0x7e00u | ((u >> 13) & 0x3ffu));
    return;
  }
  if (u >= 0x47800000u) {  // >= 2^16 (or inf): beyond the rounding range of 65504
    bits = static_cast<uint16_t>(sign | 0x7c00u);
    return;
  }
  if (u >= 0x38800000u) {  // a half normal: rebias the exponent (127 -> 15), drop 13 bits
    uint32_t h = (u >> 13) - (112u << 10);
    const uint32_t rest = u & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into inf: correct
    bits = static_cast<uint16_t>(sign | h);
    return;
  }
  if (u <= 0x33000000u) {  // <= 2^-25: rounds to zero (2^-25 itself ties to even 0)
    bits = sign;
    return;
  }
  // Subnormal half: value / 2^-24 = mantissa_with_implicit_bit * 2^(e - 126).
  const uint32_t e = u >> 23;  // in [102, 112]
  const uint32_t m = (u & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // in [14, 24]
  uint32_t h = m >> shift;
  const uint32_t rest = m & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;  // 0x400 becomes the smallest normal
  bits = static_cast<uint16_t>(sign | h);
}

Half::operator float() const {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exp = (bits >> 10) & 0x1fu, mant = bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    // inf, or NaN with its payload kept and made quiet (as F16C's vcvtph2ps)
    u = sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u);
  } else if (exp == 0) {
    // zero or subnormal: mant * 2^-24 is exact in float32
    float f = static_cast<float>(mant) * 0x1p-24f;
    return sign ? -f : f;
  } else {
    u = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::ostream& operator<<(std::ostream& os, const Scalar& s) {
  switch (s.kind()) {
    case Scalar::Kind::Bool: return os << (s.to_bool() ? "true" : "false");
    case Scalar::Kind::Int: return os << s.to_long();
    case Scalar::Kind::Float: {
      // Print a float as a float even when it is integral (2.0, not 2), so
      // messages show which kind the user passed.
      std::ostringstream tmp;
      tmp.precision(os.precision());
      tmp << s.to_double();
      std::string str = tmp.str();
      if (std::isfinite(s.to_double()) && str.find_first_of(".e") == std::string::npos) str += ".0";
      return os << str;
    }
  }
  return os;
}

}  // namespace loom
