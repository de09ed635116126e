// loom's float32 GEMM (src/backend/cpu/cpu_gemm.h) against the reference Bmm
// kernel it sits beside, on every ISA path this CPU can run, every operand
// layout the Bmm convention allows, odd sizes that cross every block edge,
// batches, thread counts and non-finite values.
//
// Two oracles:
//  - sgemm_reference, the reference kernel (each element summed in double,
//    rounded once). The fast path sums in float32, so they differ by
//    rounding; the bound used is Higham's for a recursive dot product of
//    length K, |fl(s) - s| <= gamma_K * sum_p |a_p b_p| with
//    gamma_K = K u / (1 - K u), u = 2^-24, plus u |s| for the reference's own
//    rounding. (K + 2) u * sum_p |a_p b_p| covers both for K < 10^6, and it is
//    per element, so it is tight where the terms cancel.
//  - the exact float32 chain acc = fma(a, b, acc) over k in order (Note [GEMM
//    summation order]): the AVX-512 and AVX2 paths must give its bits.
#include <gtest/gtest.h>
#include <loom/loom.h>
#include <stdlib.h>

#include <cmath>
#include <cstdint>
#include <array>
#include <atomic>
#include <thread>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

// An internal header (plain declarations, no other loom includes): the
// tests call the GEMM per ISA and the reference kernel directly.
#include "backend/cpu/cpu_gemm.h"
#include "backend/cpu/testing.h"
#include "ops/fast_paths.h"

namespace {

using loom::cpu::GemmIsa;
using loom_test::IsaEnvGuard;
using loom_test::runnable_isas;
using loom::cpu::SgemmInput;
using loom::cpu::SgemmOutput;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();


// ---- strided operands ----

// How a (batch, rows, cols) operand lies in memory.
enum class Layout {
  Contiguous,      // row-major
  Transposed,      // column-major per batch item (a .transpose(1, 2) view)
  Holes,           // column stride 2, padded rows and items: neither stride is 1
  BatchInner,      // batch stride 1 (a permuted view)
  BroadcastBatch,  // batch stride 0 (an expanded batch dim)
  BroadcastRows,   // row stride 0: every row the same
  BroadcastCols,   // column stride 0: every column the same
};
const char* layout_name(Layout l) {
  switch (l) {
    case Layout::Contiguous: return "contiguous";
    case Layout::Transposed: return "transposed";
    case Layout::Holes: return "holes";
    case Layout::BatchInner: return "batch_inner";
    case Layout::BroadcastBatch: return "broadcast_batch";
    case Layout::BroadcastRows: return "broadcast_rows";
    case Layout::BroadcastCols: return "broadcast_cols";
  }
  return "?";
}
constexpr Layout kInputLayouts[] = {Layout::Contiguous,     Layout::Transposed,    Layout::Holes,
                                    Layout::BatchInner,     Layout::BroadcastBatch, Layout::BroadcastRows,
                                    Layout::BroadcastCols};
constexpr Layout kOutputLayouts[] = {Layout::Contiguous, Layout::Transposed, Layout::Holes, Layout::BatchInner};

// A batch of matrices in a buffer; element (b, i, j) at buf[b bs + i rs + j cs].
struct Strided {
  int64_t batch = 0, rows = 0, cols = 0;
  int64_t bs = 0, rs = 0, cs = 0;
  std::vector<float> buf;

  Strided(int64_t b, int64_t r, int64_t c, Layout layout, float fill) : batch(b), rows(r), cols(c) {
    switch (layout) {
      case Layout::Contiguous: bs = r * c, rs = c, cs = 1; break;
      case Layout::Transposed: bs = r * c, rs = 1, cs = r; break;
      case Layout::Holes: cs = 2, rs = 2 * c + 3, bs = rs * r + 5; break;
      case Layout::BatchInner: bs = 1, rs = c * b, cs = b; break;
      case Layout::BroadcastBatch: bs = 0, rs = c, cs = 1; break;
      case Layout::BroadcastRows: bs = c, rs = 0, cs = 1; break;
      case Layout::BroadcastCols: bs = r, rs = 1, cs = 0; break;
    }
    buf.assign(static_cast<size_t>((b - 1) * bs + (r - 1) * rs + (c - 1) * cs + 1), fill);
  }
  int64_t offset(int64_t b, int64_t i, int64_t j) const { return b * bs + i * rs + j * cs; }
  float& at(int64_t b, int64_t i, int64_t j) { return buf[static_cast<size_t>(offset(b, i, j))]; }
  float at(int64_t b, int64_t i, int64_t j) const { return buf[static_cast<size_t>(offset(b, i, j))]; }
  SgemmInput in() const { return {buf.data(), bs, rs, cs}; }
  SgemmOutput out() { return {buf.data(), bs, rs, cs}; }
};

// An input operand: NaN in the holes (so reading one shows up in the
// result), values from `draw` at the elements. Broadcast layouts share
// memory between elements, so the logical matrix is whatever was written last.
template <typename Draw>
Strided make_input(int64_t b, int64_t r, int64_t c, Layout layout, Draw&& draw) {
  Strided s(b, r, c, layout, kNaN);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 0; i < r; ++i)
      for (int64_t j = 0; j < c; ++j) s.at(bi, i, j) = draw();
  return s;
}

