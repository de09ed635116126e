// The CUDA attention family against the CPU: scaled_dot_product_attention
// forward and backward (Attention, AttentionBackward in
// src/backend/cuda/cuda_attention.cu, Note [CUDA attention kernels]). Each
// test runs the public op on the same inputs on both devices and compares
// with close_to_cpu: to float rounding (the sums run in another order), and
// the dropout mask bit for bit (both devices draw the same Philox counters).
// The head dims cover both tiled instantiations (16, 64 pad to 64; 80, 128
// pad to 128), and lengths that are not a multiple of the 64-row tiles; a
// head dim over 128 and float64 run the reference kernels.
#include <gtest/gtest.h>
#include <loom/loom.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace loom {
namespace {

using test::close_to_cpu;

Tensor gpu(const Tensor& t) { return t.to(Device::cuda()); }

// Standard normal values drawn on the CPU, then cast to `dt`: both devices
// get the same inputs.
Tensor randn_cpu(IntArrayRef sizes, uint64_t seed, DType dt = kFloat32) {
  return randn(sizes, kFloat32, Generator(seed)).to(dt);
}

struct Tol {
  double rtol, atol;
};
// Forward: float32 and float64 differ from the CPU by the order of a few sums;
// float16 and bfloat16 compute in float32 on both devices and round once, so
// may differ by a unit in the last place of the 16-bit result.
Tol output_tol(DType dt) {
  switch (dt) {
    case DType::Float64: return {1e-10, 1e-10};
    case DType::Float16: return {2e-3, 2e-3};
    case DType::BFloat16: return {1.6e-2, 1.6e-2};
    default: return {2e-5, 2e-5};
  }
}
// Gradients sum over every query or key: a little looser.
Tol grad_tol(DType dt) {
  switch (dt) {
    case DType::Float64: return {1e-9, 1e-9};
    case DType::Float16: return {4e-3, 4e-3};
    case DType::BFloat16: return {3e-2, 3e-2};
    default: return {1e-4, 1e-4};
  }
}

// q, k, v of (B, H, T, D) as a model makes them: split from (B, T, H * D)
// and transposed, so not contiguous.
Tensor heads_of(const Tensor& x, int64_t h) {
  const int64_t b = x.size(0), t = x.size(1), hd = x.size(2);
  return x.view({b, t, h, hd / h}).transpose(1, 2);
}

struct Case {
  int64_t b = 2, h = 3, tq = 7, tk = 7, d = 16, dv = 16;
  bool causal = false;
  int mask = 0;  // 0 none, 1 float (B, 1, Tq, Tk) broadcast over heads, 2 bool (Tq, Tk)
  double dropout = 0;
  DType dtype = kFloat32;
  bool grads = true;
  std::string str() const {
    return "b " + std::to_string(b) + " h " + std::to_string(h) + " tq " + std::to_string(tq) + " tk " +
           std::to_string(tk) + " d " + std::to_string(d) + " dv " + std::to_string(dv) +
           (causal ? " causal" : "") + (mask == 1 ? " float mask" : mask == 2 ? " bool mask" : "") +
           (dropout > 0 ? " dropout " + std::to_string(dropout) : "") + " " + dtype_name(dtype);
  }
};

// The mask of case `c` on the CPU: float values (some -inf), or bool with
// every row keeping its key 0 (no row wholly masked).
Tensor mask_of(const Case& c, uint64_t seed) {
  if (c.mask == 1) {
    Tensor m = randn_cpu({c.b, 1, c.tq, c.tk}, seed);
    // -inf where the draw is above 1.2, but never at key 0.
    Tensor hide = m > 1.2;
    hide.narrow(3, 0, 1).fill_(false);
    return where(hide, -std::numeric_limits<double>::infinity(), m).to(c.dtype);
  }
  if (c.mask == 2) {
    Tensor keep = randn_cpu({c.tq, c.tk}, seed) > -0.5;
    keep.narrow(1, 0, 1).fill_(true);
    return keep;
  }
  return Tensor();
}

// Runs case `c` on both devices: the output, then (c.grads) dq, dk, dv of
// sum(o * w) for a random w.
void check_case(const Case& c, uint64_t seed) {
  SCOPED_TRACE(c.str());
  const Tensor xq = randn_cpu({c.b, c.tq, c.h * c.d}, seed, c.dtype);
  const Tensor xk = randn_cpu({c.b, c.tk, c.h * c.d}, seed + 1, c.dtype);
  const Tensor xv = randn_cpu({c.b, c.tk, c.h * c.dv}, seed + 2, c.dtype);
  const Tensor w = randn_cpu({c.b, c.h, c.tq, c.dv}, seed + 3, c.dtype);
  const Tensor mask = mask_of(c, seed + 4);
  const auto run = [&](Device dev, std::vector<Tensor>& grads) {
    // Fresh leaves on `dev` (a copy on the CPU too, so the runs share nothing).
    const auto leaf = [&](const Tensor& t) { return (dev.is_cuda() ? gpu(t) : t.clone()).requires_grad_(c.grads); };
    Tensor lq = leaf(xq), lk = leaf(xk), lv = leaf(xv);
    const Tensor m = mask.defined() ? mask.to(dev) : Tensor();
    Tensor o = scaled_dot_product_attention(heads_of(lq, c.h), heads_of(lk, c.h), heads_of(lv, c.h), m, c.dropout,
                                            c.causal, std::nullopt, Generator(seed + 5));
    if (c.grads) {
      sum(mul(o, w.to(dev))).backward();
      grads = {lq.grad(), lk.grad(), lv.grad()};
    }
    return o.detach();
  };
  std::vector<Tensor> gc, gg;
  const Tensor oc = run(Device::cpu(), gc);
  const Tensor og = run(Device::cuda(), gg);
  const Tol to = output_tol(c.dtype);
  EXPECT_TRUE(close_to_cpu(og, oc, to.rtol, to.atol)) << "output";
  if (!c.grads) return;
  const Tol tg = grad_tol(c.dtype);
  const char* names[] = {"dq", "dk", "dv"};
  for (int k = 0; k < 3; ++k) EXPECT_TRUE(close_to_cpu(gg[k], gc[k], tg.rtol, tg.atol)) << names[k];
}

// ---------------------------------------------------------------- float32

TEST(CudaAttention, Float32LengthsAndHeadDims) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 100;
  for (int64_t t : {1, 7, 64, 129, 300})
    for (int64_t d : {16, 64, 80, 128})
      for (bool causal : {false, true}) {
        Case c;
        c.tq = c.tk = t;
        c.d = c.dv = d;
        c.causal = causal;
        check_case(c, seed += 10);
      }
}

