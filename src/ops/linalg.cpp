// Matrix products: bmm is the primitive; mm and matmul are written with it
// and with views, so they differentiate through bmm's backward.
#include <algorithm>
#include <cmath>

#include "core/autocast.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  LOOM_CHECK(a.dtype() == b.dtype(), op, ": expected both operands to have the same dtype, got ", dtype_name(a.dtype()),
             " and ", dtype_name(b.dtype()));
}

void check_inner(const char* op, const Tensor& a, const Tensor& b, int64_t ka, int64_t kb) {
  LOOM_CHECK(ka == kb, op, ": shapes ", shape_str(a.sizes()), " and ", shape_str(b.sizes()), " cannot be multiplied (",
             ka, " != ", kb, ")");
}

// Can the leading (batch) dims of t, all but the last two, be viewed as one
// dim? Each batch dim's stride must be the next one's stride times its size
// (size-1 dims fit anywhere), which holds for contiguous and fully
// broadcast (stride 0) batches alike.
bool batch_dims_merge(const Tensor& t) {
  const Shape& sizes = t.sizes();
  const Shape& strides = t.strides();
  if (t.numel() == 0) return true;  // nothing to read: any view will do
  int64_t prev = -1;  // the last batch dim of size > 1 seen, from the right
  for (int64_t d = t.dim() - 3; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (prev >= 0 && strides[d] != strides[prev] * sizes[prev]) return false;
    prev = d;
  }
  return true;
}

// a (batch..., M, K) @ b (batch..., K, N), same batch dims (expanded views).
// One bmm over the merged batch when both operands allow it as a view, so a
// broadcast operand is read through its stride-0 batch and never copied.
// Otherwise (a batch broadcast in some dims but not in others) the first
// batch dim is taken one index at a time and the products stacked: that
// copies outputs, not the broadcast inputs.
Tensor batched_product(const Tensor& a, const Tensor& b) {
  const int64_t nd = a.dim();
  const int64_t m = a.sizes()[nd - 2], k = a.sizes()[nd - 1], n = b.sizes()[nd - 1];
  if (batch_dims_merge(a) && batch_dims_merge(b)) {
    Shape out(a.sizes().begin(), a.sizes().end() - 2);
    const int64_t nbatch = shape_numel(out);
    out.insert(out.end(), {m, n});
    return bmm(a.reshape({nbatch, m, k}), b.reshape({nbatch, k, n})).reshape(out);
  }
  std::vector<Tensor> items;
  for (int64_t i = 0; i < a.sizes()[0]; ++i) items.push_back(batched_product(a.select(0, i), b.select(0, i)));
  return stack(items, 0);
}

}  // namespace

// a: (B, M, K), b: (B, K, N) -> (B, M, N)
Tensor bmm(const Tensor& a, const Tensor& b) {
  if (autocast::Region r{a, autocast::Policy::Low}) return bmm(r.cast(a), r.cast(b));
  LOOM_CHECK(a.dim() == 3 && b.dim() == 3, "bmm: expected 3-D tensors, got shapes ", shape_str(a.sizes()), " and ",
             shape_str(b.sizes()));
  ops::check_same_device("bmm", {a, b});
  check_same_dtype("bmm", a, b);
  const Shape& sa = a.sizes();
  const Shape& sb = b.sizes();
  LOOM_CHECK(sa[0] == sb[0], "bmm: batch sizes differ: shapes ", shape_str(sa), " and ", shape_str(sb));
  check_inner("bmm", a, b, sa[2], sb[1]);
  Tensor out = make_tensor({sa[0], sa[1], sb[2]}, a.dtype(), a.device());
  if (out.numel() > 0) {
    if (sa[2] == 0) {
      ops::launch(OpKind::Fill, {}, out, {0.0}, {0, 1});  // an empty inner dim sums to 0
    } else {
      ops::launch(OpKind::Bmm, {&a, &b}, out);
    }
  }
  auto node = autograd::make_node("BmmBackward", {a, b}, [](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    // gA (B,M,K) = g (B,M,N) @ B^T (B,N,K); gB (B,K,N) = A^T (B,K,M) @ g (B,M,N)
    if (ctx.needs_input_grad(0)) r[0] = bmm(g[0], ctx.saved(1).transpose(1, 2));
    if (ctx.needs_input_grad(1)) r[1] = bmm(ctx.saved(0).transpose(1, 2), g[0]);
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(node->needs_input_grad(1) ? a : Tensor());
    node->save(node->needs_input_grad(0) ? b : Tensor());
  }
  return out;
}

// a: (M, K), b: (K, N) -> (M, N)
Tensor mm(const Tensor& a, const Tensor& b) {
  if (autocast::Region r{a, autocast::Policy::Low}) return mm(r.cast(a), r.cast(b));
  LOOM_CHECK(a.dim() == 2 && b.dim() == 2, "mm: expected 2-D tensors, got shapes ", shape_str(a.sizes()), " and ",
             shape_str(b.sizes()));
  check_same_dtype("mm", a, b);
  check_inner("mm", a, b, a.sizes()[1], b.sizes()[0]);
  return bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0);
}

