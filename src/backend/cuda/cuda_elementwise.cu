// CUDA kernels of the elementwise family: Copy (with dtype conversion),
// Fill, the unary and binary ops, Where, ThresholdBackward and GeluBackward.
// Each element is computed as the CPU reference computes it
// (src/backend/cpu/cpu_unary.cpp, cpu_binary.cpp, cpu_copy.cpp; conversions
// as cpu_dispatch.h's convert), following Note [CUDA kernel conventions];
// the loops are cuda_loops.cuh's (Note [CUDA elementwise loops]).
//
// Note [CUDA elementwise instantiations]
// One kernel per op and dtype (per dtype pair for Copy) would be ~360
// kernels, compiled for each architecture; this file has ~230 (about a
// minute of nvcc for sm_80 and sm_90). Ops that only move bits are
// instantiated per element size (a same-dtype Copy, Fill, Where: 4 each);
// the comparisons and logical ops share one kernel per dtype that switches
// on the op (a branch every thread of the grid takes alike); and a Copy
// between dtypes is instantiated per pair only among the four floating
// dtypes (the casts mixed precision runs on), any other pair going through
// one kernel that switches on both dtypes, converting through a double or
// an int64 exactly as cpu_dispatch.h's convert does.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "backend/cuda/cuda_loops.cuh"