std::mt19937& rng() {
  static std::mt19937 gen(20240611);
  return gen;
}
float normal() { return std::normal_distribution<float>(0.0f, 1.0f)(rng()); }
// Small integers: every product and partial sum is exact in float32.
float small_int() { return static_cast<float>(std::uniform_int_distribution<int>(-4, 4)(rng())); }

// ---- checks ----

bool same_value(float x, float y) {
  if (std::isnan(x) || std::isnan(y)) return std::isnan(x) && std::isnan(y);
  uint32_t bx, by;
  std::memcpy(&bx, &x, 4);
  std::memcpy(&by, &y, 4);
  return bx == by;  // tells +0 from -0
}

// Runs sgemm on `isa` into a fresh output of layout `out_layout` (sentinel in
// its holes) and checks it against sgemm_reference within the bound above,
// against the exact fma chain when `isa` uses FMA, and that the holes of the
// output are untouched.
void check_product(GemmIsa isa, const Strided& a, const Strided& b, Layout out_layout) {
  const int64_t batch = a.batch, m = a.rows, k = a.cols, n = b.cols;
  constexpr float kSentinel = -12345.0f;
  Strided c(batch, m, n, out_layout, kSentinel);
  loom::cpu::sgemm(isa, batch, m, n, k, a.in(), b.in(), c.out());

  Strided ref(batch, m, n, Layout::Contiguous, 0.0f);
  loom::cpu::sgemm_reference(batch, m, n, k, a.in(), b.in(), ref.out());

  const bool fused = isa != GemmIsa::Portable;
  constexpr double u = 0x1p-24;
  int64_t bad = 0;
  for (int64_t bi = 0; bi < batch; ++bi) {
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const float got = c.at(bi, i, j), want = ref.at(bi, i, j);
        double abs_sum = 0;
        float chain = 0.0f;
        for (int64_t p = 0; p < k; ++p) {
          abs_sum += std::fabs(static_cast<double>(a.at(bi, i, p)) * b.at(bi, p, j));
          chain = std::fma(a.at(bi, i, p), b.at(bi, p, j), chain);
        }
        bool ok;
        if (std::isnan(want) || std::isinf(want)) ok = same_value(got, want);
        else ok = std::fabs(static_cast<double>(got) - want) <= (k + 2) * u * abs_sum;
        if (fused) ok = ok && same_value(got, chain);
        if (!ok && bad++ < 5)
          ADD_FAILURE() << "element (" << bi << ", " << i << ", " << j << "): got " << got << ", reference " << want
                        << ", fma chain " << chain << ", bound " << (k + 2) * u * abs_sum;
      }
    }
  }
  EXPECT_EQ(bad, 0) << bad << " wrong elements";

  // The holes of the output still hold the sentinel.
  std::vector<char> addressed(c.buf.size(), 0);
  for (int64_t bi = 0; bi < batch; ++bi)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) addressed[static_cast<size_t>(c.offset(bi, i, j))] = 1;
  int64_t clobbered = 0;
  for (size_t x = 0; x < c.buf.size(); ++x) clobbered += !addressed[x] && c.buf[x] != kSentinel;
  EXPECT_EQ(clobbered, 0) << "sgemm wrote outside its output's elements";
}

std::string trace(GemmIsa isa, int64_t batch, int64_t m, int64_t n, int64_t k) {
  return std::string(loom::cpu::gemm_isa_name(isa)) + " batch " + std::to_string(batch) + ", " + std::to_string(m) +
         "x" + std::to_string(k) + " @ " + std::to_string(k) + "x" + std::to_string(n);
}


struct ThreadCountGuard {
  int saved = loom::get_num_threads();
  ~ThreadCountGuard() { loom::set_num_threads(saved); }
};

// ---- sizes ----

// Odd sizes, vectors and skinny shapes: every edge-tile case.
TEST(Gemm, OddSizesOnEveryIsa) {
  const int64_t shapes[][3] = {  // m, n, k
      {1, 1, 1},   {1, 7, 3},    {3, 1, 7},    {7, 3, 1},    {17, 33, 7},   {33, 17, 257}, {257, 33, 17},
      {1000, 3, 17}, {3, 1000, 17}, {17, 3, 1000}, {1, 257, 33}, {33, 257, 1},  {257, 1, 33},  {7, 17, 33}};
  for (GemmIsa isa : runnable_isas()) {
    for (const auto& s : shapes) {
      SCOPED_TRACE(trace(isa, 1, s[0], s[1], s[2]));
      const Strided a = make_input(1, s[0], s[2], Layout::Contiguous, normal);
      const Strided b = make_input(1, s[2], s[1], Layout::Contiguous, normal);
      check_product(isa, a, b, Layout::Contiguous);
    }
  }
}

// One past each cache block (mc, kc, nc of the ISA's kernel), so every
// block loop runs a full block and a ragged one, and the depth blocks chain
// through C. Rows and columns cross their blocks in separate products to
// keep the test small.
TEST(Gemm, CrossesEveryBlockEdge) {
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::GemmKernel& g = loom::cpu::gemm_kernel(isa);
    const int64_t shapes[][3] = {{g.mc + 1, 2 * g.nr + 1, g.kc + 5}, {2 * g.mr + 1, g.nc + 3, g.kc + 5}};
    for (const auto& s : shapes) {
      SCOPED_TRACE(trace(isa, 1, s[0], s[1], s[2]));
      const Strided a = make_input(1, s[0], s[2], Layout::Contiguous, normal);
      const Strided b = make_input(1, s[2], s[1], Layout::Transposed, normal);
      check_product(isa, a, b, Layout::Contiguous);
    }
  }
}

