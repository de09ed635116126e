// The elementwise family on CUDA (src/backend/cuda/cuda_elementwise.cu):
// Copy and casts, Fill, the unary and binary ops, where, threshold_backward
// and GELU's backward, each through the public op on CUDA tensors against
// the CPU reference on the same inputs: every dtype the CPU takes, 1, 7 and
// 1000003 elements, 0-dim tensors, transposed, step-sliced, permuted and
// expanded (row and column) inputs, special values (NaN, +-inf, -0, values
// that overflow or round), in-place ops on views, gradients, and a tensor of
// more than 2^32 elements (the 64-bit index path).
//
// Tolerances (math_tol): exact where both sides are exact: copies and casts,
// fill, comparisons, max / min, neg / abs / sign / relu / clamp, where, + - * /
// (one IEEE rounding on both sides), sqrt and rsqrt (IEEE sqrt and division),
// leaky_relu (one product) and every integer op. The transcendental ops use
// CUDA's full-precision functions (a few ulp) against glibc or the CPU's
// float32 fast paths (a few ulp, Note [Vectorized CPU kernels]): float32 2e-6
// relative; float64 1e-14; float16 / bfloat16 one unit in their last place
// (the float32 results differ by a few float32 ulp, which moves a rounding by
// one unit at most). The absolute part covers results near zero that come
// from a cancellation in the formula itself (gelu's 1 + erf(x / sqrt 2) at
// x = -3, the tanh form's 1 - t^2): there both sides carry the error of a
// function value near 1, a few float32 ulp of 1 times |x|.
#include <loom/cuda.h>
#include <loom/loom.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

using test::close_to_cpu;
using Sizes = std::vector<int64_t>;
using UnaryFn = std::function<Tensor(const Tensor&)>;
using BinaryFn = std::function<Tensor(const Tensor&, const Tensor&)>;

const std::vector<DType> kAllDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32,
                                       kInt64,   kUInt8,   kBool,    kInt8};
const std::vector<DType> kFloatDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16};
const std::vector<DType> kNumericDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16,
                                           kInt32,   kInt64,   kUInt8,   kInt8};

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

struct Tol {
  double rtol, atol;
};
constexpr Tol kExact{0, 0};

// See the file comment. `atol32` is float32's absolute part: larger for the
// GELU family, whose formulas cancel (1 + erf, 1 - tanh^2) for negative x.
Tol math_tol(DType dt, double atol32 = 1e-6) {
  switch (dt) {
    case kFloat64: return {1e-14, 1e-14};
    case kFloat32: return {2e-6, atol32};
    case kFloat16: return {1e-3, 1e-5};   // 2^-10: one ulp of float16
    case kBFloat16: return {8e-3, 1e-4};  // 2^-7: one ulp of bfloat16
    default: return kExact;
  }
}
constexpr double kGeluAtol32 = 4e-6;

std::string str(DType dt) { return dtype_name(dt); }

// `gpu` equals `cpu` within `tol` (close_to_cpu); for an exact int64
// result also bit for bit (close_to_cpu compares through float64, which
// cannot tell int64 values beyond 2^53 apart).
::testing::AssertionResult matches(const Tensor& gpu, const Tensor& cpu, Tol tol) {
  ::testing::AssertionResult r = close_to_cpu(gpu, cpu, tol.rtol, tol.atol);
  if (!r || cpu.dtype() != kInt64 || tol.rtol != 0 || tol.atol != 0) return r;
  const std::vector<int64_t> g = gpu.cpu().to_vector<int64_t>(), c = cpu.to_vector<int64_t>();
  for (size_t k = 0; k < c.size(); ++k)
    if (g[k] != c[k]) return ::testing::AssertionFailure() << "int64 element " << k << ": cuda " << g[k] << ", cpu " << c[k];
  return ::testing::AssertionSuccess();
}

// ---- inputs (built on the CPU; each case moves them to CUDA) ----

