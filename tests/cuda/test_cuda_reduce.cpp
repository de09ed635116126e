// The reduce family on CUDA (src/backend/cuda/cuda_reduce.cu): reductions
// (sum, prod, amax, amin, argmax, argmin), the row-wise ops (softmax,
// log_softmax, cumsum and the softmax backwards) and the fused row ops
// (layer_norm, cross_entropy, forward and backward), each through the public
// op on CUDA tensors against the CPU reference on the same inputs: every
// dtype the CPU takes, row lengths 1, 7, 1023 and 4097, contiguous,
// transposed and sliced inputs, reductions over one, several and all dims,
// a 10^7-element full reduction, and gradients.
//
// Tolerances: exact where both sides are exact (max / min / arg*, integer
// sums and products); otherwise a few roundings of the result's dtype:
// the GPU accumulates in the CPU's types (double / int64) in another order,
// and computes exp / log in compute_t as the CPU's float32 fast paths do.
#include <loom/cuda.h>
#include <loom/loom.h>
#include <loom/nn/functional.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

namespace F = nn::functional;
using test::close_to_cpu;
using Sizes = std::vector<int64_t>;

const std::vector<DType> kAllDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32,
                                       kInt64,   kUInt8,   kBool,    kInt8};
const std::vector<DType> kFloatDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16};

struct Tol {
  double rtol, atol;
};

// A result rounded once to `dt` from a double (int64) accumulation that
// differs from the CPU's in order only: a unit in the last place at most.
Tol sum_tol(DType dt) {
  switch (dt) {
    case kFloat64: return {1e-12, 1e-12};
    case kFloat32: return {1e-6, 1e-6};
    case kFloat16: return {2e-3, 2e-3};
    case kBFloat16: return {1.6e-2, 1.6e-2};
    default: return {0, 0};
  }
}

// A result computed in compute_t through exp / log / sqrt and a few float
// operations (the CPU's float32 fast paths do the same in another order).
Tol math_tol(DType dt) {
  switch (dt) {
    case kFloat64: return {1e-12, 1e-12};
    case kFloat32: return {1e-5, 1e-6};
    case kFloat16: return {4e-3, 2e-3};
    case kBFloat16: return {3.2e-2, 1.6e-2};
    default: return {0, 0};
  }
}

// Normal floats; integers in [-100, 100) ([0, 100) for uint8); bools half true.
Tensor sample(const Sizes& sizes, DType dt, Generator& gen) {
  if (dt == kFloat64) return randn(sizes, kFloat64, gen);
  if (is_floating_point(dt)) return randn(sizes, kFloat32, gen).to(dt);
  if (dt == kBool) return rand(sizes, kFloat32, gen).lt(Scalar(0.5));
  return randint(dt == kUInt8 ? 0 : -100, 100, sizes, kInt64, gen).to(dt);
}

// Small integers of any dtype: many ties for argmax / argmin.
Tensor sample_ties(const Sizes& sizes, DType dt, Generator& gen) {
  if (dt == kBool) return rand(sizes, kFloat32, gen).lt(Scalar(0.5));
  return randint(dt == kUInt8 ? 0 : -3, 4, sizes, kInt64, gen).to(dt);
}

// How an input is laid out in memory. Each view is applied to the CPU
// tensor and to its CUDA copy alike, so both hold the same logical values.
struct Layout {
  const char* name;
  std::function<Tensor(const Tensor&)> view;
  std::function<Sizes(const Sizes&)> base;  // the base shape that gives `sizes` after view
};
std::vector<Layout> layouts() {
  return {
      {"contiguous", [](const Tensor& t) { return t; }, [](const Sizes& s) { return s; }},
      // Stored with the first and last dims swapped.
      {"transposed", [](const Tensor& t) { return t.transpose(0, -1); },
       [](const Sizes& s) {
         Sizes b = s;
         std::swap(b.front(), b.back());
         return b;
       }},
      // Every second element of a last dim twice as long, from offset 1.
      {"sliced", [](const Tensor& t) { return t.slice(-1, 1, std::nullopt, 2); },
       [](const Sizes& s) {
         Sizes b = s;
         b.back() = 2 * b.back() + 1;
         return b;
       }},
  };
}

