// Reductions (sum, prod, amax, argmax, mean, var, norm, logsumexp, ...) and
// the row-wise ops (cumsum, softmax, log_softmax).
//
// Note [Reduction kernel layout]
// A reduction kernel sees its input permuted so the reduced dims are trailing:
// x of shape (2, 3, 4) reduced over dim 1 is handed over as a (2, 4, 3) alias
// (no copy) with i[0] = 1, and writes a contiguous (2, 4) output. The output
// we allocate has the user's shape ((2, 4), or (2, 1, 4) with keepdim); both
// have the same contiguous layout, so the kernel gets an alias of it. Row-wise
// kernels (softmax, cumsum) work along the last dim, so input and output are
// both handed over as aliases with the op's dim moved last.
#include <cmath>
#include <limits>

#include "core/autocast.h"
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

TensorOptions like(const Tensor& t) { return TensorOptions().dtype(t.dtype()).device(t.device()); }

bool is_reduced_float(DType t) { return t == kFloat16 || t == kBFloat16; }

// The shape a reduction over `dims` (normalized) gives.
Shape reduced_shape(const Shape& sizes, const std::vector<int64_t>& dims, bool keepdim) {
  Shape out;
  size_t k = 0;
  for (int64_t d = 0; d < static_cast<int64_t>(sizes.size()); ++d) {
    if (k < dims.size() && dims[k] == d) {
      ++k;
      if (keepdim) out.push_back(1);
    } else {
      out.push_back(sizes[d]);
    }
  }
  return out;
}

int64_t reduced_numel(const Shape& sizes, const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= sizes[d];
  return n;
}

// An alias of t with its dims reordered as `perm` (no autograd).
Tensor permute_raw(const Tensor& t, const std::vector<int64_t>& perm) {
  const TensorImpl* i = t.unsafe_impl();
  Shape sizes, strides;
  for (int64_t d : perm) {
    sizes.push_back(i->sizes[d]);
    strides.push_back(i->strides[d]);
  }
  return make_alias(t, sizes, strides, i->offset);
}

// An alias of t with dim d moved last; a 0-dim t becomes shape [1].
Tensor dim_last_raw(const Tensor& t, int64_t d) {
  if (t.dim() == 0) return make_alias(t, {1}, {1}, t.storage_offset());
  std::vector<int64_t> perm;
  for (int64_t k = 0; k < t.dim(); ++k)
    if (k != d) perm.push_back(k);
  perm.push_back(d);
  return permute_raw(t, perm);
}

// g of a reduction's output shape, brought back to the input's shape.
Tensor expand_grad(const Tensor& g, const Shape& in_sizes, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor r = g;
  if (!keepdim)
    for (int64_t d : dims) r = r.unsqueeze(d);  // dims ascending: each lands at its input position
  return r.expand(in_sizes);
}

// Re-inserts the reduced dims (size 1) into a non-keepdim result.
Tensor keepdim_view(const Tensor& y, const std::vector<int64_t>& dims, bool keepdim) {
  Tensor r = y;
  if (!keepdim)
    for (int64_t d : dims) r = r.unsqueeze(d);
  return r;
}

// The identity of a reduction, written where the reduced extent is empty.
struct Identity {
  double value;
  int64_t ivalue;
};

// Runs a Sum/Prod/Amax/Amin kernel over `dims` (normalized) of x, writing
// `out_dtype` (see Note [Reduction kernel layout]). No autograd.
Tensor reduce_kernel(OpKind op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim, DType out_dtype,
                     const Identity* empty_identity) {
  Tensor out = make_tensor(reduced_shape(x.sizes(), dims, keepdim), out_dtype, x.device());
  if (dims.empty()) {  // a 0-dim input: nothing to reduce
    ops::launch(OpKind::Copy, {&x}, out);
    return out;
  }
  if (out.numel() == 0) return out;
  if (reduced_numel(x.sizes(), dims) == 0) {
    LOOM_ASSERT(empty_identity != nullptr, op_name(op), " over an empty extent");
    ops::launch(OpKind::Fill, {}, out, {empty_identity->value}, {empty_identity->ivalue, 1});
    return out;
  }
  std::vector<int64_t> perm;
  Shape kept;
  size_t k = 0;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (k < dims.size() && dims[k] == d) {
      ++k;
    } else {
      perm.push_back(d);
      kept.push_back(x.sizes()[d]);
    }
  }
  perm.insert(perm.end(), dims.begin(), dims.end());
  Tensor in = permute_raw(x, perm);
  Tensor out_k = make_alias(out, kept, contiguous_strides(kept), out.storage_offset());
  ops::launch(op, {&in}, out_k, {}, {static_cast<int64_t>(dims.size())});
  return out;
}

