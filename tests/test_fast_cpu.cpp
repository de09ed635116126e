// The vectorized CPU kernels (Note [Vectorized CPU kernels] in
// src/backend/cpu/cpu_vec.h) against the reference kernels they sit beside.
//
// Each check runs an op twice through the public API: once with the fast
// paths switched off (set_vec_enabled(false): the reference kernel) and once
// with them on, on every ISA path this CPU can run (LOOM_CPU_ISA + the reload
// hook), on odd sizes (1, 3, 7, 17, 33, 257, 1000 and row x column combos),
// on layouts that must fall back to the reference loop (transposed, sliced,
// broadcast) and on NaN, +-inf, -0 and denormal values. exp, log and tanh are
// also bounded in ULP against std:: in double over millions of values, gelu
// and its gradient against their exact values in double.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

// Internal headers (plain declarations): the ISA choice and the fast-path
// switch.
#include "ops/fast_paths.h"
#include "ops/op_utils.h"  // ops::gelu_backward: the GeluBackward kernel on any layout
#include "test_util.h"

namespace {

using loom::Tensor;
using loom_test::GemmIsa;
using Shape = std::vector<int64_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
const std::vector<int64_t> kSizes = {1, 3, 7, 17, 33, 257, 1000};

using loom_test::IsaGuard;
using loom_test::ReferenceGuard;
using loom_test::runnable_isas;

// Random float32 values (normal, scale 3) with special values sprinkled in
// when `specials` is set.
Tensor values(const Shape& shape, uint32_t seed, bool specials = false, loom::DType dt = loom::kFloat32) {
  Tensor t = loom::empty(shape, loom::TensorOptions().dtype(loom::kFloat64));
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, 3.0);
  const double special[] = {kNaN, kInf, -kInf, 0.0, -0.0, 1e-40, -1e-41, 90.0, -110.0, 1e30};
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    p[i] = normal(gen);
    if (specials && gen() % 5 == 0) p[i] = special[gen() % std::size(special)];
  }
  return t.to(dt);
}

// The float32 / float64 values of a tensor, row-major.
std::vector<double> flat(const Tensor& t) {
  Tensor c = t.to(loom::kFloat64).contiguous();
  const double* p = c.data_ptr<double>();
  return std::vector<double>(p, p + c.numel());
}

int64_t ulp_distance(float a, float b) {
  auto ord = [](float f) {
    int32_t i;
    std::memcpy(&i, &f, 4);
    return i < 0 ? int64_t{INT32_MIN} - i : int64_t{i};
  };
  return std::llabs(ord(a) - ord(b));
}

// got == want elementwise (NaN where NaN; -0 == 0).
void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const std::vector<double> g = flat(got), w = flat(want);
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(w[i])) {
      ASSERT_TRUE(std::isnan(g[i])) << what << " at " << i << ": got " << g[i] << ", want NaN";
    } else {
      ASSERT_EQ(g[i], w[i]) << what << " at " << i;
    }
  }
}

// |got - want| <= atol + rtol |want|, NaN where NaN, infinities equal.
void expect_close(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const std::vector<double> g = flat(got), w = flat(want);
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(w[i]) || std::isinf(w[i])) {
      if (std::isnan(w[i])) ASSERT_TRUE(std::isnan(g[i])) << what << " at " << i << ": got " << g[i];
      else ASSERT_EQ(g[i], w[i]) << what << " at " << i;
      continue;
    }
    ASSERT_LE(std::abs(g[i] - w[i]), atol + rtol * std::abs(w[i]))
        << what << " at " << i << ": got " << g[i] << ", want " << w[i];
  }
}

// Runs f with the fast paths off (the reference) and then on each ISA path,
// and checks the results with `check(got, want, label)`.
void against_reference(const std::function<Tensor()>& f,
                       const std::function<void(const Tensor&, const Tensor&, const std::string&)>& check,
                       const std::string& what) {
  Tensor want;
  {
    ReferenceGuard ref;
    want = f();
  }
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    check(f(), want, what + " [" + loom::cpu::gemm_isa_name(isa) + "]");
  }
}

void same_as_reference(const std::function<Tensor()>& f, const std::string& what) {
  against_reference(f, expect_same, what);
}
void close_to_reference(const std::function<Tensor()>& f, double rtol, double atol, const std::string& what) {
  against_reference(
      f, [&](const Tensor& g, const Tensor& w, const std::string& s) { expect_close(g, w, rtol, atol, s); }, what);
}

// The shapes every elementwise check runs on: 1-D odd sizes and 2-D combos.
std::vector<Shape> shapes() {
  std::vector<Shape> s;
  for (int64_t n : kSizes) s.push_back({n});
  for (int64_t m : {1, 3, 17, 33})
    for (int64_t n : {1, 7, 17, 257}) s.push_back({m, n});
  s.push_back({300, 1000});  // big enough to split across threads
  return s;
}

