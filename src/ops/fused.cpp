// Fused row ops: softmax_backward, log_softmax_backward, layer_norm and
// cross_entropy_per_row (primitives SoftmaxBackward, LogSoftmaxBackward,
// LayerNorm, LayerNormBackward, CrossEntropy, CrossEntropyBackward).
//
// Note [Fused backward and double backward]
// softmax_backward and log_softmax_backward are ops of their own with a
// backward written in loom ops, so softmax's gradient is one fused kernel and
// still differentiable. layer_norm and cross_entropy_per_row run their fused
// backward kernel only when the backward pass is not being recorded
// (create_graph off: grad mode is off inside the engine); with create_graph
// they compute the same gradient with loom ops, recomputing the statistics
// from the saved input, so second-order gradients flow through every term.
#include <algorithm>
#include <cmath>

#include "core/autocast.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

void check_float(const char* op, const char* what, const Tensor& t) {
  LOOM_CHECK(t.defined(), op, ": ", what, " is an undefined tensor");
  LOOM_CHECK(is_floating_point(t.dtype()), op, ": expected a floating point ", what, ", got ", dtype_name(t.dtype()),
             " (shape ", shape_str(t.sizes()), ")");
}

// An alias of t with dim d moved last (no autograd); a 0-dim t becomes [1].
Tensor dim_last(const Tensor& t, int64_t d) {
  const TensorImpl* i = t.unsafe_impl();
  if (t.dim() == 0) return make_alias(t, {1}, {1}, i->offset);
  Shape sizes, strides;
  for (int64_t k = 0; k < t.dim(); ++k)
    if (k != d) {
      sizes.push_back(i->sizes[k]);
      strides.push_back(i->strides[k]);
    }
  sizes.push_back(i->sizes[d]);
  strides.push_back(i->strides[d]);
  return make_alias(t, sizes, strides, i->offset);
}

// Softmax-like backward along dim d: out[0] = kernel(grad, output).
Tensor softmax_backward_impl(OpKind op, const char* name, const Tensor& grad, const Tensor& output, int64_t dim) {
  check_float(name, "grad", grad);
  check_float(name, "output", output);
  LOOM_CHECK(grad.sizes() == output.sizes(), name, ": grad of shape ", shape_str(grad.sizes()),
             " must have the output's shape ", shape_str(output.sizes()));
  LOOM_CHECK(grad.dtype() == output.dtype(), name, ": grad of dtype ", dtype_name(grad.dtype()),
             " must have the output's dtype ", dtype_name(output.dtype()));
  ops::check_same_device(name, {grad, output});
  const int64_t d = wrap_dim(dim, output.dim(), name);
  Tensor out = make_tensor(output.sizes(), output.dtype(), output.device());
  if (out.numel() > 0) {
    Tensor g = dim_last(grad, d), y = dim_last(output, d), o = dim_last(out, d);
    ops::launch(op, {&g, &y}, o);
  }
  const bool log = op == OpKind::LogSoftmaxBackward;
  auto node = autograd::make_node(log ? "LogSoftmaxBackwardBackward" : "SoftmaxBackwardBackward", {grad, output},
                                  [d, log](FunctionNode& ctx, const TensorList& g) {
                                    Tensor gs = ctx.saved(0), y = ctx.saved(1), h = g[0];
                                    if (log) {
                                      // dx = g - exp(y) sum(g)
                                      Tensor ey = exp(y);
                                      return TensorList{sub(h, sum(mul(h, ey), {d}, true)),
                                                        neg(mul(mul(h, ey), sum(gs, {d}, true)))};
                                    }
                                    // dx = y (g - sum(g y))
                                    Tensor hy = sum(mul(h, y), {d}, true);
                                    return TensorList{softmax_backward(h, y, d),
                                                      sub(mul(h, sub(gs, sum(mul(gs, y), {d}, true))), mul(gs, hy))};
                                  });
  if (node) {
    autograd::set_history(out, node);
    node->save(grad);
    node->save(output);
  }
  return out;
}

}  // namespace

Tensor softmax_backward(const Tensor& grad, const Tensor& output, int64_t dim) {
  return softmax_backward_impl(OpKind::SoftmaxBackward, "softmax_backward", grad, output, dim);
}