int64_t numel_of(const Sizes& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

// How values are drawn: floats uniform in [lo, hi) (truncated to integers
// when `integral`, for ties) with every nan_every-th a NaN (0: none);
// integers uniform in [ilo, ihi], or over the whole range of the dtype when
// `wide` (so that + - * wrap); bools half true.
struct Domain {
  double lo = -3, hi = 3;
  bool integral = false;
  int64_t nan_every = 0;
  int64_t ilo = -5, ihi = 5;
  bool wide = false;
};

Tensor draw(const Sizes& sizes, DType dt, const Domain& d, uint64_t seed) {
  const int64_t n = numel_of(sizes);
  std::mt19937_64 gen(seed);
  if (is_floating_point(dt)) {
    std::uniform_real_distribution<double> u(d.lo, d.hi);
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) {
      const double x = d.integral ? std::trunc(u(gen)) : u(gen);
      v[k] = d.nan_every > 0 && k % d.nan_every == d.nan_every - 1 ? kNaN : x;
    }
    return tensor(v, kFloat64).reshape(sizes).to(dt);
  }
  int64_t lo = d.ilo, hi = d.ihi;
  if (dt == kBool) lo = 0, hi = 1;
  if (dt == kUInt8) lo = std::max<int64_t>(lo, 0);
  if (d.wide) {
    switch (dt) {
      case kInt8: lo = -128, hi = 127; break;
      case kUInt8: lo = 0, hi = 255; break;
      case kInt32: lo = std::numeric_limits<int32_t>::min(), hi = std::numeric_limits<int32_t>::max(); break;
      case kInt64: lo = std::numeric_limits<int64_t>::min(), hi = std::numeric_limits<int64_t>::max(); break;
      default: break;
    }
  }
  std::uniform_int_distribution<int64_t> u(lo, hi);
  std::vector<int64_t> v(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[k] = u(gen);
  return tensor(v, kInt64).reshape(sizes).to(dt);
}

Tensor same(const Tensor& t) { return t; }

// A layout of an input: the shape its values are drawn in, and the view
// applied to the CPU tensor and to its CUDA copy alike.
struct Layout {
  const char* name;
  Sizes base;
  UnaryFn view;
};

const std::vector<Layout>& unary_layouts() {
  static const std::vector<Layout> layouts = {
      {"1 element", {1}, same},
      {"7 elements", {7}, same},
      {"1000003 elements", {1000003}, same},
      {"0-dim", {}, same},
      {"transposed", {53, 37}, [](const Tensor& t) { return t.t(); }},
      {"step slice", {37, 106}, [](const Tensor& t) { return t.slice(1, 0, 106, 2); }},
      {"expanded row", {53}, [](const Tensor& t) { return t.expand({37, 53}); }},
      {"expanded column", {37, 1}, [](const Tensor& t) { return t.expand({37, 53}); }},
      {"permuted 3-d", {5, 6, 7}, [](const Tensor& t) { return t.permute({2, 0, 1}); }},
  };
  return layouts;
}

// Two inputs of one op: shapes the op broadcasts itself, or views.
struct BinaryLayout {
  const char* name;
  Sizes a, b;
  UnaryFn view_a = same, view_b = same;
};

const std::vector<BinaryLayout>& binary_layouts() {
  static const std::vector<BinaryLayout> layouts = {
      {"1 element", {1}, {1}},
      {"7 elements", {7}, {7}},
      {"1000003 elements", {1000003}, {1000003}},
      {"0-dim both", {}, {}},
      {"0-dim b", {37, 53}, {}},
      {"row broadcast", {37, 53}, {53}},
      {"column broadcast", {37, 1}, {37, 53}},
      {"outer broadcast", {37, 1}, {1, 53}},
      {"transposed a", {53, 37}, {37, 53}, [](const Tensor& t) { return t.t(); }},
      {"step slices", {37, 106}, {74, 53}, [](const Tensor& t) { return t.slice(1, 0, 106, 2); },
       [](const Tensor& t) { return t.slice(0, 0, 74, 2); }},
      {"permuted 3-d a", {5, 6, 7}, {7, 5, 6}, [](const Tensor& t) { return t.permute({2, 0, 1}); }},
  };
  return layouts;
}

// op on every unary layout, in `dt`, on CUDA against the CPU.
void check_unary(const std::string& what, const UnaryFn& op, DType dt, const Domain& d, Tol tol) {
  uint64_t seed = 1;
  for (const Layout& l : unary_layouts()) {
    const Tensor base = draw(l.base, dt, d, seed++);
    const Tensor cpu = op(l.view(base));
    const Tensor gpu = op(l.view(base.cuda()));
    EXPECT_TRUE(matches(gpu, cpu, tol)) << what << ", " << str(dt) << ", " << l.name;
  }
}

void check_binary(const std::string& what, const BinaryFn& op, DType dt, const Domain& da, const Domain& db, Tol tol) {
  uint64_t seed = 100;
  for (const BinaryLayout& l : binary_layouts()) {
    const Tensor a = draw(l.a, dt, da, seed++), b = draw(l.b, dt, db, seed++);
    const Tensor cpu = op(l.view_a(a), l.view_b(b));
    const Tensor gpu = op(l.view_a(a.cuda()), l.view_b(b.cuda()));
    EXPECT_TRUE(matches(gpu, cpu, tol)) << what << ", " << str(dt) << ", " << l.name;
  }
}

// Special values of the floating dtypes (converted to each on the CPU).
const std::vector<double> kFloatSpecials = {
    kNaN,   kInf,   -kInf, 0.0,   -0.0,  1e-30, -1e-30, 1e-40, 0.5,  -0.5,  1.0,    -1.0, 2.5,
    -2.5,   20.0,   -20.0, 88.0,  -88.0, 89.0,  -89.0,  100.0, -100, 1e10,  -1e10,  1e30, -1e30};

// op on the special values, read through a step-2 slice: a layout the CPU
// kernels run on their reference loop, the oracle.
void check_specials(const std::string& what, const UnaryFn& op, DType dt, Tol tol) {
  std::vector<double> v;
  for (double x : kFloatSpecials) {
    v.push_back(x);
    v.push_back(0.25);
  }
  const Tensor base = tensor(v, kFloat64).to(dt);
  const auto n = static_cast<int64_t>(v.size());
  const Tensor cpu = op(base.slice(0, 0, n, 2));
  const Tensor gpu = op(base.cuda().slice(0, 0, n, 2));
  EXPECT_TRUE(matches(gpu, cpu, tol)) << what << " on special values, " << str(dt);
}

// ---- Copy and casts ----

// Values that probe every conversion rule: rounding to the 16-bit floats
// and float32, truncation and wrapping to integers, NaN / inf / beyond-int64
// (INT64_MIN, then wrapped), -0, and bool.
const std::vector<double> kCastFloats = {
    kNaN,     kInf,       -kInf,      0.0,      -0.0,     0.1,       1.0 / 3,  0.5,         -0.5,   1.5,
    -1.5,     2.5,        -2.5,       127.9,    128.0,    255.5,     256.7,    -128.9,      -129.3, 65504.0,
    65519.0,  65520.0,    1e5,        16777217, 3e9,      -3e9,      1e19,     -1e19,       1e20,   3.4e38,
    -3.4e38,  1e-5,       6e-8,       1e-40,    1e-310,   9007199254740993.0, 0x1.0101p0, 0x1.0080p0,
    0x1.01p0, 0x1.002p0,  0x1.006p0};
const std::vector<int64_t> kCastInts = {0,
                                        1,
                                        -1,
                                        2,
                                        127,
                                        128,
                                        255,
                                        256,
                                        -128,
                                        -129,
                                        32767,
                                        65504,
                                        65505,
                                        16777217,
                                        2147483647,
                                        -2147483647 - 1,
                                        2147483648,
                                        4294967296,
                                        9007199254740993,
                                        -9007199254740993,
                                        std::numeric_limits<int64_t>::max(),
                                        std::numeric_limits<int64_t>::min()};

// The probe values in `dt` (converted on the CPU), padded with draws.
Tensor cast_source(DType dt) {
  Tensor probe = is_floating_point(dt) ? tensor(kCastFloats, kFloat64).to(dt) : tensor(kCastInts, kInt64).to(dt);
  Domain d;
  d.wide = true;
  d.lo = -300, d.hi = 300;
  return cat({probe, draw({257}, dt, d, 7)});
}

// The same bits where both are floating: -0 stays -0 (close_to_cpu takes
// -0 == 0).
::testing::AssertionResult same_signs(const Tensor& gpu, const Tensor& cpu) {
  if (!is_floating_point(cpu.dtype())) return ::testing::AssertionSuccess();
  const std::vector<double> g = gpu.cpu().to_vector<double>(), c = cpu.to_vector<double>();
  for (size_t k = 0; k < c.size(); ++k)
    if (!std::isnan(c[k]) && std::signbit(g[k]) != std::signbit(c[k]))
      return ::testing::AssertionFailure() << "element " << k << ": cuda " << g[k] << ", cpu " << c[k];
  return ::testing::AssertionSuccess();
}

TEST(CudaElementwise, CastsBetweenEveryPairOfDtypes) {
  LOOM_REQUIRE_GPU();
  for (DType from : kAllDtypes) {
    const Tensor src = cast_source(from);
    const int64_t n = src.numel();
    // The same values in a step-2 slice (a strided source).
    const Tensor wide = stack({src, zeros_like(src)}, 1).reshape({2 * n});
    for (DType to : kAllDtypes) {
      const std::string what = str(from) + " -> " + str(to);
      const Tensor cpu = src.to(to);
      const Tensor gpu = src.cuda().to(to);
      EXPECT_TRUE(matches(gpu, cpu, kExact)) << what;
      EXPECT_TRUE(same_signs(gpu, cpu)) << what;
      const Tensor gpu_strided = wide.cuda().slice(0, 0, 2 * n, 2).to(to);
      EXPECT_TRUE(matches(gpu_strided, cpu, kExact)) << what << ", strided source";
    }
  }
}

TEST(CudaElementwise, CopiesOfEveryLayoutAndDtype) {
  LOOM_REQUIRE_GPU();
  Domain d;
  d.wide = true;
  for (DType dt : kAllDtypes) {
    // contiguous() of a view: the same-dtype strided copy (per element size).
    check_unary("contiguous", [](const Tensor& t) { return t.contiguous(); }, dt, d, kExact);
    // clone() of a contiguous tensor: a device-to-device memcpy.
    check_unary("clone", [](const Tensor& t) { return t.contiguous().clone(); }, dt, d, kExact);
    // A cast of a view to float32 / int64 (float dtypes: the pairwise float
    // kernels; the others: the general one).
    check_unary("to float32", [](const Tensor& t) { return t.to(kFloat32); }, dt, d, kExact);
    check_unary("to int64", [](const Tensor& t) { return t.to(kInt64); }, dt, d, kExact);
  }
  // Empty tensors copy nothing.
  const Tensor empty = zeros({0, 3}).cuda();
  EXPECT_EQ(empty.t().contiguous().cpu().sizes(), (Sizes{3, 0}));
  EXPECT_EQ(empty.to(kHalf).cpu().sizes(), (Sizes{0, 3}));
}

// ---- Fill ----

TEST(CudaElementwise, FillEveryDtypeAndValue) {
  LOOM_REQUIRE_GPU();
  const std::vector<Scalar> values = {Scalar(0),       Scalar(-1),   Scalar(1),          Scalar(7),
                                      Scalar(2.5),     Scalar(-2.5), Scalar(0.1),        Scalar(-0.0),
                                      Scalar(1e10),    Scalar(kNaN), Scalar(-kInf),      Scalar(true),
                                      Scalar(int64_t{9007199254740993}), Scalar(int64_t{-129}), Scalar(65519.0)};
  const std::vector<Sizes> shapes = {{1}, {7}, {1000003}, {}, {37, 53}};
  for (DType dt : kAllDtypes) {
    for (const Scalar& v : values) {
      for (const Sizes& s : shapes) {
        const Tensor cpu = full(s, v, dt);
        const Tensor gpu = full(s, v, TensorOptions().dtype(dt).device(Device::cuda()));
        EXPECT_TRUE(matches(gpu, cpu, kExact)) << "full " << v << ", " << str(dt) << ", " << shape_str(s);
        EXPECT_TRUE(same_signs(gpu, cpu)) << "full " << v << ", " << str(dt);
      }
    }
    // zeros / ones, and eye: a fill of the diagonal, a strided view.
    const TensorOptions on_gpu = TensorOptions().dtype(dt).device(Device::cuda());
    EXPECT_TRUE(matches(zeros({5, 7}, on_gpu), zeros({5, 7}, dt), kExact)) << str(dt);
    EXPECT_TRUE(matches(ones({1000003}, on_gpu), ones({1000003}, dt), kExact)) << str(dt);
    EXPECT_TRUE(matches(eye(37, 53, on_gpu), eye(37, 53, dt), kExact)) << "eye " << str(dt);
    EXPECT_TRUE(matches(eye(64, 5, on_gpu), eye(64, 5, dt), kExact)) << "eye " << str(dt);
  }
  EXPECT_EQ(full({0, 4}, 1.0, TensorOptions().device(Device::cuda())).cpu().numel(), 0);
}

TEST(CudaElementwise, FillIntoStridedViews) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    Domain d;
    d.wide = true;
    const Tensor base = draw({37, 106}, dt, d, 3);
    Tensor cpu = base.clone(), gpu = base.cuda();
    cpu.slice(1, 0, 106, 2).fill_(3);
    gpu.slice(1, 0, 106, 2).fill_(3);
    cpu.t().slice(1, 1, 37, 3).fill_(-2.5);
    gpu.t().slice(1, 1, 37, 3).fill_(-2.5);
    cpu.select(1, 5).zero_();
    gpu.select(1, 5).zero_();
    EXPECT_TRUE(matches(gpu, cpu, kExact)) << str(dt);
  }
}