TEST(CudaAttention, Float32QueryAndKeyLengthsDiffer) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 200;
  // Causal with tq != tk: key j > query i masked (top-left); with tq > tk
  // the later rows see every key, with tq < tk most keys get no gradient.
  for (auto [tq, tk] : {std::pair<int64_t, int64_t>{7, 129}, {129, 7}, {1, 300}, {300, 65}})
    for (bool causal : {false, true}) {
      Case c;
      c.tq = tq;
      c.tk = tk;
      c.d = 64;
      c.dv = 64;
      c.causal = causal;
      check_case(c, seed += 10);
    }
}

TEST(CudaAttention, Float32ValueDimDiffersFromKeyDim) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 300;
  for (auto [d, dv] : {std::pair<int64_t, int64_t>{16, 128}, {128, 16}, {80, 48}, {3, 5}}) {
    Case c;
    c.tq = c.tk = 129;
    c.d = d;
    c.dv = dv;
    check_case(c, seed += 10);
  }
}

TEST(CudaAttention, Float32Masks) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 400;
  for (int mask : {1, 2})
    for (int64_t t : {7, 129})
      for (int64_t d : {64, 80}) {
        Case c;
        c.tq = c.tk = t;
        c.d = c.dv = d;
        c.mask = mask;
        check_case(c, seed += 10);
      }
}