// A CPU tensor of `sizes` in `layout`, and the same values on the GPU in the same layout.
struct Pair {
  Tensor cpu, gpu;
};
Pair pair_of(const Sizes& sizes, const Layout& layout, const std::function<Tensor(const Sizes&)>& draw) {
  const Tensor base = draw(layout.base(sizes));
  Pair p{layout.view(base), layout.view(base.cuda())};
  EXPECT_EQ(p.cpu.sizes(), sizes) << layout.name;
  return p;
}

std::string describe(DType dt, const Layout& l, const Sizes& s, const std::string& what = "") {
  return std::string(dtype_name(dt)) + " " + l.name + " " + shape_str(s) + " " + what;
}

// ---- reductions ----

TEST(CudaReduce, SumProdAmaxAminEveryDtypeLayoutAndDims) {
  LOOM_REQUIRE_GPU();
  Generator gen(1);
  const std::vector<Sizes> shapes = {{3, 1}, {2, 7}, {5, 1023}, {3, 4097}, {1023, 64}, {4, 6, 9}};
  for (DType dt : kAllDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : shapes) {
        const Pair x = pair_of(shape, lay, [&](const Sizes& s) { return sample(s, dt, gen); });
        // Products of values near 1 (floats) stay finite; integer products wrap alike on both sides.
        const Pair p = pair_of(shape, lay, [&](const Sizes& s) {
          return is_floating_point(dt) ? (randn(s, kFloat32, gen) * 0.05 + 1.0).to(dt) : sample(s, dt, gen);
        });
        std::vector<Sizes> dim_lists = {{-1}, {0}, {}};
        if (shape.size() == 3) dim_lists.insert(dim_lists.end(), {{0, 2}, {1, 2}});
        for (const Sizes& dims : dim_lists) {
          const std::string at = describe(dt, lay, shape, "dims " + shape_str(dims));
          const Tol t = sum_tol(dt);
          EXPECT_TRUE(close_to_cpu(sum(x.gpu, dims), sum(x.cpu, dims), t.rtol, t.atol)) << "sum " << at;
          EXPECT_TRUE(close_to_cpu(sum(x.gpu, dims, /*keepdim=*/true), sum(x.cpu, dims, true), t.rtol, t.atol))
              << "sum keepdim " << at;
          EXPECT_TRUE(close_to_cpu(prod(p.gpu, dims), prod(p.cpu, dims), t.rtol, t.atol)) << "prod " << at;
          EXPECT_TRUE(close_to_cpu(amax(x.gpu, dims), amax(x.cpu, dims), 0, 0)) << "amax " << at;
          EXPECT_TRUE(close_to_cpu(amin(x.gpu, dims), amin(x.cpu, dims), 0, 0)) << "amin " << at;
        }
      }
}

TEST(CudaReduce, SumIntoAWiderDtype) {
  LOOM_REQUIRE_GPU();
  Generator gen(2);
  const Sizes shape = {6, 1023};
  struct Case {
    DType in, out;
  };
  for (const Case& c : {Case{kFloat16, kFloat32}, Case{kBFloat16, kFloat32}, Case{kFloat16, kFloat64},
                        Case{kFloat32, kFloat64}, Case{kInt32, kInt64}, Case{kUInt8, kInt64}, Case{kBool, kInt64},
                        Case{kInt8, kInt64}})
    for (const Sizes& dims : {Sizes{1}, Sizes{0}, Sizes{}}) {
      const Tensor x = sample(shape, c.in, gen);
      const Tensor g = sum(x.cuda(), dims, false, c.out), r = sum(x, dims, false, c.out);
      const Tol t = sum_tol(c.out);
      EXPECT_TRUE(close_to_cpu(g, r, t.rtol, t.atol)) << dtype_name(c.in) << " -> " << dtype_name(c.out);
    }
  // mean of the 16-bit floats sums into float32.
  for (DType dt : {kFloat16, kBFloat16}) {
    const Tensor x = sample(shape, dt, gen);
    const Tol t = sum_tol(dt);
    EXPECT_TRUE(close_to_cpu(mean(x.cuda(), {1}), mean(x, {1}), t.rtol, t.atol)) << dtype_name(dt);
  }
}

