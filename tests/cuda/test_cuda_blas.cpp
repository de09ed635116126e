// The CUDA blas family against the CPU: Bmm and Linear on cuBLAS
// (src/backend/cuda/cuda_blas.cu, Note [CUDA GEMM]), the fused optimizer
// steps (cuda_optim.cu), the Philox random kernels (cuda_random.cu) and the
// indexing kernels (cuda_index.cu, Note [CUDA index errors]). Each test runs
// public ops on the same inputs on both devices and compares with
// close_to_cpu: to float rounding where the order of a sum differs (GEMM,
// atomics, device log / cos), bit for bit where both devices compute the
// same roundings (copies, indexing, Philox transforms, optimizer updates).
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

using test::close_to_cpu;
using test::error_of;
namespace F = nn::functional;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda()); }

// Standard normal values drawn on the CPU, then cast to `dt`: both devices
// get the same inputs.
Tensor randn_cpu(IntArrayRef sizes, uint64_t seed, DType dt = kFloat32) {
  return randn(sizes, kFloat32, Generator(seed)).to(dt);
}

// A leaf copy of `t` on the GPU that requires grad.
Tensor gpu_leaf(const Tensor& t) { return gpu(t.detach()).requires_grad_(true); }

// The tolerance of a product of depth k in `dt` against the CPU's
// (Note [CUDA GEMM]): float32 and float64 sums in another order, to a few
// roundings of the sum's magnitude (about sqrt(k) for these inputs);
// float16 and bfloat16 round that float32 sum once, so may differ by one
// unit in the last place of the 16-bit result.
struct Tol {
  double rtol, atol;
};
Tol gemm_tol(DType dt, int64_t k) {
  const double scale = std::sqrt(static_cast<double>(std::max<int64_t>(k, 1)));
  switch (dt) {
    case DType::Float64: return {1e-12, 1e-12 * scale};
    case DType::Float16: return {2e-3, 1e-4 * scale};
    case DType::BFloat16: return {1.6e-2, 1e-3 * scale};
    default: return {1e-5, 1e-5 * scale};
  }
}

// ---------------------------------------------------------------- matmul / bmm

TEST(CudaBlas, MatmulFloat32OddSizes) {
  LOOM_REQUIRE_GPU();
  const int64_t sizes[] = {1, 7, 33, 257};
  uint64_t seed = 1;
  for (int64_t m : sizes)
    for (int64_t n : sizes)
      for (int64_t k : sizes) {
        const Tensor a = randn_cpu({m, k}, seed++), b = randn_cpu({k, n}, seed++);
        const Tol t = gemm_tol(kFloat32, k);
        EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(b)), matmul(a, b), t.rtol, t.atol))
            << "(" << m << ", " << k << ") @ (" << k << ", " << n << ")";
      }
}

TEST(CudaBlas, MatmulTransposedAndSlicedOperands) {
  LOOM_REQUIRE_GPU();
  const int64_t m = 33, k = 257, n = 7;
  const Tol t = gemm_tol(kFloat32, k);
  // Column-major operands: cuBLAS reads them transposed, nothing is copied.
  const Tensor at = randn_cpu({k, m}, 10).t(), bt = randn_cpu({n, k}, 11).t();
  const Tensor a = randn_cpu({m, k}, 12), b = randn_cpu({k, n}, 13);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(randn_cpu({k, m}, 10)).t(), gpu(b)), matmul(at, b), t.rtol, t.atol));
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(randn_cpu({n, k}, 11)).t()), matmul(a, bt), t.rtol, t.atol));
  EXPECT_TRUE(close_to_cpu(matmul(gpu(randn_cpu({k, m}, 10)).t(), gpu(randn_cpu({n, k}, 11)).t()), matmul(at, bt),
                           t.rtol, t.atol));
  // Slices: a row stride above the row length (a leading dimension).
  const Tensor wide = randn_cpu({m + 5, k + 9}, 14);
  const Tensor sa = wide.narrow(0, 3, m).narrow(1, 4, k);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(wide).narrow(0, 3, m).narrow(1, 4, k), gpu(b)), matmul(sa, b), t.rtol, t.atol));
  // Neither row- nor column-major (both strides above 1), and an expanded
  // operand (stride 0): copied to a contiguous buffer first.
  const Tensor every_other = randn_cpu({m, k, 2}, 15);
  const Tensor ea = every_other.select(2, 1);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(every_other).select(2, 1), gpu(b)), matmul(ea, b), t.rtol, t.atol));
  const Tensor column = randn_cpu({k, 1}, 16);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(column).expand({k, n})), matmul(a, column.expand({k, n})), t.rtol,
                           t.atol));
  // Vectors: matrix @ vector, vector @ matrix, and a dot product.
  const Tensor v = randn_cpu({k}, 17);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(v)), matmul(a, v), t.rtol, t.atol));
  EXPECT_TRUE(close_to_cpu(matmul(gpu(v), gpu(randn_cpu({k, n}, 13))), matmul(v, b), t.rtol, t.atol));
  EXPECT_TRUE(close_to_cpu(matmul(gpu(v), gpu(v)), matmul(v, v), t.rtol, t.atol));
}

