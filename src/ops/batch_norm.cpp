// batch_norm with the batch's statistics: one fused primitive (BatchNorm,
// BatchNormBackward; kernels in src/backend/cpu/cpu_batch_norm.cpp).
//
// Like layer_norm (Note [Fused backward and double backward] in
// src/ops/fused.cpp), the backward runs the fused BatchNormBackward kernel
// when it is not being recorded, and otherwise computes the same gradient
// with loom ops, recomputing the statistics from the saved input, so
// second-order gradients flow through every term.
#include <tuple>

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

// An (N, C, S) alias of t (N, C, *) for the kernels (no autograd): the
// trailing dims merged into one when their strides allow, else a
// contiguous copy's.
Tensor as_ncs(const Tensor& t) {
  const Shape& s = t.sizes();
  const Shape& st = t.unsafe_impl()->strides;
  int64_t spatial = 1, stride = 1;
  bool mergeable = true;
  int64_t prev = -1;  // the last non-1 trailing dim seen, walking outwards
  for (int64_t d = t.dim() - 1; d >= 2; --d) {
    spatial *= s[d];
    if (s[d] == 1) continue;
    if (prev < 0)
      stride = st[d];
    else
      mergeable = mergeable && st[d] == st[prev] * s[prev];
    prev = d;
  }
  if (!mergeable) return as_ncs(t.contiguous());
  return make_alias(t, {s[0], s[1], spatial}, {st[0], st[1], stride}, t.unsafe_impl()->offset);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> batch_norm_with_stats(const Tensor& input, const Tensor& weight, const Tensor& bias,
                                                         double eps) {
  const char* op = "batch_norm";
  check_float(op, "input", input);
  LOOM_CHECK(input.dim() >= 2, op, ": expected input of shape (N, C) or (N, C, *), got shape ",
             shape_str(input.sizes()));
  const int64_t channels = input.sizes()[1];
  const std::vector<int64_t> cshape{channels};
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    const char* what = p == &weight ? "weight" : "bias";
    check_float(op, what, *p);
    LOOM_CHECK(p->sizes() == cshape, op, ": expected ", what, " of shape ", shape_str(cshape), " for input of shape ",
               shape_str(input.sizes()), ", got ", shape_str(p->sizes()));
  }
  LOOM_CHECK(eps >= 0, op, ": eps must be non-negative, got ", eps);
  const int64_t count = channels == 0 ? 0 : input.numel() / channels;
  LOOM_CHECK(channels == 0 || count > 0, op, ": expected at least one value per channel, got input of shape ",
             shape_str(input.sizes()));
  std::vector<Tensor> devs{input};
  if (weight.defined()) devs.push_back(weight);
  if (bias.defined()) devs.push_back(bias);
  ops::check_same_device(op, devs);

  const DType ct = compute_dtype(input.dtype());
  const Tensor x = input.to(ct);
  const Tensor w = weight.defined() ? weight.to(ct).contiguous() : Tensor();
  const Tensor b = bias.defined() ? bias.to(ct).contiguous() : Tensor();
  Tensor y = make_tensor(x.sizes(), ct, x.device());
  Tensor stats = make_tensor({2, channels}, kFloat64, x.device());  // mean, biased variance
  {
    const Tensor x3 = as_ncs(x), y3 = as_ncs(y);
    ops::launch(OpKind::BatchNorm, {&x3, &w, &b}, {&y3, &stats}, {eps}, {w.defined() ? 1 : 0, b.defined() ? 1 : 0});
  }

  const bool has_w = w.defined(), has_b = b.defined();
  auto node = autograd::make_node(
      "NativeBatchNormBackward", {x, w, b}, [eps, has_w, has_b, channels](FunctionNode& ctx, const TensorList& gs) {
        const Tensor& g = gs[0];
        Tensor xs = ctx.saved(0), st = ctx.saved(1);
        Tensor ws = has_w ? ctx.saved(2) : Tensor();
        const bool want_wb = (has_w && ctx.needs_input_grad(1)) || (has_b && ctx.needs_input_grad(2));
        TensorList out(3);
        if (!is_grad_enabled()) {
          // First-order backward: one fused kernel (Note [Fused backward and double backward]).
          Tensor dx = make_tensor(xs.sizes(), xs.dtype(), xs.device());
          Tensor gc = (g.dtype() == xs.dtype() ? g : g.to(xs.dtype())).contiguous();
          Tensor dwb = want_wb ? make_tensor({2, channels}, xs.dtype(), xs.device()) : Tensor();
          const Tensor g3 = as_ncs(gc), x3 = as_ncs(xs), dx3 = as_ncs(dx);
          if (want_wb)
            ops::launch(OpKind::BatchNormBackward, {&g3, &x3, &st, &ws}, {&dx3, &dwb}, {eps}, {has_w ? 1 : 0});
          else
            ops::launch(OpKind::BatchNormBackward, {&g3, &x3, &st, &ws}, {&dx3}, {eps}, {has_w ? 1 : 0});
          out[0] = dx;
          if (want_wb) {
            if (has_w) out[1] = dwb.select(0, 0);
            if (has_b) out[2] = dwb.select(0, 1);
          }
          return out;
        }
        // Recorded backward: the same formulas in loom ops, statistics recomputed from x.
        std::vector<int64_t> dims{0}, bshape(static_cast<size_t>(xs.dim()), 1);
        for (int64_t d = 2; d < xs.dim(); ++d) dims.push_back(d);
        bshape[1] = channels;
        Tensor xc = sub(xs, mean(xs, dims, true));
        Tensor rstd = rsqrt(mean(mul(xc, xc), dims, true) + eps);
        Tensor xhat = mul(xc, rstd);
        Tensor gw = has_w ? mul(g, ws.view(bshape)) : g;
        out[0] = mul(rstd, sub(sub(gw, mean(gw, dims, true)), mul(xhat, mean(mul(gw, xhat), dims, true))));
        if (has_w) out[1] = sum(mul(g, xhat), dims);
        if (has_b) out[2] = sum(g, dims);
        return out;
      });
  if (node) {
    autograd::set_history(y, node);
    node->save(x);
    node->save(stats);
    if (has_w) node->save(w);
  }
  // The statistics are the caller's to keep: copies, so that writing to them
  // cannot touch what backward saved.
  Tensor batch_mean = stats.select(0, 0).to(ct, /*copy=*/true);
  Tensor batch_var = stats.select(0, 1).to(ct, /*copy=*/true);
  return {y.dtype() == input.dtype() ? y : y.to(input.dtype()), batch_mean, batch_var};
}

Tensor batch_norm(const Tensor& input, const Tensor& weight, const Tensor& bias, double eps) {
  return std::get<0>(batch_norm_with_stats(input, weight, bias, eps));
}

}  // namespace loom