TEST(CudaReduce, ArgmaxArgminEveryDtypeWithTies) {
  LOOM_REQUIRE_GPU();
  Generator gen(3);
  for (DType dt : kAllDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : {Sizes{4, 1}, Sizes{3, 7}, Sizes{5, 1023}, Sizes{2, 4097}, Sizes{1023, 40}}) {
        for (int variant = 0; variant < 2; ++variant) {
          const Pair x = pair_of(shape, lay, [&](const Sizes& s) {
            return variant == 0 ? sample(s, dt, gen) : sample_ties(s, dt, gen);
          });
          const std::string at = describe(dt, lay, shape, variant == 0 ? "random" : "ties");
          for (int64_t d : {-1, 0}) {
            EXPECT_TRUE(close_to_cpu(argmax(x.gpu, d), argmax(x.cpu, d), 0, 0)) << "argmax dim " << d << " " << at;
            EXPECT_TRUE(close_to_cpu(argmin(x.gpu, d), argmin(x.cpu, d), 0, 0)) << "argmin dim " << d << " " << at;
            EXPECT_TRUE(close_to_cpu(argmax(x.gpu, d, true), argmax(x.cpu, d, true), 0, 0)) << "keepdim " << at;
          }
          // Over the flattened tensor.
          EXPECT_TRUE(close_to_cpu(argmax(x.gpu), argmax(x.cpu), 0, 0)) << "argmax flat " << at;
          EXPECT_TRUE(close_to_cpu(argmin(x.gpu), argmin(x.cpu), 0, 0)) << "argmin flat " << at;
          // max(dim) / min(dim): values gathered at the indices.
          const auto [gv, gi] = max(x.gpu, 1);
          const auto [cv, ci] = max(x.cpu, 1);
          EXPECT_TRUE(close_to_cpu(gv, cv, 0, 0)) << "max values " << at;
          EXPECT_TRUE(close_to_cpu(gi, ci, 0, 0)) << "max indices " << at;
        }
      }
}

// A float32 tensor of `sizes` with NaN, +-inf and ties planted in its rows.
Tensor with_specials(const Sizes& sizes, Generator& gen) {
  Tensor x = randn(sizes, kFloat32, gen).contiguous();
  float* p = x.data_ptr<float>();
  const int64_t n = sizes.back(), rows = x.numel() / n;
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* row = p + r * n;
    switch (r % 6) {
      case 0: row[n / 2] = nan; break;  // one NaN
      case 1:                           // two NaNs: the first wins argmax / argmin
        row[n - 1] = nan;
        row[n / 3] = nan;
        break;
      case 2: row[n / 2] = inf; row[0] = -inf; break;
      case 3:
        for (int64_t j = 0; j < n; ++j) row[j] = -inf;  // all -inf
        break;
      case 4:
        for (int64_t j = 0; j < n; ++j) row[j] = static_cast<float>(j % 3);  // ties
        break;
      default: break;
    }
  }
  return x;
}

