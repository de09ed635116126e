// The conv family on CUDA (src/backend/cuda/cuda_conv.cu, cuda_pool.cu,
// cuda_batch_norm.cu): conv2d, conv_transpose2d, conv2d_weight, max_pool2d
// (values and indices), avg_pool2d and batch_norm (training and eval, the
// nn modules too), each through the public op on CUDA tensors against the
// CPU on the same inputs: every float dtype, odd sizes, stride / padding /
// dilation / groups combinations, non-contiguous inputs, and gradients.
//
// Tolerances. Convolutions: the GPU sums products in float32 (float64 for
// float64) in another order than the CPU, one rounding to the dtype at the
// end, so float32 gets 1e-4 (sums of up to a few hundred products of
// magnitude ~1), float64 1e-10, and the 16-bit types about a unit in their
// last place. Max pooling is exact (values and indices). Average pooling
// and batch norm sum in double on both sides: a rounding or two of the dtype.
#include <loom/cuda.h>
#include <loom/loom.h>
#include <loom/nn/functional.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

namespace F = nn::functional;
using test::close_to_cpu;

const std::vector<DType> kFloatDtypes = {kFloat32, kFloat64, kFloat16, kBFloat16};

struct Tol {
  double rtol, atol;
};

// A sum of products, rounded once (Note [CUDA convolution as GEMM]).
Tol conv_tol(DType dt) {
  switch (dt) {
    case kFloat64: return {1e-10, 1e-10};
    case kFloat32: return {1e-4, 1e-4};
    case kFloat16: return {4e-3, 4e-3};
    default: return {3.2e-2, 3.2e-2};  // bfloat16
  }
}

// A double sum rounded once or twice.
Tol sum_tol(DType dt) {
  switch (dt) {
    case kFloat64: return {1e-12, 1e-12};
    case kFloat32: return {2e-6, 2e-6};
    case kFloat16: return {2e-3, 2e-3};
    default: return {1.6e-2, 1.6e-2};
  }
}

Tensor gpu(const Tensor& t) { return t.to(Device::cuda()); }

Tensor randn_cpu(IntArrayRef sizes, uint64_t seed, DType dt = kFloat32) {
  return randn(sizes, kFloat32, Generator(seed)).to(dt);
}

Tensor leaf(const Tensor& t) { return t.detach().clone().requires_grad_(true); }
Tensor gpu_leaf(const Tensor& t) { return gpu(t.detach()).requires_grad_(true); }

std::string dt_str(DType dt) { return dtype_name(dt); }

// ---------------------------------------------------------------- convolution

struct ConvCase {
  int64_t n, c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, groups;
  bool bias;
};

const std::vector<ConvCase> kConvCases = {
    {2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1, true},     // 3x3 same
    {3, 4, 11, 10, 6, 3, 2, 2, 3, 1, 0, 1, 1, 2, true},   // strides, groups 2
    {1, 6, 9, 9, 6, 3, 3, 1, 1, 2, 2, 2, 2, 6, false},    // depthwise, dilated
    {4, 8, 5, 5, 4, 1, 1, 1, 1, 0, 0, 1, 1, 1, true},     // pointwise
    {2, 2, 1, 1, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, true},     // 1x1 map, 8 dead taps
    {5, 3, 13, 8, 4, 5, 3, 3, 2, 2, 1, 1, 2, 1, false},   // odd everything
    {2, 4, 6, 6, 8, 2, 2, 2, 2, 0, 0, 1, 1, 4, true},     // groups 4, stride = kernel
};

std::string conv_name(const ConvCase& k) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "N%ld C%ld %ldx%ld O%ld k%ldx%ld s%ld,%ld p%ld,%ld d%ld,%ld g%ld", long(k.n), long(k.c),
                long(k.h), long(k.w), long(k.o), long(k.kh), long(k.kw), long(k.sh), long(k.sw), long(k.ph),
                long(k.pw), long(k.dh), long(k.dw), long(k.groups));
  return buf;
}

Tensor conv_of(const ConvCase& k, const Tensor& x, const Tensor& w, const Tensor& b) {
  return conv2d(x, w, b, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw}, k.groups);
}