namespace loom::cuda_detail {
namespace {

// ---- device math in the compute type (float or double) ----
// The full-precision CUDA functions (no fast-math intrinsics); their error
// bounds are in the CUDA Math API's tables (a few ulp at most).
namespace dmath {
__device__ __forceinline__ float exp(float x) { return ::expf(x); }
__device__ __forceinline__ double exp(double x) { return ::exp(x); }
__device__ __forceinline__ float expm1(float x) { return ::expm1f(x); }
__device__ __forceinline__ double expm1(double x) { return ::expm1(x); }
__device__ __forceinline__ float log(float x) { return ::logf(x); }
__device__ __forceinline__ double log(double x) { return ::log(x); }
__device__ __forceinline__ float log1p(float x) { return ::log1pf(x); }
__device__ __forceinline__ double log1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float sin(float x) { return ::sinf(x); }
__device__ __forceinline__ double sin(double x) { return ::sin(x); }
__device__ __forceinline__ float cos(float x) { return ::cosf(x); }
__device__ __forceinline__ double cos(double x) { return ::cos(x); }
__device__ __forceinline__ float tanh(float x) { return ::tanhf(x); }
__device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float erf(float x) { return ::erff(x); }
__device__ __forceinline__ double erf(double x) { return ::erf(x); }
__device__ __forceinline__ float pow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ double pow(double x, double y) { return ::pow(x, y); }
__device__ __forceinline__ float abs(float x) { return ::fabsf(x); }
__device__ __forceinline__ double abs(double x) { return ::fabs(x); }
}  // namespace dmath

// The constants of the CPU's formulas (glibc's M_SQRT1_2 and M_2_SQRTPI).
constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double k2SqrtPi = 1.12837916709551257390;
constexpr double kSqrt2OverPi = 0.7978845608028654;

template <typename C>
__device__ __forceinline__ bool is_nan(C v) {
  if constexpr (std::is_floating_point_v<C>) return v != v;
  else return false;
}

// Integer arithmetic wraps modulo 2^bits, as the CPU's wrap_add & co.
template <typename T>
__device__ __forceinline__ T wrap_add(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
template <typename T>
__device__ __forceinline__ T wrap_sub(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
template <typename T>
__device__ __forceinline__ T wrap_mul(T a, T b) {
  return static_cast<T>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}
template <typename T>
__device__ __forceinline__ T wrap_neg(T a) {
  return static_cast<T>(uint64_t{0} - static_cast<uint64_t>(a));
}

// Float to integer as the CPU's float_to_int: truncation toward zero
// through int64, then wrapping to narrower types; NaN and values outside
// int64 give INT64_MIN (CUDA's own conversion would saturate instead).
template <typename To>
__host__ __device__ __forceinline__ To float_to_int(double d) {
  int64_t i = INT64_MIN;
  if (d > -0x1p63 && d < 0x1p63) i = static_cast<int64_t>(d);
  return static_cast<To>(i);
}

// 1 / (1 + exp(-x)) without overflow (the CPU's sigmoid_stable).
template <typename C>
__device__ __forceinline__ C sigmoid_stable(C x) {
  if (x >= C(0)) return C(1) / (C(1) + dmath::exp(-x));
  const C e = dmath::exp(x);  // NaN lands here too and stays NaN
  return e / (C(1) + e);
}

// gelu'(x), the CPU's gelu_grad (cpu_gelu_grad.h) term for term.
template <typename C>
__device__ __forceinline__ C gelu_grad(C x, bool tanh_form) {
  // The CPU's clamp: beyond +-1e6 gelu' is 1 or 0, and x phi(x) at +-inf
  // (or x^2 overflowing in the tanh form) would be inf * 0.
  x = x > C(1e6) ? C(1e6) : x < C(-1e6) ? C(-1e6) : x;
  if (!tanh_form) {
    const C cdf = C(0.5) * (C(1) + dmath::erf(x * C(kSqrt1_2)));
    const C pdf = dmath::exp(C(-0.5) * x * x) * C(0.5 * k2SqrtPi * kSqrt1_2);
    return cdf + x * pdf;
  }
  const C k = C(kSqrt2OverPi), c = C(0.044715);
  const C x2 = x * x;
  const C t = dmath::tanh(k * x * (C(1) + c * x2));
  return C(0.5) * (C(1) + t) + C(0.5) * x * (C(1) - t * t) * k * (C(1) + C(3) * c * x2);
}

// ---- scalar ops on compute values (float, double, or the integer/bool storage type) ----

struct NegOp {
  template <typename C>
  __device__ C operator()(C x) const {
    if constexpr (std::is_same_v<C, bool>) return x;  // -true is nonzero: still true
    else if constexpr (std::is_integral_v<C>) return wrap_neg(x);
    else return -x;
  }
};
struct AbsOp {
  template <typename C>
  __device__ C operator()(C x) const {
    if constexpr (std::is_same_v<C, bool> || std::is_unsigned_v<C>) return x;
    else if constexpr (std::is_integral_v<C>) return x < 0 ? wrap_neg(x) : x;  // |INT_MIN| wraps
    else return dmath::abs(x);
  }
};
// -1, 0 or 1 (+0 for -0); NaN stays NaN.
struct SignOp {
  template <typename C>
  __device__ C operator()(C x) const {
    if constexpr (std::is_same_v<C, bool> || std::is_unsigned_v<C>) {
      return static_cast<C>(x != C(0));
    } else {
      if (is_nan(x)) return x;
      return static_cast<C>(static_cast<int>(x > C(0)) - static_cast<int>(x < C(0)));
    }
  }
};
// max(x, 0) with NaN (and -0) passed through.
struct ReluOp {
  template <typename C>
  __device__ C operator()(C x) const {
    if constexpr (std::is_same_v<C, bool> || std::is_unsigned_v<C>) return x;
    else return x < C(0) ? C(0) : x;
  }
};
// NaN stays NaN; lo applies first, so lo > hi gives hi everywhere.
template <typename C>
struct ClampOp {
  C lo, hi;
  bool has_lo, has_hi;
  __device__ C operator()(C x) const {
    if (is_nan(x)) return x;
    if (has_lo && x < lo) x = lo;
    if (has_hi && x > hi) x = hi;
    return x;
  }
};
struct LogicalNotOp {
  template <typename C>
  __device__ bool operator()(C x) const { return !(x != C(0)); }
};
struct IsNanOp {
  template <typename C>
  __device__ bool operator()(C x) const { return is_nan(x); }
};

// Float math (float or double compute values).
struct ExpOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::exp(x); }
};
struct LogOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::log(x); }
};
struct Log1pOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::log1p(x); }
};
struct SqrtOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::sqrt(x); }
};
// 1 / sqrt(x), correctly rounded twice as on the CPU (not rsqrtf's approximation).
struct RsqrtOp {
  template <typename C>
  __device__ C operator()(C x) const { return C(1) / dmath::sqrt(x); }
};
struct SinOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::sin(x); }
};
struct CosOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::cos(x); }
};
struct TanhOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::tanh(x); }
};
struct ErfOp {
  template <typename C>
  __device__ C operator()(C x) const { return dmath::erf(x); }
};
struct SigmoidOp {
  template <typename C>
  __device__ C operator()(C x) const { return sigmoid_stable(x); }
};
struct LeakyReluOp {
  double slope;
  template <typename C>
  __device__ C operator()(C x) const { return x > C(0) ? x : x * static_cast<C>(slope); }
};
struct EluOp {
  double alpha;
  template <typename C>
  __device__ C operator()(C x) const { return x > C(0) ? x : static_cast<C>(alpha) * dmath::expm1(x); }
};
// 0.5 x (1 + erf(x / sqrt 2))
struct GeluOp {
  template <typename C>
  __device__ C operator()(C x) const { return C(0.5) * x * (C(1) + dmath::erf(x * static_cast<C>(kSqrt1_2))); }
};
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
struct GeluTanhOp {
  template <typename C>
  __device__ C operator()(C x) const {
    const C k = static_cast<C>(kSqrt2OverPi);
    return C(0.5) * x * (C(1) + dmath::tanh(k * (x + C(0.044715) * x * x * x)));
  }
};
struct SiluOp {
  template <typename C>
  __device__ C operator()(C x) const { return x * sigmoid_stable(x); }
};
// Linear once beta x > threshold.
struct SoftplusOp {
  double beta, threshold;
  template <typename C>
  __device__ C operator()(C x) const {
    const C bx = static_cast<C>(beta) * x;
    return bx > static_cast<C>(threshold) ? x : dmath::log1p(dmath::exp(bx)) / static_cast<C>(beta);
  }
};