TEST(CudaReduce, NanInfinityAndTiesAsOnTheCpu) {
  LOOM_REQUIRE_GPU();
  Generator gen(4);
  for (DType dt : kFloatDtypes)
    for (const Sizes& shape : {Sizes{12, 1}, Sizes{12, 7}, Sizes{12, 1023}, Sizes{12, 4097}}) {
      const Tensor x = with_specials(shape, gen).to(dt);
      const Tensor g = x.cuda();
      const std::string at = std::string(dtype_name(dt)) + " " + shape_str(shape);
      EXPECT_TRUE(close_to_cpu(amax(g, {1}), amax(x, {1}), 0, 0)) << "amax " << at;
      EXPECT_TRUE(close_to_cpu(amin(g, {1}), amin(x, {1}), 0, 0)) << "amin " << at;
      EXPECT_TRUE(close_to_cpu(argmax(g, 1), argmax(x, 1), 0, 0)) << "argmax " << at;
      EXPECT_TRUE(close_to_cpu(argmin(g, 1), argmin(x, 1), 0, 0)) << "argmin " << at;
      EXPECT_TRUE(close_to_cpu(argmax(g.t(), 0), argmax(x.t(), 0), 0, 0)) << "argmax strided " << at;
      const Tol t = sum_tol(dt), m = math_tol(dt);
      EXPECT_TRUE(close_to_cpu(sum(g, {1}), sum(x, {1}), t.rtol, t.atol)) << "sum " << at;
      EXPECT_TRUE(close_to_cpu(cumsum(g, 1), cumsum(x, 1), t.rtol, t.atol)) << "cumsum " << at;
      // Rows with NaN, +inf or all -inf come out NaN, as on the CPU.
      EXPECT_TRUE(close_to_cpu(softmax(g, 1), softmax(x, 1), m.rtol, m.atol)) << "softmax " << at;
      EXPECT_TRUE(close_to_cpu(log_softmax(g, 1), log_softmax(x, 1), m.rtol, m.atol)) << "log_softmax " << at;
    }
}

TEST(CudaReduce, TenMillionElementsAndFewLongRows) {
  LOOM_REQUIRE_GPU();
  Generator gen(5);
  const int64_t n = 10'000'000;
  const Tensor x = randn({n}, kFloat32, gen);
  const Tensor g = x.cuda();
  // A full sum over 10^7 elements: many blocks, then one fold of their partials.
  EXPECT_TRUE(close_to_cpu(sum(g), sum(x), 1e-6, 1e-6));
  EXPECT_TRUE(close_to_cpu(amax(g), amax(x), 0, 0));
  EXPECT_TRUE(close_to_cpu(amin(g), amin(x), 0, 0));
  EXPECT_TRUE(close_to_cpu(argmax(g), argmax(x), 0, 0));
  EXPECT_TRUE(close_to_cpu(argmin(g), argmin(x), 0, 0));
  const Tensor x64 = x.to(kFloat64);
  EXPECT_TRUE(close_to_cpu(sum(x64.cuda()), sum(x64), 1e-12, 1e-9));
  const Tensor xi = randint(-1000, 1000, {n}, kInt64, gen).to(kInt32);
  EXPECT_TRUE(close_to_cpu(sum(xi.cuda()), sum(xi), 0, 0));
  // Few long rows (the block split), a few columns of a tall matrix (the
  // block split reading with a stride), many short columns (threads per
  // output, rows cut into chunks), and a long row per warp.
  for (const Sizes& shape : {Sizes{4, 2'500'000}, Sizes{2'500'000, 4}, Sizes{10'000, 1'000}, Sizes{1'000, 10'000}})
    for (int64_t d : {0, 1}) {
      const Tensor xs = x.view(shape), gs = g.view(shape);
      const std::string at = shape_str(shape) + " dim " + std::to_string(d);
      EXPECT_TRUE(close_to_cpu(sum(gs, {d}), sum(xs, {d}), 1e-6, 1e-6)) << "sum " << at;
      EXPECT_TRUE(close_to_cpu(amax(gs, {d}), amax(xs, {d}), 0, 0)) << "amax " << at;
      EXPECT_TRUE(close_to_cpu(argmin(gs, d), argmin(xs, d), 0, 0)) << "argmin " << at;
      EXPECT_TRUE(close_to_cpu(sum(gs.t(), {d}), sum(xs.t(), {d}), 1e-6, 1e-6)) << "sum transposed " << at;
    }
  // Many rows of a long row each (a warp per row).
  const Tensor wide = x.narrow(0, 0, 2100 * 4097).view({2100, 4097});
  EXPECT_TRUE(close_to_cpu(sum(wide.cuda(), {1}), sum(wide, {1}), 1e-6, 1e-6));
  // One long scan.
  const Tensor row = x.narrow(0, 0, 1'000'000);
  EXPECT_TRUE(close_to_cpu(cumsum(row.cuda(), 0), cumsum(row, 0), 1e-6, 1e-5));
  const Tensor row64 = row.to(kFloat64);
  EXPECT_TRUE(close_to_cpu(cumsum(row64.cuda(), 0), cumsum(row64, 0), 1e-12, 1e-10));
}

