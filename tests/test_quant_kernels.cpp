// The CPU kernels of quantized inference (src/backend/cpu/cpu_quant.cpp,
// Note [Quantized Linear]) through the public API: quantize_weight,
// dequantize_weight and quantized_linear.
//
// Oracles, all written here from the Note's definitions:
//  - the formats: codes and scales as the Note defines them (a float32
//    emulation, compared bit for bit), a hand-built int4 packing, and the
//    round-trip bound of each format;
//  - the product: (a) the Note's float32 formula emulated here, bit for bit;
//    (b) the same definitions in float64, within the rounding of the float32
//    steps; (c) the true float64 x @ W^T, within the bound the two roundings
//    (of x and of W) allow;
//  - every output element has one value: the AVX2 and portable paths, 1 and
//    2 threads, and a batch against its rows one at a time give the same bits.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

// Internal headers (plain declarations): the ISA choice and its reload.
#include "backend/cpu/cpu_features.h"
#include "backend/cpu/testing.h"
#include "ops/fast_paths.h"

namespace {

using loom::QuantScheme;
using loom::Tensor;
using loom::cpu::GemmIsa;
using loom_test::IsaEnvGuard;
using loom_test::runnable_isas;

constexpr int64_t kGroup = 32;
constexpr double kU = 1.0 / (1 << 24);  // float32 unit roundoff

int64_t groups_of(int64_t k) { return (k + kGroup - 1) / kGroup; }

std::vector<float> values(const Tensor& t) { return t.contiguous().to_vector<float>(); }

uint32_t bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

void expect_same_bits(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.sizes(), b.sizes()) << what;
  ASSERT_EQ(a.dtype(), b.dtype()) << what;
  const Tensor ca = a.contiguous(), cb = b.contiguous();
  const size_t bytes = static_cast<size_t>(ca.numel()) * loom::element_size(ca.dtype());
  if (std::memcmp(ca.raw_data_ptr(), cb.raw_data_ptr(), bytes) == 0) return;
  if (a.dtype() == loom::kFloat32) {
    const std::vector<float> va = values(ca), vb = values(cb);
    for (size_t i = 0; i < va.size(); ++i)
      ASSERT_EQ(bits(va[i]), bits(vb[i])) << what << ": element " << i << ": " << va[i] << " vs " << vb[i];
  }
  FAIL() << what << ": bytes differ";
}

// A weight whose rows span magnitudes (1e-3 .. 1e2), so the per-row and
// per-group scales differ, with outliers in some rows.
Tensor make_weight(int64_t n, int64_t k, uint64_t seed) {
  loom::manual_seed(seed);
  Tensor w = loom::randn({n, k});
  std::vector<float> v = values(w);
  for (int64_t r = 0; r < n; ++r) {
    const float scale = std::pow(10.0f, static_cast<float>(r % 6) - 3.0f);
    for (int64_t i = 0; i < k; ++i) v[r * k + i] *= scale;
    if (r % 4 == 1) v[r * k + (r * 7) % k] *= 20.0f;  // an outlier
  }
  return loom::tensor(v).reshape({n, k});
}

// ---- the Note's definitions, in float32 ----

// r(v) clamped; NaN never occurs in these tests.
int round_clamp(float v, int lo, int hi) {
  const float r = std::nearbyint(v);
  return r < static_cast<float>(lo) ? lo : (r > static_cast<float>(hi) ? hi : static_cast<int>(r));
}

// One int8 block: amax, d = amax / 127, q = clamp(r(x * id), -127, 127).
float round_block_int8(const float* x, int64_t n, int8_t* q) {
  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float d = amax / 127.0f;
  const float id = amax > 0.0f ? 127.0f / amax : 0.0f;
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(round_clamp(x[i] * id, -127, 127));
  return d;
}

struct Int8Weights {
  std::vector<int8_t> q;  // (n, k)
  std::vector<float> d;   // (n)
};
Int8Weights define_int8(const std::vector<float>& w, int64_t n, int64_t k) {
  Int8Weights out{std::vector<int8_t>(static_cast<size_t>(n * k)), std::vector<float>(static_cast<size_t>(n))};
  for (int64_t r = 0; r < n; ++r) out.d[r] = round_block_int8(&w[r * k], k, &out.q[r * k]);
  return out;
}