// Binary arithmetic: bool + is or, bool * is and, bool - is xor (as the CPU).
struct AddOp {
  template <typename C>
  __device__ C operator()(C a, C b) const {
    if constexpr (std::is_same_v<C, bool>) return a || b;
    else if constexpr (std::is_integral_v<C>) return wrap_add(a, b);
    else return a + b;
  }
};
struct SubOp {
  template <typename C>
  __device__ C operator()(C a, C b) const {
    if constexpr (std::is_same_v<C, bool>) return a != b;
    else if constexpr (std::is_integral_v<C>) return wrap_sub(a, b);
    else return a - b;
  }
};
struct MulOp {
  template <typename C>
  __device__ C operator()(C a, C b) const {
    if constexpr (std::is_same_v<C, bool>) return a && b;
    else if constexpr (std::is_integral_v<C>) return wrap_mul(a, b);
    else return a * b;
  }
};
struct DivOp {
  template <typename C>
  __device__ C operator()(C a, C b) const { return a / b; }
};
struct PowOp {
  template <typename C>
  __device__ C operator()(C a, C b) const { return dmath::pow(a, b); }
};
// a^b for integers by repeated squaring, wrapping. A negative exponent
// (signed types) is an error the host reports (pow_kernel): the most
// negative one is kept in *negative_exponent.
template <typename T>
struct IntPowOp {
  long long* negative_exponent;
  __device__ T operator()(T base, T exp) const {
    if constexpr (std::is_signed_v<T>) {
      if (exp < 0) {
        atomicMin(negative_exponent, static_cast<long long>(exp));
        return 0;
      }
    }
    T result = 1;
    while (exp > 0) {
      if (exp & 1) result = wrap_mul(result, base);
      base = wrap_mul(base, base);
      exp = static_cast<T>(exp >> 1);
    }
    return result;
  }
};
// NaN in either operand gives NaN (first operand's NaN first).
struct MaximumOp {
  template <typename C>
  __device__ C operator()(C a, C b) const {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return a < b ? b : a;
  }
};
struct MinimumOp {
  template <typename C>
  __device__ C operator()(C a, C b) const {
    if (is_nan(a)) return a;
    if (is_nan(b)) return b;
    return b < a ? b : a;
  }
};

// The comparisons and logical ops: one kernel per dtype (Note [CUDA
// elementwise instantiations]).
enum class Predicate : int { Eq, Ne, Lt, Le, Gt, Ge, And, Or };
struct PredicateOp {
  Predicate p;
  template <typename C>
  __device__ bool operator()(C a, C b) const {
    switch (p) {
      case Predicate::Eq: return a == b;
      case Predicate::Ne: return a != b;
      case Predicate::Lt: return a < b;
      case Predicate::Le: return a <= b;
      case Predicate::Gt: return a > b;
      case Predicate::Ge: return a >= b;
      case Predicate::And: return a != C(0) && b != C(0);
      case Predicate::Or: return a != C(0) || b != C(0);
    }
    return false;
  }
};

// ---- elementwise functors (Note [CUDA elementwise loops]) ----

// y = op(x) in the compute type, rounded once to O.
template <typename I, typename O, typename Op>
struct UnaryFn {
  O* y;
  const I* x;
  Op op;
  __device__ void operator()(const int64_t* o) const { y[o[0]] = store_as<O>(op(load_as(x + o[1]))); }
};

// y = op(a, b) in the compute type, rounded once to O.
template <typename T, typename O, typename Op>
struct BinaryFn {
  O* y;
  const T* a;
  const T* b;
  Op op;
  __device__ void operator()(const int64_t* o) const {
    y[o[0]] = store_as<O>(op(load_as(a + o[1]), load_as(b + o[2])));
  }
};