TEST(CudaConv, Conv2dForward) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 1;
  for (const ConvCase& k : kConvCases)
    for (DType dt : kFloatDtypes) {
      SCOPED_TRACE(conv_name(k) + " " + dt_str(dt));
      const Tensor x = randn_cpu({k.n, k.c, k.h, k.w}, seed++, dt);
      const Tensor w = randn_cpu({k.o, k.c / k.groups, k.kh, k.kw}, seed++, dt);
      const Tensor b = k.bias ? randn_cpu({k.o}, seed++, dt) : Tensor();
      const Tol t = conv_tol(dt);
      EXPECT_TRUE(close_to_cpu(conv_of(k, gpu(x), gpu(w), k.bias ? gpu(b) : Tensor()), conv_of(k, x, w, b), t.rtol,
                               t.atol));
    }
}

TEST(CudaConv, Conv2dNonContiguous) {
  LOOM_REQUIRE_GPU();
  const ConvCase k{3, 4, 9, 7, 6, 3, 3, 2, 1, 1, 1, 1, 1, 2, true};
  for (DType dt : kFloatDtypes) {
    SCOPED_TRACE(dt_str(dt));
    // x channels-last, w with its spatial dims transposed, bias every other element, all viewed.
    const Tensor xl = randn_cpu({k.n, k.h, k.w, k.c}, 40, dt);
    const Tensor wt = randn_cpu({k.o, k.c / k.groups, k.kw, k.kh}, 41, dt);
    const Tensor bb = randn_cpu({2 * k.o}, 42, dt);
    const Tensor x = xl.permute({0, 3, 1, 2}), w = wt.transpose(2, 3), b = bb.slice(0, 0, 2 * k.o, 2);
    const Tensor xg = gpu(xl).permute({0, 3, 1, 2}), wg = gpu(wt).transpose(2, 3), bg = gpu(bb).slice(0, 0, 2 * k.o, 2);
    const Tol t = conv_tol(dt);
    EXPECT_TRUE(close_to_cpu(conv_of(k, xg, wg, bg), conv_of(k, x, w, b), t.rtol, t.atol));
    // A sliced input (every other column).
    const Tensor wide = randn_cpu({k.n, k.c, k.h, 2 * k.w}, 43, dt);
    EXPECT_TRUE(close_to_cpu(conv_of(k, gpu(wide).slice(3, 0, 2 * k.w, 2), gpu(w.contiguous()), gpu(b.contiguous())),
                             conv_of(k, wide.slice(3, 0, 2 * k.w, 2), w, b), t.rtol, t.atol));
  }
}

// Gradients of x, w and b (Conv2d's backward: ConvTranspose2d and Conv2dWeight).
TEST(CudaConv, Conv2dBackward) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 100;
  for (const ConvCase& k : kConvCases)
    for (DType dt : {kFloat32, kFloat64, kBFloat16}) {
      SCOPED_TRACE(conv_name(k) + " " + dt_str(dt));
      const Tensor x = randn_cpu({k.n, k.c, k.h, k.w}, seed++, dt);
      const Tensor w = randn_cpu({k.o, k.c / k.groups, k.kh, k.kw}, seed++, dt);
      const Tensor b = randn_cpu({k.o}, seed++, dt);
      Tensor xc = leaf(x), wc = leaf(w), bc = leaf(b);
      Tensor xg = gpu_leaf(x), wg = gpu_leaf(w), bg = gpu_leaf(b);
      const Tensor yc = conv_of(k, xc, wc, bc);
      const Tensor gy = randn_cpu(yc.sizes(), seed++, dt);
      yc.backward(gy);
      conv_of(k, xg, wg, bg).backward(gpu(gy));
      // The weight gradient sums over N * OH * OW products: a looser float32 bound.
      const Tol t = conv_tol(dt);
      EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), t.rtol, t.atol));
      EXPECT_TRUE(close_to_cpu(wg.grad(), wc.grad(), t.rtol, dt == kFloat32 ? 1e-3 : t.atol));
      EXPECT_TRUE(close_to_cpu(bg.grad(), bc.grad(), t.rtol, dt == kFloat32 ? 1e-3 : t.atol));
    }
}