struct Int4Weights {
  std::vector<int> q;     // (n, G * 32), 0..15, unpacked
  std::vector<float> d;   // (n, G)
};
Int4Weights define_int4(const std::vector<float>& w, int64_t n, int64_t k) {
  const int64_t groups = groups_of(k);
  Int4Weights out{std::vector<int>(static_cast<size_t>(n * groups * kGroup)),
                  std::vector<float>(static_cast<size_t>(n * groups))};
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      float v[kGroup];
      for (int64_t t = 0; t < kGroup; ++t) v[t] = g * kGroup + t < k ? w[r * k + g * kGroup + t] : 0.0f;
      float m = 0.0f;
      for (float x : v)
        if (std::fabs(x) > std::fabs(m)) m = x;  // the first of the largest
      const float d = m / -8.0f;
      const float id = d != 0.0f ? 1.0f / d : 0.0f;
      for (int64_t t = 0; t < kGroup; ++t) out.q[(r * groups + g) * kGroup + t] = round_clamp(v[t] * id, -8, 7) + 8;
      out.d[r * groups + g] = d;
    }
  }
  return out;
}

// The Note's packing: byte g * 16 + j = q[32g + j] | q[32g + j + 16] << 4.
std::vector<uint8_t> pack_int4(const Int4Weights& w, int64_t n, int64_t groups) {
  std::vector<uint8_t> out(static_cast<size_t>(n * groups * 16));
  for (int64_t r = 0; r < n; ++r)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t j = 0; j < 16; ++j) {
        const int* q = &w.q[(r * groups + g) * kGroup];
        out[(r * groups + g) * 16 + j] = static_cast<uint8_t>(q[j] | q[j + 16] << 4);
      }
  return out;
}

// x (m, k) rounded as QuantizedLinear rounds it: int8, one block a row
// (block = k, no padding) or blocks of 32 zero-padded to G * 32.
struct RoundedX {
  std::vector<int8_t> q;  // (m, row)
  std::vector<float> d;   // (m, blocks)
  int64_t row, blocks;
};
RoundedX round_x(const std::vector<float>& x, int64_t m, int64_t k, QuantScheme scheme) {
  RoundedX out;
  out.row = scheme == QuantScheme::Int8 ? k : groups_of(k) * kGroup;
  out.blocks = scheme == QuantScheme::Int8 ? 1 : groups_of(k);
  out.q.assign(static_cast<size_t>(m * out.row), 0);
  out.d.assign(static_cast<size_t>(m * out.blocks), 0.0f);
  const int64_t block = scheme == QuantScheme::Int8 ? k : kGroup;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t b = 0; b < out.blocks; ++b) {
      const int64_t start = b * block, len = std::min(block, k - start);
      out.d[r * out.blocks + b] = round_block_int8(&x[r * k + start], len, &out.q[r * out.row + start]);
    }
  return out;
}