TEST(CudaBlas, BmmBatchedPermutedAndBroadcast) {
  LOOM_REQUIRE_GPU();
  const int64_t batch = 5, m = 33, k = 7, n = 257;
  const Tol t = gemm_tol(kFloat32, k);
  const Tensor a = randn_cpu({batch, m, k}, 20), b = randn_cpu({batch, k, n}, 21);
  EXPECT_TRUE(close_to_cpu(bmm(gpu(a), gpu(b)), bmm(a, b), t.rtol, t.atol));
  // Batch not outermost in memory: (m, batch, k) permuted to (batch, m, k).
  const Tensor ap = randn_cpu({m, batch, k}, 22);
  EXPECT_TRUE(close_to_cpu(bmm(gpu(ap).permute({1, 0, 2}), gpu(b)), bmm(ap.permute({1, 0, 2}), b), t.rtol, t.atol));
  // Each batch item transposed.
  const Tensor bt = randn_cpu({batch, n, k}, 23);
  EXPECT_TRUE(close_to_cpu(bmm(gpu(a), gpu(bt).transpose(1, 2)), bmm(a, bt.transpose(1, 2)), t.rtol, t.atol));
  // A broadcast batch (stride 0) and 4-d batches.
  const Tensor one = randn_cpu({m, k}, 24);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(one).expand({batch, m, k}), gpu(b)), matmul(one.expand({batch, m, k}), b),
                           t.rtol, t.atol));
  const Tensor a4 = randn_cpu({2, 3, m, k}, 25), b4 = randn_cpu({2, 3, k, n}, 26);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a4), gpu(b4)), matmul(a4, b4), t.rtol, t.atol));
  const Tensor b1 = randn_cpu({3, k, n}, 27);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a4), gpu(b1)), matmul(a4, b1), t.rtol, t.atol));
  // (.., M, K) @ (K, N) folds the batch into the rows.
  const Tensor w = randn_cpu({k, n}, 28);
  EXPECT_TRUE(close_to_cpu(matmul(gpu(a4), gpu(w)), matmul(a4, w), t.rtol, t.atol));
  // An empty inner dim gives zeros; an empty batch gives an empty result.
  EXPECT_TRUE(close_to_cpu(bmm(gpu(randn_cpu({batch, m, 0}, 29)), gpu(randn_cpu({batch, 0, n}, 30))),
                           zeros({batch, m, n}), 0, 0));
  EXPECT_EQ(bmm(gpu(randn_cpu({0, m, k}, 31)), gpu(randn_cpu({0, k, n}, 32))).sizes(), (std::vector<int64_t>{0, m, n}));
}

TEST(CudaBlas, MatmulFloat64Float16BFloat16) {
  LOOM_REQUIRE_GPU();
  const int64_t sizes[] = {1, 7, 33, 257};
  uint64_t seed = 100;
  for (DType dt : {kFloat64, kFloat16, kBFloat16})
    for (int64_t m : sizes)
      for (int64_t k : sizes) {
        const int64_t n = 33;
        const Tensor a = randn_cpu({m, k}, seed++, dt), b = randn_cpu({k, n}, seed++, dt);
        const Tol t = gemm_tol(dt, k);
        EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(b)), matmul(a, b), t.rtol, t.atol))
            << dtype_name(dt) << " (" << m << ", " << k << ") @ (" << k << ", " << n << ")";
        // Transposed and batched.
        const Tensor at = randn_cpu({2, k, m}, seed++, dt);
        EXPECT_TRUE(close_to_cpu(matmul(gpu(at).transpose(1, 2), gpu(b)), matmul(at.transpose(1, 2), b), t.rtol,
                                 t.atol))
            << dtype_name(dt) << " transposed, batch 2, m " << m << " k " << k;
      }
}

