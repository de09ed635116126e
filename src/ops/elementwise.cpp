// Elementwise ops: type promotion, broadcasting, and backward formulas.
#include <cmath>

#include "core/autocast.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;
using ops::sum_to;

// ---- type promotion (PyTorch's result_type) ----
//
// Note [Type promotion]
// Operands are ranked: tensors with dims, then 0-dim tensors, then wrapped
// numbers (C++ scalars). A lower rank changes the result only when it brings a
// higher category (bool < integer < floating): int32 tensor + 2 stays int32,
// int32 tensor + 2.5 becomes float32 (the default float dtype), float16 tensor
// + float64 0-dim tensor stays float16.
namespace {

struct PromotionState {
  std::optional<DType> dim, zero, wrapped;
  void add(const Tensor& t, const char* op) {
    LOOM_CHECK(t.defined(), op, ": got an undefined tensor as an operand");
    const TensorImpl* i = t.unsafe_impl();
    std::optional<DType>* slot = i->wrapped_number ? &wrapped : t.dim() == 0 ? &zero : &dim;
    DType cur = t.dtype();
    if (i->wrapped_number && is_floating_point(cur)) cur = default_dtype();
    *slot = slot->has_value() ? promote_types(**slot, cur) : cur;
  }
  static std::optional<DType> combine(std::optional<DType> higher, std::optional<DType> lower) {
    if (!higher) return lower;
    if (!lower) return higher;
    if (is_floating_point(*higher)) return higher;
    if (*higher == kBool || is_floating_point(*lower)) return promote_types(*higher, *lower);
    return higher;
  }
  DType result() const { return *combine(dim, combine(zero, wrapped)); }
};

DType promote(std::initializer_list<const Tensor*> ts, const char* op) {
  PromotionState s;
  for (const Tensor* t : ts) s.add(*t, op);
  return s.result();
}

// The dtype float-only math (exp, div, ...) computes in.
DType float_dtype(DType t) { return is_floating_point(t) ? t : default_dtype(); }

Tensor unary_kernel(OpKind op, const Tensor& x, DType out_dtype, std::initializer_list<double> f = {},
                    std::initializer_list<int64_t> i = {}) {
  LOOM_CHECK(x.defined(), op_name(op), ": got an undefined tensor as an operand");
  Tensor in = ops::cast_raw(x, out_dtype == kBool ? x.dtype() : out_dtype);
  Tensor out = make_tensor(x.sizes(), out_dtype, x.device());
  ops::launch(op, {&in}, out, f, i);
  return out;
}

Tensor binary_kernel(OpKind op, const char* name, const Tensor& a, const Tensor& b, DType compute, DType out_dtype) {
  const TensorImpl *ia = a.unsafe_impl(), *ib = b.unsafe_impl();
  LOOM_CHECK(ia->device() == ib->device(), name, ": expected all tensors on the same device, got ",
             ia->device().str(), " and ", ib->device().str());
  if (ia->sizes == ib->sizes && ia->dtype == compute && ib->dtype == compute) {
    // Same shapes and dtypes (most calls): nothing to broadcast or cast.
    Tensor out = make_tensor(ia->sizes, out_dtype, ia->device());
    ops::launch(op, {&a, &b}, out);
    return out;
  }
  Shape shape = ops::broadcast_shape(a.sizes(), b.sizes(), name);
  Tensor ca = ops::expand_raw(ops::cast_raw(a, compute), shape);
  Tensor cb = ops::expand_raw(ops::cast_raw(b, compute), shape);
  Tensor out = make_tensor(shape, out_dtype, a.device());
  ops::launch(op, {&ca, &cb}, out);
  return out;
}

// A float unary op y = f(x) with backward `grad_fn(g, x, y)`.
template <typename GradFn>
Tensor float_unary(OpKind op, const char* node_name, const Tensor& x, GradFn grad_fn, std::initializer_list<double> f = {},
                   std::initializer_list<int64_t> i = {}) {
  Tensor y = unary_kernel(op, x, float_dtype(x.dtype()), f, i);
  auto node = autograd::make_node(node_name, {x}, [grad_fn](FunctionNode& ctx, const TensorList& g) {
    Tensor xs = ctx.saved(0), ys = ctx.saved(1);
    return TensorList{grad_fn(g[0], xs, ys)};
  });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
    node->save_output(y);
  }
  return y;
}