// ---- unary ops ----

// The ops defined for every dtype but bool (the ops layer refuses bool).
TEST(CudaElementwise, NegAbsReluEveryDtype) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kNumericDtypes) {
    Domain d;
    d.wide = true;  // INT_MIN: -x and |x| wrap
    d.nan_every = 11;
    check_unary("neg", [](const Tensor& t) { return neg(t); }, dt, d, kExact);
    check_unary("abs", [](const Tensor& t) { return abs(t); }, dt, d, kExact);
    check_unary("relu", [](const Tensor& t) { return relu(t); }, dt, d, kExact);
    if (is_floating_point(dt)) {
      check_specials("neg", [](const Tensor& t) { return neg(t); }, dt, kExact);
      check_specials("abs", [](const Tensor& t) { return abs(t); }, dt, kExact);
      check_specials("relu", [](const Tensor& t) { return relu(t); }, dt, kExact);
    }
  }
}

TEST(CudaElementwise, SignLogicalNotIsNanEveryDtype) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    Domain d;
    d.lo = -2, d.hi = 2, d.ilo = -2, d.ihi = 2, d.nan_every = 5;
    check_unary("sign", [](const Tensor& t) { return sign(t); }, dt, d, kExact);
    check_unary("logical_not", [](const Tensor& t) { return logical_not(t); }, dt, d, kExact);
    check_unary("isnan", [](const Tensor& t) { return isnan(t); }, dt, d, kExact);
    if (is_floating_point(dt)) {
      check_specials("sign", [](const Tensor& t) { return sign(t); }, dt, kExact);
      check_specials("logical_not", [](const Tensor& t) { return logical_not(t); }, dt, kExact);
      check_specials("isnan", [](const Tensor& t) { return isnan(t); }, dt, kExact);
    }
  }
}