TEST(CudaReduce, EmptyExtentsGiveTheIdentity) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kInt64, kFloat16}) {
    const Tensor x = zeros({0, 5}, dt), g = x.cuda();
    EXPECT_TRUE(close_to_cpu(sum(g, {0}), sum(x, {0}), 0, 0)) << dtype_name(dt);
    EXPECT_TRUE(close_to_cpu(prod(g, {0}), prod(x, {0}), 0, 0)) << dtype_name(dt);
    EXPECT_TRUE(close_to_cpu(sum(g, {1}), sum(x, {1}), 0, 0)) << dtype_name(dt);
    EXPECT_TRUE(close_to_cpu(cumsum(g, 0), cumsum(x, 0), 0, 0)) << dtype_name(dt);
  }
  EXPECT_TRUE(close_to_cpu(softmax(zeros({0, 3}).cuda(), 1), softmax(zeros({0, 3}), 1), 0, 0));
}

// ---- cumsum, softmax, log_softmax ----

TEST(CudaReduce, CumsumEveryDtypeLayoutAndDim) {
  LOOM_REQUIRE_GPU();
  Generator gen(6);
  for (DType dt : kAllDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : {Sizes{3, 1}, Sizes{4, 7}, Sizes{3, 129}, Sizes{5, 1023}, Sizes{2, 4097}}) {
        const Pair x = pair_of(shape, lay, [&](const Sizes& s) { return sample(s, dt, gen); });
        const Tol t = sum_tol(dt);
        for (int64_t d : {-1, 0})
          EXPECT_TRUE(close_to_cpu(cumsum(x.gpu, d), cumsum(x.cpu, d), t.rtol, t.atol))
              << "dim " << d << " " << describe(dt, lay, shape);
      }
}

TEST(CudaReduce, SoftmaxAndLogSoftmaxEveryFloatDtypeLayoutAndDim) {
  LOOM_REQUIRE_GPU();
  Generator gen(7);
  for (DType dt : kFloatDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : {Sizes{3, 1}, Sizes{4, 7}, Sizes{5, 1023}, Sizes{3, 4097}, Sizes{2, 3, 33}}) {
        const Pair x = pair_of(shape, lay, [&](const Sizes& s) { return (sample(s, kFloat32, gen) * 4).to(dt); });
        const Tol t = math_tol(dt);
        for (int64_t d : {-1, 0}) {
          const std::string at = "dim " + std::to_string(d) + " " + describe(dt, lay, shape);
          EXPECT_TRUE(close_to_cpu(softmax(x.gpu, d), softmax(x.cpu, d), t.rtol, t.atol)) << "softmax " << at;
          EXPECT_TRUE(close_to_cpu(log_softmax(x.gpu, d), log_softmax(x.cpu, d), t.rtol, t.atol))
              << "log_softmax " << at;
        }
      }
  // A 0-dim tensor is one row of one element.
  EXPECT_TRUE(close_to_cpu(softmax(scalar_tensor(2.5).cuda(), 0), softmax(scalar_tensor(2.5), 0), 0, 0));
}