TEST(CudaBlas, MatmulIntegersAreExact) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kInt64, kInt32, kInt8, kUInt8}) {
    const Tensor a = randint(-100, 100, {7, 33}, dt, Generator(40));
    const Tensor b = randint(-100, 100, {33, 257}, dt, Generator(41));
    EXPECT_TRUE(close_to_cpu(matmul(gpu(a), gpu(b)), matmul(a, b), 0, 0)) << dtype_name(dt);
    EXPECT_TRUE(close_to_cpu(matmul(gpu(b).t(), gpu(a).t()), matmul(b.t(), a.t()), 0, 0)) << dtype_name(dt);
  }
}

// ---------------------------------------------------------------- linear

TEST(CudaBlas, LinearWithBiasAndFusedActivations) {
  LOOM_REQUIRE_GPU();
  const LinearActivation acts[] = {LinearActivation::None, LinearActivation::Relu, LinearActivation::Gelu,
                                   LinearActivation::GeluTanh};
  uint64_t seed = 200;
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16})
    for (int64_t k : {1, 7, 33, 257})
      for (LinearActivation act : acts)
        for (bool with_bias : {true, false}) {
          const int64_t n = 33;
          const Tensor x = randn_cpu({3, 7, k}, seed++, dt);  // (*, K): batched rows
          const Tensor w = randn_cpu({n, k}, seed++, dt);
          const Tensor bias = with_bias ? randn_cpu({n}, seed++, dt) : Tensor();
          // The product's tolerance, doubled: a bias add and an activation
          // round again (and GELU's erf / tanh are the devices' own).
          const Tol t = gemm_tol(dt, k);
          const Tensor want = linear(x, w, bias, act);
          EXPECT_TRUE(close_to_cpu(linear(gpu(x), gpu(w), with_bias ? gpu(bias) : Tensor(), act), want, 2 * t.rtol,
                                   2 * t.atol))
              << dtype_name(dt) << " k " << k << " activation " << static_cast<int>(act) << " bias " << with_bias;
        }
}

TEST(CudaBlas, LinearStridedOperandsAndEmptyInFeatures) {
  LOOM_REQUIRE_GPU();
  const int64_t m = 7, k = 33, n = 257;
  const Tol t = gemm_tol(kFloat32, k);
  // The weight as a transposed view, the input a slice, the bias strided.
  const Tensor wt = randn_cpu({k, n}, 300), xs = randn_cpu({m, 2 * k}, 301), b2 = randn_cpu({n, 2}, 302);
  const Tensor want = linear(xs.narrow(1, 5, k), wt.t(), b2.select(1, 1), LinearActivation::Gelu);
  EXPECT_TRUE(close_to_cpu(linear(gpu(xs).narrow(1, 5, k), gpu(wt).t(), gpu(b2).select(1, 1), LinearActivation::Gelu),
                           want, t.rtol, t.atol));
  // in_features = 0: the output is act(bias).
  const Tensor x0 = zeros({m, 0}), w0 = zeros({n, 0}), b0 = randn_cpu({n}, 303);
  EXPECT_TRUE(close_to_cpu(linear(gpu(x0), gpu(w0), gpu(b0), LinearActivation::Relu),
                           linear(x0, w0, b0, LinearActivation::Relu), 0, 0));
  // Integers: the plain product, wrapping bias and relu, exact.
  const Tensor xi = randint(-9, 9, {m, k}, kInt64, Generator(304)), wi = randint(-9, 9, {n, k}, kInt64, Generator(305));
  const Tensor bi = randint(-99, 99, {n}, kInt64, Generator(306));
  EXPECT_TRUE(close_to_cpu(linear(gpu(xi), gpu(wi), gpu(bi), LinearActivation::Relu),
                           linear(xi, wi, bi, LinearActivation::Relu), 0, 0));
}

TEST(CudaBlas, LinearModuleOnCuda) {
  LOOM_REQUIRE_GPU();
  manual_seed(310);
  nn::Linear layer(257, 33);
  const Tensor x = randn_cpu({5, 257}, 311);
  const Tensor want = layer->forward(x);
  layer->to(Device::cuda());
  EXPECT_TRUE(close_to_cpu(layer->forward(gpu(x)), want, 1e-5, 1e-5 * std::sqrt(257.0)));
}