// Bits moved as they are: U is an unsigned type of the element's size.
template <typename U>
struct CopyBitsFn {
  U* y;
  const U* x;
  __device__ void operator()(const int64_t* o) const { y[o[0]] = x[o[1]]; }
};
template <typename U>
struct FillBitsFn {
  U* y;
  U value;
  __device__ void operator()(const int64_t* o) const { y[o[0]] = value; }
};
template <typename U>
struct WhereBitsFn {
  U* y;
  const bool* cond;
  const U* a;
  const U* b;
  __device__ void operator()(const int64_t* o) const { y[o[0]] = cond[o[1]] ? a[o[2]] : b[o[3]]; }
};

// A cast between two floating dtypes: widening is exact, and store_as
// rounds once, through float for the 16-bit types as the CPU's convert.
template <typename I, typename O>
struct FloatCastFn {
  O* y;
  const I* x;
  __device__ void operator()(const int64_t* o) const { y[o[0]] = store_as<O>(load_as(x + o[1])); }
};

// Any other cast. A value is carried as a double (from a floating dtype:
// exact) or an int64 (from an integer or bool: exact), then converted as
// cpu_dispatch.h's convert: to bool `!= 0`, float to integer by
// float_to_int, integer to integer by wrapping, to float16 / bfloat16
// through float.
struct CastValue {
  double f;
  int64_t i;
  bool is_float;
};

template <typename T>
__device__ __forceinline__ CastValue cast_load(const void* base, int64_t off) {
  const T* p = static_cast<const T*>(base) + off;
  if constexpr (std::is_same_v<T, bool>) return {0.0, *p ? 1 : 0, false};
  else if constexpr (std::is_integral_v<T>) return {0.0, static_cast<int64_t>(*p), false};
  else return {static_cast<double>(load_as(p)), 0, true};
}

template <typename T>
__device__ __forceinline__ void cast_store(void* base, int64_t off, CastValue v) {
  T* p = static_cast<T*>(base) + off;
  if constexpr (std::is_same_v<T, bool>) *p = v.is_float ? v.f != 0.0 : v.i != 0;
  else if constexpr (std::is_integral_v<T>) *p = v.is_float ? float_to_int<T>(v.f) : static_cast<T>(v.i);
  else if constexpr (std::is_same_v<T, double>) *p = v.is_float ? v.f : static_cast<double>(v.i);
  else *p = store_as<T>(v.is_float ? static_cast<float>(v.f) : static_cast<float>(v.i));
}

struct CastAnyFn {
  void* y;
  const void* x;
  DType out_dtype, in_dtype;
  __device__ void operator()(const int64_t* o) const {
    CastValue v{0.0, 0, false};
    switch (in_dtype) {
      case DType::Float32: v = cast_load<float>(x, o[1]); break;
      case DType::Float64: v = cast_load<double>(x, o[1]); break;
      case DType::Float16: v = cast_load<__half>(x, o[1]); break;
      case DType::BFloat16: v = cast_load<__nv_bfloat16>(x, o[1]); break;
      case DType::Int32: v = cast_load<int32_t>(x, o[1]); break;
      case DType::Int64: v = cast_load<int64_t>(x, o[1]); break;
      case DType::UInt8: v = cast_load<uint8_t>(x, o[1]); break;
      case DType::Bool: v = cast_load<bool>(x, o[1]); break;
      case DType::Int8: v = cast_load<int8_t>(x, o[1]); break;
    }
    switch (out_dtype) {
      case DType::Float32: cast_store<float>(y, o[0], v); break;
      case DType::Float64: cast_store<double>(y, o[0], v); break;
      case DType::Float16: cast_store<__half>(y, o[0], v); break;
      case DType::BFloat16: cast_store<__nv_bfloat16>(y, o[0], v); break;
      case DType::Int32: cast_store<int32_t>(y, o[0], v); break;
      case DType::Int64: cast_store<int64_t>(y, o[0], v); break;
      case DType::UInt8: cast_store<uint8_t>(y, o[0], v); break;
      case DType::Bool: cast_store<bool>(y, o[0], v); break;
      case DType::Int8: cast_store<int8_t>(y, o[0], v); break;
    }
  }
};

