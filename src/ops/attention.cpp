// scaled_dot_product_attention: one fused primitive (Attention,
// AttentionBackward; kernels in src/backend/cpu/cpu_attention.cpp, Note
// [Attention kernels]).
//
// As batch_norm (Note [Fused backward and double backward] in
// src/ops/fused.cpp), the backward runs the fused AttentionBackward kernel
// when it is not being recorded, and otherwise computes the same gradient
// with loom ops (materializing the weights), so higher-order gradients flow.
// The dropout mask is the kernels' (the same Philox counters), rebuilt as a
// tensor by the Uniform kernel when loom ops need it.
#include <cmath>
#include <limits>
#include <optional>

#include "core/autocast.h"
#include "core/generator.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

constexpr const char* kOp = "scaled_dot_product_attention";

// What one call works on: leading dims `lead` folded into (b, h).
struct Geometry {
  Shape lead;
  int64_t b = 1, h = 1, tq = 0, tk = 0, d = 0, dv = 0;
  Shape q4() const { return {b, h, tq, d}; }
  Shape k4() const { return {b, h, tk, d}; }
  Shape v4() const { return {b, h, tk, dv}; }
  Shape s4() const { return {b, h, tq, tk}; }
  Shape out_shape() const {
    Shape s = lead;
    s.push_back(tq);
    s.push_back(dv);
    return s;
  }
};

// The dropout factor of every weight (b, h, tq, tk): 1 / (1 - p) where the
// kernels keep it, else 0, in dtype (ops.def's Philox counters).
Tensor dropout_factor(const Geometry& g, double p, uint64_t seed, uint64_t offset, const TensorOptions& o) {
  Tensor u = make_tensor(g.s4(), kFloat32, o.device());
  ops::launch(OpKind::Uniform, {}, u, {0.0, 1.0},
              {static_cast<int64_t>(seed), static_cast<int64_t>(offset), 0, 0});
  const double keep = p >= 1 ? 0.0 : 1.0 / (1.0 - p);
  return where(u.to(kFloat64) < (1.0 - p), full({}, keep, o), full({}, 0.0, o));
}

// The scores q k^T scale + mask (+ the causal mask), with loom ops.
Tensor scores(const Tensor& q, const Tensor& k, const Tensor& mask, double scale, bool causal) {
  Tensor s = matmul(q, k.transpose(-2, -1)) * scale;
  if (mask.defined()) s = add(s, mask);
  if (causal) {
    const int64_t tq = q.sizes()[2], tk = k.sizes()[2];
    s = add(s, triu(full({tq, tk}, -std::numeric_limits<double>::infinity(), s.options()), 1));
  }
  return s;
}

// The whole op with loom ops: (b, h, tq, dv), differentiable in everything.
Tensor attention_math(const Geometry& g, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& mask,
                      double scale, double p, bool causal, uint64_t seed, uint64_t offset) {
  Tensor w = softmax(scores(q, k, mask, scale, causal), -1);
  if (p > 0) w = mul(w, dropout_factor(g, p, seed, offset, TensorOptions(w.dtype()).device(w.device())));
  return matmul(w, v);
}

void check_input(const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), kOp, ": ", what, " is an undefined tensor");
  LOOM_CHECK(is_floating_point(t.dtype()), kOp, ": expected a floating point ", what, ", got ", dtype_name(t.dtype()),
             " (shape ", shape_str(t.sizes()), ")");
  LOOM_CHECK(t.dim() >= 2, kOp, ": expected ", what, " of shape (..., L, E), got shape ", shape_str(t.sizes()));
}