TEST(CudaConv, Conv2dWeightPublic) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn_cpu({4, 6, 10, 9}, 200), g = randn_cpu({4, 4, 5, 9}, 201);
  // (O, C / G, KH, KW) = (4, 3, 3, 3), stride (2, 1), padding 1, groups 2.
  const Tensor dwc = conv2d_weight(x, {4, 3, 3, 3}, g, {2, 1}, {1, 1}, {1, 1}, 2);
  const Tensor dwg = conv2d_weight(gpu(x), {4, 3, 3, 3}, gpu(g), {2, 1}, {1, 1}, {1, 1}, 2);
  EXPECT_TRUE(close_to_cpu(dwg, dwc, 1e-4, 1e-3));
}

TEST(CudaConv, ConvTranspose2d) {
  LOOM_REQUIRE_GPU();
  struct Case {
    int64_t n, cin, h, w, cout, kh, kw, s, p, op, groups, d;
  };
  const std::vector<Case> cases = {{2, 4, 5, 6, 3, 3, 3, 2, 1, 1, 1, 1},
                                   {1, 6, 4, 4, 4, 4, 2, 2, 0, 0, 2, 1},
                                   {3, 2, 7, 3, 2, 3, 3, 1, 2, 0, 1, 2},
                                   {2, 3, 3, 5, 5, 2, 3, 3, 1, 2, 1, 1}};
  uint64_t seed = 300;
  for (const Case& k : cases)
    for (DType dt : kFloatDtypes) {
      SCOPED_TRACE("case cin " + std::to_string(k.cin) + " k" + std::to_string(k.kh) + " " + dt_str(dt));
      const Tensor x = randn_cpu({k.n, k.cin, k.h, k.w}, seed++, dt);
      const Tensor w = randn_cpu({k.cin, k.cout / k.groups, k.kh, k.kw}, seed++, dt);
      const Tensor b = randn_cpu({k.cout}, seed++, dt);
      const auto run = [&](const Tensor& xx, const Tensor& ww, const Tensor& bb) {
        return conv_transpose2d(xx, ww, bb, {k.s}, {k.p}, {k.op}, k.groups, {k.d});
      };
      const Tol t = conv_tol(dt);
      Tensor xc = leaf(x), wc = leaf(w), bc = leaf(b);
      Tensor xg = gpu_leaf(x), wg = gpu_leaf(w), bg = gpu_leaf(b);
      const Tensor yc = run(xc, wc, bc), yg = run(xg, wg, bg);
      EXPECT_TRUE(close_to_cpu(yg, yc, t.rtol, t.atol));
      if (dt == kFloat16) continue;
      const Tensor gy = randn_cpu(yc.sizes(), seed++, dt);
      yc.backward(gy);
      yg.backward(gpu(gy));
      EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), t.rtol, t.atol));
      EXPECT_TRUE(close_to_cpu(wg.grad(), wc.grad(), t.rtol, dt == kFloat32 ? 1e-3 : t.atol));
      EXPECT_TRUE(close_to_cpu(bg.grad(), bc.grad(), t.rtol, dt == kFloat32 ? 1e-3 : t.atol));
    }
}

// nn::Conv2d moved to CUDA computes what it computed on the CPU.
TEST(CudaConv, Conv2dModule) {
  LOOM_REQUIRE_GPU();
  manual_seed(7);
  nn::Conv2d m(3, 8, 3, {.stride = {2}, .padding = {1}});
  const Tensor x = randn_cpu({4, 3, 15, 15}, 400);
  const Tensor yc = m->forward(x);
  yc.sum().backward();
  const Tensor gw = m->weight.grad().clone(), gb = m->bias.grad().clone();
  m->zero_grad();
  m->to(Device::cuda());
  const Tensor yg = m->forward(gpu(x));
  yg.sum().backward();
  EXPECT_TRUE(close_to_cpu(yg, yc, 1e-4, 1e-4));
  EXPECT_TRUE(close_to_cpu(m->weight.grad(), gw, 1e-4, 1e-3));
  EXPECT_TRUE(close_to_cpu(m->bias.grad(), gb, 1e-4, 1e-3));
}