using loom::test::NamedBinary;
using loom::test::kBinary;

// ---- binary ----

TEST(FastBinary, SameShapeScalarAndBroadcastMatchReference) {
  uint32_t seed = 1;
  for (const NamedBinary& op : kBinary) {
    for (loom::DType dt : {loom::kFloat32, loom::kFloat64}) {
      for (const Shape& s : shapes()) {
        const Tensor a = values(s, seed++, true, dt), b = values(s, seed++, true, dt);
        const std::string what = std::string(op.name) + " " + loom::shape_str(s) + " " + loom::dtype_name(dt);
        same_as_reference([&] { return op.fn(a, b); }, what + " same shape");
        const Tensor scalar = values({}, seed++, false, dt);
        same_as_reference([&] { return op.fn(a, scalar); }, what + " tensor-scalar");
        same_as_reference([&] { return op.fn(scalar, a); }, what + " scalar-tensor");
        if (s.size() == 2) {
          const Tensor row = values({s[1]}, seed++, true, dt), col = values({s[0], 1}, seed++, true, dt);
          same_as_reference([&] { return op.fn(a, row); }, what + " row broadcast");
          same_as_reference([&] { return op.fn(row, a); }, what + " row broadcast (first)");
          same_as_reference([&] { return op.fn(a, col); }, what + " column broadcast");
          same_as_reference([&] { return op.fn(col, a); }, what + " column broadcast (first)");
          same_as_reference([&] { return op.fn(a.t(), b.t()); }, what + " transposed");
          same_as_reference([&] { return op.fn(a.t().contiguous(), b.t()); }, what + " mixed layout");
        }
      }
    }
  }
}

TEST(FastBinary, SlicedAndExpandedInputs) {
  const Tensor a = values({40, 66}, 7, true), b = values({40, 66}, 8, true);
  for (const NamedBinary& op : kBinary) {
    same_as_reference([&] { return op.fn(a.narrow(1, 1, 64), b.narrow(1, 2, 64)); }, std::string(op.name) + " narrow");
    same_as_reference([&] { return op.fn(a.slice(1, 0, 66, 2), b.slice(1, 1, 66, 2)); },
                      std::string(op.name) + " step 2");
    same_as_reference([&] { return op.fn(a.select(1, 3).unsqueeze(1).expand({40, 66}), b); },
                      std::string(op.name) + " expanded");
  }
}