// The product the Note defines, in float32 (exact: compared bit for bit)
// and in float64 with a bound on the float32 version's rounding.
struct Expected {
  std::vector<float> f32;
  std::vector<double> f64, bound;
};
Expected expected_product(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& bias,
                          int64_t m, int64_t n, int64_t k, QuantScheme scheme) {
  Expected e;
  e.f32.resize(static_cast<size_t>(m * n));
  e.f64.resize(e.f32.size());
  e.bound.resize(e.f32.size());
  const RoundedX rx = round_x(x, m, k, scheme);
  if (scheme == QuantScheme::Int8) {
    const Int8Weights qw = define_int8(w, n, k);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t j = 0; j < n; ++j) {
        int64_t isum = 0;
        for (int64_t i = 0; i < k; ++i) isum += rx.q[r * rx.row + i] * qw.q[j * k + i];
        float v = static_cast<float>(isum) * (rx.d[r] * qw.d[j]);
        double v64 = static_cast<double>(isum) * rx.d[r] * qw.d[j];
        double mag = std::fabs(v64);
        if (!bias.empty()) {
          v = v + bias[j];
          v64 += bias[j];
          mag += std::fabs(bias[j]);
        }
        e.f32[r * n + j] = v;
        e.f64[r * n + j] = v64;
        e.bound[r * n + j] = 4 * kU * mag;  // float(isum), dx * d, the product, the bias add
      }
    return e;
  }
  const int64_t groups = groups_of(k);
  const Int4Weights qw = define_int4(w, n, k);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = 0; j < n; ++j) {
      float acc[8] = {};
      double v64 = 0, mag = 0;
      for (int64_t g = 0; g < groups; ++g) {
        const float scale = rx.d[r * groups + g] * qw.d[j * groups + g];
        for (int l = 0; l < 8; ++l) {
          int32_t s = 0;
          for (int t = 0; t < 4; ++t) {
            const int64_t i = g * kGroup + 4 * l + t;
            s += rx.q[r * rx.row + i] * (qw.q[j * groups * kGroup + i] - 8);
          }
          acc[l] = std::fma(static_cast<float>(s), scale, acc[l]);
          const double term = static_cast<double>(s) * rx.d[r * groups + g] * qw.d[j * groups + g];
          v64 += term;
          mag += std::fabs(term);
        }
      }
      float v = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
      if (!bias.empty()) {
        v = v + bias[j];
        v64 += bias[j];
        mag += std::fabs(bias[j]);
      }
      e.f32[r * n + j] = v;
      e.f64[r * n + j] = v64;
      // Each term's scale rounds once; a lane's chain of G fmas and the
      // final tree of 3 additions and the bias add each round the sum.
      e.bound[r * n + j] = (static_cast<double>(groups) + 6) * kU * mag;
    }
  return e;
}

// ---- ISA and threads ----



struct ThreadCountGuard {
  int saved = loom::get_num_threads();
  ~ThreadCountGuard() { loom::set_num_threads(saved); }
};

const char* name(QuantScheme s) { return loom::quant_scheme_name(s); }

std::string trace(QuantScheme s, int64_t m, int64_t n, int64_t k) {
  return std::string(name(s)) + " x (" + std::to_string(m) + ", " + std::to_string(k) + ") @ W (" +
         std::to_string(n) + ", " + std::to_string(k) + ")^T";
}

// ---- the formats ----

const int64_t kOddK[] = {1, 5, 31, 32, 33, 100, 784};
const int64_t kOddN[] = {1, 3, 17};

// Codes and scales are the Note's, bit for bit, on every ISA; dequantize
// gives back q * d, within half a step of each weight.
TEST(QuantKernels, Int8WeightsFollowTheDefinition) {
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (int64_t n : kOddN)
      for (int64_t k : kOddK) {
        SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " N " + std::to_string(n) + " K " +
                     std::to_string(k));
        const Tensor w = make_weight(n, k, static_cast<uint64_t>(n * 1000 + k));
        const auto [codes, scales] = loom::quantize_weight(w, QuantScheme::Int8);
        ASSERT_EQ(codes.dtype(), loom::kInt8);
        ASSERT_EQ(codes.sizes(), std::vector<int64_t>({n, k}));
        ASSERT_EQ(scales.sizes(), std::vector<int64_t>({n}));
        const std::vector<float> wv = values(w);
        const Int8Weights want = define_int8(wv, n, k);
        const std::vector<int8_t> got_q = codes.contiguous().to_vector<int8_t>();
        const std::vector<float> got_d = values(scales);
        for (int64_t i = 0; i < n * k; ++i) ASSERT_EQ(got_q[i], want.q[i]) << "code " << i;
        for (int64_t r = 0; r < n; ++r) ASSERT_EQ(bits(got_d[r]), bits(want.d[r])) << "scale " << r;

        const std::vector<float> deq = values(loom::dequantize_weight(codes, scales, QuantScheme::Int8, k));
        for (int64_t r = 0; r < n; ++r) {
          float amax = 0;
          for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(wv[r * k + i]));
          const double d = got_d[r];
          for (int64_t i = 0; i < k; ++i) {
            const int64_t at = r * k + i;
            ASSERT_EQ(bits(deq[at]), bits(static_cast<float>(got_q[at]) * got_d[r]));
            ASSERT_LE(std::fabs(static_cast<double>(wv[at]) - deq[at]), d / 2 * (1 + 1e-5)) << "element " << at;
            if (std::fabs(wv[at]) == amax) {
              EXPECT_NEAR(std::fabs(deq[at]), amax, 2 * kU * amax);
            }
          }
        }
      }
  }
}