// Head dims over 128: the reference kernels, float32 included.
TEST(CudaAttention, Float32WideHeadsUseTheReference) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 500;
  for (auto [d, dv] : {std::pair<int64_t, int64_t>{160, 160}, {256, 64}, {64, 200}}) {
    Case c;
    c.tq = 70;
    c.tk = 130;
    c.d = d;
    c.dv = dv;
    c.causal = d == 160;
    check_case(c, seed += 10);
  }
}

// A row whose keys are all masked: o NaN (PyTorch's softmax of all -inf).
TEST(CudaAttention, FullyMaskedRowIsNaN) {
  LOOM_REQUIRE_GPU();
  for (DType dt : {kFloat32, kFloat64}) {
    const Tensor q = randn_cpu({1, 2, 5, 16}, 1, dt), k = randn_cpu({1, 2, 9, 16}, 2, dt),
                 v = randn_cpu({1, 2, 9, 16}, 3, dt);
    Tensor keep = full({5, 9}, true, kBool);
    keep.narrow(0, 2, 1).fill_(false);  // query 2 sees nothing
    const Tensor oc = scaled_dot_product_attention(q, k, v, keep);
    const Tensor og = scaled_dot_product_attention(gpu(q), gpu(k), gpu(v), gpu(keep));
    EXPECT_TRUE(close_to_cpu(og, oc, output_tol(dt).rtol, output_tol(dt).atol)) << dtype_name(dt);
    EXPECT_TRUE(std::isnan(og.cpu().to(kFloat64).select(2, 2).flatten()[0].item<double>()));
  }
}

// ---------------------------------------------------------------- other dtypes

TEST(CudaAttention, Float64) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 600;
  for (int64_t t : {1, 7, 129})
    for (int64_t d : {16, 80})
      for (bool causal : {false, true}) {
        Case c;
        c.tq = c.tk = t;
        c.d = c.dv = d;
        c.causal = causal;
        c.dtype = kFloat64;
        check_case(c, seed += 10);
      }
  Case c;
  c.tq = 33;
  c.tk = 70;
  c.d = 16;
  c.dv = 24;
  c.mask = 1;
  c.dtype = kFloat64;
  check_case(c, seed += 10);
}

TEST(CudaAttention, HalfTypes) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 700;
  for (DType dt : {kFloat16, kBFloat16})
    for (int64_t t : {7, 129})
      for (int64_t d : {64, 128})
        for (bool causal : {false, true}) {
          Case c;
          c.tq = c.tk = t;
          c.d = c.dv = d;
          c.causal = causal;
          c.dtype = dt;
          check_case(c, seed += 10);
        }
}

// ---------------------------------------------------------------- dropout

// The kept weights are the CPU's, bit for bit: with q = k = 0 every weight
// is 1 / Tk, and v the identity makes o[i][j] = keep(i, j) / (Tk (1 - p)).
TEST(CudaAttention, DropoutMaskMatchesTheCpu) {
  LOOM_REQUIRE_GPU();
  const double p = 0.3;
  for (DType dt : {kFloat32, kFloat64})
    for (int64_t tk : {64, 100, 300}) {
      SCOPED_TRACE(std::string(dtype_name(dt)) + " tk " + std::to_string(tk));
      const int64_t b = 2, h = 2, tq = 70;
      const Tensor q = zeros({b, h, tq, 16}, dt), k = zeros({b, h, tk, 16}, dt);
      const Tensor v = eye(tk, std::nullopt, dt).expand({b, h, tk, tk}).contiguous();
      const Tensor oc = scaled_dot_product_attention(q, k, v, {}, p, false, std::nullopt, Generator(77));
      const Tensor og = scaled_dot_product_attention(gpu(q), gpu(k), gpu(v), {}, p, false, std::nullopt, Generator(77));
      EXPECT_TRUE(close_to_cpu(og.eq(0.0), oc.eq(0.0), 0, 0)) << "the dropped weights differ";
      EXPECT_TRUE(close_to_cpu(og, oc, output_tol(dt).rtol, output_tol(dt).atol));
      const double kept = sum(oc.ne(0.0).to(kFloat64)).item<double>() / static_cast<double>(b * h * tq * tk);
      EXPECT_NEAR(kept, 1 - p, 0.05);
    }
}