Tensor log_softmax_backward(const Tensor& grad, const Tensor& output, int64_t dim) {
  return softmax_backward_impl(OpKind::LogSoftmaxBackward, "log_softmax_backward", grad, output, dim);
}

// ---- layer_norm ----

Tensor layer_norm(const Tensor& input, IntArrayRef normalized_shape, const Tensor& weight, const Tensor& bias,
                  double eps) {
  if (autocast::Region r{input, autocast::Policy::Float32})
    return layer_norm(r.cast(input), normalized_shape, r.cast(weight), r.cast(bias), eps);
  const char* op = "layer_norm";
  check_float(op, "input", input);
  const std::vector<int64_t> shape = normalized_shape.vec();
  const int64_t k = static_cast<int64_t>(shape.size());
  LOOM_CHECK(k >= 1, op, ": normalized_shape must have at least one dim");
  bool fits = input.dim() >= k;
  for (int64_t i = 0; fits && i < k; ++i) fits = input.sizes()[input.dim() - k + i] == shape[i];
  LOOM_CHECK(fits, op, ": given normalized_shape=", shape_str(shape), ", expected input with shape [*, ",
             shape_str(shape).substr(1), ", but got input of shape ", shape_str(input.sizes()));
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    check_float(op, p == &weight ? "weight" : "bias", *p);
    LOOM_CHECK(p->sizes() == shape, op, ": expected ", p == &weight ? "weight" : "bias", " of shape ",
               shape_str(shape), ", got ", shape_str(p->sizes()));
  }
  LOOM_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  std::vector<Tensor> devs{input};
  if (weight.defined()) devs.push_back(weight);
  if (bias.defined()) devs.push_back(bias);
  ops::check_same_device(op, devs);

  const DType ct = compute_dtype(input.dtype());
  const Tensor x = input.to(ct);
  const Tensor w = weight.defined() ? weight.to(ct).contiguous() : Tensor();
  const Tensor b = bias.defined() ? bias.to(ct).contiguous() : Tensor();
  Shape stats_shape(x.sizes().begin(), x.sizes().end() - k);
  stats_shape.push_back(2);
  Tensor y = make_tensor(x.sizes(), ct, x.device());
  Tensor stats = make_tensor(stats_shape, ct, x.device());
  ops::launch(OpKind::LayerNorm, {&x, &w, &b}, {&y, &stats}, {eps}, {k, w.defined() ? 1 : 0, b.defined() ? 1 : 0});

  const bool has_w = w.defined(), has_b = b.defined();
  auto node = autograd::make_node("LayerNormBackward", {x, w, b}, [k, eps, has_w, has_b, shape](FunctionNode& ctx,
                                                                                                 const TensorList& gs) {
    const Tensor& g = gs[0];
    Tensor xs = ctx.saved(0), stats = ctx.saved(1);
    Tensor ws = has_w ? ctx.saved(2) : Tensor();
    const bool want_wb = (has_w && ctx.needs_input_grad(1)) || (has_b && ctx.needs_input_grad(2));
    TensorList out(3);
    if (!is_grad_enabled()) {
      // First-order backward: one fused kernel (Note [Fused backward and double backward]).
      Tensor dx = make_tensor(xs.sizes(), xs.dtype(), xs.device());
      // The incoming gradient is often an expanded scalar (stride 0): one contiguous copy keeps the kernel fast.
      Tensor gc = (g.dtype() == xs.dtype() ? g : g.to(xs.dtype())).contiguous();
      std::vector<int64_t> wb_shape{2};
      wb_shape.insert(wb_shape.end(), shape.begin(), shape.end());
      Tensor dwb = want_wb ? make_tensor(wb_shape, xs.dtype(), xs.device()) : Tensor();
      if (want_wb)
        ops::launch(OpKind::LayerNormBackward, {&gc, &xs, &stats, &ws}, {&dx, &dwb}, {}, {k, has_w ? 1 : 0});
      else
        ops::launch(OpKind::LayerNormBackward, {&gc, &xs, &stats, &ws}, {&dx}, {}, {k, has_w ? 1 : 0});
      out[0] = dx;
      if (want_wb) {
        if (has_w) out[1] = dwb.select(0, 0);
        if (has_b) out[2] = dwb.select(0, 1);
      }
      return out;
    }
    // Recorded backward: the same formulas in loom ops, statistics recomputed from x.
    std::vector<int64_t> dims, outer;
    for (int64_t d = xs.dim() - k; d < xs.dim(); ++d) dims.push_back(d);
    for (int64_t d = 0; d < xs.dim() - k; ++d) outer.push_back(d);
    Tensor xc = sub(xs, mean(xs, dims, true));
    Tensor rstd = rsqrt(mean(mul(xc, xc), dims, true) + eps);
    Tensor xhat = mul(xc, rstd);
    Tensor gw = has_w ? mul(g, ws) : g;
    out[0] = mul(rstd, sub(sub(gw, mean(gw, dims, true)), mul(xhat, mean(mul(gw, xhat), dims, true))));
    auto over_rows = [&](const Tensor& t) { return outer.empty() ? t : sum(t, outer); };
    if (has_w) out[1] = over_rows(mul(g, xhat));
    if (has_b) out[2] = over_rows(g);
    return out;
  });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
    node->save(stats);
    if (has_w) node->save(w);
  }
  return y.dtype() == input.dtype() ? y : y.to(input.dtype());
}