TEST(QuantKernels, Int4WeightsFollowTheDefinition) {
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (int64_t n : kOddN)
      for (int64_t k : kOddK) {
        SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " N " + std::to_string(n) + " K " +
                     std::to_string(k));
        const int64_t groups = groups_of(k);
        const Tensor w = make_weight(n, k, static_cast<uint64_t>(n * 1000 + k + 7));
        const auto [codes, scales] = loom::quantize_weight(w, QuantScheme::Int4);
        ASSERT_EQ(codes.dtype(), loom::kUInt8);
        ASSERT_EQ(codes.sizes(), std::vector<int64_t>({n, groups * 16}));
        ASSERT_EQ(scales.sizes(), std::vector<int64_t>({n, groups}));
        const std::vector<float> wv = values(w);
        const Int4Weights want = define_int4(wv, n, k);
        const std::vector<uint8_t> want_bytes = pack_int4(want, n, groups);
        const std::vector<uint8_t> got_q = codes.contiguous().to_vector<uint8_t>();
        const std::vector<float> got_d = values(scales);
        for (size_t i = 0; i < want_bytes.size(); ++i) ASSERT_EQ(got_q[i], want_bytes[i]) << "byte " << i;
        for (int64_t i = 0; i < n * groups; ++i) ASSERT_EQ(bits(got_d[i]), bits(want.d[i])) << "scale " << i;

        // Within half a step, but for values past 7.5 steps on the side
        // opposite the group's largest (clamped to 7: within a step); the
        // largest itself exact (-8 * (m / -8) == m).
        const std::vector<float> deq = values(loom::dequantize_weight(codes, scales, QuantScheme::Int4, k));
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            int64_t largest = g * kGroup;
            for (int64_t i = g * kGroup; i < std::min(k, (g + 1) * kGroup); ++i)
              if (std::fabs(wv[r * k + i]) > std::fabs(wv[r * k + largest])) largest = i;
            EXPECT_EQ(deq[r * k + largest], wv[r * k + largest]) << "the largest of group " << g << " of row " << r;
          }
          for (int64_t i = 0; i < k; ++i) {
            const int64_t g = i / kGroup, at = r * k + i;
            const float d = got_d[r * groups + g];
            const int q = want.q[(r * groups + g) * kGroup + i % kGroup];
            ASSERT_EQ(bits(deq[at]), bits(static_cast<float>(q - 8) * d));
            const double err = std::fabs(static_cast<double>(wv[at]) - deq[at]);
            const bool clamped = d != 0 && wv[at] / d > 7.5f;
            ASSERT_LE(err, std::fabs(d) * (clamped ? 1.0 : 0.5) * (1 + 1e-5)) << "element " << at;
          }
        }
      }
  }
}

// Hand-built: a group whose largest (8, first of two) gives d = -1 and
// codes j | (15 - j) << 4, then a padded group of ties (r rounds them to
// even).
TEST(QuantKernels, Int4PackingLayout) {
  std::vector<float> w(40, 0.0f);
  for (int j = 0; j < 16; ++j) {
    w[j] = static_cast<float>(8 - j);       // * id (-1) = j - 8: code j
    w[16 + j] = static_cast<float>(j - 7);  // code 15 - j; w[31] = 8 ties w[0]
  }
  // Second group: largest -2 gives d = 0.25, id = 4; r(0.5) = 0, r(1.5) = 2, r(-1.5) = -2, r(2.5) = 2.
  const float g1[8] = {-2.0f, 1.0f, 0.0f, 0.5f, 0.125f, 0.375f, -0.375f, 0.625f};
  const int g1_codes[8] = {0, 12, 8, 10, 8, 10, 6, 10};
  for (int t = 0; t < 8; ++t) w[32 + t] = g1[t];
  const Tensor weight = loom::tensor(w).reshape({1, 40});
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    const auto [codes, scales] = loom::quantize_weight(weight, QuantScheme::Int4);
    ASSERT_EQ(codes.sizes(), std::vector<int64_t>({1, 32}));
    const std::vector<uint8_t> q = codes.to_vector<uint8_t>();
    const std::vector<float> d = values(scales);
    EXPECT_EQ(d[0], -1.0f);
    EXPECT_EQ(d[1], 0.25f);
    for (int j = 0; j < 16; ++j) EXPECT_EQ(q[j], j | (15 - j) << 4) << "byte " << j;
    for (int j = 0; j < 16; ++j) {
      const int lo = j < 8 ? g1_codes[j] : 8;  // elements 40..47 are padding: 0, code 8
      EXPECT_EQ(q[16 + j], lo | 8 << 4) << "byte " << 16 + j;  // elements 48..63: padding
    }
    const std::vector<float> deq = values(loom::dequantize_weight(codes, scales, QuantScheme::Int4, 40));
    ASSERT_EQ(deq.size(), 40u);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(deq[j], w[j]) << j;  // all exact: integers times -1
    EXPECT_EQ(deq[32], -2.0f);
    EXPECT_EQ(deq[33], 1.0f);
    EXPECT_EQ(deq[36], 0.0f);  // 0.125: a tie, to even
  }
}