// A batch large enough to take several chunks of Note [CUDA convolution as GEMM].
TEST(CudaConv, Conv2dManyChunks) {
  LOOM_REQUIRE_GPU();
  const Tensor x = randn_cpu({40, 16, 32, 32}, 500), w = randn_cpu({16, 16, 3, 3}, 501), b = randn_cpu({16}, 502);
  Tensor xc = leaf(x), wc = leaf(w), xg = gpu_leaf(x), wg = gpu_leaf(w);
  const Tensor yc = conv2d(xc, wc, b, {1}, {1}), yg = conv2d(xg, wg, gpu(b), {1}, {1});
  EXPECT_TRUE(close_to_cpu(yg, yc, 1e-4, 1e-4));
  const Tensor gy = randn_cpu(yc.sizes(), 503);
  yc.backward(gy);
  yg.backward(gpu(gy));
  EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(close_to_cpu(wg.grad(), wc.grad(), 1e-4, 2e-2));  // sums of 40960 products
}

// ---------------------------------------------------------------- pooling

struct PoolCase {
  int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw;
  bool ceil;
};

const std::vector<PoolCase> kPoolCases = {
    {2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 1, 1, false},  {2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1, false},
    {1, 2, 10, 11, 3, 2, 2, 3, 1, 1, 2, 1, true}, {3, 1, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1, true},
    {2, 4, 7, 9, 2, 3, 3, 2, 1, 1, 1, 1, true},   {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, false},
};

// Small integers: many ties within a window.
Tensor tied_values(IntArrayRef sizes, uint64_t seed, DType dt) {
  return randint(-3, 4, sizes, kInt64, Generator(seed)).to(dt);
}

TEST(CudaPool, MaxPool2dExact) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 600;
  for (const PoolCase& k : kPoolCases)
    for (DType dt : kFloatDtypes)
      for (bool ties : {false, true}) {
        SCOPED_TRACE("pool " + std::to_string(k.h) + "x" + std::to_string(k.w) + " k" + std::to_string(k.kh) + " " +
                     dt_str(dt) + (ties ? " ties" : ""));
        Tensor x = ties ? tied_values({k.n, k.c, k.h, k.w}, seed++, dt) : randn_cpu({k.n, k.c, k.h, k.w}, seed++, dt);
        const auto run = [&](const Tensor& xx) {
          return max_pool2d_with_indices(xx, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw}, k.ceil);
        };
        const auto [yc, ic] = run(x);
        const auto [yg, ig] = run(gpu(x));
        EXPECT_TRUE(close_to_cpu(yg, yc, 0, 0));
        EXPECT_TRUE(close_to_cpu(ig, ic, 0, 0));
        // Non-contiguous: the transposed storage of a (N, C, W, H) tensor.
        const Tensor xt = x.transpose(2, 3).contiguous();
        const auto [ytg, itg] = run(gpu(xt).transpose(2, 3));
        EXPECT_TRUE(close_to_cpu(ytg, yc, 0, 0));
        EXPECT_TRUE(close_to_cpu(itg, ic, 0, 0));
      }
}

TEST(CudaPool, MaxPool2dNaN) {
  LOOM_REQUIRE_GPU();
  Tensor x = randn_cpu({1, 2, 6, 6}, 650);
  float* p = x.data_ptr<float>();
  p[7] = std::numeric_limits<float>::quiet_NaN();
  p[8] = std::numeric_limits<float>::quiet_NaN();
  p[40] = std::numeric_limits<float>::quiet_NaN();
  const auto [yc, ic] = max_pool2d_with_indices(x, {3}, {1}, {1});
  const auto [yg, ig] = max_pool2d_with_indices(gpu(x), {3}, {1}, {1});
  EXPECT_TRUE(close_to_cpu(yg, yc, 0, 0));
  EXPECT_TRUE(close_to_cpu(ig, ic, 0, 0));
}