TEST(CudaElementwise, ClampEveryDtype) {
  LOOM_REQUIRE_GPU();
  using Bound = std::optional<Scalar>;
  struct Bounds {
    Bound lo, hi;
  };
  // Integer bounds keep the dtype; float bounds (rounded to float16 /
  // bfloat16 first) apply to the floating dtypes; lo > hi gives hi.
  const std::vector<Bounds> int_bounds = {{Scalar(-2), Scalar(3)}, {Scalar(1), std::nullopt},
                                          {std::nullopt, Scalar(0)}, {Scalar(2), Scalar(-1)}};
  const std::vector<Bounds> float_bounds = {{Scalar(-0.7), Scalar(1.3)}, {Scalar(0.1), std::nullopt},
                                            {std::nullopt, Scalar(-0.1)}, {Scalar(1.5), Scalar(-1.5)}};
  for (DType dt : kAllDtypes) {
    Domain d;
    d.ilo = -5, d.ihi = 5, d.nan_every = 9;
    for (const Bounds& b : int_bounds) {
      if (dt == kBool || (dt == kUInt8 && b.lo && b.lo->to_long() < 0)) continue;
      check_unary("clamp", [b](const Tensor& t) { return clamp(t, b.lo, b.hi); }, dt, d, kExact);
    }
    if (dt == kBool)
      check_unary("clamp", [](const Tensor& t) { return clamp(t, Scalar(false), Scalar(true)); }, dt, d, kExact);
    if (is_floating_point(dt)) {
      for (const Bounds& b : float_bounds) {
        check_unary("clamp", [b](const Tensor& t) { return clamp(t, b.lo, b.hi); }, dt, d, kExact);
        check_specials("clamp", [b](const Tensor& t) { return clamp(t, b.lo, b.hi); }, dt, kExact);
      }
    }
  }
}