TEST(FastBinary, MaximumMinimumSpecialValues) {
  const Tensor a = loom::tensor(std::vector<float>{kNaN, 1, kNaN, -0.0f, 0.0f, kInf, -kInf, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  const Tensor b = loom::tensor(std::vector<float>{1, kNaN, kNaN, 0.0f, -0.0f, 1, 1, kNaN, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    const Tensor mx = loom::maximum(a, b), mn = loom::minimum(a, b);
    for (int i : {0, 1, 2, 7}) {
      EXPECT_TRUE(std::isnan(mx.data_ptr<float>()[i])) << i;
      EXPECT_TRUE(std::isnan(mn.data_ptr<float>()[i])) << i;
    }
    // The reference keeps a on ties, so the sign of a zero follows a.
    EXPECT_TRUE(std::signbit(mx.data_ptr<float>()[3]));
    EXPECT_FALSE(std::signbit(mx.data_ptr<float>()[4]));
    EXPECT_EQ(mx.data_ptr<float>()[5], kInf);
    EXPECT_EQ(mn.data_ptr<float>()[6], -kInf);
  }
}

// ---- unary ----

TEST(FastUnary, MatchesReference) {
  uint32_t seed = 100;
  for (const loom_test::NamedUnary& op : loom_test::kUnary) {
    for (const Shape& s : shapes()) {
      const Tensor x = values(s, seed++, true);
      const std::string what = std::string(op.name) + " " + loom::shape_str(s);
      const std::function<Tensor()> run = [&] { return op.fn(x); };
      if (op.rtol == 0) same_as_reference(run, what);
      else close_to_reference(run, op.rtol, op.atol, what);
      if (s.size() == 2) {
        const std::function<Tensor()> t = [&] { return op.fn(x.t()); };
        if (op.rtol == 0) same_as_reference(t, what + " transposed");
        else close_to_reference(t, op.rtol, op.atol, what + " transposed");
      }
    }
  }
}

TEST(FastUnary, ReluKeepsNegativeZeroAndNaN) {
  const Tensor x = loom::tensor(std::vector<float>{-0.0f, kNaN, -1, 2, -kInf, kInf, 0.0f});
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    const Tensor y = loom::relu(x);
    const float* p = y.data_ptr<float>();
    EXPECT_TRUE(p[0] == 0 && std::signbit(p[0]));  // as the reference: -0 < 0 is false
    EXPECT_TRUE(std::isnan(p[1]));
    EXPECT_EQ(p[2], 0);
    EXPECT_EQ(p[5], kInf);
  }
}

// Every float32 bit pattern class: random bits (all exponents, denormals,
// NaNs), a dense sweep of [-110, 110], and the edges of exp's range.
std::vector<float> ulp_inputs() {
  std::vector<float> x;
  std::mt19937 gen(42);
  for (int i = 0; i < 1000000; ++i) {
    const uint32_t bits = gen();
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  for (float f = -110; f < 110; f += 0.0007f) x.push_back(f);
  for (float f = 1e-7f; f < 1e-2f; f *= 1.001f) {
    x.push_back(f);
    x.push_back(-f);
  }
  for (float f : {0.0f, -0.0f, kInf, -kInf, kNaN, 1e-45f, -1e-45f, 1e-40f, 1.17549435e-38f, 88.7228f, 88.7229f,
                  -87.3365f, -103.972f, -103.973f, -104.0f, 3.4e38f, -3.4e38f, 1.0f, 2.0f, 0.5f})
    x.push_back(f);
  return x;
}

// Correctly rounded std:: values (computed in double), special values
// matched exactly and results below FLT_MIN (fewer than 24 bits) bounded in
// absolute terms.
void check_ulp(loom::cpu::VecUnary op, double (*ref)(double), int64_t max_ulp, const char* name) {
  const std::vector<float> x = ulp_inputs();
  std::vector<float> y(x.size());
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::VecKernels& k = loom::cpu::vec_kernels(isa);
    k.unary_f32(op, x.data(), y.data(), static_cast<int64_t>(x.size()));
    int64_t worst = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const float want = static_cast<float>(ref(static_cast<double>(x[i])));
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(y[i])) << name << "(" << x[i] << ") [" << k.isa << "]: got " << y[i];
        continue;
      }
      if (std::isinf(want) || want == 0) {
        ASSERT_EQ(y[i], want) << name << "(" << x[i] << ") [" << k.isa << "]";
        ASSERT_EQ(std::signbit(y[i]), std::signbit(want)) << name << "(" << x[i] << ") [" << k.isa << "]";
        continue;
      }
      if (std::abs(want) < 1.17549435e-38f) {
        ASSERT_LE(std::abs(y[i] - want), max_ulp * 1.4e-45f * 4) << name << "(" << x[i] << ") [" << k.isa << "]";
        continue;
      }
      const int64_t u = ulp_distance(y[i], want);
      worst = std::max(worst, u);
      ASSERT_LE(u, max_ulp) << name << "(" << x[i] << ") [" << k.isa << "]: got " << y[i] << ", want " << want;
    }
    EXPECT_LE(worst, max_ulp) << name << " [" << k.isa << "]";
  }
}

TEST(FastUnary, ExpWithinTwoUlp) {
  check_ulp(loom::cpu::VecUnary::Exp, [](double v) { return std::exp(v); }, 2, "exp");
}
TEST(FastUnary, LogWithinTwoUlp) {
  check_ulp(loom::cpu::VecUnary::Log, [](double v) { return std::log(v); }, 2, "log");
}
TEST(FastUnary, TanhWithinThreeUlp) {
  check_ulp(loom::cpu::VecUnary::Tanh, [](double v) { return std::tanh(v); }, 3, "tanh");
}
TEST(FastUnary, SigmoidWithinThreeUlp) {
  check_ulp(loom::cpu::VecUnary::Sigmoid, [](double v) { return 1.0 / (1.0 + std::exp(-v)); }, 3, "sigmoid");
}

// gelu against x Phi(x) computed in double with std::erfc (no cancellation).
TEST(FastUnary, GeluCloseToExact) {
  const std::vector<float> x = ulp_inputs();
  std::vector<float> y(x.size());
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::VecKernels& k = loom::cpu::vec_kernels(isa);
    k.unary_f32(loom::cpu::VecUnary::Gelu, x.data(), y.data(), static_cast<int64_t>(x.size()));
    for (size_t i = 0; i < x.size(); ++i) {
      const double v = x[i], want = v * 0.5 * std::erfc(-v / std::sqrt(2.0));
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(y[i])) << "gelu(" << x[i] << ") [" << k.isa << "]";
        continue;
      }
      if (std::isinf(want)) {
        ASSERT_EQ(y[i], want) << "gelu(" << x[i] << ") [" << k.isa << "]";
        continue;
      }
      // |x| / sqrt 2 squared inside exp costs up to |x|^2 / 2 ulps of relative error in the tail.
      ASSERT_LE(std::abs(y[i] - want), 1e-6 * std::abs(want) * std::max(1.0, v * v / 2) + 1e-37)
          << "gelu(" << x[i] << ") [" << k.isa << "]: got " << y[i] << ", want " << want;
    }
  }
}