TEST(Gemm, Square257OnEveryIsa) {
  for (GemmIsa isa : runnable_isas()) {
    SCOPED_TRACE(trace(isa, 1, 257, 257, 257));
    const Strided a = make_input(1, 257, 257, Layout::Contiguous, normal);
    const Strided b = make_input(1, 257, 257, Layout::Contiguous, normal);
    check_product(isa, a, b, Layout::Contiguous);
  }
}

// ---- layouts ----

// Every input layout for A and B, every output layout, with a batch, on
// sizes that leave edge tiles in both directions.
TEST(Gemm, EveryLayoutOnEveryIsa) {
  const int64_t batch = 3, m = 19, n = 37, k = 21;
  for (GemmIsa isa : runnable_isas()) {
    for (Layout la : kInputLayouts) {
      for (Layout lb : kInputLayouts) {
        SCOPED_TRACE(trace(isa, batch, m, n, k) + " A " + layout_name(la) + ", B " + layout_name(lb));
        const Strided a = make_input(batch, m, k, la, normal);
        const Strided b = make_input(batch, k, n, lb, normal);
        check_product(isa, a, b, Layout::Contiguous);
      }
    }
    for (Layout lc : kOutputLayouts) {
      SCOPED_TRACE(trace(isa, batch, m, n, k) + " C " + layout_name(lc));
      const Strided a = make_input(batch, m, k, Layout::Transposed, normal);
      const Strided b = make_input(batch, k, n, Layout::Holes, normal);
      check_product(isa, a, b, lc);
    }
  }
}

// The MLP's backward products at reduced size: A transposed (gW = x^T @ gY),
// B transposed (gX = gY @ W with W stored (out, in) and the forward x @ W^T).
TEST(Gemm, TransposedOperandsLargerThanABlock) {
  for (GemmIsa isa : runnable_isas()) {
    const loom::cpu::GemmKernel& g = loom::cpu::gemm_kernel(isa);
    const int64_t m = g.mc + 7, n = 2 * g.nr + 5, k = g.kc + 9;
    for (Layout la : {Layout::Contiguous, Layout::Transposed}) {
      for (Layout lb : {Layout::Contiguous, Layout::Transposed}) {
        SCOPED_TRACE(trace(isa, 1, m, n, k) + " A " + layout_name(la) + ", B " + layout_name(lb));
        const Strided a = make_input(1, m, k, la, normal);
        const Strided b = make_input(1, k, n, lb, normal);
        check_product(isa, a, b, Layout::Contiguous);
      }
    }
  }
}

// Batches large enough to be shared out by item and by rectangle.
TEST(Gemm, BatchedOnEveryIsa) {
  ThreadCountGuard guard;
  loom::set_num_threads(2);
  const int64_t cases[][4] = {{4, 70, 90, 50}, {3, 70, 90, 50}, {9, 5, 6, 7}, {2, 1, 300, 600}};  // batch, m, n, k
  for (GemmIsa isa : runnable_isas()) {
    for (const auto& s : cases) {
      for (Layout lb : {Layout::Contiguous, Layout::BroadcastBatch}) {
        SCOPED_TRACE(trace(isa, s[0], s[1], s[2], s[3]) + " B " + layout_name(lb));
        const Strided a = make_input(s[0], s[1], s[3], Layout::Contiguous, normal);
        const Strided b = make_input(s[0], s[3], s[2], lb, normal);
        check_product(isa, a, b, Layout::Contiguous);
      }
    }
  }
}

// Exact data (small integers: every product and partial sum is exact), so
// the fast path must give the reference's bits, signed zeros included.
TEST(Gemm, ExactDataMatchesTheReferenceBitForBit) {
  for (GemmIsa isa : runnable_isas()) {
    for (int64_t k : {1, 2, 33}) {
      SCOPED_TRACE(trace(isa, 2, 9, 35, k));
      const Strided a = make_input(2, 9, k, Layout::Contiguous, small_int);
      const Strided b = make_input(2, k, 35, Layout::Transposed, small_int);
      Strided c(2, 9, 35, Layout::Contiguous, 0.0f), ref(2, 9, 35, Layout::Contiguous, 0.0f);
      loom::cpu::sgemm(isa, 2, 9, 35, k, a.in(), b.in(), c.out());
      loom::cpu::sgemm_reference(2, 9, 35, k, a.in(), b.in(), ref.out());
      for (size_t x = 0; x < c.buf.size(); ++x)
        ASSERT_TRUE(same_value(c.buf[x], ref.buf[x])) << "element " << x << ": " << c.buf[x] << " vs " << ref.buf[x];
    }
  }
}

// ---- special values and degenerate sizes ----