struct FloatUnaryCase {
  const char* name;
  UnaryFn op;
  double lo, hi;           // the input range
  bool exact = false;      // one IEEE operation on both sides
  double atol32 = 1e-6;    // float32's absolute tolerance
};

const std::vector<FloatUnaryCase>& float_unary_cases() {
  static const std::vector<FloatUnaryCase> cases = {
      {"exp", [](const Tensor& t) { return exp(t); }, -3, 3},
      {"log", [](const Tensor& t) { return log(t); }, 0.01, 10},
      {"log1p", [](const Tensor& t) { return log1p(t); }, -0.9, 10},
      {"sqrt", [](const Tensor& t) { return sqrt(t); }, 0, 10, true},
      {"rsqrt", [](const Tensor& t) { return rsqrt(t); }, 0.01, 10, true},
      {"sin", [](const Tensor& t) { return sin(t); }, -6, 6},
      {"cos", [](const Tensor& t) { return cos(t); }, -6, 6},
      {"tanh", [](const Tensor& t) { return tanh(t); }, -4, 4},
      {"erf", [](const Tensor& t) { return erf(t); }, -3, 3},
      {"sigmoid", [](const Tensor& t) { return sigmoid(t); }, -6, 6},
      {"leaky_relu", [](const Tensor& t) { return leaky_relu(t, 0.1); }, -3, 3, true},
      {"elu", [](const Tensor& t) { return elu(t, 1.3); }, -3, 3},
      {"gelu", [](const Tensor& t) { return gelu(t); }, -3, 3, false, kGeluAtol32},
      {"gelu tanh", [](const Tensor& t) { return gelu(t, "tanh"); }, -3, 3, false, kGeluAtol32},
      {"silu", [](const Tensor& t) { return silu(t); }, -6, 6},
      {"softplus", [](const Tensor& t) { return softplus(t, 1.5, 5.0); }, -6, 6},
  };
  return cases;
}

TEST(CudaElementwise, FloatMathEveryFloatDtype) {
  LOOM_REQUIRE_GPU();
  for (const FloatUnaryCase& c : float_unary_cases()) {
    for (DType dt : kFloatDtypes) {
      Domain d;
      d.lo = c.lo, d.hi = c.hi;
      const Tol tol = c.exact ? kExact : math_tol(dt, c.atol32);
      check_unary(c.name, c.op, dt, d, tol);
      check_specials(c.name, c.op, dt, tol);
    }
  }
}

// Integer inputs of a float op compute in the default float dtype.
TEST(CudaElementwise, FloatMathOfIntegers) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kInt32, kInt64, kUInt8, kBool, kInt8}) {
    Domain d;
    d.ilo = 0, d.ihi = 9;
    check_unary("exp", [](const Tensor& t) { return exp(t); }, dt, d, math_tol(kFloat32));
    check_unary("sqrt", [](const Tensor& t) { return sqrt(t); }, dt, d, kExact);
  }
}

// ---- binary ops ----

TEST(CudaElementwise, ArithmeticEveryDtype) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    Domain d;
    d.wide = true;  // integers wrap
    check_binary("add", [](const Tensor& a, const Tensor& b) { return add(a, b); }, dt, d, d, kExact);
    check_binary("mul", [](const Tensor& a, const Tensor& b) { return mul(a, b); }, dt, d, d, kExact);
    if (dt != kBool)
      check_binary("sub", [](const Tensor& a, const Tensor& b) { return sub(a, b); }, dt, d, d, kExact);
    // Integers are promoted to float32 (a cast on the GPU, then Div);
    // division by zero gives +-inf or NaN.
    Domain small;
    small.ilo = -3, small.ihi = 3;
    check_binary("div", [](const Tensor& a, const Tensor& b) { return div(a, b); }, dt, small, small, kExact);
  }
  // C++ numbers as operands (wrapped 0-dim tensors), and add's alpha.
  for (DType dt : {kFloat32, kFloat16, kInt32, kInt64}) {
    Domain d;
    const Tensor x = draw({37, 53}, dt, d, 5);
    const Tensor g = x.cuda();
    EXPECT_TRUE(matches(g + 2, x + 2, kExact)) << str(dt);
    EXPECT_TRUE(matches(3 - g.t(), 3 - x.t(), kExact)) << str(dt);
    EXPECT_TRUE(matches(g * 2.5, x * 2.5, kExact)) << str(dt);
    EXPECT_TRUE(matches(g / 4, x / 4, kExact)) << str(dt);
    EXPECT_TRUE(matches(add(g, g.t().t(), 3), add(x, x, 3), kExact)) << str(dt);
  }
}