// ---------------------------------------------------------------- gradients

TEST(CudaBlas, MatmulAndLinearGradientsMatchTheCpu) {
  LOOM_REQUIRE_GPU();
  const int64_t m = 7, k = 33, n = 257;
  const Tol t = gemm_tol(kFloat32, std::max(m, n));  // the backward products sum over m and n
  {
    const Tensor a = randn_cpu({2, m, k}, 400).requires_grad_(true), b = randn_cpu({k, n}, 401).requires_grad_(true);
    const Tensor g = randn_cpu({2, m, n}, 402);
    matmul(a, b).backward(g);
    const Tensor ga = gpu_leaf(a), gb = gpu_leaf(b);
    matmul(ga, gb).backward(gpu(g));
    EXPECT_TRUE(close_to_cpu(ga.grad(), a.grad(), t.rtol, t.atol));
    EXPECT_TRUE(close_to_cpu(gb.grad(), b.grad(), t.rtol, t.atol));
  }
  for (LinearActivation act : {LinearActivation::None, LinearActivation::Relu, LinearActivation::Gelu}) {
    const Tensor x = randn_cpu({m, k}, 410).requires_grad_(true), w = randn_cpu({n, k}, 411).requires_grad_(true);
    const Tensor bias = randn_cpu({n}, 412).requires_grad_(true), g = randn_cpu({m, n}, 413);
    linear(x, w, bias, act).backward(g);
    const Tensor gx = gpu_leaf(x), gw = gpu_leaf(w), gbias = gpu_leaf(bias);
    linear(gx, gw, gbias, act).backward(gpu(g));
    // ReLU's mask follows the sign of the pre-activation, which could flip
    // within rounding of 0; here its smallest magnitude is 0.0096, far
    // above the devices' differences (~1e-5).
    EXPECT_TRUE(close_to_cpu(gx.grad(), x.grad(), t.rtol, t.atol)) << static_cast<int>(act);
    EXPECT_TRUE(close_to_cpu(gw.grad(), w.grad(), t.rtol, t.atol)) << static_cast<int>(act);
    EXPECT_TRUE(close_to_cpu(gbias.grad(), bias.grad(), t.rtol, t.atol)) << static_cast<int>(act);
  }
}

// ---------------------------------------------------------------- optimizers

// Parameters of odd sizes; the last spans several chunks of the fused kernel.
const std::vector<std::vector<int64_t>> kParamShapes = {{1}, {7}, {33, 17}, {257}, {40000}};

using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(std::vector<Tensor>)>;

// Runs `steps` steps of the optimizer on the CPU and on the GPU from the same
// parameters and gradients, comparing every parameter after every step.
void expect_steps_match(const MakeOptimizer& make, double rtol, double atol, int steps = 5) {
  std::vector<Tensor> pc, pg;
  for (size_t j = 0; j < kParamShapes.size(); ++j) {
    pc.push_back(randn_cpu(kParamShapes[j], 500 + j).requires_grad_(true));
    pg.push_back(gpu_leaf(pc.back()));
  }
  auto oc = make(pc), og = make(pg);
  for (int s = 0; s < steps; ++s) {
    for (size_t j = 0; j < pc.size(); ++j) {
      const Tensor g = randn_cpu(kParamShapes[j], 600 + 31 * static_cast<uint64_t>(s) + j) * (1.0 + 0.5 * s);
      pc[j].set_grad(g);
      pg[j].set_grad(gpu(g));
    }
    oc->step();
    og->step();
    for (size_t j = 0; j < pc.size(); ++j)
      EXPECT_TRUE(close_to_cpu(pg[j].detach(), pc[j].detach(), rtol, atol)) << "parameter " << j << " after step " << s;
  }
}

// The fused kernels repeat the CPU's float32 roundings (Note [CUDA
// multi-tensor steps]): the same numbers.
TEST(CudaOptim, FusedSgdStepsMatchTheCpuBitwise) {
  LOOM_REQUIRE_GPU();
  expect_steps_match([](std::vector<Tensor> ps) { return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.1)); },
                     0, 0);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::SGD>(
            ps, optim::SGDOptions(0.05).momentum(0.9).dampening(0.1).weight_decay(0.01));
      },
      0, 0);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::SGD>(
            ps, optim::SGDOptions(0.05).momentum(0.8).nesterov(true).weight_decay(0.1).maximize(true));
      },
      0, 0);
}