// Hand-built int8: amax 254 gives d = 2, id = 0.5; ties go to even.
TEST(QuantKernels, Int8Codes) {
  const Tensor w = loom::tensor(std::vector<float>{254.0f, -127.0f, 1.0f, 3.0f, -5.0f, 0.0f, 253.0f}).reshape({1, 7});
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    const auto [codes, scales] = loom::quantize_weight(w, QuantScheme::Int8);
    EXPECT_EQ(codes.to_vector<int8_t>(), (std::vector<int8_t>{127, -64, 0, 2, -2, 0, 126}));
    EXPECT_EQ(values(scales), std::vector<float>{2.0f});
  }
}

// Zero rows and zero groups: scale 0 (int4: -0), codes 0 (int4: 8), and
// zeros back, never NaN; in the product a zero row of x or of W gives the
// bias alone.
TEST(QuantKernels, ZeroRowsAndGroupsGiveZeros) {
  const int64_t n = 5, k = 70;
  std::vector<float> wv = values(make_weight(n, k, 3));
  for (int64_t i = 0; i < k; ++i) wv[2 * k + i] = 0.0f;  // row 2
  for (int64_t i = 32; i < 64; ++i) wv[0 * k + i] = 0.0f;  // group 1 of row 0
  for (int64_t i = 64; i < k; ++i) wv[4 * k + i] = 0.0f;   // the padded group of row 4
  const Tensor w = loom::tensor(wv).reshape({n, k});
  loom::manual_seed(5);
  Tensor x = loom::randn({3, k});
  std::vector<float> xv = values(x);
  for (int64_t i = 0; i < k; ++i) xv[1 * k + i] = 0.0f;  // row 1 of x
  for (int64_t i = 0; i < 32; ++i) xv[2 * k + i] = 0.0f;  // group 0 of row 2 of x
  x = loom::tensor(xv).reshape({3, k});
  const Tensor bias = loom::tensor(std::vector<float>{0.5f, -1.0f, 2.0f, 0.0f, 3.0f});
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (QuantScheme s : {QuantScheme::Int8, QuantScheme::Int4}) {
      SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " " + name(s));
      const auto [codes, scales] = loom::quantize_weight(w, s);
      const std::vector<float> d = values(scales);
      if (s == QuantScheme::Int8) {
        EXPECT_EQ(d[2], 0.0f);
      } else {
        EXPECT_EQ(d[2 * 3 + 0], 0.0f);
        EXPECT_EQ(d[0 * 3 + 1], 0.0f);
        EXPECT_EQ(d[4 * 3 + 2], 0.0f);
      }
      const std::vector<float> deq = values(loom::dequantize_weight(codes, scales, s, k));
      for (int64_t i = 0; i < n * k; ++i) {
        ASSERT_FALSE(std::isnan(deq[i])) << i;
        if (wv[i] == 0.0f) {
          ASSERT_EQ(deq[i], 0.0f) << i;
        }
      }
      const std::vector<float> out = values(loom::quantized_linear(x, codes, scales, bias, s));
      const std::vector<float> b = values(bias);
      for (float v : out) ASSERT_FALSE(std::isnan(v));
      for (int64_t j = 0; j < n; ++j) EXPECT_EQ(out[1 * n + j], b[j]) << "zero row of x, column " << j;
      for (int64_t r = 0; r < 3; ++r) EXPECT_EQ(out[r * n + 2], b[2]) << "zero row of W, row " << r;
      const Expected e = expected_product(xv, wv, b, 3, n, k, s);
      for (int64_t i = 0; i < 3 * n; ++i) EXPECT_EQ(bits(out[i]), bits(e.f32[i])) << i;
      // All-zero input and weight, no bias: zeros.
      const auto [zc, zs] = loom::quantize_weight(loom::zeros({n, k}), s);
      const std::vector<float> zero_out = values(loom::quantized_linear(loom::zeros({2, k}), zc, zs, Tensor(), s));
      for (float v : zero_out) EXPECT_EQ(v, 0.0f);
    }
  }
}