TEST(CudaElementwise, PowFloatAndInteger) {
  LOOM_REQUIRE_GPU();
  const BinaryFn op = [](const Tensor& a, const Tensor& b) { return pow(a, b); };
  for (DType dt : kNumericDtypes) {
    Domain base, exponent;
    base.lo = 0.1, base.hi = 3, base.ilo = -5, base.ihi = 5;
    exponent.lo = -3, exponent.hi = 3, exponent.ilo = 0, exponent.ihi = 12;  // integer powers wrap
    check_binary("pow", op, dt, base, exponent, is_floating_point(dt) ? math_tol(dt) : kExact);
  }
  // Special bases and exponents (C99's pow rules on both sides).
  for (DType dt : kFloatDtypes) {
    const std::vector<double> bases = {-2, -2, -0.5, 0, -0.0, 0, 1, 1, kNaN, kInf, -kInf, 2, -8, 10};
    const std::vector<double> exps = {3, 0.5, -2, -1, -3, 0, kNaN, kInf, 0, -1, 3, 1e4, 1.0 / 3, -40};
    const Tensor a = tensor(bases, kFloat64).to(dt), b = tensor(exps, kFloat64).to(dt);
    EXPECT_TRUE(matches(pow(a.cuda(), b.cuda()), pow(a, b), math_tol(dt))) << str(dt);
  }
  // Scalar exponents, as x ** 2 is written.
  const Tensor x = draw({1000}, kFloat32, Domain{}, 9);
  EXPECT_TRUE(matches(pow(x.cuda(), 2), pow(x, 2), math_tol(kFloat32)));
  const Tensor i = draw({1000}, kInt64, Domain{}, 9);
  EXPECT_TRUE(matches(pow(i.cuda(), 3), pow(i, 3), kExact));
}

// A negative integer exponent is an error, as on the CPU (the kernel checks
// on the device and the host reports it); the device is usable after it.
TEST(CudaElementwise, PowNegativeIntegerExponentIsAnError) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kInt32, kInt64, kInt8}) {
    const Tensor a = tensor(std::vector<int64_t>{2, 3, 4}, kInt64).to(dt).cuda();
    const Tensor e = tensor(std::vector<int64_t>{1, -2, 0}, kInt64).to(dt).cuda();
    try {
      (void)pow(a, e);
      ADD_FAILURE() << "pow with a negative exponent did not throw, " << str(dt);
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find("Integers to negative integer powers are not allowed (got exponent -2)"),
                std::string::npos)
          << err.what();
    }
  }
  const Tensor ok = pow(tensor(std::vector<int64_t>{2, 3}, kInt64).cuda(), 2);
  EXPECT_TRUE(matches(ok, tensor(std::vector<int64_t>{4, 9}, kInt64), kExact));
}

TEST(CudaElementwise, MaximumMinimumPropagateNaN) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    Domain a, b;
    a.wide = b.wide = true;
    a.nan_every = 7, b.nan_every = 5;
    check_binary("maximum", [](const Tensor& x, const Tensor& y) { return maximum(x, y); }, dt, a, b, kExact);
    check_binary("minimum", [](const Tensor& x, const Tensor& y) { return minimum(x, y); }, dt, a, b, kExact);
  }
}

TEST(CudaElementwise, ComparisonsAndLogicEveryDtype) {
  LOOM_REQUIRE_GPU();
  const std::vector<std::pair<const char*, BinaryFn>> ops = {
      {"eq", [](const Tensor& a, const Tensor& b) { return eq(a, b); }},
      {"ne", [](const Tensor& a, const Tensor& b) { return ne(a, b); }},
      {"lt", [](const Tensor& a, const Tensor& b) { return lt(a, b); }},
      {"le", [](const Tensor& a, const Tensor& b) { return le(a, b); }},
      {"gt", [](const Tensor& a, const Tensor& b) { return gt(a, b); }},
      {"ge", [](const Tensor& a, const Tensor& b) { return ge(a, b); }},
      {"logical_and", [](const Tensor& a, const Tensor& b) { return logical_and(a, b); }},
      {"logical_or", [](const Tensor& a, const Tensor& b) { return logical_or(a, b); }},
  };
  for (DType dt : kAllDtypes) {
    // Few distinct values: many ties and zeros; NaN compares unequal.
    Domain a, b;
    a.lo = b.lo = -2.5, a.hi = b.hi = 2.5;
    a.integral = b.integral = true;
    a.ilo = b.ilo = -2, a.ihi = b.ihi = 2;
    a.nan_every = 7, b.nan_every = 5;
    for (const auto& named : ops) check_binary(named.first, named.second, dt, a, b, kExact);
  }
  // A C++ number on the right.
  const Tensor x = draw({101}, kFloat32, Domain{}, 4);
  EXPECT_TRUE(matches(x.cuda() > 0.5, x > 0.5, kExact));
  EXPECT_TRUE(matches(x.cuda().le(0), x.le(0), kExact));
}

// ---- where and the activation gradients ----