TEST(CudaReduce, SoftmaxBackwardsEveryFloatDtypeAndLayout) {
  LOOM_REQUIRE_GPU();
  Generator gen(8);
  for (DType dt : kFloatDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : {Sizes{3, 1}, Sizes{4, 7}, Sizes{5, 1023}, Sizes{3, 4097}}) {
        const Pair x = pair_of(shape, lay, [&](const Sizes& s) { return sample(s, dt, gen); });
        const Pair g = pair_of(shape, lay, [&](const Sizes& s) { return sample(s, dt, gen); });
        const Tol t = math_tol(dt);
        for (int64_t d : {-1, 0}) {
          const std::string at = "dim " + std::to_string(d) + " " + describe(dt, lay, shape);
          // The outputs the backwards take, computed once on the CPU and copied.
          const Tensor y = softmax(x.cpu, d), ly = log_softmax(x.cpu, d);
          EXPECT_TRUE(close_to_cpu(softmax_backward(g.gpu, y.cuda(), d), softmax_backward(g.cpu, y, d), t.rtol, t.atol))
              << "softmax_backward " << at;
          EXPECT_TRUE(close_to_cpu(log_softmax_backward(g.gpu, ly.cuda(), d), log_softmax_backward(g.cpu, ly, d),
                                   t.rtol, t.atol))
              << "log_softmax_backward " << at;
        }
      }
}

// ---- layer_norm ----

TEST(CudaReduce, LayerNormEveryFloatDtypeWithAndWithoutAffine) {
  LOOM_REQUIRE_GPU();
  Generator gen(9);
  for (DType dt : kFloatDtypes)
    for (const Layout& lay : layouts())
      for (const Sizes& shape : {Sizes{3, 1}, Sizes{4, 7}, Sizes{5, 1023}, Sizes{3, 4097}, Sizes{2, 5, 33}}) {
        // Rows with a mean far from 0, so the two-pass variance matters.
        const Pair x = pair_of(shape, lay, [&](const Sizes& s) { return (sample(s, kFloat32, gen) * 2 + 3).to(dt); });
        const Sizes norm(shape.end() - (shape.size() == 3 ? 2 : 1), shape.end());
        const Tensor w = sample(norm, dt, gen), b = sample(norm, dt, gen);
        // y = xhat * w + b cancels: float32 rounding errors of xhat * w (up to ~10) stay absolute.
        const Tol t = dt == kFloat32 ? Tol{1e-5, 1e-5} : math_tol(dt);
        const std::string at = describe(dt, lay, shape, "normalized " + shape_str(norm));
        EXPECT_TRUE(close_to_cpu(F::layer_norm(x.gpu, norm), F::layer_norm(x.cpu, norm), t.rtol, t.atol)) << at;
        EXPECT_TRUE(close_to_cpu(F::layer_norm(x.gpu, norm, w.cuda(), b.cuda(), 1e-3),
                                 F::layer_norm(x.cpu, norm, w, b, 1e-3), t.rtol, t.atol))
            << "affine " << at;
        EXPECT_TRUE(close_to_cpu(F::layer_norm(x.gpu, norm, w.cuda()), F::layer_norm(x.cpu, norm, w), t.rtol, t.atol))
            << "weight only " << at;
        EXPECT_TRUE(close_to_cpu(F::layer_norm(x.gpu, norm, {}, b.cuda()), F::layer_norm(x.cpu, norm, {}, b), t.rtol,
                                 t.atol))
            << "bias only " << at;
      }
}

// Leaves of equal values on the CPU and on the GPU, both requiring grad.
struct Leaves {
  Tensor cpu, gpu;
};
Leaves leaves(const Tensor& values) {
  Tensor c = values.detach().clone(), g = values.detach().cuda();
  c.requires_grad_();
  g.requires_grad_();
  return {c, g};
}

