// scaled_dot_product_attention: harness rows against a plain-loop reference
// over doubles written from PyTorch's definition (softmax(q k^T scale +
// mask) v), then the tiled float32 kernels against the reference kernels
// (Note [Attention kernels]) on odd sizes that cross the block edges,
// strided inputs, every GEMM ISA and thread count; dropout's mask, its
// determinism and its gradient; memory that grows with T, not T^2; and the
// op's error messages.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>

#include "harness.h"

#include "../test_util.h"
#include "fast_paths.h"

namespace loom_test {
namespace {

using AL = std::vector<Array>;

// ---- reference ----

// softmax(q k^T scale + mask [+ causal]) v over the leading dims of q
// (..., Tq, E), k (..., Tk, E), v (..., Tk, Ev); mask (any shape that
// broadcasts to (..., Tq, Tk)) is additive, or a bool "may attend" mask.
Array attention_ref(const Array& q, const Array& k, const Array& v, const Array* mask, bool mask_is_bool,
                    bool causal, std::optional<double> scale) {
  const int64_t tq = q.size(-2), e = q.size(-1), tk = k.size(-2), ev = v.size(-1);
  int64_t lead = 1;
  for (int64_t d = 0; d + 2 < q.dim(); ++d) lead *= q.shape[static_cast<size_t>(d)];
  Shape score_shape(q.shape.begin(), q.shape.end() - 1);
  score_shape.push_back(tk);
  const Array m = mask ? expand_to(*mask, score_shape) : Array();
  Shape out_shape(q.shape.begin(), q.shape.end() - 1);
  out_shape.push_back(ev);
  Array o(out_shape);
  const double sc = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(e));
  std::vector<double> s(static_cast<size_t>(tk));
  for (int64_t b = 0; b < lead; ++b)
    for (int64_t i = 0; i < tq; ++i) {
      double mx = -INFINITY;
      for (int64_t j = 0; j < tk; ++j) {
        double dot = 0;
        for (int64_t x = 0; x < e; ++x) dot += q.v[(b * tq + i) * e + x] * k.v[(b * tk + j) * e + x];
        double sj = dot * sc;
        if (mask) {
          const double mv = m.v[(b * tq + i) * tk + j];
          sj = mask_is_bool ? (mv != 0 ? sj : -INFINITY) : sj + mv;
        }
        if (causal && j > i) sj = -INFINITY;
        s[static_cast<size_t>(j)] = sj;
        mx = std::max(mx, sj);
      }
      double l = 0;
      for (double& x : s) l += (x = std::exp(x - mx));
      for (int64_t y = 0; y < ev; ++y) {
        double acc = 0;
        for (int64_t j = 0; j < tk; ++j) acc += s[static_cast<size_t>(j)] / l * v.v[(b * tk + j) * ev + y];
        o.v[(b * tq + i) * ev + y] = acc;
      }
    }
  return o;
}

// A bool mask with key 0 always visible (no row is masked out entirely).
Tensor with_first_key(const Tensor& m) {
  Tensor first = loom::zeros(m.sizes(), loom::kBool);
  first.narrow(-1, 0, 1).fill_(true);
  return loom::logical_or(m, first);
}
Array with_first_key_ref(const Array& m) {
  Array r = m;
  const int64_t tk = m.size(-1);
  for (int64_t x = 0; x < r.numel(); x += tk) r.v[static_cast<size_t>(x)] = 1;
  return r;
}

}  // namespace