// ---- the product ----

// x of (m, k) in one of the layouts quantized_linear must accept.
enum class XLayout { Contiguous, Transposed, Sliced };
Tensor make_x(int64_t m, int64_t k, XLayout layout, uint64_t seed) {
  loom::manual_seed(seed);
  switch (layout) {
    case XLayout::Contiguous: return loom::randn({m, k});
    case XLayout::Transposed: return loom::randn({k, m}).t();                   // strides (1, m)
    case XLayout::Sliced: return loom::randn({m + 2, k + 9}).narrow(0, 1, m).narrow(1, 5, k);  // row stride k + 9
  }
  return {};
}

// quantized_linear against the three oracles of the file's header comment.
void check_product(QuantScheme scheme, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const int64_t m = x.size(0), k = x.size(1), n = w.size(0);
  const auto [codes, scales] = loom::quantize_weight(w, scheme);
  const Tensor out = loom::quantized_linear(x, codes, scales, bias, scheme);
  ASSERT_EQ(out.sizes(), std::vector<int64_t>({m, n}));
  const std::vector<float> xv = values(x), wv = values(w), got = values(out);
  const std::vector<float> bv = bias.defined() ? values(bias) : std::vector<float>{};
  const Expected e = expected_product(xv, wv, bv, m, n, k, scheme);
  // The true product: x and W each within their format's rounding bound
  // (x: amax / 254 per element of its block; W as the round-trip tests
  // check), so |x W - x' W'| <= sum |x - x'| |W'| + |x| |W - W'|.
  const std::vector<float> deq = values(loom::dequantize_weight(codes, scales, scheme, k));
  const std::vector<float> d = values(scales);
  // amax of each row of x (int8) or each group of a row (int4).
  std::vector<double> x_amax(static_cast<size_t>(m * groups_of(k)), 0.0);
  for (int64_t r = 0; r < m; ++r)
    for (int64_t i = 0; i < k; ++i) {
      double& a = x_amax[r * groups_of(k) + (scheme == QuantScheme::Int8 ? 0 : i / kGroup)];
      a = std::max(a, std::fabs(static_cast<double>(xv[r * k + i])));
    }
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t at = r * n + j;
      ASSERT_EQ(bits(got[at]), bits(e.f32[at])) << "element (" << r << ", " << j << "): " << got[at] << " vs "
                                                << e.f32[at];
      ASSERT_LE(std::fabs(got[at] - e.f64[at]), e.bound[at] + 1e-30)
          << "float64 definition, (" << r << ", " << j << ")";
      double exact = bv.empty() ? 0.0 : bv[j], bound = 0, mag = bv.empty() ? 0.0 : std::fabs(bv[j]);
      for (int64_t i = 0; i < k; ++i) {
        const double xi = xv[r * k + i], wi = wv[j * k + i];
        exact += xi * wi;
        mag += std::fabs(xi * wi);
        const double amax = x_amax[r * groups_of(k) + (scheme == QuantScheme::Int8 ? 0 : i / kGroup)];
        const double wstep = scheme == QuantScheme::Int8 ? d[j] / 2 : std::fabs(d[j * groups_of(k) + i / kGroup]);
        bound += amax / 254 * std::fabs(deq[j * k + i]) + std::fabs(xi) * wstep;
      }
      ASSERT_LE(std::fabs(got[at] - exact), bound * (1 + 1e-4) + 1e-5 * mag + 1e-30)
          << "true product, (" << r << ", " << j << ")";
    }
  }
}