TEST(CudaPool, MaxPool2dBackward) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 700;
  for (const PoolCase& k : kPoolCases)
    for (DType dt : kFloatDtypes) {
      SCOPED_TRACE("pool " + std::to_string(k.h) + "x" + std::to_string(k.w) + " k" + std::to_string(k.kh) + " " +
                   dt_str(dt));
      const Tensor x = tied_values({k.n, k.c, k.h, k.w}, seed++, dt);
      Tensor xc = leaf(x), xg = gpu_leaf(x);
      const auto run = [&](const Tensor& xx) {
        return max_pool2d(xx, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, {k.dh, k.dw}, k.ceil);
      };
      const Tensor yc = run(xc), yg = run(xg);
      const Tensor gy = randn_cpu(yc.sizes(), seed++, dt);
      yc.backward(gy);
      yg.backward(gpu(gy));
      const Tol t = sum_tol(dt);
      EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), t.rtol, t.atol));
    }
}

TEST(CudaPool, AvgPool2d) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 800;
  for (const PoolCase& k : kPoolCases) {
    if (k.dh != 1 || k.dw != 1) continue;  // avg_pool2d has no dilation
    for (DType dt : kFloatDtypes)
      for (bool include_pad : {true, false})
        for (std::optional<int64_t> divisor : {std::optional<int64_t>{}, std::optional<int64_t>{5}}) {
          SCOPED_TRACE("pool " + std::to_string(k.h) + "x" + std::to_string(k.w) + " k" + std::to_string(k.kh) + " " +
                       dt_str(dt) + (include_pad ? " include_pad" : "") + (divisor ? " divisor 5" : ""));
          const Tensor x = randn_cpu({k.n, k.c, k.h, k.w}, seed++, dt);
          const auto run = [&](const Tensor& xx) {
            return avg_pool2d(xx, {k.kh, k.kw}, {k.sh, k.sw}, {k.ph, k.pw}, k.ceil, include_pad, divisor);
          };
          Tensor xc = leaf(x), xg = gpu_leaf(x);
          const Tensor yc = run(xc), yg = run(xg);
          const Tol t = sum_tol(dt);
          EXPECT_TRUE(close_to_cpu(yg, yc, t.rtol, t.atol));
          EXPECT_TRUE(close_to_cpu(run(gpu(x).transpose(2, 3).contiguous().transpose(2, 3)), yc, t.rtol, t.atol));
          const Tensor gy = randn_cpu(yc.sizes(), seed++, dt);
          yc.backward(gy);
          yg.backward(gpu(gy));
          EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), t.rtol, t.atol));
        }
  }
}

// ---------------------------------------------------------------- batch norm

// Batch norm's outputs: a few double operations rounded once (the 16-bit
// types run in float32 in the ops layer, then round).
Tol bn_tol(DType dt) {
  switch (dt) {
    case kFloat64: return {1e-10, 1e-10};
    case kFloat32: return {1e-5, 1e-5};
    case kFloat16: return {2e-3, 2e-3};
    default: return {1.6e-2, 1.6e-2};
  }
}

