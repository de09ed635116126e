// Element types: the eight dtypes, the 16-bit float storage types, Scalar,
// and PyTorch's type promotion.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

namespace loom {

enum class DType : uint8_t { Float32, Float64, Float16, BFloat16, Int32, Int64, UInt8, Bool, Int8 };
inline constexpr int kNumDTypes = 9;

inline constexpr DType kFloat32 = DType::Float32;
inline constexpr DType kFloat64 = DType::Float64;
inline constexpr DType kFloat16 = DType::Float16;
inline constexpr DType kBFloat16 = DType::BFloat16;
inline constexpr DType kInt32 = DType::Int32;
inline constexpr DType kInt64 = DType::Int64;
inline constexpr DType kUInt8 = DType::UInt8;
inline constexpr DType kBool = DType::Bool;
inline constexpr DType kInt8 = DType::Int8;  // quantized weights (loom::quantize_weight)
// PyTorch spellings people reach for.
inline constexpr DType kFloat = kFloat32;
inline constexpr DType kDouble = kFloat64;
inline constexpr DType kHalf = kFloat16;
inline constexpr DType kLong = kInt64;
inline constexpr DType kInt = kInt32;
inline constexpr DType kChar = kInt8;

size_t element_size(DType t);
const char* dtype_name(DType t);  // "float32", ...
inline std::ostream& operator<<(std::ostream& os, DType t) { return os << dtype_name(t); }
inline bool is_floating_point(DType t) {
  return t == kFloat32 || t == kFloat64 || t == kFloat16 || t == kBFloat16;
}
inline bool is_integral(DType t, bool include_bool) {
  return t == kInt32 || t == kInt64 || t == kUInt8 || t == kInt8 || (include_bool && t == kBool);
}
// The dtype arithmetic on t runs in: float16 and bfloat16 are storage types
// that compute in float32; every other dtype computes in itself.
inline DType compute_dtype(DType t) { return t == kFloat16 || t == kBFloat16 ? kFloat32 : t; }
// The dtype both operands are converted to, following PyTorch's promotion
// lattice (bool < uint8/int8 < int32 < int64 < float16/bfloat16 < float32 < float64;
// uint8 with int8 gives int32, as loom has no int16; float16 with bfloat16 gives float32).
DType promote_types(DType a, DType b);
// The float dtype used when integer inputs meet a float-only op (float32).
DType default_dtype();

// IEEE half precision, storage only: arithmetic converts to float.
struct Half {
  uint16_t bits = 0;
  Half() = default;
  Half(float f);  // NOLINT: implicit like c10::Half
  operator float() const;
};

// bfloat16: the top 16 bits of a float32, rounded to nearest even.
struct BFloat16 {
  uint16_t bits = 0;
  BFloat16() = default;
  BFloat16(float f) {  // NOLINT
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a quiet NaN
      bits = static_cast<uint16_t>((u >> 16) | 0x40);
    } else {
      u += 0x7fffu + ((u >> 16) & 1u);
      bits = static_cast<uint16_t>(u >> 16);
    }
  }
  operator float() const {
    uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

// A number that is not a tensor: what x + 2 or x * 0.5 carries. It remembers
// whether it was written as a bool, an integer or a floating-point number,
// because PyTorch's promotion treats those differently.
class Scalar {
 public:
  enum class Kind : uint8_t { Bool, Int, Float };
  Scalar() : Scalar(int64_t{0}) {}
  Scalar(double v) : kind_(Kind::Float), d_(v), i_(static_cast<int64_t>(v)) {}  // NOLINT
  Scalar(float v) : Scalar(static_cast<double>(v)) {}                           // NOLINT
  Scalar(int64_t v) : kind_(Kind::Int), d_(static_cast<double>(v)), i_(v) {}    // NOLINT
  Scalar(int v) : Scalar(static_cast<int64_t>(v)) {}                            // NOLINT
  Scalar(long long v) : Scalar(static_cast<int64_t>(v)) {}                      // NOLINT
  Scalar(unsigned v) : Scalar(static_cast<int64_t>(v)) {}                       // NOLINT
  Scalar(uint64_t v) : Scalar(static_cast<int64_t>(v)) {}                       // NOLINT
  Scalar(bool v) : kind_(Kind::Bool), d_(v ? 1.0 : 0.0), i_(v ? 1 : 0) {}       // NOLINT
  Kind kind() const { return kind_; }
  bool is_floating_point() const { return kind_ == Kind::Float; }
  bool is_integral() const { return kind_ == Kind::Int; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  double to_double() const { return d_; }
  int64_t to_long() const { return i_; }
  bool to_bool() const { return kind_ == Kind::Float ? d_ != 0.0 : i_ != 0; }
  // The dtype a 0-dim tensor holding this scalar gets.
  DType dtype() const { return kind_ == Kind::Float ? kFloat64 : kind_ == Kind::Int ? kInt64 : kBool; }

 private:
  Kind kind_;
  double d_;
  int64_t i_;
};
std::ostream& operator<<(std::ostream& os, const Scalar& s);

}  // namespace loom