TEST(QuantKernels, ProductOddSizesAndLayouts) {
  const int64_t shapes[][2] = {{1, 1}, {3, 5}, {17, 31}, {17, 33}, {5, 100}, {3, 784}, {33, 64}, {9, 257}};
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (QuantScheme s : {QuantScheme::Int8, QuantScheme::Int4})
      for (const auto& nk : shapes)
        for (int64_t m : {1, 2, 5, 64}) {
          const int64_t n = nk[0], k = nk[1];
          const Tensor w = make_weight(n, k, static_cast<uint64_t>(n * 31 + k));
          loom::manual_seed(static_cast<uint64_t>(m + k));
          const Tensor bias = loom::randn({n});
          for (XLayout layout : {XLayout::Contiguous, XLayout::Transposed, XLayout::Sliced}) {
            SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " " + trace(s, m, n, k) + " layout " +
                         std::to_string(static_cast<int>(layout)));
            const Tensor x = make_x(m, k, layout, static_cast<uint64_t>(m * 7 + n + k));
            if (layout == XLayout::Transposed && m > 1) {
              ASSERT_EQ(x.stride(1), m);
            }
            check_product(s, x, w, layout == XLayout::Sliced ? Tensor() : bias);
          }
        }
  }
}

// A strided bias (every other element of a longer tensor) and a 3-D input.
TEST(QuantKernels, StridedBiasAndBatchedInput) {
  const int64_t n = 19, k = 45;
  const Tensor w = make_weight(n, k, 77);
  loom::manual_seed(78);
  const Tensor bias = loom::randn({2 * n}).slice(0, 0, 2 * n, 2);
  ASSERT_EQ(bias.stride(0), 2);
  const Tensor x = loom::randn({2, 3, k});
  IsaEnvGuard guard;
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (QuantScheme s : {QuantScheme::Int8, QuantScheme::Int4}) {
      SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " " + name(s));
      check_product(s, x.reshape({6, k}), w, bias);
      const auto [codes, scales] = loom::quantize_weight(w, s);
      const Tensor out = loom::quantized_linear(x, codes, scales, bias, s);
      ASSERT_EQ(out.sizes(), std::vector<int64_t>({2, 3, n}));
      const Tensor flat = loom::quantized_linear(x.reshape({6, k}), codes, scales, bias.contiguous(), s);
      expect_same_bits(out.reshape({6, n}), flat, "batched vs flat");
    }
  }
}

// ---- one value per element ----

// The AVX2 and portable paths give the same bits: codes, scales and
// products, on sizes with every tile edge and K tail, large enough to fork.
TEST(QuantKernels, Avx2MatchesPortableBitwise) {
  if (loom::cpu::gemm_best_isa() < GemmIsa::Avx2)
    GTEST_SKIP() << "this CPU lacks AVX2: only the portable path runs (the other tests cover it)";
  const int64_t shapes[][3] = {{1, 300, 200}, {1, 7, 784}, {5, 33, 100}, {64, 18, 96}, {7, 65, 1000}, {2, 1, 1}};
  IsaEnvGuard guard;
  for (QuantScheme s : {QuantScheme::Int8, QuantScheme::Int4})
    for (const auto& sh : shapes) {
      const int64_t m = sh[0], n = sh[1], k = sh[2];
      SCOPED_TRACE(trace(s, m, n, k));
      const Tensor w = make_weight(n, k, static_cast<uint64_t>(n + k));
      const Tensor x = make_x(m, k, XLayout::Sliced, static_cast<uint64_t>(m + n + k));
      loom::manual_seed(9);
      const Tensor bias = loom::randn({n});
      Tensor res[2][3];
      const GemmIsa isas[2] = {GemmIsa::Portable, GemmIsa::Avx2};
      for (int p = 0; p < 2; ++p) {
        guard.use(isas[p]);
        ASSERT_EQ(loom::cpu::gemm_isa(), isas[p]);
        const auto [codes, scales] = loom::quantize_weight(w, s);
        res[p][0] = codes;
        res[p][1] = scales;
        res[p][2] = loom::quantized_linear(x, codes, scales, bias, s);
      }
      expect_same_bits(res[0][0], res[1][0], "codes");
      expect_same_bits(res[0][1], res[1][1], "scales");
      expect_same_bits(res[0][2], res[1][2], "product");
    }
}