// out = x > threshold ? grad : 0 (ThresholdBackward).
template <typename T>
struct ThresholdBackwardFn {
  T* y;
  const T* grad;
  const T* x;
  compute_t<T> threshold;
  __device__ void operator()(const int64_t* o) const {
    y[o[0]] = load_as(x + o[2]) > threshold ? grad[o[1]] : store_as<T>(compute_t<T>(0));
  }
};

// out = grad * gelu'(x) (GeluBackward).
template <typename T>
struct GeluBackwardFn {
  T* y;
  const T* grad;
  const T* x;
  bool tanh_form;
  __device__ void operator()(const int64_t* o) const {
    y[o[0]] = store_as<T>(load_as(grad + o[1]) * gelu_grad(load_as(x + o[2]), tanh_form));
  }
};

// ---- host side ----

// The host type of a device storage type (for conversions on the host).
template <typename T>
struct HostType {
  using type = T;
};
template <>
struct HostType<__half> {
  using type = Half;
};
template <>
struct HostType<__nv_bfloat16> {
  using type = BFloat16;
};

// A double or int64 scalar converted to storage type T (host types) as
// cpu_dispatch.h's convert does.
template <typename T>
T host_convert(double f, int64_t i, bool integral) {
  if constexpr (std::is_same_v<T, bool>) return integral ? i != 0 : f != 0.0;
  else if constexpr (std::is_integral_v<T>) return integral ? static_cast<T>(i) : float_to_int<T>(f);
  else if constexpr (std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>)
    return T(integral ? static_cast<float>(i) : static_cast<float>(f));
  else return integral ? static_cast<T>(i) : static_cast<T>(f);
}

// The storage bits of Fill's scalar in `dt` (little-endian, low bytes).
uint64_t fill_bits(DType dt, double f, int64_t i, bool integral) {
  uint64_t bits = 0;
  dispatch_all(dt, [&](auto tag) {
    using H = typename HostType<typename decltype(tag)::type>::type;
    const H v = host_convert<H>(f, i, integral);
    static_assert(sizeof(H) <= sizeof(bits));
    std::memcpy(&bits, &v, sizeof(H));
  });
  return bits;
}

// Clamp's bound in the compute type: the parameter first converted to T
// (the CPU's to_compute(convert<T>(f))).
template <typename T>
compute_t<T> clamp_bound(double v) {
  using H = typename HostType<T>::type;
  return static_cast<compute_t<T>>(host_convert<H>(v, 0, false));
}

// Launches `fn` over the elements of the given operands (output first).
template <int N, typename F>
void run(const KernelCall& c, const std::array<const TensorImpl*, N>& operands, const F& fn) {
  if (operands[0]->numel() == 0) return;
  const Launch l = launch_of(c);
  DeviceGuard guard(l.device);
  launch_elementwise<N>(l.stream, operands, fn);
}

// ---- kernel entry points ----

// out[0] <- in[0] converted to out's dtype (in[0] has out's shape).
void copy_kernel(const KernelCall& c) {
  const TensorImpl* in = c.in[0];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(in->sizes == out->sizes, "Copy: input ", shape_str(in->sizes), " vs output ", shape_str(out->sizes));
  const int64_t n = out->numel();
  if (n == 0) return;
  if (in->dtype == out->dtype) {
    const size_t size = element_size(out->dtype);
    if (in->is_contiguous() && out->is_contiguous()) {
      if (in->data() == out->data()) return;
      const Launch l = launch_of(c);
      DeviceGuard guard(l.device);
      LOOM_CUDA_CHECK(cudaMemcpyAsync(out->data(), in->data(), static_cast<size_t>(n) * size,
                                      cudaMemcpyDeviceToDevice, l.stream));
      return;
    }
    dispatch_bytes(size, [&](auto tag) {
      using U = typename decltype(tag)::type;
      run<2>(c, {out, in}, CopyBitsFn<U>{data_of<U>(out), data_of<U>(in)});
    });
    return;
  }
  if (is_floating_point(in->dtype) && is_floating_point(out->dtype)) {
    dispatch_float(in->dtype, [&](auto in_tag) {
      using I = typename decltype(in_tag)::type;
      dispatch_float(out->dtype, [&](auto out_tag) {
        using O = typename decltype(out_tag)::type;
        if constexpr (!std::is_same_v<I, O>) run<2>(c, {out, in}, FloatCastFn<I, O>{data_of<O>(out), data_of<I>(in)});
      });
    });
    return;
  }
  run<2>(c, {out, in}, CastAnyFn{out->data(), in->data(), out->dtype, in->dtype});
}