// ---- copy, conversion, fill ----

TEST(FastCopy, ContiguousStridedAndConversions) {
  uint32_t seed = 300;
  for (const Shape& s : shapes()) {
    for (loom::DType from : {loom::kFloat32, loom::kFloat64}) {
      const Tensor x = values(s, seed++, true, from);
      for (loom::DType to : {loom::kFloat32, loom::kFloat64}) {
        const std::string what = "copy " + loom::shape_str(s) + " " + loom::dtype_name(from) + "->" + loom::dtype_name(to);
        same_as_reference([&] { return x.to(to); }, what);
        same_as_reference([&] { return x.clone(); }, what + " clone");
        if (s.size() == 2) same_as_reference([&] { return x.t().contiguous(); }, what + " transposed");
        same_as_reference(
            [&] {
              Tensor out = loom::zeros(s, loom::TensorOptions().dtype(to));
              out.copy_(x);
              return out;
            },
            what + " copy_");
      }
    }
  }
}

TEST(FastCopy, BFloat16RoundsAsTheReference) {
  uint32_t seed = 400;
  for (const Shape& s : shapes()) {
    const Tensor x = values(s, seed++, true);
    const Tensor h = x.to(loom::kBFloat16);
    same_as_reference([&] { return x.to(loom::kBFloat16); }, "f32->bf16 " + loom::shape_str(s));
    same_as_reference([&] { return h.to(loom::kFloat32); }, "bf16->f32 " + loom::shape_str(s));
  }
  // Ties round to even; the largest finite values round to inf; NaN stays NaN.
  const Tensor ties = loom::tensor(std::vector<float>{1.00390625f, 1.01171875f, 3.3961e38f, -3.3961e38f, kNaN, -0.0f,
                                                      1e-40f, 65504.f, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  same_as_reference([&] { return ties.to(loom::kBFloat16); }, "bf16 ties");
}

TEST(FastCopy, Fill) {
  for (const Shape& s : shapes()) {
    same_as_reference([&] { return loom::full(s, 2.5); }, "full " + loom::shape_str(s));
    same_as_reference([&] { return loom::zeros(s, loom::TensorOptions().dtype(loom::kFloat64)); }, "zeros");
    same_as_reference(
        [&] {
          Tensor t = loom::zeros({s[0], 2 * s.back()});
          t.slice(1, 0, 2 * s.back(), 2).fill_(-0.0);
          return t;
        },
        "strided fill " + loom::shape_str(s));
  }
}

// ---- reductions ----

TEST(FastReduce, RowsAndColumnsMatchReference) {
  uint32_t seed = 500;
  for (int64_t m : kSizes) {
    for (int64_t n : {1, 3, 17, 33, 257, 1000}) {
      if (m * n > 300000) continue;
      const Tensor x = values({m, n}, seed++);
      const std::string what = loom::shape_str(x.sizes());
      // Rows sum in double lanes (another order than the reference's).
      close_to_reference([&] { return loom::sum(x, {1}); }, 1e-6, 1e-5, "sum rows " + what);
      same_as_reference([&] { return loom::amax(x, {1}); }, "amax rows " + what);
      same_as_reference([&] { return loom::amin(x, {1}); }, "amin rows " + what);
      // Columns add each column in the reference's order: bitwise equal.
      same_as_reference([&] { return loom::sum(x, {0}); }, "sum cols " + what);
      same_as_reference([&] { return loom::amax(x, {0}); }, "amax cols " + what);
      same_as_reference([&] { return loom::amin(x, {0}); }, "amin cols " + what);
      same_as_reference([&] { return loom::sum(x.t(), {1}); }, "sum transposed " + what);
      close_to_reference([&] { return loom::sum(x); }, 1e-6, 1e-4, "sum all " + what);
      close_to_reference([&] { return loom::sum(x, {1}, false, loom::kFloat64); }, 1e-12, 1e-9, "sum to f64 " + what);
    }
  }
  const Tensor x3 = values({5, 7, 40}, 9);
  close_to_reference([&] { return loom::sum(x3, {0, 1}); }, 1e-6, 1e-5, "sum (5,7,40) over 0,1");
  close_to_reference([&] { return loom::sum(x3, {1}); }, 1e-6, 1e-5, "sum (5,7,40) over 1");
  same_as_reference([&] { return loom::amax(x3, {1}); }, "amax (5,7,40) over 1");
  same_as_reference([&] { return loom::amax(x3, {0, 2}); }, "amax (5,7,40) over 0,2");
}

TEST(FastReduce, LongRowIsBlockedIndependentlyOfThreads) {
  const Tensor x = values({3 * 65536 + 17}, 11);
  Tensor one, two;
  {
    const int saved = loom::get_num_threads();
    loom::set_num_threads(1);
    one = loom::sum(x);
    loom::set_num_threads(2);
    two = loom::sum(x);
    loom::set_num_threads(saved);
  }
  EXPECT_EQ(one.item<float>(), two.item<float>());
  close_to_reference([&] { return loom::sum(x); }, 1e-6, 1e-3, "long sum");
  same_as_reference([&] { return loom::amax(x); }, "long amax");
}

TEST(FastReduce, NaNAndInfinities) {
  for (int64_t n : {3, 17, 33, 257}) {
    Tensor x = values({4, n}, 13);
    float* p = x.data_ptr<float>();
    p[n / 2] = kNaN;             // row 0: NaN wins
    p[n + n - 1] = kInf;         // row 1: inf at the end
    p[2 * n] = -kInf;            // row 2: -inf first
    for (int64_t j = 0; j < n; ++j) p[3 * n + j] = -kInf;  // row 3: all -inf
    same_as_reference([&] { return loom::amax(x, {1}); }, "amax specials");
    same_as_reference([&] { return loom::amin(x, {1}); }, "amin specials");
    same_as_reference([&] { return loom::amax(x, {0}); }, "amax cols specials");
    close_to_reference([&] { return loom::sum(x, {1}); }, 1e-6, 1e-5, "sum specials");
    same_as_reference([&] { return loom::sum(x, {0}); }, "sum cols specials");
  }
}

// ---- softmax / log_softmax forward ----

TEST(FastSoftmax, MatchesReference) {
  uint32_t seed = 700;
  for (int64_t m : {1, 3, 7, 33}) {
    for (int64_t n : kSizes) {
      const Tensor x = values({m, n}, seed++);
      const std::string what = loom::shape_str(x.sizes());
      close_to_reference([&] { return loom::softmax(x, 1); }, 1e-6, 1e-7, "softmax " + what);
      close_to_reference([&] { return loom::log_softmax(x, 1); }, 1e-6, 1e-6, "log_softmax " + what);
      close_to_reference([&] { return loom::softmax(x, 0); }, 1e-6, 1e-7, "softmax dim 0 " + what);
      close_to_reference([&] { return loom::log_softmax(x.t(), 1); }, 1e-6, 1e-6, "log_softmax transposed " + what);
    }
  }
}

TEST(FastSoftmax, SpecialRows) {
  const float ninf = -kInf;
  // A row with one -inf, a row of all -inf (NaN, as the reference), a row
  // with +inf (NaN), a row with NaN, large values.
  Tensor x = loom::tensor(std::vector<float>{
      1, ninf, 2, 3, 0.5f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
      ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf,
      1, kInf, 2, 3, 0.5f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
      1, kNaN, 2, 3, 0.5f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
      500, 505, 510, 1e30f, -1e30f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}).view({5, 17});
  close_to_reference([&] { return loom::softmax(x, 1); }, 1e-6, 1e-7, "softmax specials");
  close_to_reference([&] { return loom::log_softmax(x, 1); }, 1e-6, 1e-6, "log_softmax specials");
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    EXPECT_EQ(loom::softmax(x, 1).data_ptr<float>()[1], 0.0f);
    EXPECT_EQ(loom::log_softmax(x, 1).data_ptr<float>()[1], ninf);
  }
}

// ---- fused row ops: forward and backward, fast vs reference ----

// Gradients of sum(f(x) * weights) w.r.t. `inputs` (first order: the fused
// backward kernels), stacked as one flat tensor for comparison.
Tensor grads_of(const std::function<Tensor()>& f, const std::vector<Tensor>& inputs, uint32_t seed) {
  Tensor y = f();
  Tensor w = values(y.sizes(), seed).to(y.dtype());
  std::vector<Tensor> g = loom::autograd::grad({(y * w).sum()}, inputs);
  std::vector<Tensor> flat_g;
  for (const Tensor& t : g) flat_g.push_back(t.reshape({-1}));
  return loom::cat(flat_g, 0);
}

TEST(FastFused, SoftmaxBackwardMatchesReference) {
  uint32_t seed = 900;
  for (int64_t m : {1, 3, 33}) {
    for (int64_t n : kSizes) {
      const Tensor x = values({m, n}, seed++).requires_grad_(true);
      const std::string what = loom::shape_str(x.sizes());
      close_to_reference([&] { return grads_of([&] { return loom::softmax(x, 1); }, {x}, seed); }, 1e-5, 1e-7,
                         "softmax backward " + what);
      // g - exp(y) sum(g) cancels: the error scales with the terms (|g| ~ 10 here), not with the result.
      close_to_reference([&] { return grads_of([&] { return loom::log_softmax(x, 1); }, {x}, seed); }, 1e-5, 1e-5,
                         "log_softmax backward " + what);
      close_to_reference([&] { return grads_of([&] { return loom::softmax(x, 0); }, {x}, seed); }, 1e-5, 1e-7,
                         "softmax backward dim 0 " + what);
    }
  }
}

TEST(FastFused, LayerNormMatchesReference) {
  uint32_t seed = 1000;
  for (int64_t m : {1, 3, 7, 33}) {
    for (int64_t n : kSizes) {
      if (n == 1) continue;  // a single element normalizes to 0 with a gradient of 0: covered below
      const Tensor x = values({m, n}, seed++).requires_grad_(true);
      const Tensor w = values({n}, seed++).requires_grad_(true), b = values({n}, seed++).requires_grad_(true);
      const std::string what = loom::shape_str(x.sizes());
      close_to_reference([&] { return loom::layer_norm(x, {n}, w, b); }, 1e-5, 1e-5, "layer_norm " + what);
      close_to_reference([&] { return loom::layer_norm(x, {n}); }, 1e-5, 1e-5, "layer_norm plain " + what);
      close_to_reference([&] { return grads_of([&] { return loom::layer_norm(x, {n}, w, b); }, {x, w, b}, seed); },
                         1e-4, 1e-4, "layer_norm backward " + what);
      close_to_reference([&] { return grads_of([&] { return loom::layer_norm(x, {n}, {}, b); }, {x, b}, seed); },
                         1e-4, 1e-4, "layer_norm backward bias only " + what);
      if (m > 1)  // not contiguous: the reference loop
        close_to_reference(
            [&] { return grads_of([&] { return loom::layer_norm(x.t().contiguous().t(), {n}, w, b); }, {x, w, b}, seed); },
            1e-4, 1e-4, "layer_norm transposed " + what);
    }
  }
  const Tensor x3 = values({4, 3, 17}, 77).requires_grad_(true);
  const Tensor w3 = values({3, 17}, 78).requires_grad_(true);
  close_to_reference([&] { return grads_of([&] { return loom::layer_norm(x3, {3, 17}, w3, {}); }, {x3, w3}, 5); },
                     1e-4, 1e-4, "layer_norm over two dims");
  const Tensor one = values({5, 1}, 79).requires_grad_(true);
  close_to_reference([&] { return grads_of([&] { return loom::layer_norm(one, {1}); }, {one}, 6); }, 0, 1e-6,
                     "layer_norm of single elements");
}

TEST(FastFused, LayerNormWeightGradientIndependentOfThreads) {
  const Tensor x = values({513, 300}, 80).requires_grad_(true);
  const Tensor w = values({300}, 81).requires_grad_(true), b = values({300}, 82).requires_grad_(true);
  const int saved = loom::get_num_threads();
  loom::set_num_threads(1);
  const Tensor one = grads_of([&] { return loom::layer_norm(x, {300}, w, b); }, {x, w, b}, 7);
  loom::set_num_threads(2);
  const Tensor two = grads_of([&] { return loom::layer_norm(x, {300}, w, b); }, {x, w, b}, 7);
  loom::set_num_threads(saved);
  EXPECT_TRUE(loom::equal(one, two));
}

TEST(FastFused, CrossEntropyMatchesReference) {
  namespace F = loom::nn::functional;
  uint32_t seed = 1100;
  for (int64_t rows : {1, 3, 33}) {
    for (int64_t classes : kSizes) {
      const Tensor x = values({rows, classes}, seed++).requires_grad_(true);
      Tensor t = loom::randint(0, classes, {rows});
      if (rows > 2) t.data_ptr<int64_t>()[1] = -100;  // ignored
      const std::string what = loom::shape_str(x.sizes());
      for (double s : {0.0, 0.1}) {
        for (const char* red : {"mean", "sum", "none"}) {
          F::CrossEntropyOptions o;
          o.reduction = red;
          o.label_smoothing = s;
          close_to_reference([&] { return F::cross_entropy(x, t, o); }, 1e-5, 1e-5,
                             std::string("cross_entropy ") + red + " " + what);
          close_to_reference([&] { return grads_of([&] { return F::cross_entropy(x, t, o); }, {x}, seed); }, 1e-5,
                             1e-6, std::string("cross_entropy backward ") + red + " " + what);
        }
      }
    }
  }
}

TEST(FastFused, CrossEntropySpecialLogits) {
  namespace F = loom::nn::functional;
  // -inf logits at non-target classes are fine; at the target the loss is inf.
  Tensor x = values({3, 17}, 1200);
  x.data_ptr<float>()[2] = -kInf;
  x.data_ptr<float>()[17 + 5] = -kInf;
  const Tensor t = loom::tensor(std::vector<int64_t>{0, 5, 3});
  F::CrossEntropyOptions o;
  o.reduction = "none";
  close_to_reference([&] { return F::cross_entropy(x, t, o); }, 1e-5, 1e-5, "cross_entropy with -inf");
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    const Tensor l = F::cross_entropy(x, t, o);
    EXPECT_EQ(l.data_ptr<float>()[1], kInf);
    EXPECT_TRUE(std::isfinite(l.data_ptr<float>()[0]));
  }
  EXPECT_THROW(F::cross_entropy(x, loom::tensor(std::vector<int64_t>{0, 17, 3})), loom::Error);
}