TEST(CudaOptim, FusedAdamAndAdamWStepsMatchTheCpuBitwise) {
  LOOM_REQUIRE_GPU();
  expect_steps_match([](std::vector<Tensor> ps) { return std::make_unique<optim::Adam>(ps, optim::AdamOptions(0.01)); },
                     0, 0);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::Adam>(
            ps, optim::AdamOptions(0.02).betas({0.8, 0.95}).eps(1e-6).weight_decay(0.1).amsgrad(true).maximize(true));
      },
      0, 0);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions(0.01).weight_decay(0.05));
      },
      0, 0);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::AdamW>(
            ps, optim::AdamWOptions(0.03).betas({0.0, 0.99}).weight_decay(0.5).amsgrad(true));
      },
      0, 0);
}

// The per-tensor path (fused(false)) runs elementwise kernels: the same
// formulas, to float rounding.
TEST(CudaOptim, PerTensorStepsMatchTheCpu) {
  LOOM_REQUIRE_GPU();
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::AdamW>(ps, optim::AdamWOptions(0.01).weight_decay(0.05).fused(false));
      },
      1e-6, 1e-7);
  expect_steps_match(
      [](std::vector<Tensor> ps) {
        return std::make_unique<optim::SGD>(ps, optim::SGDOptions(0.05).momentum(0.9).nesterov(true).fused(false));
      },
      1e-6, 1e-7);
}

// ---------------------------------------------------------------- random

// Draws `draw` on both devices from generators seeded alike, twice (the
// second draw starts where the first left off).
void expect_draws_match(const std::function<Tensor(Device, Generator&)>& draw, double rtol, double atol,
                        const std::string& what) {
  Generator gc(1234), gg(1234);
  for (int round = 0; round < 2; ++round) {
    const Tensor c = draw(Device::cpu(), gc), g = draw(Device::cuda(), gg);
    EXPECT_TRUE(close_to_cpu(g, c, rtol, atol)) << what << ", draw " << round;
  }
  EXPECT_EQ(gc.get_state().offset, gg.get_state().offset) << what;
}

TEST(CudaRandom, UniformIsBitwiseTheCpus) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16})
    for (int64_t n : {1, 1000, 4099})
      expect_draws_match(
          [&](Device d, Generator& g) { return rand({n}, TensorOptions().dtype(dt).device(d), g); }, 0, 0,
          std::string("rand ") + dtype_name(dt) + " n " + std::to_string(n));
  // uniform_ scales the draw with elementwise ops: the same roundings.
  expect_draws_match(
      [](Device d, Generator& g) { return empty({3, 333}, TensorOptions().device(d)).uniform_(-2, 5, g); }, 0, 0,
      "uniform_");
}

// Box-Muller takes log and cos, which the device rounds its own way (the
// header of cuda_random.cu): a few units in the last place.
TEST(CudaRandom, NormalMatchesTheCpuToRounding) {
  LOOM_REQUIRE_GPU();
  const struct {
    DType dt;
    double rtol, atol;
  } cases[] = {{kFloat32, 1e-5, 1e-6}, {kFloat64, 1e-12, 1e-13}, {kFloat16, 2e-3, 1e-3}, {kBFloat16, 1.6e-2, 8e-3}};
  for (const auto& c : cases)
    expect_draws_match(
        [&](Device d, Generator& g) { return randn({7, 1001}, TensorOptions().dtype(c.dt).device(d), g); }, c.rtol,
        c.atol, std::string("randn ") + dtype_name(c.dt));
}

TEST(CudaRandom, RandintIsBitwiseTheCpus) {
  LOOM_REQUIRE_GPU();
  const struct {
    int64_t low, high;
  } ranges[] = {{0, 10}, {-7, 3}, {-100, 100}, {0, int64_t{1} << 40}};
  for (DType dt : {kInt64, kInt32, kInt8, kUInt8, kFloat32, kFloat64, kFloat16, kBFloat16})
    for (const auto& r : ranges) {
      if ((dt == kInt8 || dt == kUInt8 || dt == kInt32) && r.high > 100) continue;
      expect_draws_match(
          [&](Device d, Generator& g) { return randint(r.low, r.high, {3, 1111}, TensorOptions().dtype(dt).device(d), g); },
          0, 0, std::string("randint ") + dtype_name(dt) + " [" + std::to_string(r.low) + ", " + std::to_string(r.high) + ")");
    }
}