// out[0] <- scalar: f[0] as double, i[0] as int64, i[1] = 1 when integral.
// The value is converted on the host (as the CPU's Fill) and written as
// bits; a contiguous output whose bytes are all alike (zeros) is a memset.
void fill_kernel(const KernelCall& c) {
  TensorImpl* out = c.out[0];
  const int64_t n = out->numel();
  if (n == 0) return;
  const size_t size = element_size(out->dtype);
  const uint64_t bits = fill_bits(out->dtype, c.f[0], c.i[0], c.i[1] != 0);
  if (out->is_contiguous()) {
    bool one_byte = true;
    for (size_t k = 1; k < size; ++k) one_byte = one_byte && ((bits >> (8 * k)) & 0xffu) == (bits & 0xffu);
    if (one_byte) {
      const Launch l = launch_of(c);
      DeviceGuard guard(l.device);
      LOOM_CUDA_CHECK(cudaMemsetAsync(out->data(), static_cast<int>(bits & 0xffu), static_cast<size_t>(n) * size,
                                      l.stream));
      return;
    }
  }
  dispatch_bytes(size, [&](auto tag) {
    using U = typename decltype(tag)::type;
    run<1>(c, {out}, FillBitsFn<U>{data_of<U>(out), static_cast<U>(bits)});
  });
}

// A unary op of any dtype, out of in's dtype.
template <typename Op>
void any_unary_kernel(const KernelCall& c) {
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<2>(c, {c.out[0], c.in[0]}, UnaryFn<T, T, Op>{data_of<T>(c.out[0]), data_of<T>(c.in[0]), Op{}});
  });
}

// A unary op of any dtype with a bool output.
template <typename Op>
void predicate_unary_kernel(const KernelCall& c) {
  LOOM_ASSERT(c.out[0]->dtype == kBool, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<2>(c, {c.out[0], c.in[0]}, UnaryFn<T, bool, Op>{data_of<bool>(c.out[0]), data_of<T>(c.in[0]), Op{}});
  });
}

// A float math op built from the call's parameters by make_op.
template <typename Op>
Op make_op(const KernelCall&) {
  return Op{};
}
template <>
LeakyReluOp make_op<LeakyReluOp>(const KernelCall& c) {
  return {c.f[0]};
}
template <>
EluOp make_op<EluOp>(const KernelCall& c) {
  return {c.f[0]};
}
template <>
SoftplusOp make_op<SoftplusOp>(const KernelCall& c) {
  return {c.f[0], c.f[1]};
}

template <typename Op>
void float_unary_kernel(const KernelCall& c) {
  const Op op = make_op<Op>(c);
  dispatch_float(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<2>(c, {c.out[0], c.in[0]}, UnaryFn<T, T, Op>{data_of<T>(c.out[0]), data_of<T>(c.in[0]), op});
  });
}

// Clamp f[0]=lo f[1]=hi, i[0]=has_lo i[1]=has_hi; the bounds converted to
// the dtype first.
void clamp_kernel(const KernelCall& c) {
  const bool has_lo = c.i[0] != 0, has_hi = c.i[1] != 0;
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = compute_t<T>;
    const ClampOp<C> op{clamp_bound<T>(c.f[0]), clamp_bound<T>(c.f[1]), has_lo, has_hi};
    run<2>(c, {c.out[0], c.in[0]}, UnaryFn<T, T, ClampOp<C>>{data_of<T>(c.out[0]), data_of<T>(c.in[0]), op});
  });
}

void check_binary(const KernelCall& c) {
  LOOM_ASSERT(c.in[0]->dtype == c.in[1]->dtype, op_name(c.op), ": inputs of dtypes ",
              dtype_name(c.in[0]->dtype), " and ", dtype_name(c.in[1]->dtype));
}

// An arithmetic op whose output has the inputs' dtype: every dtype, or the
// floating ones only.
template <typename Op, bool kFloatOnly>
void same_type_binary_kernel(const KernelCall& c) {
  check_binary(c);
  LOOM_ASSERT(c.out[0]->dtype == c.in[0]->dtype, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
  auto body = [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<3>(c, {c.out[0], c.in[0], c.in[1]},
           BinaryFn<T, T, Op>{data_of<T>(c.out[0]), data_of<T>(c.in[0]), data_of<T>(c.in[1]), Op{}});
  };
  if constexpr (kFloatOnly) dispatch_float(c.in[0]->dtype, body);
  else dispatch_all(c.in[0]->dtype, body);
}

template <Predicate P>
void predicate_binary_kernel(const KernelCall& c) {
  check_binary(c);
  LOOM_ASSERT(c.out[0]->dtype == kBool, op_name(c.op), ": output dtype ", dtype_name(c.out[0]->dtype));
  dispatch_all(c.in[0]->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<3>(c, {c.out[0], c.in[0], c.in[1]},
           BinaryFn<T, bool, PredicateOp>{data_of<bool>(c.out[0]), data_of<T>(c.in[0]), data_of<T>(c.in[1]),
                                          PredicateOp{P}});
  });
}