// NaN and inf in either operand reach exactly the outputs IEEE says they
// do, inf * 0 included; the tolerance check compares non-finite outputs
// exactly (NaN where the reference has NaN, inf of the same sign).
TEST(Gemm, NanAndInfPropagate) {
  const int64_t m = 20, n = 40, k = 30;
  for (GemmIsa isa : runnable_isas()) {
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    Strided a = make_input(1, m, k, Layout::Contiguous, [] { return std::fabs(normal()) + 0.5f; });
    Strided b = make_input(1, k, n, Layout::Contiguous, [] { return std::fabs(normal()) + 0.5f; });
    a.at(0, 3, 5) = kNaN;    // row 3 of C: NaN
    b.at(0, 7, 11) = kInf;   // column 11: +inf (positive a), except row 3
    b.at(0, 8, 12) = -kInf;  // column 12: -inf
    a.at(0, 9, 7) = 0.0f;    // (9, 11): 0 * inf = NaN
    b.at(0, 2, 20) = kInf;   // column 20: inf - inf = NaN
    b.at(0, 4, 20) = -kInf;
    check_product(isa, a, b, Layout::Contiguous);

    Strided c(1, m, n, Layout::Contiguous, 0.0f);
    loom::cpu::sgemm(isa, 1, m, n, k, a.in(), b.in(), c.out());
    for (int64_t j = 0; j < n; ++j) EXPECT_TRUE(std::isnan(c.at(0, 3, j))) << "column " << j;
    EXPECT_EQ(c.at(0, 0, 11), kInf);
    EXPECT_EQ(c.at(0, 0, 12), -kInf);
    EXPECT_TRUE(std::isnan(c.at(0, 9, 11)));
    EXPECT_TRUE(std::isnan(c.at(0, 0, 20)));
    EXPECT_TRUE(std::isfinite(c.at(0, 0, 13)));
  }
}

TEST(Gemm, EmptyDimensions) {
  for (GemmIsa isa : runnable_isas()) {
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    // k == 0: an empty sum is zero.
    Strided c(2, 3, 4, Layout::Contiguous, kNaN);
    float dummy = 1.0f;
    loom::cpu::sgemm(isa, 2, 3, 4, 0, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0}, c.out());
    for (float v : c.buf) EXPECT_TRUE(same_value(v, 0.0f));
    // m == 0, n == 0 or batch == 0: nothing is written.
    loom::cpu::sgemm(isa, 2, 0, 4, 5, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0});
    loom::cpu::sgemm(isa, 2, 3, 0, 5, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0});
    loom::cpu::sgemm(isa, 0, 3, 4, 5, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0}, {&dummy, 0, 0, 0});
    EXPECT_EQ(dummy, 1.0f);
  }
}

// ---- threads ----

// Each element is one chain over k on one thread, so the bits do not depend
// on the number of threads, for a single product and for both ways a batch
// is shared out.
TEST(Gemm, ResultsDoNotDependOnTheThreadCount) {
  ThreadCountGuard guard;
  const int64_t cases[][4] = {{1, 300, 200, 150}, {1, 5, 900, 300}, {4, 60, 70, 80}, {3, 60, 70, 80}};
  for (GemmIsa isa : runnable_isas()) {
    for (const auto& s : cases) {
      SCOPED_TRACE(trace(isa, s[0], s[1], s[2], s[3]));
      const Strided a = make_input(s[0], s[1], s[3], Layout::Contiguous, normal);
      const Strided b = make_input(s[0], s[3], s[2], Layout::Transposed, normal);
      std::vector<std::vector<float>> results;
      for (int threads : {1, 2, 3, 4}) {
        loom::set_num_threads(threads);
        Strided c(s[0], s[1], s[2], Layout::Contiguous, 0.0f);
        loom::cpu::sgemm(isa, s[0], s[1], s[2], s[3], a.in(), b.in(), c.out());
        results.push_back(c.buf);
      }
      for (size_t t = 1; t < results.size(); ++t)
        EXPECT_EQ(std::memcmp(results[t].data(), results[0].data(), results[0].size() * sizeof(float)), 0)
            << "threads " << t + 1 << " differ from 1 thread";
    }
  }
}

// ---- the unpacked path (Note [GEMM without packing]) ----

// Restores sgemm's unpacked path after a test turns it off.
struct UnpackedGuard {
  ~UnpackedGuard() { loom::cpu::testing::set_gemm_unpacked(true); }
};

// Few rows or little depth: the products that skip packing, on odd sizes
// around its vector widths, with A, B and C in every layout the path reads
// (B with contiguous rows, contiguous columns, neither, or broadcast).
TEST(Gemm, UnpackedPathOddSizesAndLayouts) {
  const int64_t shapes[][3] = {  // m, n, k
      {1, 1, 1},  {1, 7, 9},   {1, 8, 8},   {1, 9, 17},   {1, 33, 100}, {1, 300, 7}, {2, 17, 5},  {2, 16, 33},
      {3, 15, 2}, {3, 70, 31}, {4, 9, 65},  {4, 263, 12}, {5, 31, 3},   {9, 37, 1},  {130, 33, 1}, {40, 70, 4},
      {7, 3, 2},  {1, 257, 256}};
  const Layout a_layouts[] = {Layout::Contiguous, Layout::Transposed, Layout::Holes, Layout::BroadcastRows};
  const Layout b_layouts[] = {Layout::Contiguous, Layout::Transposed, Layout::Holes, Layout::BroadcastRows,
                              Layout::BroadcastCols};
  for (GemmIsa isa : runnable_isas()) {
    for (const auto& s : shapes) {
      for (Layout la : a_layouts) {
        for (Layout lb : b_layouts) {
          SCOPED_TRACE(trace(isa, 2, s[0], s[1], s[2]) + " A " + layout_name(la) + ", B " + layout_name(lb));
          const Strided a = make_input(2, s[0], s[2], la, normal);
          const Strided b = make_input(2, s[2], s[1], lb, normal);
          check_product(isa, a, b, Layout::Contiguous);
        }
      }
      for (Layout lc : kOutputLayouts) {
        SCOPED_TRACE(trace(isa, 1, s[0], s[1], s[2]) + " C " + layout_name(lc));
        const Strided a = make_input(1, s[0], s[2], Layout::Transposed, normal);
        const Strided b = make_input(1, s[2], s[1], Layout::Transposed, normal);
        check_product(isa, a, b, lc);
      }
    }
  }
}