Geometry geometry_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  const Shape &qs = q.sizes(), &ks = k.sizes(), &vs = v.sizes();
  const auto shapes = [&] {
    return std::string("query ") + shape_str(qs) + ", key " + shape_str(ks) + ", value " + shape_str(vs);
  };
  LOOM_CHECK(q.dim() == k.dim() && q.dim() == v.dim(), kOp, ": query, key and value must have the same number of dims, got ",
             shapes());
  Geometry g;
  g.lead.assign(qs.begin(), qs.end() - 2);
  LOOM_CHECK(Shape(ks.begin(), ks.end() - 2) == g.lead && Shape(vs.begin(), vs.end() - 2) == g.lead, kOp,
             ": query, key and value must have the same leading (batch, head) dims, got ", shapes());
  g.tq = qs[qs.size() - 2];
  g.d = qs.back();
  g.tk = ks[ks.size() - 2];
  g.dv = vs.back();
  LOOM_CHECK(ks.back() == g.d, kOp, ": query and key must have the same embedding size, got ", shapes());
  LOOM_CHECK(vs[vs.size() - 2] == g.tk, kOp, ": key and value must have the same length, got ", shapes());
  if (g.lead.size() == 1) {
    g.b = g.lead[0];
  } else if (g.lead.size() >= 2) {
    g.h = g.lead.back();
    g.b = 1;
    for (size_t i = 0; i + 1 < g.lead.size(); ++i) g.b *= g.lead[i];
  }
  return g;
}

