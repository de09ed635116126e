// bfloat16 and float16 elementwise ops on their vector path (Note [Vectorized
// CPU kernels] in src/backend/cpu/cpu_vec.h): the 16-bit <-> float32
// conversions of every VecKernels table against the scalar Half / BFloat16
// types bit for bit, and the unary and binary kernels' strips (widen, run the
// float32 function, round) against the reference kernels, on every ISA path
// this CPU can run.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "ops/fast_paths.h"
#include "test_util.h"

namespace {

using loom::Tensor;
using loom::cpu::VecKernels;
using loom_test::GemmIsa;
using loom_test::IsaGuard;
using loom_test::ReferenceGuard;
using loom_test::runnable_isas;
using Shape = std::vector<int64_t>;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

float half_to_float(uint16_t h) {
  loom::Half v;
  v.bits = h;
  return static_cast<float>(v);
}
float bf16_to_float(uint16_t h) {
  loom::BFloat16 v;
  v.bits = h;
  return static_cast<float>(v);
}

// ---- conversions ----

// Each runnable table converts every 16-bit pattern to float32 exactly as the
// scalar type does, NaN payloads included; also from odd offsets and lengths
// (the partial-register tails).
TEST(LowpConvert, EveryHalfAndBFloat16PatternToFloat) {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  for (GemmIsa isa : runnable_isas()) {
    const VecKernels& k = loom::cpu::vec_kernels(isa);
    for (int64_t offset : {0, 1, 5}) {
      const int64_t n = 65536 - 2 * offset;
      std::vector<float> f(static_cast<size_t>(n));
      k.f16_to_f32(h.data() + offset, f.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(bits_of(f[i]), bits_of(half_to_float(h[i + offset])))
            << "f16 0x" << std::hex << h[i + offset] << " [" << k.isa << "]";
      k.bf16_to_f32(h.data() + offset, f.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(bits_of(f[i]), bits_of(bf16_to_float(h[i + offset])))
            << "bf16 0x" << std::hex << h[i + offset] << " [" << k.isa << "]";
    }
  }
}

// Floats that exercise float32 -> 16-bit rounding: a stride through every
// bit pattern (all exponents, denormals, NaN payloads, both signs); each
// 16-bit value, the midpoints (ties) between neighbours and the floats just
// either side of them; and hand-picked edges.
std::vector<float> rounding_inputs() {
  std::vector<float> x;
  for (uint64_t u = 0; u <= 0xffffffffu; u += 4093) x.push_back(float_of(static_cast<uint32_t>(u)));
  for (uint32_t i = 0; i < 65536; ++i) {
    for (float (*to_float)(uint16_t) : {half_to_float, bf16_to_float}) {
      const float a = to_float(static_cast<uint16_t>(i)), b = to_float(static_cast<uint16_t>(i + 1));
      x.push_back(a);
      if (!std::isfinite(a) || !std::isfinite(b) || std::signbit(a) != std::signbit(b)) continue;
      const float mid = a + (b - a) / 2;  // exact: 16-bit values have at most 11 significant bits
      x.push_back(mid);
      x.push_back(std::nextafter(mid, kInf));
      x.push_back(std::nextafter(mid, -kInf));
    }
  }
  const float edges[] = {0.0f, -0.0f, kInf, -kInf, kNaN, -kNaN,
                         65504.0f, 65519.996f, 65520.0f, -65520.0f, 65536.0f, 3.4e38f,
                         0x1p-14f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1.8p-25f, 0x1p-26f,
                         0x1p-149f, -0x1p-149f, 0x1p-126f, 3.3961e38f, 3.4028235e38f,
                         float_of(0x7f800001u), float_of(0xff800001u), float_of(0x7fbfffffu),
                         float_of(0x7fc00001u), float_of(0x7f802000u), float_of(0xffffffffu)};
  x.insert(x.end(), std::begin(edges), std::end(edges));
  return x;
}

TEST(LowpConvert, FloatToHalfAndBFloat16RoundAsTheScalarTypes) {
  const std::vector<float> x = rounding_inputs();
  for (GemmIsa isa : runnable_isas()) {
    const VecKernels& k = loom::cpu::vec_kernels(isa);
    for (int64_t offset : {0, 3}) {
      const int64_t n = static_cast<int64_t>(x.size()) - offset;
      std::vector<uint16_t> h(static_cast<size_t>(n));
      k.f32_to_f16(x.data() + offset, h.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(h[i], loom::Half(x[i + offset]).bits)
            << "f16 of 0x" << std::hex << bits_of(x[i + offset]) << " [" << k.isa << "]";
      k.f32_to_bf16(x.data() + offset, h.data(), n);
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(h[i], loom::BFloat16(x[i + offset]).bits)
            << "bf16 of 0x" << std::hex << bits_of(x[i + offset]) << " [" << k.isa << "]";
    }
  }
}

// ---- elementwise ops through the public API ----

const loom::DType kLowp[] = {loom::kBFloat16, loom::kFloat16};

// Random values (normal, scale 3) rounded to dt, with NaN, +-inf, +-0,
// tiny and huge values sprinkled in when `specials` is set.
Tensor values(const Shape& shape, uint32_t seed, loom::DType dt, bool specials = true) {
  Tensor t = loom::empty(shape, loom::TensorOptions().dtype(loom::kFloat32));
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const float special[] = {kNaN, kInf, -kInf, 0.0f, -0.0f, 1e-7f, -3e-8f, 1e-40f, 90.0f, -110.0f, 60000.0f, 1e30f};
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    p[i] = normal(gen);
    if (specials && gen() % 5 == 0) p[i] = special[gen() % std::size(special)];
  }
  return t.to(dt);
}

// The 16-bit patterns of a bfloat16 / float16 tensor, row-major.
std::vector<uint16_t> patterns(const Tensor& t) {
  const Tensor c = t.contiguous();
  std::vector<uint16_t> v(static_cast<size_t>(c.numel()));
  std::memcpy(v.data(), c.raw_data_ptr(), v.size() * 2);
  return v;
}

// Position of a 16-bit float in the order of values (-0 next to +0), so
// neighbouring values (the largest finite and inf too) differ by 1.
int64_t ordinal(uint16_t h) { return h & 0x8000u ? -static_cast<int64_t>(h & 0x7fffu) : static_cast<int64_t>(h); }

// got == want bit for bit, except that any NaN matches any NaN (the payload
// of a NaN result may differ: Note [Vectorized CPU kernels]). With rtol or
// atol nonzero, also accepts values at most one 16-bit step apart or within
// atol + rtol |want| plus one 16-bit step: the float32 function's contract
// with the reference's float math, after both are rounded once.
void expect_match(const Tensor& got, const Tensor& want, double rtol, double atol, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const std::vector<uint16_t> g = patterns(got), w = patterns(want);
  const bool bf16 = got.dtype() == loom::kBFloat16;
  auto value = [bf16](uint16_t h) { return static_cast<double>(bf16 ? bf16_to_float(h) : half_to_float(h)); };
  for (size_t i = 0; i < g.size(); ++i) {
    const double gv = value(g[i]), wv = value(w[i]);
    if (std::isnan(wv)) {
      ASSERT_TRUE(std::isnan(gv)) << what << " at " << i << ": got " << gv << ", want NaN";
      continue;
    }
    if (g[i] == w[i]) continue;
    ASSERT_FALSE(rtol == 0 && atol == 0)
        << what << " at " << i << ": got " << gv << " (0x" << std::hex << g[i] << "), want " << wv << " (0x" << w[i]
        << ")";
    ASSERT_FALSE(std::isnan(gv)) << what << " at " << i << ": got NaN, want " << wv;
    if (std::abs(ordinal(g[i]) - ordinal(w[i])) <= 1) continue;
    // One 16-bit step at the larger magnitude.
    const uint16_t big = std::abs(gv) > std::abs(wv) ? g[i] : w[i];
    const double step = std::abs(value(static_cast<uint16_t>((big & 0x7fffu) + 1)) - value(big & 0x7fffu));
    ASSERT_LE(std::abs(gv - wv), atol + rtol * std::abs(wv) + step)
        << what << " at " << i << ": got " << gv << ", want " << wv;
  }
}

// Runs f with the fast paths off (the reference kernels) and then on each
// ISA path, and compares.
void against_reference(const std::function<Tensor()>& f, double rtol, double atol, const std::string& what) {
  Tensor want;
  {
    ReferenceGuard ref;
    want = f();
  }
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    expect_match(f(), want, rtol, atol, what + " [" + loom::cpu::gemm_isa_name(isa) + "]");
  }
}

// 1-D odd sizes around the strip length (256) and vector widths, 2-D shapes
// for broadcasting, and one big enough to split across threads.
std::vector<Shape> shapes() {
  std::vector<Shape> s;
  for (int64_t n : {1, 7, 16, 255, 256, 257, 1003}) s.push_back({n});
  for (int64_t m : {1, 3, 17})
    for (int64_t n : {1, 7, 17, 257, 300}) s.push_back({m, n});
  s.push_back({300, 1000});
  return s;
}

using loom::test::NamedBinary;
using loom::test::kBinary;

// Binary ops' float32 functions are the reference's float math exactly, so
// the 16-bit results match bit for bit (NaN payloads aside).
TEST(LowpBinary, StripsMatchReference) {
  uint32_t seed = 1;
  for (loom::DType dt : kLowp) {
    for (const NamedBinary& op : kBinary) {
      for (const Shape& s : shapes()) {
        const Tensor a = values(s, seed++, dt), b = values(s, seed++, dt);
        const std::string what = std::string(op.name) + " " + loom::shape_str(s) + " " + loom::dtype_name(dt);
        against_reference([&] { return op.fn(a, b); }, 0, 0, what + " same shape");
        const Tensor scalar = values({}, seed++, dt, false);
        against_reference([&] { return op.fn(a, scalar); }, 0, 0, what + " tensor-scalar");
        against_reference([&] { return op.fn(scalar, a); }, 0, 0, what + " scalar-tensor");
        if (s.size() == 2) {
          const Tensor row = values({s[1]}, seed++, dt), col = values({s[0], 1}, seed++, dt);
          against_reference([&] { return op.fn(a, row); }, 0, 0, what + " row broadcast");
          against_reference([&] { return op.fn(row, a); }, 0, 0, what + " row broadcast (first)");
          against_reference([&] { return op.fn(a, col); }, 0, 0, what + " column broadcast");
          against_reference([&] { return op.fn(col, a); }, 0, 0, what + " column broadcast (first)");
          against_reference([&] { return op.fn(a.t(), b.t()); }, 0, 0, what + " transposed");
          against_reference([&] { return op.fn(a.t().contiguous(), b.t()); }, 0, 0, what + " mixed layout");
        }
      }
    }
  }
}

TEST(LowpBinary, SlicedExpandedAndInPlace) {
  for (loom::DType dt : kLowp) {
    const Tensor a = values({40, 66}, 7, dt), b = values({40, 66}, 8, dt);
    const std::string d = loom::dtype_name(dt);
    for (const NamedBinary& op : kBinary) {
      const std::string name = std::string(op.name) + " " + d;
      against_reference([&] { return op.fn(a.narrow(1, 1, 64), b.narrow(1, 2, 64)); }, 0, 0, name + " narrow");
      against_reference([&] { return op.fn(a.slice(1, 0, 66, 2), b.slice(1, 1, 66, 2)); }, 0, 0, name + " step 2");
      against_reference([&] { return op.fn(a.select(1, 3).unsqueeze(1).expand({40, 66}), b); }, 0, 0,
                        name + " expanded");
    }
    // The output aliases an input.
    against_reference(
        [&] {
          Tensor t = a.clone();
          t.add_(b);
          return t;
        },
        0, 0, "add_ " + d);
    against_reference(
        [&] {
          Tensor t = a.clone();
          t.mul_(b.select(0, 2));
          return t;
        },
        0, 0, "mul_ row " + d);
  }
}

TEST(LowpUnary, StripsMatchReference) {
  uint32_t seed = 100;
  for (loom::DType dt : kLowp) {
    for (const loom_test::NamedUnary& op : loom_test::kUnary) {
      for (const Shape& s : shapes()) {
        const Tensor x = values(s, seed++, dt);
        const std::string what = std::string(op.name) + " " + loom::shape_str(s) + " " + loom::dtype_name(dt);
        against_reference([&] { return op.fn(x); }, op.rtol, op.atol, what);
        if (s.size() == 2) {
          against_reference([&] { return op.fn(x.t()); }, op.rtol, op.atol, what + " transposed");
          against_reference([&] { return op.fn(x.slice(1, 0, s[1], 2)); }, op.rtol, op.atol, what + " step 2");
        }
      }
    }
  }
}

// Copy's float32 <-> float16 path rounds as the reference (Half).
TEST(LowpCopy, Float16RoundsAsTheReference) {
  uint32_t seed = 400;
  for (const Shape& s : shapes()) {
    const Tensor x = values(s, seed++, loom::kFloat32);
    const Tensor h = x.to(loom::kFloat16);
    against_reference([&] { return x.to(loom::kFloat16); }, 0, 0, "f32->f16 " + loom::shape_str(s));
    against_reference([&] { return h.to(loom::kFloat32).to(loom::kFloat16); }, 0, 0,
                      "f16->f32 " + loom::shape_str(s));
    if (s.size() == 2)
      against_reference([&] { return x.t().to(loom::kFloat16); }, 0, 0, "f32->f16 transposed " + loom::shape_str(s));
  }
  // Ties round to even, 65520 and up to inf, subnormals kept, NaN stays NaN.
  const Tensor edges = loom::tensor(std::vector<float>{1.00048828125f, 1.00146484375f, 65519.0f, 65520.0f, -65520.0f,
                                                       kNaN, -0.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-24f, 1e-40f, 1, 2, 3,
                                                       4, 5, 6, 7, 8});
  against_reference([&] { return edges.to(loom::kFloat16); }, 0, 0, "f16 edges");
  for (GemmIsa isa : runnable_isas()) {
    IsaGuard guard(isa);
    const std::vector<uint16_t> h = patterns(edges.to(loom::kFloat16));
    EXPECT_EQ(h[0], 0x3c00u);  // 1 + 2^-11: a tie, rounds to even 1
    EXPECT_EQ(h[1], 0x3c02u);  // 1 + 3 * 2^-11: a tie, rounds up to even
    EXPECT_EQ(h[2], 0x7bffu);
    EXPECT_EQ(h[3], 0x7c00u);
    EXPECT_EQ(h[4], 0xfc00u);
    EXPECT_EQ(h[7], 0x0001u);
    EXPECT_EQ(h[8], 0x0000u);  // 2^-25: a tie between 0 and 2^-24
    EXPECT_EQ(h[9], 0x0002u);  // 1.5 * 2^-24: a tie, rounds to even 2 * 2^-24
  }
}

}  // namespace