// PyTorch's matmul: 1-D operands are promoted to matrices (a row for the left
// one, a column for the right one) and the added dim is removed afterwards;
// leading (batch) dims broadcast.
Tensor matmul(const Tensor& a, const Tensor& b) {
  if (autocast::Region r{a, autocast::Policy::Low}) return matmul(r.cast(a), r.cast(b));
  ops::check_same_device("matmul", {a, b});
  LOOM_CHECK(a.dim() >= 1 && b.dim() >= 1, "matmul: both arguments need to be at least 1-D, got shapes ",
             shape_str(a.sizes()), " and ", shape_str(b.sizes()));
  check_same_dtype("matmul", a, b);
  const int64_t na = a.dim(), nb = b.dim();
  const int64_t k = a.sizes()[na - 1];
  check_inner("matmul", a, b, k, nb == 1 ? b.sizes()[0] : b.sizes()[nb - 2]);

  if (na == 1 && nb == 1) return mm(a.unsqueeze(0), b.unsqueeze(1)).reshape({});  // dot: 0-dim
  if (na == 2 && nb == 1) return mm(a, b.unsqueeze(1)).squeeze(1);
  if (na == 1 && nb == 2) return mm(a.unsqueeze(0), b).squeeze(0);
  if (na == 2 && nb == 2) return mm(a, b);

  if (na >= 3 && nb <= 2) {
    // (..., M, K) @ (K, N): fold the batch into the rows, one (B*M, K) @ (K, N)
    // product; its backward then needs no reduction over a broadcast batch.
    Shape out(a.sizes().begin(), a.sizes().end() - 1);
    Tensor b2 = b;
    if (nb == 1) {
      b2 = b.unsqueeze(1);
    } else {
      out.push_back(b.sizes()[1]);
    }
    const int64_t rows = shape_numel(Shape(a.sizes().begin(), a.sizes().end() - 1));  // B*M, explicit: k may be 0
    return mm(a.reshape({rows, k}), b2).reshape(out);
  }

  // General case: a (..., M, K) @ b (..., K, N), batch dims broadcast.
  Tensor a3 = na == 1 ? a.unsqueeze(0) : a;
  Tensor b3 = nb == 1 ? b.unsqueeze(1) : b;
  const Shape& sa = a3.sizes();
  const Shape& sb = b3.sizes();
  const int64_t m = sa[sa.size() - 2], n = sb[sb.size() - 1];
  Shape batch_a(sa.begin(), sa.end() - 2), batch_b(sb.begin(), sb.end() - 2);
  Shape batch;
  {
    const size_t nd = std::max(batch_a.size(), batch_b.size());
    for (size_t i = 0; i < nd; ++i) {
      int64_t da = i < nd - batch_a.size() ? 1 : batch_a[i - (nd - batch_a.size())];
      int64_t db = i < nd - batch_b.size() ? 1 : batch_b[i - (nd - batch_b.size())];
      LOOM_CHECK(da == db || da == 1 || db == 1, "matmul: the batch dims of shapes ", shape_str(a.sizes()), " and ",
                 shape_str(b.sizes()), " cannot be broadcast (", da, " vs ", db, ")");
      batch.push_back(da == 1 ? db : da);
    }
  }
  Shape ea = batch, eb = batch;
  ea.insert(ea.end(), {m, k});
  eb.insert(eb.end(), {k, n});
  Tensor r = batched_product(a3.expand(ea), b3.expand(eb));  // (batch..., M, N)
  Shape out = batch;
  if (na > 1) out.push_back(m);
  if (nb > 1) out.push_back(n);
  return r.reshape(out);
}

}  // namespace loom