TEST(CudaRandom, BernoulliAndDropoutAreBitwiseTheCpus) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64, kFloat16, kBFloat16}) {
    const Tensor p = rand({5, 777}, dt, Generator(700));
    expect_draws_match([&](Device d, Generator& g) { return bernoulli(p.to(d), g); }, 0, 0,
                       std::string("bernoulli(p) ") + dtype_name(dt));
  }
  expect_draws_match([](Device d, Generator& g) { return bernoulli(empty({9, 99}, TensorOptions().device(d)), 0.3, g); },
                     0, 0, "bernoulli(like, 0.3)");
  const Tensor x = randn_cpu({17, 333}, 701);
  expect_draws_match([&](Device d, Generator& g) { return F::dropout(x.to(d), 0.4, true, g); }, 0, 0, "dropout");
}

// ---------------------------------------------------------------- indexing

// `t` (float32) in `dt`: booleans from its sign.
Tensor as_dtype(const Tensor& t, DType dt) {
  if (dt == kBool) return t > 0.0;
  if (dt == kInt8 || dt == kUInt8 || dt == kInt32 || dt == kInt64) return (t * 20.0).to(dt);
  return t.to(dt);
}

const DType kAllDtypes[] = {kFloat32, kFloat64, kFloat16, kBFloat16, kInt32, kInt64, kUInt8, kBool, kInt8};

TEST(CudaIndex, IndexSelectAndGatherAreExactForEveryDtype) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    // A permuted (non-contiguous) input (4, 5, 6).
    const Tensor base = as_dtype(randn_cpu({6, 4, 5}, 800), dt);
    const Tensor x = base.permute({1, 2, 0});
    const Tensor xg = gpu(base).permute({1, 2, 0});
    for (int64_t dim = 0; dim < 3; ++dim) {
      // With repeats, out of order.
      const Tensor idx = randint(0, x.sizes()[dim], {9}, kInt64, Generator(801 + dim));
      EXPECT_TRUE(close_to_cpu(index_select(xg, dim, gpu(idx)), index_select(x, dim, idx), 0, 0))
          << "index_select " << dtype_name(dt) << " dim " << dim;
      // An index smaller than the input in the other dims.
      std::vector<int64_t> shape = {3, 4, 2};
      shape[dim] = 7;
      const Tensor gidx = randint(0, x.sizes()[dim], shape, kInt64, Generator(811 + dim));
      EXPECT_TRUE(close_to_cpu(gather(xg, dim, gpu(gidx)), gather(x, dim, gidx), 0, 0))
          << "gather " << dtype_name(dt) << " dim " << dim;
    }
    // A 0-dim index picks one slice.
    const Tensor one = scalar_tensor(2, kInt64);
    EXPECT_TRUE(close_to_cpu(index_select(xg, 1, gpu(one)), index_select(x, 1, one), 0, 0)) << dtype_name(dt);
  }
}

TEST(CudaIndex, ScatterAddMatchesTheCpu) {
  LOOM_REQUIRE_GPU();
  for (DType dt : kAllDtypes) {
    const Tensor x = as_dtype(randn_cpu({6, 50}, 820), dt);
    const Tensor src = as_dtype(randn_cpu({8, 50}, 821), dt);
    for (int64_t dim : {0, 1}) {
      // Many repeated targets: atomics add them in some order, so floats
      // agree to rounding (Note [CUDA index errors]), integers exactly.
      const std::vector<int64_t> shape = {4, 30};
      const Tensor idx = randint(0, x.sizes()[dim], shape, kInt64, Generator(822 + dim));
      const bool exact = !is_floating_point(dt);
      const double rtol = exact ? 0 : dt == kFloat16 ? 4e-3 : dt == kBFloat16 ? 3e-2 : 1e-6;
      EXPECT_TRUE(close_to_cpu(scatter_add(gpu(x), dim, gpu(idx), gpu(src)), scatter_add(x, dim, idx, src), rtol, rtol))
          << "scatter_add " << dtype_name(dt) << " dim " << dim;
    }
  }
}