// ---- GELU's gradient ----

// gelu'(x) in double, the sum of its two terms' magnitudes (they cancel where
// gelu' crosses 0, x ~ -0.75, so that is the scale its error is bounded
// against) and exp's argument (x^2 / 2, or 2|u| in the tanh form), whose
// size float error grows with in the tail.
struct GeluGradExact {
  double value, terms, exp_arg;
};
GeluGradExact gelu_grad_exact(double x, bool tanh_form) {
  if (!tanh_form) {
    const double cdf = 0.5 * std::erfc(-x / std::sqrt(2.0)), xpdf = x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
    return {cdf + xpdf, std::abs(cdf) + std::abs(xpdf), 0.5 * x * x};
  }
  // s = sigmoid(2u) = (1 + tanh u) / 2; 0.5 x (1 - tanh(u)^2) u' = 2 x u' s (1 - s).
  const double k = std::sqrt(2 / M_PI), c = 0.044715;
  const double u = k * (x + c * x * x * x), du = k * (1 + 3 * c * x * x);
  const double s = 1 / (1 + std::exp(-2 * u)), s1 = 1 / (1 + std::exp(2 * u));  // s and 1 - s
  const double term = 2 * x * du * s * s1;
  return {s + term, s + std::abs(term), 2 * std::abs(u)};
}