TEST(CudaReduce, LayerNormGradients) {
  LOOM_REQUIRE_GPU();
  Generator gen(10);
  for (DType dt : {kFloat32, kFloat64})
    for (const Sizes& shape : {Sizes{3, 1}, Sizes{6, 7}, Sizes{5, 1023}, Sizes{3, 4097}, Sizes{70, 33}, Sizes{2, 5, 33}}) {
      const Sizes norm(shape.end() - (shape.size() == 3 ? 2 : 1), shape.end());
      const Leaves x = leaves(sample(shape, dt, gen) * 2 + 1), w = leaves(sample(norm, dt, gen)),
                   b = leaves(sample(norm, dt, gen));
      const Tensor up = sample(shape, dt, gen);  // the gradient flowing in
      (F::layer_norm(x.cpu, norm, w.cpu, b.cpu) * up).sum().backward();
      (F::layer_norm(x.gpu, norm, w.gpu, b.gpu) * up.cuda()).sum().backward();
      const Tol t = dt == kFloat64 ? Tol{1e-10, 1e-10} : Tol{1e-5, 1e-5};
      const std::string at = std::string(dtype_name(dt)) + " " + shape_str(shape);
      EXPECT_TRUE(close_to_cpu(x.gpu.grad(), x.cpu.grad(), t.rtol, t.atol)) << "dx " << at;
      EXPECT_TRUE(close_to_cpu(w.gpu.grad(), w.cpu.grad(), t.rtol, t.atol)) << "dweight " << at;
      EXPECT_TRUE(close_to_cpu(b.gpu.grad(), b.cpu.grad(), t.rtol, t.atol)) << "dbias " << at;
      // Without an affine part: dx only.
      const Leaves x2 = leaves(sample(shape, dt, gen));
      (F::layer_norm(x2.cpu, norm) * up).sum().backward();
      (F::layer_norm(x2.gpu, norm) * up.cuda()).sum().backward();
      EXPECT_TRUE(close_to_cpu(x2.gpu.grad(), x2.cpu.grad(), t.rtol, t.atol)) << "dx without affine " << at;
    }
}

// ---- cross_entropy ----

// Class targets in [0, classes), every fifth one set to ignore_index.
Tensor targets(int64_t rows, int64_t classes, int64_t ignore_index, Generator& gen) {
  Tensor t = randint(0, classes, {rows}, kInt64, gen).contiguous();
  int64_t* p = t.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; r += 5) p[r] = ignore_index;
  return t;
}

TEST(CudaReduce, CrossEntropyEveryFloatDtypeSmoothingAndIgnoreIndex) {
  LOOM_REQUIRE_GPU();
  Generator gen(11);
  for (DType dt : kFloatDtypes)
    for (int64_t classes : {1, 7, 1023, 4097})
      for (double s : {0.0, 0.1})
        for (int64_t ignore : {int64_t{-100}, int64_t{0}}) {
          const int64_t rows = 11;
          const Tensor x = (sample({rows, classes}, kFloat32, gen) * 3).to(dt);
          const Tensor t = targets(rows, classes, ignore, gen);
          const Tol tol = math_tol(dt);
          const std::string at = std::string(dtype_name(dt)) + " classes " + std::to_string(classes) + " s " +
                                 std::to_string(s) + " ignore " + std::to_string(ignore);
          EXPECT_TRUE(close_to_cpu(cross_entropy_per_row(x.cuda(), t.cuda(), s, ignore),
                                   cross_entropy_per_row(x, t, s, ignore), tol.rtol, tol.atol))
              << "per row " << at;
          const F::CrossEntropyOptions o{.ignore_index = ignore, .reduction = "none", .label_smoothing = s};
          EXPECT_TRUE(close_to_cpu(F::cross_entropy(x.cuda(), t.cuda(), o), F::cross_entropy(x, t, o), tol.rtol,
                                   tol.atol))
              << "F::cross_entropy " << at;
          // Non-contiguous logits: the transpose of a (C, N) tensor.
          const Tensor xt = (sample({classes, rows}, kFloat32, gen) * 3).to(dt);
          EXPECT_TRUE(close_to_cpu(cross_entropy_per_row(xt.cuda().t(), t.cuda(), s, ignore),
                                   cross_entropy_per_row(xt.t(), t, s, ignore), tol.rtol, tol.atol))
              << "transposed " << at;
        }
}