// The unpacked path gives the packed path's bits (Note [GEMM summation
// order] holds whatever M is, so a batch-1 Linear matches a row of a larger
// batch), with the epilogue (strided bias, relu), on every ISA, the portable
// one included, on one thread and two.
TEST(Gemm, UnpackedPathGivesThePackedBits) {
  UnpackedGuard unpacked_guard;
  ThreadCountGuard thread_guard;
  const int64_t cases[][4] = {  // batch, m, n, k
      {1, 1, 128, 784}, {1, 128, 784, 1}, {1, 1, 10, 128}, {1, 3, 45, 19}, {2, 4, 33, 3},
      {3, 2, 100, 70},  {1, 1, 1500, 1400}, {1, 600, 900, 2}, {1, 3, 5, 3000}};
  for (GemmIsa isa : runnable_isas()) {
    for (const auto& s : cases) {
      for (Layout lb : {Layout::Contiguous, Layout::Transposed}) {
        for (bool epilogue : {false, true}) {
          SCOPED_TRACE(trace(isa, s[0], s[1], s[2], s[3]) + " B " + layout_name(lb) +
                       (epilogue ? ", bias + relu" : ""));
          const Strided a = make_input(s[0], s[1], s[3], Layout::Contiguous, normal);
          const Strided b = make_input(s[0], s[3], s[2], lb, normal);
          std::vector<float> bias(static_cast<size_t>(2 * s[2]));
          for (float& x : bias) x = normal();
          const loom::cpu::SgemmEpilogue ep{bias.data(), 2, true, nullptr, nullptr};
          std::vector<std::vector<float>> results;
          for (bool unpacked : {false, true}) {
            for (int threads : {1, 2}) {
              loom::cpu::testing::set_gemm_unpacked(unpacked);
              loom::set_num_threads(threads);
              Strided c(s[0], s[1], s[2], Layout::Contiguous, 0.0f);
              loom::cpu::sgemm(isa, s[0], s[1], s[2], s[3], a.in(), b.in(), c.out(), epilogue ? &ep : nullptr);
              results.push_back(c.buf);
            }
          }
          for (size_t r = 1; r < results.size(); ++r) {
            int64_t differ = 0;
            for (size_t x = 0; x < results[0].size(); ++x) differ += !same_value(results[r][x], results[0][x]);
            EXPECT_EQ(differ, 0) << "run " << r << " (unpacked " << (r >= 2) << ", threads " << r % 2 + 1
                                 << ") differs from the packed path on one thread";
          }
        }
      }
    }
  }
}

// ---- ISA selection ----

TEST(Gemm, LoomCpuIsaSelectsAPathAtMostTheBest) {
  IsaEnvGuard guard;
  const GemmIsa best = loom::cpu::gemm_best_isa();
  unsetenv("LOOM_CPU_ISA");
  loom::cpu::testing::gemm_reload_isa();
  EXPECT_EQ(loom::cpu::gemm_isa(), best);
  for (GemmIsa isa : {GemmIsa::Portable, GemmIsa::Avx2, GemmIsa::Avx512}) {
    // Asking for more than the CPU has falls back to the best it has.
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
    EXPECT_EQ(loom::cpu::gemm_isa(), std::min(isa, best)) << loom::cpu::gemm_isa_name(isa);
  }
  setenv("LOOM_CPU_ISA", "AVX2", 1);  // case does not matter
  loom::cpu::testing::gemm_reload_isa();
  EXPECT_EQ(loom::cpu::gemm_isa(), std::min(GemmIsa::Avx2, best));
  setenv("LOOM_CPU_ISA", "", 1);  // empty means unset
  loom::cpu::testing::gemm_reload_isa();
  EXPECT_EQ(loom::cpu::gemm_isa(), best);
}

TEST(Gemm, UnknownLoomCpuIsaThrowsNamingTheVariable) {
  IsaEnvGuard guard;
  setenv("LOOM_CPU_ISA", "sse9", 1);
  try {
    loom::cpu::testing::gemm_reload_isa();
    FAIL() << "expected loom::Error";
  } catch (const loom::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("LOOM_CPU_ISA"), std::string::npos) << msg;
    EXPECT_NE(msg.find("sse9"), std::string::npos) << msg;
    EXPECT_NE(msg.find("avx2"), std::string::npos) << msg;
  }
  // A matmul reports it too instead of guessing.
  EXPECT_THROW(loom::mm(loom::ones({2, 3}), loom::ones({3, 4})), loom::Error);
}