// gelu_backward_f32 (g = 1) against the exact value over ulp_inputs(). The
// largest error seen, portable and AVX2 alike, is 2.8e-7 (erf form) and
// 1.7e-7 (tanh form) of terms * max(1, exp_arg). Results below FLT_MIN carry
// exp's rounding to a denormal times the factor beside it (|x| / sqrt(2 pi),
// or 2 |x| u', ~300 near x = -10.5): up to 1.9e-43 more.
TEST(FastGeluBackward, CloseToExact) {
  const std::vector<float> x = ulp_inputs();
  const std::vector<float> ones(x.size(), 1.0f);
  std::vector<float> y(x.size());
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::VecKernels& k = loom::cpu::vec_kernels(isa);
    for (bool tanh_form : {false, true}) {
      k.gelu_backward_f32(ones.data(), x.data(), y.data(), static_cast<int64_t>(x.size()), tanh_form);
      const std::string what = std::string(tanh_form ? "gelu_tanh'" : "gelu'") + " [" + k.isa + "] at x = ";
      for (size_t i = 0; i < x.size(); ++i) {
        if (std::isnan(x[i])) {
          ASSERT_TRUE(std::isnan(y[i])) << what << x[i] << ": got " << y[i];
          continue;
        }
        if (std::isinf(x[i])) {
          ASSERT_EQ(y[i], x[i] > 0 ? 1.0f : 0.0f) << what << x[i];
          continue;
        }
        const GeluGradExact want = gelu_grad_exact(x[i], tanh_form);
        ASSERT_LE(std::abs(y[i] - want.value), 4e-7 * want.terms * std::max(1.0, want.exp_arg) + 3e-43)
            << what << x[i] << ": got " << y[i] << ", want " << want.value;
      }
    }
  }
}