// amax / argmax have no value over an empty extent.
void check_nonempty_dims(const char* op, const Tensor& x, const std::vector<int64_t>& dims) {
  for (int64_t d : dims)
    LOOM_CHECK(x.sizes()[d] != 0, op, ": cannot reduce over an empty dim ", d, " of shape ", shape_str(x.sizes()));
}

void check_floating(const char* op, const Tensor& x) {
  LOOM_CHECK(is_floating_point(x.dtype()), op, ": expected a floating point input, got ", dtype_name(x.dtype()),
             " (convert it first, e.g. x.to(kFloat32))");
}

// sqrt(v) whose gradient is 0 where v == 0 (as PyTorch's std and norm), not
// the inf * 0 = nan that the chain rule through sqrt would give.
Tensor sqrt_zero_safe(const Tensor& v) {
  Tensor zero = v == Scalar(0.0);
  return where(zero, Scalar(0.0), sqrt(where(zero, Scalar(1.0), v)));
}

// ---- sum ----

Tensor sum_impl(const Tensor& x, IntArrayRef dims_in, bool keepdim, DType out_dtype) {
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "sum");
  Identity zero{0.0, 0};
  Tensor out = reduce_kernel(OpKind::Sum, x, dims, keepdim, out_dtype, &zero);
  Shape in_sizes = x.sizes();
  DType in_dtype = x.dtype();
  auto node = autograd::make_node("SumBackward", {x}, [in_sizes, dims, keepdim, in_dtype](FunctionNode&, const TensorList& g) {
    return TensorList{expand_grad(g[0], in_sizes, dims, keepdim).to(in_dtype)};
  });
  autograd::set_history(out, node);
  return out;
}

// ---- amax / amin ----

Tensor extreme_impl(OpKind op, const char* name, const Tensor& x, IntArrayRef dims_in, bool keepdim) {
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), name);
  check_nonempty_dims(name, x, dims);
  Tensor out = reduce_kernel(op, x, dims, keepdim, x.dtype(), nullptr);
  Shape in_sizes = x.sizes();
  const char* node_name = op == OpKind::Amax ? "AmaxBackward" : "AminBackward";
  auto node = autograd::make_node(node_name, {x}, [in_sizes, dims, keepdim](FunctionNode& ctx, const TensorList& g) {
    // The gradient is shared evenly by every element equal to the extreme.
    Tensor xs = ctx.saved(0), ys = ctx.saved(1);
    Tensor mask = eq(xs, keepdim_view(ys, dims, keepdim)).to(g[0].dtype());
    Tensor count = sum(mask, dims, true);
    return TensorList{mul(expand_grad(g[0], in_sizes, dims, keepdim), div(mask, count))};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(x);
    node->save_output(out);
  }
  return out;
}

// ---- argmax / argmin ----