TEST(CudaReduce, CrossEntropyGradients) {
  LOOM_REQUIRE_GPU();
  Generator gen(12);
  for (DType dt : {kFloat32, kFloat64})
    for (int64_t classes : {1, 7, 1023, 4097})
      for (double s : {0.0, 0.2}) {
        const int64_t rows = 13;
        const Leaves x = leaves(sample({rows, classes}, dt, gen) * 2);
        const Tensor t = targets(rows, classes, -100, gen);
        const F::CrossEntropyOptions o{.label_smoothing = s};
        F::cross_entropy(x.cpu, t, o).backward();
        F::cross_entropy(x.gpu, t.cuda(), o).backward();
        const Tol tol = dt == kFloat64 ? Tol{1e-10, 1e-12} : Tol{1e-5, 1e-7};
        EXPECT_TRUE(close_to_cpu(x.gpu.grad(), x.cpu.grad(), tol.rtol, tol.atol))
            << dtype_name(dt) << " classes " << classes << " s " << s;
      }
}

TEST(CudaReduce, CrossEntropyTargetOutOfRangeIsAnError) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn({4, 5}).cuda();
  for (int64_t bad : {int64_t{5}, int64_t{-1}}) {
    const Tensor t = tensor(std::vector<int64_t>{0, 2, bad, 1}, kInt64).cuda();
    try {
      (void)cross_entropy_per_row(x, t);
      ADD_FAILURE() << "no error for target " << bad;
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("out of range"), std::string::npos) << m;
      EXPECT_NE(m.find(std::to_string(bad)), std::string::npos) << m;
    }
  }
  // The bad target was never read through: the device is still usable.
  EXPECT_TRUE(close_to_cpu(sum(x), sum(x.cpu()), 1e-6, 1e-6));
}

// ---- gradients of softmax, log_softmax and sum ----

TEST(CudaReduce, SoftmaxLogSoftmaxAndSumGradients) {
  LOOM_REQUIRE_GPU();
  Generator gen(13);
  for (DType dt : {kFloat32, kFloat64})
    for (const Sizes& shape : {Sizes{3, 1}, Sizes{4, 7}, Sizes{5, 1023}, Sizes{3, 4097}})
      for (int64_t d : {-1, 0}) {
        const Tol t = dt == kFloat64 ? Tol{1e-10, 1e-12} : Tol{1e-5, 1e-6};
        const std::string at = std::string(dtype_name(dt)) + " " + shape_str(shape) + " dim " + std::to_string(d);
        const Tensor up = sample(shape, dt, gen);
        {
          const Leaves x = leaves(sample(shape, dt, gen));
          (softmax(x.cpu, d) * up).sum().backward();
          (softmax(x.gpu, d) * up.cuda()).sum().backward();
          EXPECT_TRUE(close_to_cpu(x.gpu.grad(), x.cpu.grad(), t.rtol, t.atol)) << "softmax " << at;
        }
        {
          const Leaves x = leaves(sample(shape, dt, gen));
          (log_softmax(x.cpu, d) * up).sum().backward();
          (log_softmax(x.gpu, d) * up.cuda()).sum().backward();
          EXPECT_TRUE(close_to_cpu(x.gpu.grad(), x.cpu.grad(), t.rtol, t.atol)) << "log_softmax " << at;
        }
        {
          const Leaves x = leaves(sample(shape, dt, gen));
          const Tensor w = sample({shape[d == 0 ? 1 : 0]}, dt, gen);
          (sum(x.cpu, {d}) * w).sum().backward();
          (sum(x.gpu, {d}) * w.cuda()).sum().backward();
          EXPECT_TRUE(close_to_cpu(x.gpu.grad(), x.cpu.grad(), 0, 0)) << "sum " << at;
        }
      }
}

}  // namespace
}  // namespace loom