// y = g * gelu'(x) is the product of g and the g = 1 result, special values
// of either included (gelu'(+inf) = 1, gelu'(-inf) = 0).
TEST(FastGeluBackward, SpecialValues) {
  const float gs[] = {1, -2.5f, 0, -0.0f, kInf, -kInf, kNaN, 1e-40f, 3e38f};
  const float xs[] = {0, -0.0f, 1, -1, -0.75f, 5, -5, 30, -30, kInf, -kInf, kNaN, 1e-40f, -1e-41f, 3e38f, -3e38f};
  std::vector<float> g, x;
  for (float a : gs)
    for (float v : xs) {
      g.push_back(a);
      x.push_back(v);
    }
  const int64_t n = static_cast<int64_t>(g.size());
  const std::vector<float> ones(g.size(), 1.0f);
  std::vector<float> y(g.size()), d(g.size());
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::VecKernels& k = loom::cpu::vec_kernels(isa);
    for (bool tanh_form : {false, true}) {
      k.gelu_backward_f32(g.data(), x.data(), y.data(), n, tanh_form);
      k.gelu_backward_f32(ones.data(), x.data(), d.data(), n, tanh_form);
      for (int64_t i = 0; i < n; ++i) {
        const std::string what = std::string(k.isa) + (tanh_form ? " tanh" : " erf") + ": g = " +
                                 std::to_string(g[i]) + ", x = " + std::to_string(x[i]);
        if (x[i] == kInf) {
          EXPECT_EQ(d[i], 1.0f) << what;
        } else if (x[i] == -kInf) {
          EXPECT_EQ(d[i], 0.0f) << what;
        } else if (x[i] == 0) {
          EXPECT_EQ(d[i], 0.5f) << what;
        } else if (std::isnan(x[i])) {
          EXPECT_TRUE(std::isnan(d[i])) << what;
        }
        const float want = g[i] * d[i];
        if (std::isnan(want)) EXPECT_TRUE(std::isnan(y[i])) << what << ": got " << y[i];
        else EXPECT_EQ(y[i], want) << what;
      }
    }
  }
}