// ---- cross entropy ----

Tensor cross_entropy_per_row(const Tensor& logits, const Tensor& target, double label_smoothing,
                             int64_t ignore_index) {
  if (autocast::Region r{logits, autocast::Policy::Float32})
    return cross_entropy_per_row(r.cast(logits), r.cast(target), label_smoothing, ignore_index);
  const char* op = "cross_entropy";
  check_float(op, "input", logits);
  LOOM_CHECK(logits.dim() == 2, op, ": expected logits of shape (N, C), got ", shape_str(logits.sizes()));
  LOOM_CHECK(target.defined() && target.dim() == 1 && target.sizes()[0] == logits.sizes()[0], op,
             ": expected a target of shape [", logits.sizes()[0], "] for input of shape ", shape_str(logits.sizes()),
             ", got ", target.defined() ? shape_str(target.sizes()) : std::string("an undefined tensor"));
  LOOM_CHECK(target.dtype() == kInt64, op, ": expected class-index targets of dtype int64, got ",
             dtype_name(target.dtype()));
  LOOM_CHECK(label_smoothing >= 0 && label_smoothing <= 1, op, ": label_smoothing must be between 0.0 and 1.0, got ",
             label_smoothing);
  ops::check_same_device(op, {logits, target});
  const int64_t rows = logits.sizes()[0], classes = logits.sizes()[1];
  LOOM_CHECK(classes > 0, op, ": input of shape ", shape_str(logits.sizes()), " has no classes");
  const DType ct = compute_dtype(logits.dtype());
  const Tensor x = logits.to(ct);
  Tensor loss = make_tensor({rows}, ct, x.device()), lse = make_tensor({rows}, ct, x.device());
  ops::launch(OpKind::CrossEntropy, {&x, &target}, {&loss, &lse}, {label_smoothing}, {ignore_index});

  const double s = label_smoothing;
  auto node = autograd::make_node("CrossEntropyBackward", {x}, [s, ignore_index, classes](FunctionNode& ctx,
                                                                                          const TensorList& gs) {
    Tensor xs = ctx.saved(0), t = ctx.saved(1), z = ctx.saved(2);
    Tensor g = gs[0].dtype() == xs.dtype() ? gs[0] : gs[0].to(xs.dtype());
    if (!is_grad_enabled()) {
      Tensor dx = make_tensor(xs.sizes(), xs.dtype(), xs.device());
      ops::launch(OpKind::CrossEntropyBackward, {&g, &xs, &t, &z}, {&dx}, {s}, {ignore_index});
      return TensorList{dx};
    }
    // Recorded backward (Note [Fused backward and double backward]).
    Tensor valid = t != Scalar(ignore_index);
    Tensor safe = where(valid, t, Scalar(int64_t{0}));
    Tensor target_dist = one_hot(safe, classes).to(xs.dtype()) * (1 - s);
    Tensor d = softmax(xs, 1) - target_dist - s / static_cast<double>(classes);
    return TensorList{where(valid.unsqueeze(1), mul(d, g.unsqueeze(1)), Scalar(0.0))};
  });
  if (node) {
    autograd::set_history(loss, node);
    node->save(x);
    node->save(target);
    node->save(lse);
  }
  return loss.dtype() == logits.dtype() ? loss : loss.to(logits.dtype());
}

}  // namespace loom