// The bits of sgemm(isa) for a (m, k) @ b (k, n) given as 2-D tensors of
// any strides.
std::vector<float> sgemm_2d(GemmIsa isa, const loom::Tensor& a, const loom::Tensor& b) {
  const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
  std::vector<float> c(static_cast<size_t>(m * n));
  loom::cpu::sgemm(isa, 1, m, n, k, {a.data_ptr<float>(), 0, a.stride(0), a.stride(1)},
                   {b.data_ptr<float>(), 0, b.stride(0), b.stride(1)}, {c.data(), 0, n, 1});
  return c;
}

void expect_bits(const loom::Tensor& t, const std::vector<float>& want) {
  const loom::Tensor c = t.contiguous();
  ASSERT_EQ(c.numel(), static_cast<int64_t>(want.size()));
  EXPECT_EQ(std::memcmp(c.data_ptr<float>(), want.data(), want.size() * sizeof(float)), 0);
}

// The public ops route float32 through the ISA LOOM_CPU_ISA picks: matmul
// gives that path's bits, for the MLP's three products (forward x @ w^T with
// w stored (out, in), gx = g @ w, gw = g^T @ x). float64 is the reference
// kernel, and on float32 data it rounds to the float32 reference's bits
// (that one sums float32 inputs in double too).
TEST(Gemm, MatmulUsesTheSelectedPath) {
  IsaEnvGuard guard;
  loom::manual_seed(7);
  const loom::Tensor w = loom::randn({45, 70});
  const loom::Tensor x = loom::randn({33, 70});
  const loom::Tensor g = loom::randn({33, 45});
  for (GemmIsa isa : runnable_isas()) {
    SCOPED_TRACE(loom::cpu::gemm_isa_name(isa));
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
    ASSERT_EQ(loom::cpu::gemm_isa(), isa);
    expect_bits(loom::matmul(x, w.t()), sgemm_2d(isa, x, w.t()));
    expect_bits(loom::matmul(g, w), sgemm_2d(isa, g, w));
    expect_bits(loom::matmul(g.t(), x), sgemm_2d(isa, g.t(), x));
  }
  std::vector<float> ref(33 * 45);
  loom::cpu::sgemm_reference(1, 33, 45, 70, {x.data_ptr<float>(), 0, 70, 1}, {w.data_ptr<float>(), 0, 1, 70},
                             {ref.data(), 0, 45, 1});
  expect_bits(loom::matmul(x.to(loom::kFloat64), w.t().to(loom::kFloat64)).to(loom::kFloat32), ref);
}

// bmm with an expanded (stride-0 batch) operand through the public API.
TEST(Gemm, BmmWithBroadcastOperand) {
  loom::manual_seed(11);
  const loom::Tensor a = loom::randn({4, 9, 13});
  const loom::Tensor b = loom::randn({1, 13, 6}).expand({4, 13, 6});
  ASSERT_EQ(b.stride(0), 0);
  std::vector<float> want(4 * 9 * 6);
  loom::cpu::sgemm(loom::cpu::gemm_isa(), 4, 9, 6, 13, {a.data_ptr<float>(), 9 * 13, 13, 1},
                   {b.data_ptr<float>(), 0, 6, 1}, {want.data(), 9 * 6, 6, 1});
  expect_bits(loom::bmm(a, b), want);
  // Each batch item equals the product with the shared matrix.
  for (int64_t i = 0; i < 4; ++i)
    expect_bits(loom::mm(a[i], b[0]), std::vector<float>(want.begin() + i * 54, want.begin() + (i + 1) * 54));
}

// ---- the fused Linear op (Note [GEMM epilogue]) ----

// Bit for bit equality of two tensors (NaN matches NaN; -0 differs from +0).
void expect_same_tensor(const loom::Tensor& got, const loom::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  ASSERT_EQ(got.dtype(), want.dtype()) << what;
  const loom::Tensor g = got.to(loom::kFloat64).contiguous(), w = want.to(loom::kFloat64).contiguous();
  const double* gp = g.data_ptr<double>();
  const double* wp = w.data_ptr<double>();
  int64_t bad = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const bool same = (std::isnan(gp[i]) && std::isnan(wp[i])) ||
                      (gp[i] == wp[i] && std::signbit(gp[i]) == std::signbit(wp[i]));
    if (!same && bad++ < 5) ADD_FAILURE() << what << ": element " << i << " got " << gp[i] << ", want " << wp[i];
  }
  EXPECT_EQ(bad, 0) << what;
}

loom::Tensor unfused_linear(const loom::Tensor& x, const loom::Tensor& w, const loom::Tensor& b,
                            loom::LinearActivation act) {
  loom::Tensor y = loom::matmul(x, w.t());
  if (b.defined()) y = y + b;
  switch (act) {
    case loom::LinearActivation::None: return y;
    case loom::LinearActivation::Relu: return loom::relu(y);
    case loom::LinearActivation::Gelu: return loom::gelu(y);
    case loom::LinearActivation::GeluTanh: return loom::gelu(y, "tanh");
  }
  return y;
}

constexpr loom::LinearActivation kActivations[] = {loom::LinearActivation::None, loom::LinearActivation::Relu,
                                                  loom::LinearActivation::Gelu, loom::LinearActivation::GeluTanh};
const char* act_name(loom::LinearActivation a) {
  switch (a) {
    case loom::LinearActivation::None: return "none";
    case loom::LinearActivation::Relu: return "relu";
    case loom::LinearActivation::Gelu: return "gelu";
    case loom::LinearActivation::GeluTanh: return "gelu_tanh";
  }
  return "?";
}