TEST(CudaIndex, EmbeddingMatchesTheCpu) {
  LOOM_REQUIRE_GPU();
  const Tensor weight = randn_cpu({11, 7}, 830);
  const Tensor idx = randint(0, 11, {3, 5}, kInt64, Generator(831));
  EXPECT_TRUE(close_to_cpu(embedding(gpu(weight), gpu(idx)), embedding(weight, idx), 0, 0));
  manual_seed(832);
  nn::Embedding emb(11, 7);
  const Tensor want = emb->forward(idx);
  emb->to(Device::cuda());
  EXPECT_TRUE(close_to_cpu(emb->forward(gpu(idx)), want, 0, 0));
}

// index_select's backward is IndexAdd, gather's ScatterAdd, embedding's
// IndexAdd with repeated rows.
TEST(CudaIndex, GradientsOfIndexSelectGatherAndEmbedding) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn_cpu({9, 13}, 840).requires_grad_(true);
  const Tensor idx = randint(0, 9, {20}, kInt64, Generator(841));
  const Tensor g = randn_cpu({20, 13}, 842);
  index_select(x, 0, idx).backward(g);
  const Tensor xg = gpu_leaf(x);
  index_select(xg, 0, gpu(idx)).backward(gpu(g));
  EXPECT_TRUE(close_to_cpu(xg.grad(), x.grad(), 1e-6, 1e-6));

  const Tensor y = randn_cpu({9, 13}, 843).requires_grad_(true);
  const Tensor gidx = randint(0, 13, {9, 20}, kInt64, Generator(844));
  const Tensor gy = randn_cpu({9, 20}, 845);
  gather(y, 1, gidx).backward(gy);
  const Tensor yg = gpu_leaf(y);
  gather(yg, 1, gpu(gidx)).backward(gpu(gy));
  EXPECT_TRUE(close_to_cpu(yg.grad(), y.grad(), 1e-6, 1e-6));

  const Tensor w = randn_cpu({11, 7}, 846).requires_grad_(true);
  const Tensor eidx = randint(0, 11, {4, 25}, kInt64, Generator(847));
  const Tensor ge = randn_cpu({4, 25, 7}, 848);
  embedding(w, eidx).backward(ge);
  const Tensor wg = gpu_leaf(w);
  embedding(wg, gpu(eidx)).backward(gpu(ge));
  EXPECT_TRUE(close_to_cpu(wg.grad(), w.grad(), 1e-6, 1e-6));
}

// Note [CUDA index errors]: the device reports the first bad index, and the
// message is the CPU's.
TEST(CudaIndex, OutOfRangeIndexThrowsTheCpusError) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn_cpu({5, 3}, 850);
  const Tensor bad = tensor({0, 7, 2, 9, -1});
  const std::string want = error_of([&] { index_select(x, 0, bad); });
  EXPECT_NE(want.find("index_select: index 7 is out of bounds for dim 0 with size 5"), std::string::npos) << want;
  EXPECT_EQ(error_of([&] { index_select(gpu(x), 0, gpu(bad)); }), want);

  const Tensor gbad = tensor({{0, 1}, {2, -3}, {1, 0}});
  const std::string gwant = error_of([&] { gather(x, 1, gbad); });
  EXPECT_NE(gwant.find("gather: index -3"), std::string::npos) << gwant;
  EXPECT_EQ(error_of([&] { gather(gpu(x), 1, gpu(gbad)); }), gwant);

  const Tensor sbad = tensor({{0, 1, 2}, {5, 0, 1}});
  const Tensor src = randn_cpu({2, 3}, 851);
  const std::string swant = error_of([&] { scatter_add(x, 0, sbad, src); });
  EXPECT_NE(swant.find("scatter_add: index 5"), std::string::npos) << swant;
  EXPECT_EQ(error_of([&] { scatter_add(gpu(x), 0, gpu(sbad), gpu(src)); }), swant);

  const std::string ewant = error_of([&] { embedding(x, tensor({1, 6})); });
  EXPECT_NE(ewant.find("embedding"), std::string::npos) << ewant;
  EXPECT_EQ(error_of([&] { embedding(gpu(x), gpu(tensor({1, 6}))); }), ewant);

  // The device is still usable: the error was reported, not a fault.
  const Tensor ok = tensor({4, 0});
  EXPECT_TRUE(close_to_cpu(index_select(gpu(x), 0, gpu(ok)), index_select(x, 0, ok), 0, 0));
}

}  // namespace
}  // namespace loom