// int8 codes of -128 (which QuantizeWeight never writes, but a file may
// hold) are multiplied exactly, on every ISA: the products equal float64
// sums of the integer products.
TEST(QuantKernels, Int8CodesOfMinus128AreExact) {
  IsaEnvGuard guard;
  const int64_t m = 3, n = 5, k = 70;
  std::vector<int8_t> q(static_cast<size_t>(n * k));
  for (int64_t i = 0; i < n * k; ++i) q[static_cast<size_t>(i)] = static_cast<int8_t>(i % 3 == 0 ? -128 : (i * 37) % 255 - 127);
  const Tensor codes = loom::tensor(q, loom::kInt8).reshape({n, k});
  const Tensor scales = loom::full({n}, 0.5);
  loom::manual_seed(3);
  const Tensor x = loom::randn({m, k});
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    const Tensor y = loom::quantized_linear(x, codes, scales, {}, QuantScheme::Int8);
    for (int64_t r = 0; r < m; ++r) {
      // x's row as the kernel rounds it (Note [Quantized Linear]).
      const std::vector<float> xr = x[r].to_vector<float>();
      float amax = 0;
      for (float v : xr) amax = std::max(amax, std::fabs(v));
      const float dx = amax / 127.0f, id = 127.0f / amax;
      for (int64_t j = 0; j < n; ++j) {
        int64_t isum = 0;
        for (int64_t i = 0; i < k; ++i)
          isum += static_cast<int64_t>(std::nearbyint(xr[static_cast<size_t>(i)] * id)) * q[static_cast<size_t>(j * k + i)];
        const float want = static_cast<float>(isum) * (dx * 0.5f);
        EXPECT_EQ(y[r][j].item<float>(), want) << "row " << r << " col " << j;
      }
    }
  }
}

// 1 and 2 threads, and a batch against its rows one at a time (different
// tiles and tasks), give the same bits.
TEST(QuantKernels, SameBitsWhateverTheThreadsOrBlocking) {
  ThreadCountGuard threads;
  IsaEnvGuard guard;
  // The first two are large enough to run on 2 threads (at least 2^20
  // multiply-adds a thread; kMinForkWork in cpu_quant.cpp).
  const int64_t shapes[][3] = {{1, 3072, 512}, {64, 200, 130}, {9, 257, 64}};
  for (GemmIsa isa : runnable_isas()) {
    guard.use(isa);
    for (QuantScheme s : {QuantScheme::Int8, QuantScheme::Int4})
      for (const auto& sh : shapes) {
        const int64_t m = sh[0], n = sh[1], k = sh[2];
        SCOPED_TRACE(std::string(loom::cpu::gemm_isa_name(isa)) + " " + trace(s, m, n, k));
        const Tensor w = make_weight(n, k, static_cast<uint64_t>(3 * n + k));
        const Tensor x = make_x(m, k, XLayout::Contiguous, static_cast<uint64_t>(m + k));
        loom::manual_seed(10);
        const Tensor bias = loom::randn({n});
        loom::set_num_threads(1);
        const auto [codes, scales] = loom::quantize_weight(w, s);
        const Tensor one = loom::quantized_linear(x, codes, scales, bias, s);
        loom::set_num_threads(2);
        const auto [codes2, scales2] = loom::quantize_weight(w, s);
        expect_same_bits(codes, codes2, "codes at 1 and 2 threads");
        expect_same_bits(scales, scales2, "scales at 1 and 2 threads");
        const Tensor two = loom::quantized_linear(x, codes, scales, bias, s);
        expect_same_bits(one, two, "product at 1 and 2 threads");
        for (int64_t r = 0; r < m; r += std::max<int64_t>(1, m / 5)) {
          const Tensor row = loom::quantized_linear(x.narrow(0, r, 1), codes, scales, bias, s);
          expect_same_bits(row, one.narrow(0, r, 1), "row " + std::to_string(r) + " alone");
        }
      }
  }
}

}  // namespace