TEST(CudaElementwise, WhereEveryDtypeAndBroadcast) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    Domain d;
    d.wide = true;
    d.nan_every = 13;
    const Domain coin;
    struct Case {
      const char* name;
      Sizes c, a, b;
    };
    const std::vector<Case> cases = {{"contiguous", {37, 53}, {37, 53}, {37, 53}},
                                     {"1000003 elements", {1000003}, {1000003}, {1000003}},
                                     {"broadcast", {37, 1}, {53}, {}},
                                     {"0-dim", {}, {}, {}}};
    uint64_t seed = 50;
    for (const Case& k : cases) {
      const Tensor c = draw(k.c, kBool, coin, seed++), a = draw(k.a, dt, d, seed++), b = draw(k.b, dt, d, seed++);
      EXPECT_TRUE(matches(where(c.cuda(), a.cuda(), b.cuda()), where(c, a, b), kExact)) << str(dt) << ", " << k.name;
    }
    // Strided operands: a transposed condition and a step-sliced value.
    const Tensor c = draw({53, 37}, kBool, coin, 1), a = draw({37, 106}, dt, d, 2), b = draw({37, 53}, dt, d, 3);
    EXPECT_TRUE(matches(where(c.cuda().t(), a.cuda().slice(1, 0, 106, 2), b.cuda()),
                        where(c.t(), a.slice(1, 0, 106, 2), b), kExact))
        << str(dt) << ", strided";
    if (dt != kBool) {
      EXPECT_TRUE(matches(where(c.cuda().t(), b.cuda(), 3), where(c.t(), b, 3), kExact)) << str(dt) << ", scalar";
    }
    EXPECT_TRUE(matches(b.cuda().masked_fill(c.cuda().t(), 1), b.masked_fill(c.t(), 1), kExact))
        << str(dt) << ", masked_fill";
  }
}

TEST(CudaElementwise, ThresholdBackwardEveryFloatDtype) {
  LOOM_REQUIRE_GPU();
  const BinaryFn op = [](const Tensor& g, const Tensor& x) { return threshold_backward(g, x, 0.25); };
  for (DType dt : kFloatDtypes) {
    Domain d;
    d.nan_every = 17;
    check_binary("threshold_backward", op, dt, d, d, kExact);
  }
}

// GELU's backward (the GeluBackward kernel, both forms) and a chain of ops:
// requires_grad CUDA leaves, backward with a given gradient (no reduction),
// .grad against the CPU's.
// requires_grad CUDA leaves x in [-2, 2) and y in [0.5, 2), backward from
// a given gradient in [-1, 1) of f's shape (no reduction), .grad against
// the CPU's.
void check_gradients(DType dt, const std::function<Tensor(const Tensor&, const Tensor&)>& f, const char* what,
                     Tol tol) {
  Domain dx, dy, dg;
  dx.lo = -2, dx.hi = 2;
  dy.lo = 0.5, dy.hi = 2;
  dg.lo = -1, dg.hi = 1;
  const Tensor x = draw({37, 53}, dt, dx, 21), y = draw({37, 53}, dt, dy, 22);
  Tensor cx = x.clone().requires_grad_(), cy = y.clone().requires_grad_();
  Tensor gx = x.cuda().requires_grad_(), gy = y.cuda().requires_grad_();
  const Tensor cpu_out = f(cx, cy);
  const Tensor g = draw(cpu_out.sizes(), dt, dg, 23);
  cpu_out.backward(g);
  f(gx, gy).backward(g.cuda());
  ASSERT_TRUE(gx.grad().defined() && gy.grad().defined()) << what;
  EXPECT_TRUE(matches(gx.grad(), cx.grad(), tol)) << what << ", " << str(dt) << ", x.grad";
  EXPECT_TRUE(matches(gy.grad(), cy.grad(), tol)) << what << ", " << str(dt) << ", y.grad";
}

// gelu's backward is the GeluBackward kernel (both forms): x.grad = g *
// gelu'(x), one rounding, so the tolerance of one float op.
TEST(CudaElementwise, GeluBackwardEveryFloatDtype) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kFloatDtypes) {
    for (const char* form : {"none", "tanh"}) {
      Domain dx, dg;
      dg.lo = -1, dg.hi = 1;
      const Tensor x = draw({1000003}, dt, dx, 61), g = draw({1000003}, dt, dg, 62);
      Tensor cx = x.clone().requires_grad_(), gx = x.cuda().requires_grad_();
      gelu(cx, form).backward(g);
      gelu(gx, form).backward(g.cuda());
      EXPECT_TRUE(matches(gx.grad(), cx.grad(), math_tol(dt, kGeluAtol32))) << "gelu " << form << ", " << str(dt);
      // Strided operands: a transposed x and a broadcast gradient row.
      const Tensor x2 = draw({53, 37}, dt, dx, 63), g2 = draw({53}, dt, dg, 64);
      Tensor cx2 = x2.clone().requires_grad_(), gx2 = x2.cuda().requires_grad_();
      gelu(cx2.t(), form).backward(g2.expand({37, 53}));
      gelu(gx2.t(), form).backward(g2.cuda().expand({37, 53}));
      EXPECT_TRUE(matches(gx2.grad(), cx2.grad(), math_tol(dt, kGeluAtol32)))
          << "gelu " << form << ", " << str(dt) << ", strided";
    }
  }
}