// Pow: powf / pow for floats; integers by repeated squaring. A negative
// integer exponent is the CPU's loom::Error: the kernel notes it on the
// device and the host reads it back (so a signed integer pow waits for its
// kernel, as an index check does).
void pow_kernel(const KernelCall& c) {
  check_binary(c);
  const TensorImpl *a = c.in[0], *b = c.in[1];
  TensorImpl* out = c.out[0];
  dispatch_all(a->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      LOOM_ASSERT(false, "Pow: CUDA kernel called with dtype bool");
    } else if constexpr (std::is_floating_point_v<compute_t<T>>) {
      run<3>(c, {out, a, b}, BinaryFn<T, T, PowOp>{data_of<T>(out), data_of<T>(a), data_of<T>(b), PowOp{}});
    } else if constexpr (std::is_unsigned_v<T>) {
      run<3>(c, {out, a, b}, BinaryFn<T, T, IntPowOp<T>>{data_of<T>(out), data_of<T>(a), data_of<T>(b), {nullptr}});
    } else {
      if (out->numel() == 0) return;
      const Launch l = launch_of(c);
      DeviceGuard guard(l.device);
      const std::shared_ptr<Storage> flag = allocate_storage(sizeof(long long), Device::cuda(l.device));
      auto* negative = static_cast<long long*>(flag->data);
      LOOM_CUDA_CHECK(cudaMemsetAsync(negative, 0, sizeof(long long), l.stream));
      launch_elementwise<3>(l.stream, {out, a, b},
                            BinaryFn<T, T, IntPowOp<T>>{data_of<T>(out), data_of<T>(a), data_of<T>(b), {negative}});
      long long exponent = 0;
      LOOM_CUDA_CHECK(cudaMemcpyAsync(&exponent, negative, sizeof(long long), cudaMemcpyDeviceToHost, l.stream));
      LOOM_CUDA_CHECK(cudaStreamSynchronize(l.stream));
      LOOM_CHECK(exponent >= 0, "pow: Integers to negative integer powers are not allowed (got exponent ",
                 static_cast<int64_t>(exponent), ")");
    }
  });
}

// out[0] = in[0] ? in[1] : in[2]; in[0] bool; the values moved as bits.
void where_kernel(const KernelCall& c) {
  const TensorImpl *cond = c.in[0], *a = c.in[1], *b = c.in[2];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(cond->dtype == kBool, "Where: condition of dtype ", dtype_name(cond->dtype));
  LOOM_ASSERT(a->dtype == out->dtype && b->dtype == out->dtype, "Where: mixed dtypes");
  dispatch_bytes(element_size(out->dtype), [&](auto tag) {
    using U = typename decltype(tag)::type;
    run<4>(c, {out, cond, a, b}, WhereBitsFn<U>{data_of<U>(out), data_of<bool>(cond), data_of<U>(a), data_of<U>(b)});
  });
}

// out[0] = in[1] > f[0] ? in[0] : 0.
void threshold_backward_kernel(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(g->dtype == out->dtype && x->dtype == out->dtype, "ThresholdBackward: mixed dtypes");
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<3>(c, {out, g, x},
           ThresholdBackwardFn<T>{data_of<T>(out), data_of<T>(g), data_of<T>(x), static_cast<compute_t<T>>(c.f[0])});
  });
}

// out[0] = in[0] * gelu'(in[1]), the tanh form when i[0] = 1.
void gelu_backward_kernel(const KernelCall& c) {
  const TensorImpl *g = c.in[0], *x = c.in[1];
  TensorImpl* out = c.out[0];
  LOOM_ASSERT(g->dtype == out->dtype && x->dtype == out->dtype, "GeluBackward: mixed dtypes");
  const bool tanh_form = c.i[0] != 0;
  dispatch_float(out->dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    run<3>(c, {out, g, x}, GeluBackwardFn<T>{data_of<T>(out), data_of<T>(g), data_of<T>(x), tanh_form});
  });
}

}  // namespace