void add_attention_rows(std::vector<Row>& rows) {
  // q (B, H, Tq, E), k (B, H, Tk, E), v (B, H, Tk, Ev), and the other ranks.
  const std::vector<std::vector<Shape>> qkv = {{{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}},
                                               {{5, 4}, {7, 4}, {7, 3}},
                                               {{2, 6, 3}, {2, 1, 3}, {2, 1, 2}},
                                               {{2, 1, 2, 3, 4}, {2, 1, 2, 4, 4}, {2, 1, 2, 4, 2}}};
  rows.push_back(Row("scaled_dot_product_attention")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes(qkv)
                     .f([](const TL& x) { return loom::scaled_dot_product_attention(x[0], x[1], x[2]); })
                     .r([](const AL& a) { return attention_ref(a[0], a[1], a[2], nullptr, false, false, {}); })
                     .gradgrad_check());
  rows.push_back(Row("scaled_dot_product_attention_scale")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({qkv[0], qkv[1]})
                     .f([](const TL& x) {
                       return loom::scaled_dot_product_attention(x[0], x[1], x[2], {}, 0.0, false, 1.7);
                     })
                     .r([](const AL& a) { return attention_ref(a[0], a[1], a[2], nullptr, false, false, 1.7); }));
  // Causal: query i sees keys 0..i (PyTorch's top-left alignment), also with Tq != Tk.
  rows.push_back(Row("scaled_dot_product_attention_causal")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .shapes({{{2, 2, 6, 4}, {2, 2, 6, 4}, {2, 2, 6, 3}},
                              {{5, 3}, {7, 3}, {7, 4}},
                              {{2, 7, 3}, {2, 4, 3}, {2, 4, 3}}})
                     .f([](const TL& x) {
                       return loom::scaled_dot_product_attention(x[0], x[1], x[2], {}, 0.0, true);
                     })
                     .r([](const AL& a) { return attention_ref(a[0], a[1], a[2], nullptr, false, true, {}); })
                     .gradgrad_check());
  // A bool mask (true = may attend), broadcast over batch and heads.
  rows.push_back(Row("scaled_dot_product_attention_bool_mask")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(Mask())
                     .shapes({{{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, {5, 7}},
                              {{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, {2, 1, 1, 7}}})
                     .f([](const TL& x) {
                       return loom::scaled_dot_product_attention(x[0], x[1], x[2], with_first_key(x[3]));
                     })
                     .r([](const AL& a) {
                       const Array m = with_first_key_ref(a[3]);
                       return attention_ref(a[0], a[1], a[2], &m, true, false, {});
                     }));
  // An additive float mask without a gradient: the fused kernels.
  rows.push_back(Row("scaled_dot_product_attention_float_mask")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(Const(U(-2, 2)))
                     .shapes({{{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, {2, 1, 5, 7}},
                              {{5, 4}, {7, 4}, {7, 2}, {7}}})
                     .f([](const TL& x) { return loom::scaled_dot_product_attention(x[0], x[1], x[2], x[3]); })
                     .r([](const AL& a) { return attention_ref(a[0], a[1], a[2], &a[3], false, false, {}); }));
  // A float mask that wants its gradient (a learned bias): the unfused form.
  rows.push_back(Row("scaled_dot_product_attention_mask_grad")
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-1, 1))
                     .in(U(-2, 2))
                     .shapes({{{2, 3, 5, 4}, {2, 3, 7, 4}, {2, 3, 7, 6}, {3, 5, 7}}})
                     .f([](const TL& x) { return loom::scaled_dot_product_attention(x[0], x[1], x[2], x[3]); })
                     .r([](const AL& a) { return attention_ref(a[0], a[1], a[2], &a[3], false, false, {}); }));
}

namespace {

Tensor randn64(const Shape& shape, uint32_t seed, double sd = 1.0) {
  Tensor t = loom::empty(shape, loom::kFloat64);
  std::mt19937 gen(seed);
  std::normal_distribution<double> normal(0.0, sd);
  double* p = t.data_ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = normal(gen);
  return t;
}


// One attention call with its gradients: o, dq, dk, dv for the upstream grad g.
struct AttnRun {
  Tensor o, dq, dk, dv;
};
AttnRun attention_run(const Tensor& q0, const Tensor& k0, const Tensor& v0, const Tensor& g, const Tensor& mask,
                  double p, bool causal, uint64_t seed) {
  Tensor q = q0.detach().requires_grad_(true), k = k0.detach().requires_grad_(true),
         v = v0.detach().requires_grad_(true);
  loom::manual_seed(seed);
  Tensor o = loom::scaled_dot_product_attention(q, k, v, mask, p, causal);
  const auto grads = loom::autograd::grad({o}, {q, k, v}, {g.to(o.dtype())});
  return {o.detach(), grads[0], grads[1], grads[2]};
}

struct FastCase {
  std::string name;
  Shape q, k, v;
  bool causal = false;
  bool mask = false;
  double p = 0;
};

// The tiled float32 kernels against the float64 reference kernels: block
// edges (Tq, Tk not multiples of 64 / 128), odd head dims, Tq != Tk, causal,
// a broadcast float mask, dropout with one seed; every ISA and thread count.
TEST(AttentionKernels, TiledFloat32MatchesReference) {
  const std::vector<FastCase> cases = {
      {"odd", {2, 3, 67, 13}, {2, 3, 131, 13}, {2, 3, 131, 9}},
      {"causal_square", {1, 2, 130, 64}, {1, 2, 130, 64}, {1, 2, 130, 64}, true},
      {"causal_tall", {1, 2, 150, 16}, {1, 2, 70, 16}, {1, 2, 70, 8}, true},
      {"mask", {2, 2, 66, 7}, {2, 2, 200, 7}, {2, 2, 200, 5}, false, true},
      {"dropout", {2, 2, 65, 8}, {2, 2, 129, 8}, {2, 2, 129, 8}, false, false, 0.25},
      {"dropout_causal", {1, 3, 70, 8}, {1, 3, 70, 8}, {1, 3, 70, 8}, true, false, 0.4},
      {"short", {3, 1, 2, 5}, {3, 1, 1, 5}, {3, 1, 1, 3}},
  };
  uint32_t seed = 1;
  for (const FastCase& fc : cases) {
    SCOPED_TRACE(fc.name);
    const Tensor q = randn64(fc.q, seed++), k = randn64(fc.k, seed++), v = randn64(fc.v, seed++);
    Shape os = fc.q;
    os.back() = fc.v.back();
    const Tensor g = randn64(os, seed++);
    const Tensor mask = fc.mask ? randn64({fc.q[2], fc.k[2]}, seed++) : Tensor();
    const AttnRun want = attention_run(q, k, v, g, mask, fc.p, fc.causal, 99);
    for (GemmIsa isa : runnable_isas()) {
      IsaGuard ig(isa);
      for (int threads : {1, 2}) {
        ThreadsGuard tg(threads);
        const std::string label = std::string(loom::cpu::gemm_isa_name(isa)) + " threads " + std::to_string(threads);
        const Tensor mask32 = mask.defined() ? mask.to(loom::kFloat32) : Tensor();
        const AttnRun got = attention_run(q.to(loom::kFloat32), k.to(loom::kFloat32), v.to(loom::kFloat32), g, mask32,
                                      fc.p, fc.causal, 99);
        expect_close(got.o, want.o, 2e-5, label + " o");
        expect_close(got.dq, want.dq, 1e-4, label + " dq");
        expect_close(got.dk, want.dk, 1e-4, label + " dk");
        expect_close(got.dv, want.dv, 1e-4, label + " dv");
      }
    }
    // And the float32 reference kernels give the same as the tiled ones.
    ReferenceGuard rg;
    const AttnRun ref32 = attention_run(q.to(loom::kFloat32), k.to(loom::kFloat32), v.to(loom::kFloat32), g,
                                    mask.defined() ? mask.to(loom::kFloat32) : Tensor(), fc.p, fc.causal, 99);
    expect_close(ref32.o, want.o, 2e-5, "float32 reference o");
    expect_close(ref32.dq, want.dq, 1e-4, "float32 reference dq");
  }
}

// What a multi-head layer hands the op: q, k, v as (B, T, H, E) transposed
// to (B, H, T, E), so not contiguous; and an expanded (stride-0) key.
TEST(AttentionKernels, StridedInputs) {
  const Tensor q = randn64({2, 70, 3, 8}, 11), k = randn64({2, 90, 3, 8}, 12), v = randn64({2, 90, 3, 8}, 13);
  const Tensor g = randn64({2, 3, 70, 8}, 14);
  const AttnRun want = attention_run(q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
                                 v.transpose(1, 2).contiguous(), g, {}, 0, true, 1);
  const AttnRun got = attention_run(q.to(loom::kFloat32).transpose(1, 2), k.to(loom::kFloat32).transpose(1, 2),
                                v.to(loom::kFloat32).transpose(1, 2), g, {}, 0, true, 1);
  expect_close(got.o, want.o, 2e-5, "o");
  expect_close(got.dq, want.dq, 1e-4, "dq");
  expect_close(got.dk, want.dk, 1e-4, "dk");
  expect_close(got.dv, want.dv, 1e-4, "dv");

  // One key/value head shared by every query head (expanded, stride 0).
  const Tensor k1 = randn64({2, 1, 90, 8}, 15), v1 = randn64({2, 1, 90, 8}, 16);
  const Tensor q2 = randn64({2, 3, 70, 8}, 17);
  const AttnRun w2 = attention_run(q2, k1.expand({2, 3, 90, 8}).contiguous(), v1.expand({2, 3, 90, 8}).contiguous(), g,
                               {}, 0, false, 1);
  const Tensor o2 = loom::scaled_dot_product_attention(q2.to(loom::kFloat32), k1.to(loom::kFloat32).expand({2, 3, 90, 8}),
                                                       v1.to(loom::kFloat32).expand({2, 3, 90, 8}));
  expect_close(o2, w2.o, 2e-5, "expanded key o");
}

// Dropout drops each weight with probability p and scales the rest by
// 1 / (1 - p): with v the identity, the output *is* the weight matrix.
TEST(AttentionDropout, DropsWeightsWithProbabilityP) {
  const int64_t t = 96;
  const double p = 0.3;
  const Tensor q = randn64({2, 4, t, 8}, 21).to(loom::kFloat32), k = randn64({2, 4, t, 8}, 22).to(loom::kFloat32);
  const Tensor eye = loom::eye(t, std::nullopt, loom::kFloat32).expand({2, 4, t, t});
  const Tensor w = loom::softmax(loom::matmul(q, k.transpose(-2, -1)) * (1 / std::sqrt(8.0)), -1);
  for (bool fast : {true, false}) {
    SCOPED_TRACE(fast ? "tiled" : "reference");
    loom::cpu::testing::set_vec_enabled(fast);
    loom::manual_seed(5);
    const Tensor o = loom::scaled_dot_product_attention(q, k, eye, {}, p);
    loom::cpu::testing::set_vec_enabled(true);
    const std::vector<double> got = flat(o), full = flat(w);
    int64_t dropped = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (got[i] == 0) {
        ++dropped;
      } else {
        ASSERT_NEAR(got[i], full[i] / (1 - p), 1e-5 * (1 + full[i])) << i;
      }
    }
    const double frac = static_cast<double>(dropped) / static_cast<double>(got.size());
    // 73,728 Bernoulli(0.3) draws: the standard deviation of frac is 0.0017.
    EXPECT_NEAR(frac, p, 0.01);
  }
  // Same seed, same mask; another seed, another.
  loom::manual_seed(5);
  const Tensor a = loom::scaled_dot_product_attention(q, k, eye, {}, p);
  loom::manual_seed(5);
  const Tensor b = loom::scaled_dot_product_attention(q, k, eye, {}, p);
  loom::manual_seed(6);
  const Tensor c = loom::scaled_dot_product_attention(q, k, eye, {}, p);
  EXPECT_EQ(flat(a), flat(b));
  EXPECT_NE(flat(a), flat(c));
  // p = 1 drops everything.
  EXPECT_EQ(loom::sum(loom::abs(loom::scaled_dot_product_attention(q, k, eye, {}, 1.0))).item<float>(), 0.0f);
}

// The gradient under dropout (the mask fixed by the seed) against central
// differences in float64, through the fused backward and the recorded one.
TEST(AttentionDropout, Gradcheck) {
  const Tensor q = randn64({1, 2, 4, 3}, 31), k = randn64({1, 2, 5, 3}, 32), v = randn64({1, 2, 5, 3}, 33);
  const Tensor g = randn64({1, 2, 4, 3}, 34);
  auto loss = [&](const Tensor& qq, const Tensor& kk, const Tensor& vv) {
    loom::manual_seed(77);
    return loom::sum(loom::scaled_dot_product_attention(qq, kk, vv, {}, 0.4) * g).item<double>();
  };
  for (bool create_graph : {false, true}) {
    Tensor ql = q.clone().requires_grad_(true), kl = k.clone().requires_grad_(true), vl = v.clone().requires_grad_(true);
    loom::manual_seed(77);
    Tensor o = loom::scaled_dot_product_attention(ql, kl, vl, {}, 0.4);
    const auto grads = loom::autograd::grad({o}, {ql, kl, vl}, {g}, std::nullopt, create_graph);
    const std::vector<Tensor> xs = {q, k, v};
    for (size_t which = 0; which < 3; ++which) {
      const std::vector<double> an = flat(grads[which]);
      for (int64_t i = 0; i < xs[which].numel(); ++i) {
        std::vector<Tensor> plus = {q.clone(), k.clone(), v.clone()}, minus = {q.clone(), k.clone(), v.clone()};
        plus[which].data_ptr<double>()[i] += 1e-6;
        minus[which].data_ptr<double>()[i] -= 1e-6;
        const double fd = (loss(plus[0], plus[1], plus[2]) - loss(minus[0], minus[1], minus[2])) / 2e-6;
        EXPECT_NEAR(an[static_cast<size_t>(i)], fd, 1e-6 * (1 + std::abs(fd)))
            << "input " << which << " element " << i << " create_graph " << create_graph;
      }
    }
  }
}

// Forward + backward at T = 4096 holds O(T) extra memory: the T x T weights
// alone would be 64 MiB per head.
TEST(AttentionMemory, GrowsWithTNotTSquared) {
  auto peak_extra = [](int64_t t) {
    Tensor q = randn64({1, 1, t, 32}, 41).to(loom::kFloat32).requires_grad_(true);
    Tensor k = randn64({1, 1, t, 32}, 42).to(loom::kFloat32).requires_grad_(true);
    Tensor v = randn64({1, 1, t, 32}, 43).to(loom::kFloat32).requires_grad_(true);
    const size_t base = loom::cpu_allocator_stats().bytes_in_use;
    loom::cpu_reset_peak_stats();
    {
      Tensor o = loom::scaled_dot_product_attention(q, k, v, {}, 0.0, true);
      loom::sum(o).backward();
    }
    return static_cast<double>(loom::cpu_allocator_stats().peak_bytes_in_use - base);
  };
  const double p2k = peak_extra(2048), p4k = peak_extra(4096);
  const double tsq = 4096.0 * 4096.0 * 4;
  EXPECT_LT(p4k, tsq / 8) << "peak extra bytes at T=4096: " << p4k;
  RecordProperty("peak_extra_bytes_t4096", std::to_string(p4k));
  EXPECT_LT(p4k, 2.6 * p2k) << "T=2048: " << p2k << " bytes, T=4096: " << p4k;
}

TEST(AttentionErrors, NameTheOpAndShapes) {
  const Tensor q = loom::zeros({2, 3, 5, 4}), k = loom::zeros({2, 3, 7, 4}), v = loom::zeros({2, 3, 7, 6});
  const auto msg = loom::test::error_of;
  auto expect_has = [](const std::string& m, const std::string& part) {
    EXPECT_NE(m.find(part), std::string::npos) << m;
    EXPECT_NE(m.find("scaled_dot_product_attention"), std::string::npos) << m;
  };
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, loom::zeros({2, 3, 7, 5}), v); }), "[2, 3, 7, 5]");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k, loom::zeros({2, 3, 6, 6})); }), "[2, 3, 6, 6]");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, loom::zeros({2, 4, 7, 4}), v); }), "leading");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k.to(loom::kFloat64), v); }), "float64");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q.to(loom::kInt64), k, v); }), "int64");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k, v, loom::zeros({4, 7})); }), "[4, 7]");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k, v, loom::zeros({5, 7}), 0.0, true); }), "is_causal");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k, v, {}, 1.5); }), "dropout_p");
  expect_has(msg([&] { loom::scaled_dot_product_attention(q, k, v, loom::zeros({5, 7}, loom::kInt32)); }), "int32");
  expect_has(msg([&] { loom::scaled_dot_product_attention(loom::zeros({4}), loom::zeros({4}), loom::zeros({4})); }),
             "[4]");
}

// Every key masked in a row: softmax is 0/0, NaN as in PyTorch's math path;
// other rows are unaffected.
TEST(AttentionSemantics, FullyMaskedRowIsNaN) {
  const Tensor q = randn64({1, 1, 3, 4}, 51).to(loom::kFloat32), k = randn64({1, 1, 4, 4}, 52).to(loom::kFloat32),
               v = randn64({1, 1, 4, 2}, 53).to(loom::kFloat32);
  Tensor m = loom::ones({3, 4}, loom::kBool);
  m.select(0, 1).fill_(false);
  for (bool fast : {true, false}) {
    loom::cpu::testing::set_vec_enabled(fast);
    const std::vector<double> o = flat(loom::scaled_dot_product_attention(q, k, v, m));
    loom::cpu::testing::set_vec_enabled(true);
    EXPECT_TRUE(std::isnan(o[2]) && std::isnan(o[3]));
    EXPECT_FALSE(std::isnan(o[0]) || std::isnan(o[1]) || std::isnan(o[4]) || std::isnan(o[5]));
  }
}

}  // namespace
}  // namespace loom_test