namespace loom {

// ---- fused linear ----

// input (*, K), weight (N, K), bias (N) -> act(input @ weight^T + bias): (*, N).
// One Linear kernel (ops.def) over input viewed as (M, K). Backward, with
// z the pre-activation and gz = g * act'(z):
//   grad_input = gz @ weight, grad_weight = gz^T @ input, grad_bias = gz.sum(0).
// ReLU's act' comes from the saved output (y > 0). GELU's needs z: the kernel
// writes it beside the output when a gradient will be wanted; a backward
// that is itself recorded (create_graph) recomputes z with loom ops instead,
// so the second derivative flows through z into input, weight and bias.
Tensor linear(const Tensor& input, const Tensor& weight, const Tensor& bias, LinearActivation activation) {
  if (autocast::Region r{input, autocast::Policy::Low})
    return linear(r.cast(input), r.cast(weight), r.cast(bias), activation);
  LOOM_CHECK(input.defined(), "linear: input is an undefined tensor");
  LOOM_CHECK(weight.defined(), "linear: weight is an undefined tensor");
  LOOM_CHECK(weight.dim() == 2, "linear: expected a 2-D weight (out_features, in_features), got shape ",
             shape_str(weight.sizes()));
  LOOM_CHECK(input.dim() >= 1 && input.sizes().back() == weight.sizes()[1], "linear: input of shape ",
             shape_str(input.sizes()), " does not match weight of shape ", shape_str(weight.sizes()),
             " (expected the last input dim to be in_features = ", weight.sizes()[1], ")");
  const int64_t n = weight.sizes()[0], k = weight.sizes()[1];
  std::vector<Tensor> operands{input, weight};
  if (bias.defined()) {
    LOOM_CHECK(bias.dim() == 1 && bias.sizes()[0] == n, "linear: expected bias of shape [", n, "], got ",
               shape_str(bias.sizes()));
    operands.push_back(bias);
  }
  ops::check_same_device("linear", operands);
  for (const Tensor& t : operands)
    LOOM_CHECK(t.dtype() == input.dtype(), "linear: expected input, weight and bias of one dtype, got input ",
               dtype_name(input.dtype()), ", weight ", dtype_name(weight.dtype()),
               bias.defined() ? std::string(", bias ") + dtype_name(bias.dtype()) : std::string());
  LOOM_CHECK(input.dtype() != kBool, "linear: not defined for bool tensors");
  const bool gelu = activation == LinearActivation::Gelu || activation == LinearActivation::GeluTanh;
  LOOM_CHECK(!gelu || is_floating_point(input.dtype()), "linear: GELU needs a floating-point dtype, got ",
             dtype_name(input.dtype()));

  // (*, K) -> (M, K); a view whenever the layout allows.
  Shape out_shape(input.sizes().begin(), input.sizes().end() - 1);
  const int64_t m = shape_numel(out_shape);  // explicit: K may be 0
  out_shape.push_back(n);
  const Tensor x = input.reshape({m, k});

  auto node = autograd::make_node(
      "LinearBackward", {x, weight, bias}, [activation](FunctionNode& ctx, const TensorList& g) {
        const Tensor xs = ctx.saved(0), ws = ctx.saved(1), bs = ctx.saved(2);
        Tensor gz = g[0];  // (M, N)
        switch (activation) {
          case LinearActivation::None: break;
          case LinearActivation::Relu: {
            gz = threshold_backward(gz, ctx.saved(3), 0.0);
            break;
          }
          case LinearActivation::Gelu:
          case LinearActivation::GeluTanh: {
            const Tensor z = is_grad_enabled() ? linear(xs, ws, bs) : ctx.saved(3);
            gz = ops::gelu_backward(gz, z, activation == LinearActivation::GeluTanh);
            break;
          }
        }
        // The weight's gradient first: it is the input's last use here, so
        // a compiled step whose input was recomputed for it (GELU's output)
        // frees it before the input's gradient is allocated.
        TensorList r(3);
        if (ctx.needs_input_grad(1)) r[1] = mm(gz.t(), xs);    // (N, M) @ (M, K)
        if (ctx.needs_input_grad(0)) r[0] = mm(gz, ws);        // (M, N) @ (N, K)
        if (ctx.needs_input_grad(2)) r[2] = sum(gz, {0});      // (N)
        return r;
      });
  // The inputs are saved before the kernel runs, as PyTorch's autograd
  // does: a checkpoint recomputation that has all its saves once these are
  // taken stops here, without the GEMM (Note [Activation checkpointing]).
  if (node) {
    node->save(x);
    node->save(weight);
    node->save(bias);
  }
  Tensor out = make_tensor({m, n}, input.dtype(), input.device());
  Tensor pre = node && gelu ? make_tensor({m, n}, input.dtype(), input.device()) : Tensor();
  if (out.numel() > 0) {
    if (pre.defined())
      ops::launch(OpKind::Linear, {&x, &weight, &bias}, {&out, &pre}, {}, {static_cast<int64_t>(activation)});
    else
      ops::launch(OpKind::Linear, {&x, &weight, &bias}, {&out}, {}, {static_cast<int64_t>(activation)});
  }
  if (node) {
    autograd::set_history(out, node);
    if (activation == LinearActivation::Relu) node->save_output(out);
    if (gelu) node->save(pre);
  }
  return out.reshape(out_shape);
}

}  // namespace loom