void register_elementwise(Backend& b) {
  const std::initializer_list<DType> all = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32,
                                            kInt64,   kUInt8,   kBool,    kInt8};
  const std::initializer_list<DType> numeric = {kFloat32, kFloat64, kFloat16, kBFloat16,
                                                kInt32,   kInt64,   kUInt8,   kInt8};
  const std::initializer_list<DType> floats = {kFloat32, kFloat64, kFloat16, kBFloat16};
  const auto kernel = [&b](OpKind op, KernelFn fn, std::initializer_list<DType> dtypes) {
    b.kernels[static_cast<int>(op)] = fn;
    set_supported(op, dtypes);
  };
  kernel(OpKind::Copy, &copy_kernel, all);
  kernel(OpKind::Fill, &fill_kernel, all);
  // unary, any dtype (the dtype coverage of cpu_register.cpp)
  kernel(OpKind::Neg, &any_unary_kernel<NegOp>, all);
  kernel(OpKind::Abs, &any_unary_kernel<AbsOp>, all);
  kernel(OpKind::Sign, &any_unary_kernel<SignOp>, all);
  kernel(OpKind::Relu, &any_unary_kernel<ReluOp>, all);
  kernel(OpKind::Clamp, &clamp_kernel, all);
  kernel(OpKind::LogicalNot, &predicate_unary_kernel<LogicalNotOp>, all);
  kernel(OpKind::IsNan, &predicate_unary_kernel<IsNanOp>, all);
  // unary float math
  kernel(OpKind::Exp, &float_unary_kernel<ExpOp>, floats);
  kernel(OpKind::Log, &float_unary_kernel<LogOp>, floats);
  kernel(OpKind::Log1p, &float_unary_kernel<Log1pOp>, floats);
  kernel(OpKind::Sqrt, &float_unary_kernel<SqrtOp>, floats);
  kernel(OpKind::Rsqrt, &float_unary_kernel<RsqrtOp>, floats);
  kernel(OpKind::Sin, &float_unary_kernel<SinOp>, floats);
  kernel(OpKind::Cos, &float_unary_kernel<CosOp>, floats);
  kernel(OpKind::Tanh, &float_unary_kernel<TanhOp>, floats);
  kernel(OpKind::Erf, &float_unary_kernel<ErfOp>, floats);
  kernel(OpKind::Sigmoid, &float_unary_kernel<SigmoidOp>, floats);
  kernel(OpKind::LeakyRelu, &float_unary_kernel<LeakyReluOp>, floats);
  kernel(OpKind::Elu, &float_unary_kernel<EluOp>, floats);
  kernel(OpKind::Gelu, &float_unary_kernel<GeluOp>, floats);
  kernel(OpKind::GeluTanh, &float_unary_kernel<GeluTanhOp>, floats);
  kernel(OpKind::Silu, &float_unary_kernel<SiluOp>, floats);
  kernel(OpKind::Softplus, &float_unary_kernel<SoftplusOp>, floats);
  // binary
  kernel(OpKind::Add, &same_type_binary_kernel<AddOp, false>, all);
  kernel(OpKind::Sub, &same_type_binary_kernel<SubOp, false>, all);
  kernel(OpKind::Mul, &same_type_binary_kernel<MulOp, false>, all);
  kernel(OpKind::Div, &same_type_binary_kernel<DivOp, true>, floats);
  kernel(OpKind::Pow, &pow_kernel, numeric);
  kernel(OpKind::Maximum, &same_type_binary_kernel<MaximumOp, false>, all);
  kernel(OpKind::Minimum, &same_type_binary_kernel<MinimumOp, false>, all);
  kernel(OpKind::Eq, &predicate_binary_kernel<Predicate::Eq>, all);
  kernel(OpKind::Ne, &predicate_binary_kernel<Predicate::Ne>, all);
  kernel(OpKind::Lt, &predicate_binary_kernel<Predicate::Lt>, all);
  kernel(OpKind::Le, &predicate_binary_kernel<Predicate::Le>, all);
  kernel(OpKind::Gt, &predicate_binary_kernel<Predicate::Gt>, all);
  kernel(OpKind::Ge, &predicate_binary_kernel<Predicate::Ge>, all);
  kernel(OpKind::LogicalAnd, &predicate_binary_kernel<Predicate::And>, all);
  kernel(OpKind::LogicalOr, &predicate_binary_kernel<Predicate::Or>, all);
  // ternary and the activation gradients
  kernel(OpKind::Where, &where_kernel, all);
  kernel(OpKind::ThresholdBackward, &threshold_backward_kernel, floats);
  kernel(OpKind::GeluBackward, &gelu_backward_kernel, floats);
}

}  // namespace loom::cuda_detail