// The additive (b, h, tq, tk) mask in dtype, on the mask's device (a broadcast
// view where it can be).
Tensor additive_mask(const Geometry& g, const Tensor& mask, DType dtype) {
  const TensorOptions o = TensorOptions(dtype).device(mask.device());
  Shape full_shape = g.lead;
  full_shape.push_back(g.tq);
  full_shape.push_back(g.tk);
  LOOM_CHECK(mask.dtype() == kBool || is_floating_point(mask.dtype()), kOp,
             ": expected a bool or floating point attn_mask, got ", dtype_name(mask.dtype()));
  LOOM_CHECK(ops::broadcast_shape(mask.sizes(), full_shape, kOp) == full_shape, kOp, ": attn_mask of shape ",
             shape_str(mask.sizes()), " does not broadcast to the scores' shape ", shape_str(full_shape));
  Tensor m = mask.dtype() == kBool
                 ? where(mask, full({}, 0.0, o), full({}, -std::numeric_limits<double>::infinity(), o))
                 : mask.to(dtype);
  return m.expand(full_shape).reshape(g.s4());
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& query, const Tensor& key, const Tensor& value,
                                    const Tensor& attn_mask, double dropout_p, bool is_causal,
                                    std::optional<double> scale, std::optional<Generator> generator) {
  if (autocast::Region r{query, autocast::Policy::Low})
    return scaled_dot_product_attention(r.cast(query), r.cast(key), r.cast(value), r.cast(attn_mask), dropout_p,
                                        is_causal, scale, generator);
  check_input("query", query);
  check_input("key", key);
  check_input("value", value);
  LOOM_CHECK(query.dtype() == key.dtype() && query.dtype() == value.dtype(), kOp,
             ": expected query, key and value of one dtype, got ", dtype_name(query.dtype()), ", ",
             dtype_name(key.dtype()), " and ", dtype_name(value.dtype()));
  std::vector<Tensor> devs{query, key, value};
  if (attn_mask.defined()) devs.push_back(attn_mask);
  ops::check_same_device(kOp, devs);
  LOOM_CHECK(dropout_p >= 0 && dropout_p <= 1, kOp, ": dropout_p must be in [0, 1], got ", dropout_p);
  LOOM_CHECK(!(is_causal && attn_mask.defined()), kOp, ": an explicit attn_mask must not be set with is_causal");
  const Geometry g = geometry_of(query, key, value);
  const double sc = scale.value_or(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(g.d, 1))));

  const DType ct = compute_dtype(query.dtype());
  const Tensor q = query.to(ct).reshape(g.q4()).contiguous();
  const Tensor k = key.to(ct).reshape(g.k4()).contiguous();
  const Tensor v = value.to(ct).reshape(g.v4()).contiguous();
  const Tensor mask = attn_mask.defined() ? additive_mask(g, attn_mask, ct) : Tensor();
  const auto finish = [&](const Tensor& o4) {
    Tensor o = o4.reshape(g.out_shape());
    return o.dtype() == query.dtype() ? o : o.to(query.dtype());
  };
  if (g.tk == 0) return zeros(g.out_shape(), query.options());  // no keys: an empty sum, as PyTorch

  uint64_t seed = 0, offset = 0;
  if (dropout_p > 0) std::tie(seed, offset) = philox_reserve(static_cast<uint64_t>(g.b * g.h * g.tq * g.tk), generator);
  // A mask that wants its gradient: the unfused form (the kernels give none).
  if (mask.defined() && mask.requires_grad() && is_grad_enabled())
    return finish(attention_math(g, q, k, v, mask, sc, dropout_p, is_causal, seed, offset));

  Tensor o = make_tensor({g.b, g.h, g.tq, g.dv}, ct, q.device());
  Tensor lse = make_tensor({g.b, g.h, g.tq}, ct, q.device());
  const bool has_mask = mask.defined();
  {
    ops::launch(OpKind::Attention, {&q, &k, &v, &mask}, {&o, &lse}, {sc, dropout_p},
                {is_causal ? 1 : 0, has_mask ? 1 : 0, static_cast<int64_t>(seed), static_cast<int64_t>(offset)});
  }

  auto node = autograd::make_node(
      "ScaledDotProductAttentionBackward", {q, k, v},
      [g, sc, dropout_p, is_causal, has_mask, seed, offset](FunctionNode& ctx, const TensorList& gs) {
        Tensor qs = ctx.saved(0), ks = ctx.saved(1), vs = ctx.saved(2), os = ctx.saved(3), ls = ctx.saved(4);
        Tensor ms = has_mask ? ctx.saved(5) : Tensor();
        const Tensor& grad = gs[0];
        if (!is_grad_enabled()) {
          // First-order backward: one fused kernel.
          Tensor gc = (grad.dtype() == qs.dtype() ? grad : grad.to(qs.dtype())).contiguous();
          Tensor dq = make_tensor(qs.sizes(), qs.dtype(), qs.device());
          Tensor dk = make_tensor(ks.sizes(), ks.dtype(), ks.device());
          Tensor dv = make_tensor(vs.sizes(), vs.dtype(), vs.device());
          ops::launch(OpKind::AttentionBackward, {&gc, &qs, &ks, &vs, &os, &ls, &ms}, {&dq, &dk, &dv}, {sc, dropout_p},
                      {is_causal ? 1 : 0, has_mask ? 1 : 0, static_cast<int64_t>(seed), static_cast<int64_t>(offset)});
          return TensorList{dq, dk, dv};
        }
        // Recorded backward: the same formulas in loom ops, the weights recomputed.
        Tensor w = softmax(scores(qs, ks, ms, sc, is_causal), -1);
        Tensor factor = dropout_p > 0 ? dropout_factor(g, dropout_p, seed, offset, TensorOptions(w.dtype()).device(w.device())) : Tensor();
        Tensor wd = factor.defined() ? mul(w, factor) : w;
        Tensor dv = matmul(wd.transpose(-2, -1), grad);
        Tensor dw = matmul(grad, vs.transpose(-2, -1));
        if (factor.defined()) dw = mul(dw, factor);
        Tensor ds = mul(w, sub(dw, sum(mul(dw, w), {-1}, true)));
        Tensor dq = matmul(ds, ks) * sc;
        Tensor dk = matmul(ds.transpose(-2, -1), qs) * sc;
        return TensorList{dq, dk, dv};
      });
  if (node) {
    autograd::set_history(o, node);
    node->save(q);
    node->save(k);
    node->save(v);
    node->save_output(o);
    node->save(lse);
    if (has_mask) node->save(mask);
  }
  return finish(o);
}

}  // namespace loom