TEST(CudaBatchNorm, TrainingAndEval) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 900;
  for (DType dt : kFloatDtypes)
    for (const std::vector<int64_t>& sizes : std::vector<std::vector<int64_t>>{{8, 5}, {4, 3, 17}, {2, 2, 1}, {3, 6, 40}}) {
      SCOPED_TRACE(std::to_string(sizes.size()) + "-d, C " + std::to_string(sizes[1]) + " " + dt_str(dt));
      const int64_t c = sizes[1];
      // Shifted values: the variance is small next to the mean.
      const Tensor x = (randn_cpu(sizes, seed++) * 0.5 + 3.0).to(dt);
      const Tensor w = randn_cpu({c}, seed++, dt), b = randn_cpu({c}, seed++, dt);
      Tensor rm_c = randn_cpu({c}, seed++, dt), rv_c = (randn_cpu({c}, seed++) * 0.1 + 1.0).to(dt);
      Tensor rm_g = gpu(rm_c), rv_g = gpu(rv_c);
      Tensor xc = leaf(x), wc = leaf(w), bc = leaf(b);
      Tensor xg = gpu_leaf(x), wg = gpu_leaf(w), bg = gpu_leaf(b);
      const Tensor yc = F::batch_norm(xc, rm_c, rv_c, wc, bc, /*training=*/true, 0.1, 1e-5);
      const Tensor yg = F::batch_norm(xg, rm_g, rv_g, wg, bg, /*training=*/true, 0.1, 1e-5);
      const Tol t = bn_tol(dt);
      EXPECT_TRUE(close_to_cpu(yg, yc, t.rtol, t.atol));
      EXPECT_TRUE(close_to_cpu(rm_g, rm_c, t.rtol, t.atol));
      EXPECT_TRUE(close_to_cpu(rv_g, rv_c, t.rtol, t.atol));
      const Tensor gy = randn_cpu(yc.sizes(), seed++, dt);
      yc.backward(gy);
      yg.backward(gpu(gy));
      // dx cancels terms of size |g|: an absolute bound on its scale.
      const Tol tg = dt == kFloat32 ? Tol{1e-4, 1e-4} : t;
      EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), tg.rtol, tg.atol));
      EXPECT_TRUE(close_to_cpu(wg.grad(), wc.grad(), tg.rtol, tg.atol));
      EXPECT_TRUE(close_to_cpu(bg.grad(), bc.grad(), tg.rtol, tg.atol));
      // Eval: the running statistics.
      EXPECT_TRUE(close_to_cpu(F::batch_norm(gpu(x), rm_g, rv_g, gpu(w), gpu(b), false),
                               F::batch_norm(x, rm_c, rv_c, w, b, false), t.rtol, t.atol));
    }
}

TEST(CudaBatchNorm, NonContiguousAndNoAffine) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64}) {
    SCOPED_TRACE(dt_str(dt));
    // (N, C, L) viewed from (L, C, N) storage; no weight or bias (loom::batch_norm, training).
    const Tensor s = randn_cpu({9, 4, 5}, 950, dt);
    Tensor sc = leaf(s), sg = gpu_leaf(s);
    const Tensor yc = batch_norm(sc.permute({2, 1, 0})), yg = batch_norm(sg.permute({2, 1, 0}));
    const Tol t = bn_tol(dt);
    EXPECT_TRUE(close_to_cpu(yg, yc, t.rtol, t.atol));
    const Tensor gy = randn_cpu(yc.sizes(), 951, dt);
    yc.backward(gy);
    yg.backward(gpu(gy));
    EXPECT_TRUE(close_to_cpu(sg.grad(), sc.grad(), 1e-4, 1e-4));
  }
}

TEST(CudaBatchNorm, Module2d) {
  LOOM_REQUIRE_GPU();
  nn::BatchNorm2d bc(6), bg(6);
  bg->to(Device::cuda());
  for (int step = 0; step < 3; ++step) {
    const Tensor x = randn_cpu({4, 6, 7, 5}, 1000 + step) * 2.0 + 1.0;
    Tensor xc = leaf(x), xg = gpu_leaf(x);
    const Tensor yc = bc->forward(xc), yg = bg->forward(xg);
    EXPECT_TRUE(close_to_cpu(yg, yc, 1e-5, 1e-5));
    const Tensor gy = randn_cpu(yc.sizes(), 1100 + step);
    yc.backward(gy);
    yg.backward(gpu(gy));
    EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), 1e-4, 1e-4));
  }
  EXPECT_TRUE(close_to_cpu(bg->running_mean, bc->running_mean, 1e-6, 1e-6));
  EXPECT_TRUE(close_to_cpu(bg->running_var, bc->running_var, 1e-6, 1e-6));
  EXPECT_TRUE(close_to_cpu(bg->weight.grad(), bc->weight.grad(), 1e-4, 1e-4));
  EXPECT_TRUE(close_to_cpu(bg->bias.grad(), bc->bias.grad(), 1e-4, 1e-4));
  bc->eval();
  bg->eval();
  const Tensor x = randn_cpu({2, 6, 3, 3}, 1200);
  EXPECT_TRUE(close_to_cpu(bg->forward(gpu(x)), bc->forward(x), 1e-5, 1e-5));
}

}  // namespace
}  // namespace loom