Tensor as_mask(const Tensor& cond, DType dt) { return cond.to(dt); }

}  // namespace

DType result_type(const Tensor& a, const Tensor& b) { return promote({&a, &b}, "result_type"); }
DType result_type(const Tensor& a, Scalar b) {
  Tensor w = ops::wrap_scalar(b, a.device());
  return promote({&a, &w}, "result_type");
}

// ---- binary arithmetic ----

Tensor add(const Tensor& a, const Tensor& b, Scalar alpha) {
  if (alpha.to_double() != 1.0) return add(a, mul(b, ops::wrap_scalar(alpha, b.device())));
  DType t = promote({&a, &b}, "add");
  Tensor out = binary_kernel(OpKind::Add, "add", a, b, t, t);
  if (!autograd::compute_requires_grad({&a, &b})) return out;
  std::shared_ptr<FunctionNode> node;
  if (a.sizes() == b.sizes()) {
    // No broadcasting: the gradient passes through (and the formula
    // captures nothing, so recording allocates no closure).
    node = autograd::make_node("AddBackward", {a, b}, [](FunctionNode& ctx, const TensorList& g) {
      TensorList r(2);
      if (ctx.needs_input_grad(0)) r[0] = g[0];
      if (ctx.needs_input_grad(1)) r[1] = g[0];
      return r;
    });
  } else {
    node = autograd::make_node("AddBackward", {a, b}, [sa = a.sizes(), sb = b.sizes()](FunctionNode& ctx, const TensorList& g) {
      TensorList r(2);
      if (ctx.needs_input_grad(0)) r[0] = sum_to(g[0], sa);
      if (ctx.needs_input_grad(1)) r[1] = sum_to(g[0], sb);
      return r;
    });
  }
  autograd::set_history(out, node);
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b, Scalar alpha) {
  LOOM_CHECK(a.dtype() != kBool || b.dtype() != kBool, "sub: subtracting two bool tensors is not supported; use logical_xor");
  if (alpha.to_double() != 1.0) return sub(a, mul(b, ops::wrap_scalar(alpha, b.device())));
  DType t = promote({&a, &b}, "sub");
  Tensor out = binary_kernel(OpKind::Sub, "sub", a, b, t, t);
  if (!autograd::compute_requires_grad({&a, &b})) return out;
  Shape sa = a.sizes(), sb = b.sizes();
  auto node = autograd::make_node("SubBackward", {a, b}, [sa, sb](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = sum_to(g[0], sa);
    if (ctx.needs_input_grad(1)) r[1] = sum_to(neg(g[0]), sb);
    return r;
  });
  autograd::set_history(out, node);
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  DType t = promote({&a, &b}, "mul");
  Tensor out = binary_kernel(OpKind::Mul, "mul", a, b, t, t);
  if (!autograd::compute_requires_grad({&a, &b})) return out;
  Shape sa = a.sizes(), sb = b.sizes();
  auto node = autograd::make_node("MulBackward", {a, b}, [sa, sb](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = sum_to(mul(g[0], ctx.saved(1)), sa);
    if (ctx.needs_input_grad(1)) r[1] = sum_to(mul(g[0], ctx.saved(0)), sb);
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(node->needs_input_grad(1) ? a : Tensor());
    node->save(node->needs_input_grad(0) ? b : Tensor());
  }
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  DType t = float_dtype(promote({&a, &b}, "div"));
  Tensor out = binary_kernel(OpKind::Div, "div", a, b, t, t);
  if (!autograd::compute_requires_grad({&a, &b})) return out;
  Shape sa = a.sizes(), sb = b.sizes();
  auto node = autograd::make_node("DivBackward", {a, b}, [sa, sb](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    Tensor bs = ctx.saved(1);
    if (ctx.needs_input_grad(0)) r[0] = sum_to(div(g[0], bs), sa);
    if (ctx.needs_input_grad(1)) r[1] = sum_to(neg(div(mul(g[0], ctx.saved(0)), mul(bs, bs))), sb);
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(node->needs_input_grad(1) ? a : Tensor());
    node->save(b);
  }
  return out;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  if (autocast::Region r{a, autocast::Policy::Float32}) return pow(r.cast(a), r.cast(b));
  DType t = promote({&a, &b}, "pow");
  Tensor out = binary_kernel(OpKind::Pow, "pow", a, b, t, t);
  Shape sa = a.sizes(), sb = b.sizes();
  auto node = autograd::make_node("PowBackward", {a, b}, [sa, sb](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    Tensor x = ctx.saved(0), e = ctx.saved(1);
    if (ctx.needs_input_grad(0)) {
      // d/dx x^e = e * x^(e-1), and 0 where e == 0 (even at x == 0). e - 1
      // stays in e's dtype: with a wrapped 1, two wrapped numbers would
      // meet in the default dtype and x ** (1/3) would lose its exponent's
      // float64 precision.
      Tensor d = mul(e, pow(x, sub(e, ones_like(e))));
      r[0] = sum_to(mul(g[0], where(eq(e, ops::wrap_scalar(0, e.device())), ops::wrap_scalar(0.0, e.device()), d)), sa);
    }
    if (ctx.needs_input_grad(1)) {
      // d/de x^e = x^e * log(x), taken as 0 where x == 0 and e >= 0.
      Tensor y = ctx.saved(2);
      Tensor d = mul(y, log(x));
      Tensor zero_mask = logical_and(eq(x, ops::wrap_scalar(0, x.device())), ge(e, ops::wrap_scalar(0, e.device())));
      r[1] = sum_to(mul(g[0], where(zero_mask, ops::wrap_scalar(0.0, x.device()), d)), sb);
    }
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(a);
    node->save(b);
    node->save_output(out);
  }
  return out;
}

Tensor pow(const Tensor& a, Scalar b) { return pow(a, ops::wrap_scalar(b, a.device())); }
Tensor pow(Scalar a, const Tensor& b) { return pow(ops::wrap_scalar(a, b.device()), b); }

namespace {
// maximum / minimum: the gradient goes to the chosen operand, split evenly on ties.
Tensor extremum(OpKind op, const char* name, const char* node_name, const Tensor& a, const Tensor& b) {
  DType t = promote({&a, &b}, name);
  Tensor out = binary_kernel(op, name, a, b, t, t);
  Shape sa = a.sizes(), sb = b.sizes();
  const bool is_max = op == OpKind::Maximum;
  auto node = autograd::make_node(node_name, {a, b}, [sa, sb, is_max](FunctionNode& ctx, const TensorList& g) {
    Tensor x = ctx.saved(0), y = ctx.saved(1);
    DType dt = g[0].dtype();
    Tensor wins = as_mask(is_max ? gt(x, y) : lt(x, y), dt);
    Tensor ties = as_mask(eq(x, y), dt);
    Tensor share_a = add(wins, mul(ties, ops::wrap_scalar(0.5, x.device())));
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = sum_to(mul(g[0], share_a), sa);
    if (ctx.needs_input_grad(1)) r[1] = sum_to(mul(g[0], sub(ops::wrap_scalar(1.0, x.device()), share_a)), sb);
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(a);
    node->save(b);
  }
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(OpKind::Maximum, "maximum", "MaximumBackward", a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(OpKind::Minimum, "minimum", "MinimumBackward", a, b); }

// ---- comparisons and logic (no gradients) ----

namespace {
Tensor compare(OpKind op, const char* name, const Tensor& a, const Tensor& b) {
  return binary_kernel(op, name, a, b, promote({&a, &b}, name), kBool);
}
}  // namespace

Tensor eq(const Tensor& a, const Tensor& b) { return compare(OpKind::Eq, "eq", a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare(OpKind::Ne, "ne", a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare(OpKind::Lt, "lt", a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return compare(OpKind::Le, "le", a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare(OpKind::Gt, "gt", a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare(OpKind::Ge, "ge", a, b); }
Tensor logical_and(const Tensor& a, const Tensor& b) { return binary_kernel(OpKind::LogicalAnd, "logical_and", a, b, kBool, kBool); }
Tensor logical_or(const Tensor& a, const Tensor& b) { return binary_kernel(OpKind::LogicalOr, "logical_or", a, b, kBool, kBool); }
Tensor logical_not(const Tensor& x) { return unary_kernel(OpKind::LogicalNot, x, kBool); }
Tensor isnan(const Tensor& x) { return unary_kernel(OpKind::IsNan, x, kBool); }

// ---- unary math ----

Tensor neg(const Tensor& x) {
  LOOM_CHECK(x.dtype() != kBool, "neg: negation of a bool tensor is not supported; use logical_not");
  Tensor y = unary_kernel(OpKind::Neg, x, x.dtype());
  auto node = autograd::make_node("NegBackward", {x}, [](FunctionNode&, const TensorList& g) { return TensorList{neg(g[0])}; });
  autograd::set_history(y, node);
  return y;
}

Tensor exp(const Tensor& x) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return exp(r.cast(x));
  return float_unary(OpKind::Exp, "ExpBackward", x, [](const Tensor& g, const Tensor&, const Tensor& y) { return mul(g, y); });
}
Tensor log(const Tensor& x) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return log(r.cast(x));
  return float_unary(OpKind::Log, "LogBackward", x, [](const Tensor& g, const Tensor& xs, const Tensor&) { return div(g, xs); });
}
Tensor log1p(const Tensor& x) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return log1p(r.cast(x));
  return float_unary(OpKind::Log1p, "Log1pBackward", x,
                     [](const Tensor& g, const Tensor& xs, const Tensor&) { return div(g, add(xs, ops::wrap_scalar(1, xs.device()))); });
}
Tensor sqrt(const Tensor& x) {
  return float_unary(OpKind::Sqrt, "SqrtBackward", x,
                     [](const Tensor& g, const Tensor&, const Tensor& y) { return div(g, mul(y, ops::wrap_scalar(2, y.device()))); });
}
Tensor rsqrt(const Tensor& x) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return rsqrt(r.cast(x));
  return float_unary(OpKind::Rsqrt, "RsqrtBackward", x, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return mul(mul(g, ops::wrap_scalar(-0.5, y.device())), mul(y, mul(y, y)));
  });
}
Tensor sin(const Tensor& x) {
  return float_unary(OpKind::Sin, "SinBackward", x, [](const Tensor& g, const Tensor& xs, const Tensor&) { return mul(g, cos(xs)); });
}
Tensor cos(const Tensor& x) {
  return float_unary(OpKind::Cos, "CosBackward", x, [](const Tensor& g, const Tensor& xs, const Tensor&) { return neg(mul(g, sin(xs))); });
}
Tensor tanh(const Tensor& x) {
  return float_unary(OpKind::Tanh, "TanhBackward", x, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return mul(g, sub(ops::wrap_scalar(1, y.device()), mul(y, y)));
  });
}
Tensor erf(const Tensor& x) {
  return float_unary(OpKind::Erf, "ErfBackward", x, [](const Tensor& g, const Tensor& xs, const Tensor&) {
    return mul(g, mul(exp(neg(mul(xs, xs))), ops::wrap_scalar(2.0 / std::sqrt(M_PI), xs.device())));
  });
}
Tensor sigmoid(const Tensor& x) {
  return float_unary(OpKind::Sigmoid, "SigmoidBackward", x, [](const Tensor& g, const Tensor&, const Tensor& y) {
    return mul(g, mul(y, sub(ops::wrap_scalar(1, y.device()), y)));
  });
}

Tensor abs(const Tensor& x) {
  if (x.dtype() == kBool) return x.clone();
  Tensor y = unary_kernel(OpKind::Abs, x, x.dtype());
  auto node = autograd::make_node("AbsBackward", {x}, [](FunctionNode& ctx, const TensorList& g) {
    return TensorList{mul(g[0], sign(ctx.saved(0)))};
  });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
  }
  return y;
}

Tensor sign(const Tensor& x) {
  Tensor y = unary_kernel(OpKind::Sign, x, x.dtype());
  auto node = autograd::make_node("SignBackward", {x}, [](FunctionNode&, const TensorList& g) { return TensorList{zeros_like(g[0])}; });
  autograd::set_history(y, node);
  return y;
}

Tensor relu(const Tensor& x) {
  LOOM_CHECK(x.dtype() != kBool, "relu: not defined for bool tensors");
  Tensor y = unary_kernel(OpKind::Relu, x, x.dtype());
  auto node = autograd::make_node("ReluBackward", {x}, [](FunctionNode& ctx, const TensorList& g) {
    return TensorList{threshold_backward(g[0], ctx.saved(0), 0.0)};
  });
  if (node) {
    autograd::set_history(y, node);
    node->save_output(y);
  }
  return y;
}

Tensor threshold_backward(const Tensor& grad, const Tensor& x, double threshold) {
  LOOM_CHECK(grad.defined() && x.defined(), "threshold_backward: undefined tensor");
  LOOM_CHECK(is_floating_point(grad.dtype()) && is_floating_point(x.dtype()),
             "threshold_backward: expected floating point tensors, got grad ", dtype_name(grad.dtype()), " and x ",
             dtype_name(x.dtype()));
  ops::check_same_device("threshold_backward", {grad, x});
  const Shape shape = ops::broadcast_shape(grad.sizes(), x.sizes(), "threshold_backward");
  const DType t = promote({&grad, &x}, "threshold_backward");
  Tensor cg = ops::expand_raw(ops::cast_raw(grad, t), shape), cx = ops::expand_raw(ops::cast_raw(x, t), shape);
  Tensor out = make_tensor(shape, t, grad.device());
  ops::launch(OpKind::ThresholdBackward, {&cg, &cx}, out, {threshold});
  // Linear in grad; piecewise constant in x (no gradient flows to x).
  const Shape sg = grad.sizes();
  auto node = autograd::make_node("ThresholdBackwardBackward", {grad}, [threshold, sg](FunctionNode& ctx,
                                                                                       const TensorList& h) {
    return TensorList{sum_to(threshold_backward(h[0], ctx.saved(0), threshold), sg)};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(x);
  }
  return out;
}

namespace ops {
// Note [GELU's derivative]
// grad * gelu'(x), the one place it is written. Not recording, it is one
// GeluBackward kernel; under create_graph it is the same formula in loom ops,
// so it differentiates again:
//   erf form:  d/dx x Phi(x) = Phi(x) + x phi(x)
//   tanh form: d/dx 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//              = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) du/dx
// gelu's backward and the fused Linear's GELU backward both call it.
Tensor gelu_backward(const Tensor& grad, const Tensor& x, bool tanh_form) {
  if (!is_grad_enabled()) {
    const Shape shape = broadcast_shape(grad.sizes(), x.sizes(), "gelu_backward");
    const DType t = promote({&grad, &x}, "gelu_backward");
    Tensor cg = expand_raw(cast_raw(grad, t), shape), cx = expand_raw(cast_raw(x, t), shape);
    Tensor out = make_tensor(shape, t, grad.device());
    launch(OpKind::GeluBackward, {&cg, &cx}, out, {}, {tanh_form ? 1 : 0});
    return out;
  }
  const Device d = x.device();
  if (!tanh_form) {
    Tensor cdf = mul(add(erf(mul(x, wrap_scalar(M_SQRT1_2, d))), wrap_scalar(1, d)), wrap_scalar(0.5, d));
    Tensor pdf = mul(exp(mul(mul(x, x), wrap_scalar(-0.5, d))), wrap_scalar(0.5 * M_2_SQRTPI * M_SQRT1_2, d));
    return mul(grad, add(cdf, mul(x, pdf)));
  }
  const double k = std::sqrt(2.0 / M_PI), c = 0.044715;
  Tensor x2 = mul(x, x);
  Tensor u = mul(mul(x, add(mul(x2, wrap_scalar(c, d)), wrap_scalar(1, d))), wrap_scalar(k, d));
  Tensor t = tanh(u);
  Tensor du = mul(add(mul(x2, wrap_scalar(3 * c, d)), wrap_scalar(1, d)), wrap_scalar(k, d));
  Tensor left = mul(add(t, wrap_scalar(1, d)), wrap_scalar(0.5, d));
  Tensor right = mul(mul(mul(x, wrap_scalar(0.5, d)), sub(wrap_scalar(1, d), mul(t, t))), du);
  return mul(grad, add(left, right));
}
}  // namespace ops

Tensor leaky_relu(const Tensor& x, double slope) {
  return float_unary(
      OpKind::LeakyRelu, "LeakyReluBackward", x,
      [slope](const Tensor& g, const Tensor& xs, const Tensor&) {
        Tensor pos = gt(xs, ops::wrap_scalar(0, xs.device()));
        return where(pos, g, mul(g, ops::wrap_scalar(slope, g.device())));
      },
      {slope});
}

Tensor elu(const Tensor& x, double alpha) {
  return float_unary(
      OpKind::Elu, "EluBackward", x,
      [alpha](const Tensor& g, const Tensor& xs, const Tensor&) {
        Tensor pos = gt(xs, ops::wrap_scalar(0, xs.device()));
        return where(pos, g, mul(g, mul(exp(xs), ops::wrap_scalar(alpha, g.device()))));
      },
      {alpha});
}

Tensor gelu(const Tensor& x, const std::string& approximate) {
  LOOM_CHECK(approximate == "none" || approximate == "tanh", "gelu: approximate must be \"none\" or \"tanh\", got \"",
             approximate, "\"");
  const bool tanh_form = approximate == "tanh";
  return float_unary(tanh_form ? OpKind::GeluTanh : OpKind::Gelu, "GeluBackward", x,
                     [tanh_form](const Tensor& g, const Tensor& xs, const Tensor&) {
                       return ops::gelu_backward(g, xs, tanh_form);
                     });
}

Tensor silu(const Tensor& x) {
  return float_unary(OpKind::Silu, "SiluBackward", x, [](const Tensor& g, const Tensor& xs, const Tensor&) {
    Device d = xs.device();
    Tensor s = sigmoid(xs);
    return mul(g, mul(s, add(ops::wrap_scalar(1, d), mul(xs, sub(ops::wrap_scalar(1, d), s)))));
  });
}

Tensor softplus(const Tensor& x, double beta, double threshold) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return softplus(r.cast(x), beta, threshold);
  return float_unary(
      OpKind::Softplus, "SoftplusBackward", x,
      [beta, threshold](const Tensor& g, const Tensor& xs, const Tensor&) {
        Tensor bx = mul(xs, ops::wrap_scalar(beta, xs.device()));
        return where(gt(bx, ops::wrap_scalar(threshold, xs.device())), g, mul(g, sigmoid(bx)));
      },
      {beta, threshold});
}

Tensor square(const Tensor& x) { return mul(x, x); }
Tensor reciprocal(const Tensor& x) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return reciprocal(r.cast(x));
  return div(ops::wrap_scalar(1, x.device()), x);
}

Tensor clamp(const Tensor& x, std::optional<Scalar> lo, std::optional<Scalar> hi) {
  LOOM_CHECK(lo || hi, "clamp: at least one of min and max must be given");
  DType t = x.dtype();
  if ((lo && lo->is_floating_point()) || (hi && hi->is_floating_point())) t = float_dtype(t);
  double l = lo ? lo->to_double() : 0, h = hi ? hi->to_double() : 0;
  Tensor y = unary_kernel(OpKind::Clamp, x, t, {l, h}, {lo ? 1 : 0, hi ? 1 : 0});
  bool has_lo = lo.has_value(), has_hi = hi.has_value();
  auto node = autograd::make_node("ClampBackward", {x}, [l, h, has_lo, has_hi](FunctionNode& ctx, const TensorList& g) {
    Tensor xs = ctx.saved(0);
    Tensor keep = ones_like(xs, TensorOptions().dtype(kBool));
    if (has_lo) keep = logical_and(keep, ge(xs, ops::wrap_scalar(l, xs.device())));
    if (has_hi) keep = logical_and(keep, le(xs, ops::wrap_scalar(h, xs.device())));
    return TensorList{mul(g[0], as_mask(keep, g[0].dtype()))};
  });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
  }
  return y;
}

// ---- selection ----

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(cond.dtype() == kBool, "where: expected a bool condition, got ", dtype_name(cond.dtype()));
  ops::check_same_device("where", {cond, a, b});
  Shape shape = ops::broadcast_shape(ops::broadcast_shape(cond.sizes(), a.sizes(), "where"), b.sizes(), "where");
  DType t = promote({&a, &b}, "where");
  Tensor cc = ops::expand_raw(cond, shape);
  Tensor ca = ops::expand_raw(ops::cast_raw(a, t), shape);
  Tensor cb = ops::expand_raw(ops::cast_raw(b, t), shape);
  Tensor out = make_tensor(shape, t, a.device());
  ops::launch(OpKind::Where, {&cc, &ca, &cb}, out);
  Shape sa = a.sizes(), sb = b.sizes();
  auto node = autograd::make_node("WhereBackward", {a, b}, [sa, sb](FunctionNode& ctx, const TensorList& g) {
    Tensor c = ctx.saved(0);
    Tensor z = zeros({}, g[0].options());
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = sum_to(where(c, g[0], z), sa);
    if (ctx.needs_input_grad(1)) r[1] = sum_to(where(c, z, g[0]), sb);
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(cond);
  }
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, Scalar b) { return where(cond, a, ops::wrap_scalar(b, a.device())); }
Tensor where(const Tensor& cond, Scalar a, const Tensor& b) { return where(cond, ops::wrap_scalar(a, b.device()), b); }

Tensor masked_fill(const Tensor& x, const Tensor& mask, Scalar v) {
  LOOM_CHECK(mask.dtype() == kBool, "masked_fill: expected a bool mask, got ", dtype_name(mask.dtype()));
  Shape s = ops::broadcast_shape(x.sizes(), mask.sizes(), "masked_fill");
  LOOM_CHECK(s == x.sizes(), "masked_fill: mask of shape ", shape_str(mask.sizes()),
             " does not broadcast to the tensor's shape ", shape_str(x.sizes()));
  Tensor value = ops::cast_raw(ops::wrap_scalar(v, x.device()), x.dtype());
  value.unsafe_impl()->wrapped_number = false;  // the result keeps x's dtype
  return where(mask, value, x);
}

Tensor Tensor::masked_fill(const Tensor& mask, Scalar v) const { return loom::masked_fill(*this, mask, v); }
Tensor Tensor::masked_fill(const Tensor& mask, const Tensor& v) const {
  LOOM_CHECK(v.dim() == 0, "masked_fill: the value must be a 0-dim tensor, got shape ", shape_str(v.sizes()));
  return loom::where(mask, v.to(dtype()), *this);
}

// ---- operators ----

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, Scalar b) { return add(a, ops::wrap_scalar(b, a.device())); }
Tensor operator-(const Tensor& a, Scalar b) { return sub(a, ops::wrap_scalar(b, a.device())); }
Tensor operator*(const Tensor& a, Scalar b) { return mul(a, ops::wrap_scalar(b, a.device())); }
Tensor operator/(const Tensor& a, Scalar b) { return div(a, ops::wrap_scalar(b, a.device())); }
Tensor operator+(Scalar a, const Tensor& b) { return add(ops::wrap_scalar(a, b.device()), b); }
Tensor operator-(Scalar a, const Tensor& b) { return sub(ops::wrap_scalar(a, b.device()), b); }
Tensor operator*(Scalar a, const Tensor& b) { return mul(ops::wrap_scalar(a, b.device()), b); }
Tensor operator/(Scalar a, const Tensor& b) { return div(ops::wrap_scalar(a, b.device()), b); }
Tensor operator==(const Tensor& a, const Tensor& b) { return eq(a, b); }
Tensor operator!=(const Tensor& a, const Tensor& b) { return ne(a, b); }
Tensor operator<(const Tensor& a, const Tensor& b) { return lt(a, b); }
Tensor operator<=(const Tensor& a, const Tensor& b) { return le(a, b); }
Tensor operator>(const Tensor& a, const Tensor& b) { return gt(a, b); }
Tensor operator>=(const Tensor& a, const Tensor& b) { return ge(a, b); }
Tensor operator==(const Tensor& a, Scalar b) { return eq(a, ops::wrap_scalar(b, a.device())); }
Tensor operator!=(const Tensor& a, Scalar b) { return ne(a, ops::wrap_scalar(b, a.device())); }
Tensor operator<(const Tensor& a, Scalar b) { return lt(a, ops::wrap_scalar(b, a.device())); }
Tensor operator<=(const Tensor& a, Scalar b) { return le(a, ops::wrap_scalar(b, a.device())); }
Tensor operator>(const Tensor& a, Scalar b) { return gt(a, ops::wrap_scalar(b, a.device())); }
Tensor operator>=(const Tensor& a, Scalar b) { return ge(a, ops::wrap_scalar(b, a.device())); }
Tensor operator!(const Tensor& a) { return logical_not(a); }

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol, bool equal_nan) {
  if (ops::broadcast_shape(a.sizes(), b.sizes(), "allclose") != a.sizes()) return false;
  NoGradGuard ng;
  std::vector<double> x = a.expand(a.sizes()).to_vector<double>();
  std::vector<double> y = b.expand(a.sizes()).to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) {
      if (!(equal_nan && std::isnan(x[i]) && std::isnan(y[i]))) return false;
      continue;
    }
    if (x[i] == y[i]) continue;  // equal infinities
    if (!(std::abs(x[i] - y[i]) <= atol + rtol * std::abs(y[i]))) return false;
  }
  return true;
}

bool equal(const Tensor& a, const Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  NoGradGuard ng;
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  return x == y;
}

}  // namespace loom