Tensor arg_extreme(OpKind op, const char* name, const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  if (!dim) {
    // Over the flattened tensor; keepdim keeps every dim as size 1.
    LOOM_CHECK(x.numel() != 0, name, ": cannot reduce over an empty tensor of shape ", shape_str(x.sizes()),
               "; specify a dim");
    Tensor flat = x;
    if (!x.is_contiguous()) {
      flat = make_tensor(x.sizes(), x.dtype(), x.device());
      ops::launch(OpKind::Copy, {&x}, flat);
    }
    Tensor in = make_alias(flat, {x.numel()}, {1}, flat.storage_offset());
    Tensor out = make_tensor(keepdim ? Shape(x.dim(), 1) : Shape{}, kInt64, x.device());
    Tensor out_k = make_alias(out, {}, {}, out.storage_offset());
    ops::launch(op, {&in}, out_k, {}, {1});
    return out;
  }
  int64_t d = wrap_dim(*dim, x.dim(), name);
  if (x.dim() == 0) return zeros({}, TensorOptions().dtype(kInt64).device(x.device()));
  check_nonempty_dims(name, x, {d});
  Tensor out = make_tensor(reduced_shape(x.sizes(), {d}, keepdim), kInt64, x.device());
  if (out.numel() == 0) return out;
  Tensor in = dim_last_raw(x, d);
  Shape kept(in.sizes().begin(), in.sizes().end() - 1);
  Tensor out_k = make_alias(out, kept, contiguous_strides(kept), out.storage_offset());
  ops::launch(op, {&in}, out_k, {}, {1});
  return out;
}

// max(dim) / min(dim): values are gathered at the returned indices, so the
// gradient reaches exactly the chosen element (gather's backward).
std::pair<Tensor, Tensor> extreme_with_index(OpKind arg_op, const char* name, const Tensor& x, int64_t dim, bool keepdim) {
  int64_t d = wrap_dim(dim, x.dim(), name);
  if (x.dim() == 0) return {x.clone(), zeros({}, TensorOptions().dtype(kInt64).device(x.device()))};
  Tensor idx = arg_extreme(arg_op, name, x, d, true);
  Tensor values = gather(x, d, idx);
  if (!keepdim) return {values.squeeze(d), idx.squeeze(d)};
  return {values, idx};
}

// ---- softmax / log_softmax / cumsum ----

// Runs a row-wise kernel along dim d: out has x's shape and dtype.
Tensor rowwise_kernel(OpKind op, const Tensor& x, int64_t d) {
  Tensor out = make_tensor(x.sizes(), x.dtype(), x.device());
  if (x.numel() == 0) return out;
  Tensor in = dim_last_raw(x, d);
  Tensor out_k = dim_last_raw(out, d);
  ops::launch(op, {&in}, out_k);
  return out;
}

}  // namespace

// ---- public reductions ----

Tensor sum(const Tensor& x, IntArrayRef dims, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return sum(r.cast(x), dims, keepdim);
  // Integer and bool sums widen to int64 (PyTorch), floats keep their dtype.
  DType out = is_floating_point(x.dtype()) ? x.dtype() : kInt64;
  return sum_impl(x, dims, keepdim, out);
}

Tensor sum(const Tensor& x, IntArrayRef dims, bool keepdim, DType dtype) {
  // The kernel may write a wider dtype directly; any other request converts
  // the input first, as PyTorch does.
  const bool widening_float = is_floating_point(x.dtype()) && is_floating_point(dtype) && promote_types(x.dtype(), dtype) == dtype;
  const bool integer_to_int64 = !is_floating_point(x.dtype()) && dtype == kInt64;
  if (widening_float || integer_to_int64) return sum_impl(x, dims, keepdim, dtype);
  return sum_impl(x.to(dtype), dims, keepdim, dtype);
}

Tensor mean(const Tensor& x, IntArrayRef dims_in, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return mean(r.cast(x), dims_in, keepdim);
  check_floating("mean", x);
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "mean");
  const int64_t n = reduced_numel(x.sizes(), dims);
  // float16 / bfloat16 accumulate in float32; an empty extent gives 0/0 = nan.
  DType acc = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  Tensor s = sum(x, dims, keepdim, acc);
  return div(s, ops::wrap_scalar(static_cast<double>(n), x.device())).to(x.dtype());
}