// loom::linear gives the bits of matmul, add and the activation op, on every
// ISA, odd sizes across the block edges, transposed and strided operands,
// with and without a (strided) bias, and with NaN, inf and -0 in the data.
TEST(Gemm, FusedLinearMatchesTheUnfusedOpsBitForBit) {
  IsaEnvGuard isa_guard;
  ThreadCountGuard thread_guard;
  loom::manual_seed(5);
  const std::vector<std::array<int64_t, 3>> sizes = {{1, 1, 1},   {3, 7, 17},  {17, 33, 3},   {33, 257, 7},
                                                     {7, 1, 33},  {257, 17, 65}, {129, 300, 40}, {15, 0, 9},
                                                     // past a row block (mc), two depth blocks, and past the
                                                     // 256-column strips the GELU epilogue runs on
                                                     {300, 600, 530}};
  for (GemmIsa isa : runnable_isas()) {
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
    for (int threads : {1, 2}) {
      loom::set_num_threads(threads);
      for (const auto& [m, k, n] : sizes) {
        // x: contiguous, or a transposed view; w: (n, k) contiguous, or the transpose of a (k, n) matrix.
        const loom::Tensor xs[] = {loom::randn({m, k}), loom::randn({k, m}).t()};
        const loom::Tensor ws[] = {loom::randn({n, k}), loom::randn({k, n}).t()};
        const loom::Tensor bs[] = {loom::Tensor(), loom::randn({n}), loom::randn({n, 2}).select(1, 1)};
        for (int v = 0; v < 2; ++v) {
          loom::Tensor x = xs[v].clone();
          if (m >= 3 && k >= 1) {  // a NaN row, an inf row (inf - inf gives NaN too) and a -0 row
            x.index({0, 0}).fill_(kNaN);
            x.index({1, 0}).fill_(kInf);
            x.index({2}).fill_(-0.0f);
          }
          for (const loom::Tensor& b : bs) {
            for (loom::LinearActivation act : kActivations) {
              const std::string what = std::string(loom::cpu::gemm_isa_name(isa)) + " threads " +
                                       std::to_string(threads) + " " + std::to_string(m) + "x" + std::to_string(k) +
                                       "x" + std::to_string(n) + " layout " + std::to_string(v) + " " + act_name(act) +
                                       (b.defined() ? " bias" : "");
              expect_same_tensor(loom::linear(x, ws[v], b, act), unfused_linear(x, ws[v], b, act), what);
            }
          }
        }
      }
    }
  }
}

// NaN and inf through bias and ReLU in the register epilogue: relu(NaN) is
// NaN, as the Relu kernel. (The product never gives -0: each chain starts
// from +0, and -0 + +0 is +0.)
TEST(Gemm, FusedReluKeepsNaN) {
  IsaEnvGuard guard;
  const loom::Tensor x = loom::tensor({{1.0f}, {1.0f}, {1.0f}, {1.0f}});  // (4, 1)
  const loom::Tensor w = loom::tensor({{-0.0f}, {kNaN}, {-kInf}, {2.0f}});  // (4, 1): out (4, 4)
  const loom::Tensor b = loom::tensor({0.0f, 1.0f, 1.0f, -5.0f});
  for (GemmIsa isa : runnable_isas()) {
    setenv("LOOM_CPU_ISA", loom::cpu::gemm_isa_name(isa), 1);
    loom::cpu::testing::gemm_reload_isa();
    for (loom::LinearActivation act : kActivations) {
      expect_same_tensor(loom::linear(x, w, {}, act), unfused_linear(x, w, {}, act), act_name(act));
      expect_same_tensor(loom::linear(x, w, b, act), unfused_linear(x, w, b, act), act_name(act));
    }
    const loom::Tensor y = loom::linear(x, w, {}, loom::LinearActivation::Relu);
    EXPECT_TRUE(std::isnan(y.index({0, 1}).item<float>()));
    EXPECT_EQ(y.index({0, 2}).item<float>(), 0.0f);  // relu(-inf)
  }
}

// Other floating dtypes take the reference path: still the unfused bits.
TEST(Gemm, FusedLinearReferencePathMatchesTheUnfusedOps) {
  loom::manual_seed(9);
  for (loom::DType dt : {loom::kFloat64, loom::kFloat16, loom::kBFloat16}) {
    const loom::Tensor x = loom::randn({7, 13}).to(dt), w = loom::randn({5, 13}).to(dt), b = loom::randn({5}).to(dt);
    for (loom::LinearActivation act : kActivations)
      expect_same_tensor(loom::linear(x, w, b, act), unfused_linear(x, w, b, act),
                         std::string(loom::dtype_name(dt)) + " " + act_name(act));
  }
}

// Gradients through the fused op equal those through the unfused ops.
TEST(Gemm, FusedLinearBackwardMatchesTheUnfusedOps) {
  loom::manual_seed(13);
  for (loom::LinearActivation act : kActivations) {
    const loom::Tensor x0 = loom::randn({37, 29}), w0 = loom::randn({19, 29}), b0 = loom::randn({19});
    const loom::Tensor g = loom::randn({37, 19});
    std::vector<loom::Tensor> grads[2];
    for (int fused = 0; fused < 2; ++fused) {
      loom::Tensor x = x0.clone().requires_grad_(), w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
      loom::Tensor y = fused ? loom::linear(x, w, b, act) : unfused_linear(x, w, b, act);
      grads[fused] = loom::autograd::grad({y}, {x, w, b}, {g});
    }
    for (size_t i = 0; i < 3; ++i)
      expect_same_tensor(grads[1][i], grads[0][i], std::string(act_name(act)) + " grad " + std::to_string(i));
  }
}