// Through the public API: the fast path against the reference kernel, on
// contiguous and transposed inputs with special values, in float32, bfloat16
// and float16 (16-bit results within one unit in their last place). The
// reference's float math is the less accurate one here: its 1 + erf and
// 1 - tanh^2 cancel in the negative tail, for an absolute error up to ~2^-24
// |g| (erf form) and ~2^-23 |x| k (1 + 3 c x^2) / 2 |g| (tanh form, ~1e-6 |g|
// near x = -5), with |g| up to ~13 here.
TEST(FastGeluBackward, MatchesReference) {
  uint32_t seed = 1300;
  for (const char* approximate : {"none", "tanh"}) {
    const double atol = approximate[0] == 't' ? 2e-5 : 2e-6;
    for (const Shape& s : shapes()) {
      const std::string what = std::string("gelu(") + approximate + ") backward " + loom::shape_str(s);
      const Tensor x = values(s, seed++, true).requires_grad_(true);
      close_to_reference([&] { return grads_of([&] { return loom::gelu(x, approximate); }, {x}, seed); }, 1e-5, atol,
                         what);
      if (s.size() == 2)
        close_to_reference([&] { return grads_of([&] { return loom::gelu(x.t(), approximate); }, {x}, seed); }, 1e-5,
                           atol, what + " transposed");
      for (loom::DType dt : {loom::kBFloat16, loom::kFloat16}) {
        const Tensor h = values(s, seed++, true, dt).requires_grad_(true);
        const double ulp = dt == loom::kBFloat16 ? 1.0 / 128 : 1.0 / 1024;
        close_to_reference([&] { return grads_of([&] { return loom::gelu(h, approximate); }, {h}, seed); }, ulp, atol,
                           what + " " + loom::dtype_name(dt));
      }
    }
  }
}

// An element's bits do not depend on the operands' layout (a broadcast
// gradient, transposed storage): the Fused kernel, which computes the op on
// its registers whatever the layout, gives the same bits.
TEST(FastGeluBackward, SameBitsOnEveryLayout) {
  loom::NoGradGuard no_grad;
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    for (loom::DType dt : {loom::kFloat32, loom::kBFloat16, loom::kFloat16}) {
      const Tensor x = values({33, 257}, 1400, true, dt), row = values({257}, 1401, true, dt);
      const Tensor scalar = values({}, 1402, false, dt), g = values({33, 257}, 1403, true, dt);
      for (bool tanh_form : {false, true}) {
        const std::string what = std::string(loom::cpu::gemm_isa_name(isa)) + " " + loom::dtype_name(dt) +
                                 (tanh_form ? " tanh" : " erf");
        auto run = [tanh_form](const Tensor& a, const Tensor& v) { return loom::ops::gelu_backward(a, v, tanh_form); };
        EXPECT_TRUE(loom::test::same_bits(run(row, x), run(row.expand({33, 257}).contiguous(), x)))
            << what << " row gradient";
        EXPECT_TRUE(loom::test::same_bits(run(scalar, x), run(scalar.expand({33, 257}).contiguous(), x)))
            << what << " scalar gradient";
        EXPECT_TRUE(loom::test::same_bits(run(g.t().contiguous().t(), x.t().contiguous().t()), run(g, x)))
            << what << " transposed storage";
        EXPECT_TRUE(loom::test::same_bits(run(g.t(), x.t()), run(g, x).t())) << what << " transposed views";
      }
    }
  }
}

}  // namespace