Tensor prod(const Tensor& x, IntArrayRef dims_in, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return prod(r.cast(x), dims_in, keepdim);
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "prod");
  DType out_dtype = is_floating_point(x.dtype()) ? x.dtype() : kInt64;
  Identity one{1.0, 1};
  Tensor out = reduce_kernel(OpKind::Prod, x, dims, keepdim, out_dtype, &one);
  Shape in_sizes = x.sizes();
  auto node = autograd::make_node("ProdBackward", {x}, [in_sizes, dims, keepdim](FunctionNode& ctx, const TensorList& g) {
    // d prod / d x_i = prod_{j != i} x_j, written so that it is exact, and
    // its own gradient too, whatever the number of zeros in the row:
    //   no zero:   prod / x_i
    //   one zero:  at the zero, the product of the others; elsewhere
    //              zero_sum * prod_nonzero / x_i (0 in value, but its
    //              derivative with respect to the zero is right)
    //   two zeros: at each zero, (the other zero) * prod_nonzero; elsewhere 0
    //   more:      0 (every second derivative is 0 there as well)
    // zero_sum is the sum of the zero entries: 0 in value, carrying their gradient.
    Tensor xs = ctx.saved(0);
    Tensor is_zero = xs == Scalar(0);
    Tensor x_nonzero = where(is_zero, Scalar(1.0), xs);
    Tensor prod_nonzero = prod(x_nonzero, dims, true);
    Tensor zeros_in_row = sum(is_zero, dims, true);
    Tensor zero_sum = sum(mul(xs, is_zero.to(xs.dtype())), dims, true);
    Tensor others_nonzero = div(prod_nonzero, x_nonzero);
    Tensor one_zero = where(is_zero, prod_nonzero, mul(zero_sum, others_nonzero));
    Tensor two_zeros = where(is_zero, mul(sub(zero_sum, xs), prod_nonzero), Scalar(0.0));
    Tensor d = where(zeros_in_row == Scalar(0), others_nonzero,
                     where(zeros_in_row == Scalar(1), one_zero,
                           where(zeros_in_row == Scalar(2), two_zeros, Scalar(0.0))));
    return TensorList{mul(expand_grad(g[0], in_sizes, dims, keepdim), d)};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(x);
  }
  return out;
}

Tensor amax(const Tensor& x, IntArrayRef dims, bool keepdim) { return extreme_impl(OpKind::Amax, "amax", x, dims, keepdim); }
Tensor amin(const Tensor& x, IntArrayRef dims, bool keepdim) { return extreme_impl(OpKind::Amin, "amin", x, dims, keepdim); }
Tensor max(const Tensor& x) { return extreme_impl(OpKind::Amax, "max", x, {}, false); }
Tensor min(const Tensor& x) { return extreme_impl(OpKind::Amin, "min", x, {}, false); }

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_with_index(OpKind::ArgMax, "max", x, dim, keepdim);
}
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_with_index(OpKind::ArgMin, "min", x, dim, keepdim);
}

Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme(OpKind::ArgMax, "argmax", x, dim, keepdim);
}
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme(OpKind::ArgMin, "argmin", x, dim, keepdim);
}

Tensor var(const Tensor& x, IntArrayRef dims_in, int64_t correction, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return var(r.cast(x), dims_in, correction, keepdim);
  check_floating("var", x);
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "var");
  const int64_t n = reduced_numel(x.sizes(), dims);
  DType acc = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  Tensor xa = x.to(acc);
  Tensor centered = sub(xa, mean(xa, dims, true));
  Tensor ss = sum(mul(centered, centered), dims, keepdim);
  // As PyTorch: divide by max(0, n - correction), so too few samples give inf / nan.
  const double denom = static_cast<double>(std::max<int64_t>(0, n - correction));
  return div(ss, ops::wrap_scalar(denom, x.device())).to(x.dtype());
}

Tensor std(const Tensor& x, IntArrayRef dims, int64_t correction, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return std(r.cast(x), dims, correction, keepdim);
  check_floating("std", x);
  return sqrt_zero_safe(var(x, dims, correction, keepdim));
}

Tensor norm(const Tensor& x, double p, IntArrayRef dims_in, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return norm(r.cast(x), p, dims_in, keepdim);
  check_floating("norm", x);
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "norm");
  DType acc = is_reduced_float(x.dtype()) ? kFloat32 : x.dtype();
  Tensor xa = x.to(acc);
  Tensor r;
  if (p == 2) {
    r = sqrt_zero_safe(sum(mul(xa, xa), dims, keepdim));
  } else if (p == 1) {
    r = sum(abs(xa), dims, keepdim);
  } else if (p == std::numeric_limits<double>::infinity()) {
    r = amax(abs(xa), dims, keepdim);
  } else if (p == -std::numeric_limits<double>::infinity()) {
    r = amin(abs(xa), dims, keepdim);
  } else if (p == 0) {
    // The number of non-zero entries (no gradient).
    r = sum(xa != Scalar(0), dims, keepdim).to(acc);
  } else {
    // (sum |x|^p)^(1/p), with a zero gradient where the norm is 0.
    Tensor s = sum(pow(abs(xa), Scalar(p)), dims, keepdim);
    Tensor zero = s == Scalar(0.0);
    r = where(zero, Scalar(0.0), pow(where(zero, Scalar(1.0), s), Scalar(1.0 / p)));
  }
  return r.to(x.dtype());
}