TEST(CudaElementwise, GradientsThroughChainsOfOps) {
  LOOM_REQUIRE_GPU();
  const std::vector<std::pair<const char*, std::function<Tensor(const Tensor&, const Tensor&)>>> chains = {
      {"arithmetic", [](const Tensor& x, const Tensor& y) { return (x * y + x / y - y) * x; }},
      {"pow sqrt log", [](const Tensor& x, const Tensor& y) { return pow(y, 1.5) + sqrt(y) * log(y) + pow(y, x); }},
      {"activations",
       [](const Tensor& x, const Tensor& y) {
         return relu(x) * y + leaky_relu(x, 0.2) + elu(x) * sigmoid(y) + silu(x) + softplus(x * y) + tanh(x);
       }},
      {"selection",
       [](const Tensor& x, const Tensor& y) {
         return maximum(x, y - 1) + minimum(x, y) * y + clamp(x, -1, 1) + abs(x) * y + where(x > 0, x, y);
       }},
      {"transcendental",
       [](const Tensor& x, const Tensor& y) { return sin(x) * cos(y) + erf(x) + exp(-x * x) + rsqrt(y); }},
      {"views",
       [](const Tensor& x, const Tensor& y) {
         return (x.t() * y.t()).t().slice(1, 0, 52, 2) * y.slice(1, 1, 53, 2) + x.t().slice(0, 2, 53, 2).t();
       }},
  };
  for (DType dt : {kFloat32, kFloat64}) {
    // Each gradient is a few dozen roundings of values of order one.
    const Tol tol = dt == kFloat64 ? Tol{1e-12, 1e-12} : Tol{1e-5, 1e-5};
    for (const auto& [name, f] : chains) check_gradients(dt, f, name, tol);
  }
}

// ---- in-place ops ----

TEST(CudaElementwise, InPlaceOpsOnTensorsAndViews) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64, kFloat16, kInt32, kInt64}) {
    Domain d;
    d.lo = 0.5, d.hi = 3, d.ilo = 1, d.ihi = 9;
    const Tensor a = draw({37, 53}, dt, d, 31), b = draw({37, 53}, dt, d, 32), r = draw({53}, dt, d, 33);
    Tensor c = a.clone(), g = a.cuda();
    const Tensor gb = b.cuda(), gr = r.cuda();
    c.add_(b);
    g.add_(gb);
    c.mul_(r);  // broadcast row
    g.mul_(gr);
    c.sub_(b, 2);
    g.sub_(gb, 2);
    c.t().add_(3);  // a transposed view
    g.t().add_(3);
    c.slice(1, 0, 52, 2).mul_(b.slice(1, 1, 53, 2));  // step slices
    g.slice(1, 0, 52, 2).mul_(gb.slice(1, 1, 53, 2));
    c += b;
    g += gb;
    c.clamp_(Scalar(0), Scalar(200));
    g.clamp_(Scalar(0), Scalar(200));
    c.t().copy_(b.t());  // copy into a view, same layout
    g.t().copy_(gb.t());
    c.slice(0, 0, 36, 3).copy_(a.slice(0, 1, 37, 3).t().t());
    g.slice(0, 0, 36, 3).copy_(a.cuda().slice(0, 1, 37, 3).t().t());
    c.masked_fill_(b > 4, 7);
    g.masked_fill_(gb > 4, 7);
    if (is_floating_point(dt)) {
      c.div_(b);
      g.div_(gb);
    }
    c.add_(c);  // self as the operand
    g.add_(g);
    EXPECT_TRUE(matches(g, c, kExact)) << str(dt);
    // A CPU source copied into a CUDA view.
    g.t().copy_(b.t());
    EXPECT_TRUE(matches(g, b, kExact)) << str(dt);
  }
}

// ---- 64-bit indexing ----

// A copy of 65536 x 65537 bytes (> 2^32 elements) from a broadcast column:
// the strided input takes the 64-bit offset path, the output is written at
// element numbers past 2^32.
TEST(CudaElementwise, MoreThan2Pow32Elements) {
  LOOM_REQUIRE_GPU();
  const int64_t rows = 65536, cols = 65537;
  Domain d;
  d.wide = true;
  const Tensor column = draw({rows}, kUInt8, d, 41);
  Tensor big = column.cuda().unsqueeze(1).expand({rows, cols}).contiguous();
  ASSERT_EQ(big.numel(), rows * cols);
  const std::vector<uint8_t> want = column.to_vector<uint8_t>();
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{40000}, rows - 2, rows - 1}) {
    const std::vector<uint8_t> got = big.select(0, i).cpu().to_vector<uint8_t>();
    ASSERT_EQ(static_cast<int64_t>(got.size()), cols);
    for (int64_t j = 0; j < cols; ++j)
      ASSERT_EQ(got[j], want[i]) << "row " << i << ", column " << j;
  }
  // An elementwise op over all of it (contiguous operands past 2^32).
  big = logical_not(big);
  const std::vector<bool> last = big.select(0, rows - 1).cpu().to_vector<bool>();
  for (int64_t j = 0; j < cols; j += 997) ASSERT_EQ(last[j], want[rows - 1] == 0) << "column " << j;
}

}  // namespace
}  // namespace loom