TEST(CudaAttention, DropoutForwardAndBackward) {
  LOOM_REQUIRE_GPU();
  uint64_t seed = 800;
  for (DType dt : {kFloat32, kFloat64})
    for (int64_t t : {7, 129})
      for (bool causal : {false, true}) {
        Case c;
        c.tq = c.tk = t;
        c.d = c.dv = 64;
        c.causal = causal;
        c.dropout = 0.25;
        c.dtype = dt;
        check_case(c, seed += 10);
      }
  Case c;  // p = 1: everything dropped, o = 0
  c.tq = c.tk = 65;
  c.dropout = 1.0;
  check_case(c, seed += 10);
}

// ---------------------------------------------------------------- models

// Runs `f` (which builds and runs a model on CUDA); skips, naming it, when
// the CUDA backend still lacks a kernel the model needs.
bool run_or_skip_missing_kernel(const std::function<void()>& f, std::string& missing) {
  try {
    f();
  } catch (const Error& e) {
    const std::string what = e.what();
    if (what.find("has no kernel") == std::string::npos) throw;
    missing = what;
    return false;
  }
  return true;
}

// Copies `from`'s parameters into `to` (same architecture, CPU).
void copy_parameters(const nn::Module& from, nn::Module& to) {
  NoGradGuard no_grad;
  const StateDict a = from.named_parameters(), b = to.named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    Tensor dst = b[k].second;
    dst.copy_(a[k].second);
  }
}

// Forward and backward of `module` applied by `call` to x (B, T, C) on both
// devices: the output, dx and every parameter's gradient.
template <typename M, typename Call>
void check_module(M cpu_module, M gpu_module, const Call& call, int64_t b, int64_t t, int64_t c) {
  copy_parameters(*cpu_module, *gpu_module);
  const Tensor x = randn_cpu({b, t, c}, 11), w = randn_cpu({b, t, c}, 12);
  Tensor xc = x.clone().requires_grad_(true);
  const Tensor yc = call(cpu_module, xc);
  sum(mul(yc, w)).backward();
  std::string missing;
  Tensor xg, yg;
  const bool ran = run_or_skip_missing_kernel(
      [&] {
        gpu_module->to(Device::cuda());
        xg = gpu(x).requires_grad_(true);
        yg = call(gpu_module, xg);
        sum(mul(yg, gpu(w))).backward();
      },
      missing);
  if (!ran) GTEST_SKIP() << "the CUDA backend lacks a kernel this model needs: " << missing;
  EXPECT_TRUE(close_to_cpu(yg.detach(), yc.detach(), 1e-4, 1e-4)) << "output";
  EXPECT_TRUE(close_to_cpu(xg.grad(), xc.grad(), 1e-4, 1e-4)) << "dx";
  const StateDict pc = cpu_module->named_parameters(), pg = gpu_module->named_parameters();
  for (size_t k = 0; k < pc.size(); ++k)
    EXPECT_TRUE(close_to_cpu(pg[k].second.grad(), pc[k].second.grad(), 1e-4, 1e-4)) << pc[k].first;
}

TEST(CudaAttention, MultiheadAttentionForwardBackward) {
  LOOM_REQUIRE_GPU();
  const int64_t e = 64, heads = 4;
  nn::MultiheadAttention a(e, heads, {.batch_first = true}), g(e, heads, {.batch_first = true});
  check_module(a, g,
               [](nn::MultiheadAttention& m, const Tensor& x) {
                 return m(x, x, x, {}, /*need_weights=*/false, {}, true, /*is_causal=*/false).first;
               },
               2, 37, e);
}

TEST(CudaAttention, GptBlockForwardBackward) {
  LOOM_REQUIRE_GPU();
  models::GPTConfig cfg;
  cfg.n_layer = 1;
  cfg.n_embd = 128;
  cfg.n_head = 4;
  cfg.block_size = 128;
  models::Block a(cfg), g(cfg);
  check_module(a, g, [](models::Block& m, const Tensor& x) { return m(x); }, 2, 100, cfg.n_embd);
}

}  // namespace
}  // namespace loom