Tensor logsumexp(const Tensor& x, IntArrayRef dims_in, bool keepdim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return logsumexp(r.cast(x), dims_in, keepdim);
  std::vector<int64_t> dims = ops::normalize_dims(dims_in, x.dim(), "logsumexp");
  // Integers are promoted to the default float dtype; float16 / bfloat16 compute in float32.
  DType out_dtype = is_floating_point(x.dtype()) ? x.dtype() : default_dtype();
  DType acc = is_reduced_float(out_dtype) ? kFloat32 : out_dtype;
  Tensor xa = x.to(acc);
  // Shift by the (detached) max for stability: log sum exp(x) = m + log sum exp(x - m).
  // The shift cancels in the gradient, so it needs none. Rows whose max is
  // +-inf shift by 0 (all -inf gives log 0 = -inf, as PyTorch), and an empty
  // extent gives log 0 = -inf.
  Tensor m;
  if (reduced_numel(x.sizes(), dims) == 0) {
    m = zeros(reduced_shape(x.sizes(), dims, true), like(xa));
  } else {
    Tensor mx = amax(xa.detach(), dims, true);
    m = where(abs(mx) == Scalar(std::numeric_limits<double>::infinity()), Scalar(0.0), mx);
  }
  Tensor r = add(log(sum(exp(sub(xa, m)), dims, true)), m);
  if (!keepdim)
    for (auto it = dims.rbegin(); it != dims.rend(); ++it) r = r.squeeze(*it);
  return r.to(out_dtype);
}

Tensor cumsum(const Tensor& x, int64_t dim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return cumsum(r.cast(x), dim);
  int64_t d = wrap_dim(dim, x.dim(), "cumsum");
  // Integer and bool inputs accumulate in int64 (PyTorch).
  Tensor in = is_floating_point(x.dtype()) ? x : ops::cast_raw(x, kInt64);
  Tensor out = rowwise_kernel(OpKind::Cumsum, in, d);
  auto node = autograd::make_node("CumsumBackward", {x}, [d](FunctionNode&, const TensorList& g) {
    // Each output sums the inputs up to it, so x_i receives the sum of g_j for j >= i.
    return TensorList{flip(cumsum(flip(g[0], {d}), d), {d})};
  });
  autograd::set_history(out, node);
  return out;
}

Tensor softmax(const Tensor& x, int64_t dim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return softmax(r.cast(x), dim);
  check_floating("softmax", x);
  int64_t d = wrap_dim(dim, x.dim(), "softmax");
  Tensor out = rowwise_kernel(OpKind::Softmax, x, d);
  auto node = autograd::make_node("SoftmaxBackward", {x}, [d](FunctionNode& ctx, const TensorList& g) {
    // One fused kernel, itself differentiable (src/ops/fused.cpp).
    return TensorList{softmax_backward(g[0], ctx.saved(0), d)};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save_output(out);
  }
  return out;
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  if (autocast::Region r{x, autocast::Policy::Float32}) return log_softmax(r.cast(x), dim);
  check_floating("log_softmax", x);
  int64_t d = wrap_dim(dim, x.dim(), "log_softmax");
  Tensor out = rowwise_kernel(OpKind::LogSoftmax, x, d);
  auto node = autograd::make_node("LogSoftmaxBackward", {x}, [d](FunctionNode& ctx, const TensorList& g) {
    return TensorList{log_softmax_backward(g[0], ctx.saved(0), d)};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save_output(out);
  }
  return out;
}

}  // namespace loom