TEST(Gemm, FusedLinearErrorsNameTheOpAndShapes) {
  const loom::Tensor x = loom::randn({2, 4}), w = loom::randn({3, 4});
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const loom::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] { loom::linear(x, loom::randn({3, 5})); }).find("linear: input of shape [2, 4] does not match weight of shape [3, 5]"), std::string::npos);
  EXPECT_NE(message([&] { loom::linear(x, w, loom::randn({4})); }).find("linear: expected bias of shape [3], got [4]"), std::string::npos);
  EXPECT_NE(message([&] { loom::linear(x, w.to(loom::kFloat64)); }).find("linear: expected input, weight and bias of one dtype"), std::string::npos);
  EXPECT_NE(message([&] { loom::linear(x.to(loom::kInt64), w.to(loom::kInt64), {}, loom::LinearActivation::Gelu); }).find("linear: GELU needs a floating-point dtype"), std::string::npos);
}

// nn::Sequential runs Linear + ReLU / GELU children as one fused op (Note
// [Sequential executes a fusion plan]): the output and every parameter's
// gradient equal the children run one by one, bit for bit.
TEST(Gemm, SequentialFusesLinearAndActivationBitForBit) {
  namespace nn = loom::nn;
  loom::manual_seed(21);
  nn::Sequential model(nn::Linear(29, 40), nn::ReLU(), nn::Linear(40, 33), nn::GELU("tanh"), nn::Linear(33, 17),
                       nn::GELU(), nn::Linear(17, 5), nn::ReLU());
  const loom::Tensor x = loom::randn({21, 29});
  const loom::Tensor g = loom::randn({21, 5});
  std::vector<loom::Tensor> params = model->parameters();

  const loom::Tensor fused = model(x);
  const std::vector<loom::Tensor> fused_grads = loom::autograd::grad({fused}, params, {g});

  loom::Tensor y = x;
  for (size_t i = 0; i < model->size(); ++i) y = model->at(static_cast<int64_t>(i))->forward(y);
  const std::vector<loom::Tensor> grads = loom::autograd::grad({y}, params, {g});

  expect_same_tensor(fused, y, "output");
  ASSERT_EQ(fused_grads.size(), grads.size());
  for (size_t i = 0; i < grads.size(); ++i) expect_same_tensor(fused_grads[i], grads[i], "grad " + std::to_string(i));
}

// matmul with batch dims broadcast in some dims but not others (which cannot
// merge into one bmm batch without copying): each item is the plain product.
TEST(Gemm, MatmulWithPartlyBroadcastBatches) {
  loom::manual_seed(17);
  const loom::Tensor a = loom::randn({2, 1, 9, 13});
  const loom::Tensor b = loom::randn({3, 13, 6});
  const loom::Tensor c = loom::matmul(a, b);  // (2, 3, 9, 6)
  ASSERT_EQ(c.sizes(), (std::vector<int64_t>{2, 3, 9, 6}));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      expect_same_tensor(c[i][j], loom::mm(a[i][0], b[j]), "item " + std::to_string(i) + ", " + std::to_string(j));
  // Fully broadcast batches merge: (2, 3) items against one shared matrix.
  const loom::Tensor s = loom::randn({1, 1, 13, 6});
  const loom::Tensor d = loom::matmul(loom::randn({2, 3, 9, 13}), s);
  ASSERT_EQ(d.sizes(), (std::vector<int64_t>{2, 3, 9, 6}));
}

// The pool (Note [Thread pool]) under the GEMM: products started from
// several user threads at once (one gets the pool, the others run inline)
// and after the team shrank below the number of workers all give the bits
// of a one-thread run.
TEST(Gemm, ConcurrentProductsAndChangingTeamsGiveTheSameBits) {
  ThreadCountGuard guard;
  loom::manual_seed(23);
  const loom::Tensor a = loom::randn({301, 257}), b = loom::randn({257, 199});
  loom::set_num_threads(1);
  const loom::Tensor want = loom::mm(a, b);
  for (int threads : {4, 2, 3, 2}) {
    loom::set_num_threads(threads);
    expect_same_tensor(loom::mm(a, b), want, "threads " + std::to_string(threads));
    std::vector<loom::Tensor> got(4);
    std::vector<std::thread> users;
    for (size_t u = 0; u < got.size(); ++u)
      users.emplace_back([&, u] {
        for (int rep = 0; rep < 3; ++rep) got[u] = loom::mm(a, b);
      });
    for (std::thread& t : users) t.join();
    for (size_t u = 0; u < got.size(); ++u) expect_same_tensor(got[u], want, "user thread " + std::to_string(u));
  }
  // parallel_team hands out every id exactly once, whoever runs them.
  std::vector<std::atomic<int>> seen(5);
  loom::parallel_team(5, [&](int id, int team) {
    EXPECT_EQ(team, 5);
    seen[static_cast<size_t>(id)]++;
  });
  for (auto& v : seen) EXPECT_EQ(v.load(), 1);
}

}  // namespace
