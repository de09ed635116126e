// Joining and indexing: cat (primitive), stack, gather / scatter_add /
// index_select (primitives), embedding, one_hot, tril / triu, flip and pad
// (composites). split and chunk are views (src/ops/shape.cpp).
#include <algorithm>

#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

TensorOptions like(const Tensor& t) { return TensorOptions().dtype(t.dtype()).device(t.device()); }
TensorOptions int64_on(Device d) { return TensorOptions().dtype(kInt64).device(d); }

// A fresh copy of t's values in t's dtype (no autograd).
Tensor clone_raw(const Tensor& t) {
  Tensor out = make_tensor(t.sizes(), t.dtype(), t.device());
  if (out.numel() > 0) ops::launch(OpKind::Copy, {&t}, out);
  return out;
}

// An alias of t restricted to `sizes` (each <= t's) from the same origin.
Tensor shrink_raw(const Tensor& t, const Shape& sizes) {
  if (t.sizes() == sizes) return t;
  return make_alias(t, sizes, t.strides(), t.storage_offset());
}

// The index tensor of an index op as 1-D int64 (int32 is converted).
Tensor index_as_int64(const char* op, const Tensor& index) {
  LOOM_CHECK(index.dtype() == kInt64 || index.dtype() == kInt32, op,
             ": expected an index tensor of dtype int64 (or int32), got ", dtype_name(index.dtype()));
  return ops::cast_raw(index, kInt64);
}

void check_int64_index(const char* op, const Tensor& index) {
  LOOM_CHECK(index.dtype() == kInt64, op, ": expected an index tensor of dtype int64, got ",
             dtype_name(index.dtype()));
}

// gather / scatter_add: index has x's number of dims and fits inside x in
// every dim but `dim`.
void check_index_fits(const char* op, const Tensor& x, int64_t dim, const Tensor& index, const char* what) {
  LOOM_CHECK(index.dim() == x.dim(), op, ": index of shape ", shape_str(index.sizes()), " must have as many dims as the ",
             what, " of shape ", shape_str(x.sizes()));
  for (int64_t d = 0; d < x.dim(); ++d)
    LOOM_CHECK(d == dim || index.sizes()[d] <= x.sizes()[d], op, ": index of shape ", shape_str(index.sizes()),
               " is larger than the ", what, " of shape ", shape_str(x.sizes()), " at dim ", d);
}

// `base` with `src` added at `index` (1-D int64) along `dim`: the backward of
// index_select, itself differentiable (its backward is index_select again).
Tensor index_add(const Tensor& base, int64_t dim, const Tensor& index, const Tensor& src) {
  Tensor out = clone_raw(base);
  if (index.numel() > 0 && src.numel() > 0) ops::launch(OpKind::IndexAdd, {&index, &src}, out, {}, {dim});
  auto node = autograd::make_node("IndexAddBackward", {base, src}, [dim](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = g[0];
    if (ctx.needs_input_grad(1)) r[1] = index_select(g[0], dim, ctx.saved(0));
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(index);
  }
  return out;
}

}  // namespace

// ---- cat / stack ----

Tensor cat(const std::vector<Tensor>& ts, int64_t dim) {
  LOOM_CHECK(!ts.empty(), "cat: expected a non-empty list of tensors");
  ops::check_same_device("cat", ts);
  DType dtype = ts[0].dtype();
  for (size_t i = 0; i < ts.size(); ++i) {
    LOOM_CHECK(ts[i].dim() > 0, "cat: zero-dimensional tensor (at position ", i, ") cannot be concatenated");
    dtype = promote_types(dtype, ts[i].dtype());
  }
  // PyTorch's legacy rule: 1-D tensors of shape [0] are skipped whatever the
  // other shapes are (they used to be the only way to write "empty").
  auto skipped = [&](const Tensor& t) { return t.dim() == 1 && t.sizes()[0] == 0; };
  int64_t first = -1;
  for (size_t i = 0; i < ts.size() && first < 0; ++i)
    if (!skipped(ts[i])) first = static_cast<int64_t>(i);
  if (first < 0) first = 0;  // all empty: the result is empty too
  const Tensor& ref = ts[first];
  const int64_t d = wrap_dim(dim, ref.dim(), "cat");

  Shape out_sizes = ref.sizes();
  out_sizes[d] = 0;
  std::vector<int64_t> starts(ts.size(), 0);
  for (size_t i = 0; i < ts.size(); ++i) {
    const Tensor& t = ts[i];
    if (skipped(t) && static_cast<int64_t>(i) != first) continue;
    LOOM_CHECK(t.dim() == ref.dim(), "cat: tensors must have the same number of dims: got shapes ",
               shape_str(ref.sizes()), " (tensor ", first, ") and ", shape_str(t.sizes()), " (tensor ", i, ")");
    for (int64_t k = 0; k < t.dim(); ++k)
      LOOM_CHECK(k == d || t.sizes()[k] == ref.sizes()[k], "cat: sizes of tensors must match except in dim ", d,
                 ": expected size ", ref.sizes()[k], " but got size ", t.sizes()[k], " at dim ", k, " for tensor ", i,
                 " (shapes ", shape_str(ref.sizes()), " and ", shape_str(t.sizes()), ")");
    starts[i] = out_sizes[d];
    out_sizes[d] += t.sizes()[d];
  }

  Tensor out = make_tensor(out_sizes, dtype, ts[0].device());
  const Shape out_strides = out.strides();
  std::vector<int64_t> lengths(ts.size(), 0);
  std::vector<DType> dtypes(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) {
    dtypes[i] = ts[i].dtype();
    if (skipped(ts[i]) && static_cast<int64_t>(i) != first) continue;
    lengths[i] = ts[i].sizes()[d];
    if (ts[i].numel() == 0) continue;
    // Copy input i into its slice out[..., starts[i] : starts[i] + len, ...].
    Tensor slot = make_alias(out, ts[i].sizes(), out_strides, out.storage_offset() + starts[i] * out_strides[d]);
    Tensor src = ops::cast_raw(ts[i], dtype);
    ops::launch(OpKind::Copy, {&src}, slot);
  }

  std::vector<bool> was_skipped(ts.size());
  for (size_t i = 0; i < ts.size(); ++i) was_skipped[i] = skipped(ts[i]) && static_cast<int64_t>(i) != first;
  auto node = autograd::make_node("CatBackward", ts, [d, starts, lengths, dtypes, was_skipped](FunctionNode& ctx, const TensorList& g) {
    TensorList r(starts.size());
    for (size_t i = 0; i < starts.size(); ++i) {
      if (!ctx.needs_input_grad(i)) continue;
      if (was_skipped[i]) {
        r[i] = zeros({0}, TensorOptions().dtype(dtypes[i]).device(g[0].device()));
      } else {
        r[i] = g[0].narrow(d, starts[i], lengths[i]).to(dtypes[i]);
      }
    }
    return r;
  });
  autograd::set_history(out, node);
  return out;
}

Tensor stack(const std::vector<Tensor>& ts, int64_t dim) {
  LOOM_CHECK(!ts.empty(), "stack: expected a non-empty list of tensors");
  for (size_t i = 1; i < ts.size(); ++i)
    LOOM_CHECK(ts[i].sizes() == ts[0].sizes(), "stack: expects each tensor to be equal size, but got ",
               shape_str(ts[0].sizes()), " at entry 0 and ", shape_str(ts[i].sizes()), " at entry ", i);
  const int64_t d = wrap_dim(dim, ts[0].dim() + 1, "stack");
  std::vector<Tensor> parts;
  parts.reserve(ts.size());
  for (const Tensor& t : ts) parts.push_back(t.unsqueeze(d));
  return cat(parts, d);
}

// ---- gather / scatter_add / index_select ----

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  ops::check_same_device("gather", {x, index});
  check_int64_index("gather", index);
  const int64_t d = wrap_dim(dim, x.dim(), "gather");
  if (x.dim() == 0) {
    // A 0-dim input is a 1-element row.
    LOOM_CHECK(index.dim() <= 1 && index.numel() <= 1, "gather: a 0-dim input takes an index of at most one element, got shape ",
               shape_str(index.sizes()));
    return gather(x.reshape({1}), 0, index.reshape({index.numel()})).reshape(index.sizes());
  }
  check_index_fits("gather", x, d, index, "input");
  Tensor out = make_tensor(index.sizes(), x.dtype(), x.device());
  if (out.numel() > 0) {
    // The kernel sees x cut to index's extent in every dim but d.
    Shape view = index.sizes();
    view[d] = x.sizes()[d];
    Tensor src = shrink_raw(x, view);
    ops::launch(OpKind::Gather, {&src, &index}, out, {}, {d});
  }
  Shape in_sizes = x.sizes();
  auto node = autograd::make_node("GatherBackward", {x}, [d, in_sizes](FunctionNode& ctx, const TensorList& g) {
    return TensorList{scatter_add(zeros(in_sizes, like(g[0])), d, ctx.saved(0), g[0])};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(index);
  }
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& src) {
  ops::check_same_device("scatter_add", {x, index, src});
  check_int64_index("scatter_add", index);
  LOOM_CHECK(src.dtype() == x.dtype(), "scatter_add: expected src of the input's dtype ", dtype_name(x.dtype()), ", got ",
             dtype_name(src.dtype()));
  const int64_t d = wrap_dim(dim, x.dim(), "scatter_add");
  if (x.dim() == 0) {
    LOOM_CHECK(index.dim() <= 1 && index.numel() <= 1 && src.dim() <= 1,
               "scatter_add: a 0-dim input takes an index of at most one element, got shape ", shape_str(index.sizes()));
    return scatter_add(x.reshape({1}), 0, index.reshape({index.numel()}), src.reshape({src.numel()})).reshape({});
  }
  check_index_fits("scatter_add", x, d, index, "input");
  LOOM_CHECK(src.dim() == index.dim(), "scatter_add: index of shape ", shape_str(index.sizes()),
             " must have as many dims as src of shape ", shape_str(src.sizes()));
  for (int64_t k = 0; k < src.dim(); ++k)
    LOOM_CHECK(index.sizes()[k] <= src.sizes()[k], "scatter_add: index of shape ", shape_str(index.sizes()),
               " is larger than src of shape ", shape_str(src.sizes()), " at dim ", k);
  Tensor out = clone_raw(x);
  if (index.numel() > 0) {
    // The kernel sees src and out cut to index's extent (out keeps all of dim d).
    Shape view = index.sizes();
    view[d] = x.sizes()[d];
    Tensor s = shrink_raw(src, index.sizes());
    Tensor o = shrink_raw(out, view);
    ops::launch(OpKind::ScatterAdd, {&index, &s}, o, {}, {d});
  }
  Shape src_sizes = src.sizes(), index_sizes = index.sizes();
  auto node = autograd::make_node("ScatterAddBackward", {x, src}, [d, src_sizes, index_sizes](FunctionNode& ctx, const TensorList& g) {
    TensorList r(2);
    if (ctx.needs_input_grad(0)) r[0] = g[0];
    if (ctx.needs_input_grad(1)) {
      Tensor picked = gather(g[0], d, ctx.saved(0));  // index's shape
      // src positions beyond index's extent were not used: their gradient is 0.
      r[1] = src_sizes == index_sizes
                 ? picked
                 : ops::region_scatter(zeros(src_sizes, like(g[0])), picked,
                                       ops::Region{index_sizes, contiguous_strides(src_sizes), 0});
    }
    return r;
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(index);
  }
  return out;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  ops::check_same_device("index_select", {x, index});
  LOOM_CHECK(index.dim() <= 1, "index_select: index must be 1-D (or 0-dim), got shape ", shape_str(index.sizes()));
  Tensor idx = index_as_int64("index_select", index);
  const int64_t d = wrap_dim(dim, x.dim(), "index_select");
  if (idx.dim() == 0) idx = make_alias(idx, {1}, {1}, idx.storage_offset());
  if (x.dim() == 0) {
    LOOM_CHECK(idx.numel() == 1, "index_select: a 0-dim input takes exactly one index, got ", idx.numel());
    return index_select(x.reshape({1}), 0, idx).reshape({});
  }
  Shape out_sizes = x.sizes();
  out_sizes[d] = idx.numel();
  Tensor out = make_tensor(out_sizes, x.dtype(), x.device());
  if (out.numel() > 0) ops::launch(OpKind::IndexSelect, {&x, &idx}, out, {}, {d});
  Shape in_sizes = x.sizes();
  auto node = autograd::make_node("IndexSelectBackward", {x}, [d, in_sizes](FunctionNode& ctx, const TensorList& g) {
    return TensorList{index_add(zeros(in_sizes, like(g[0])), d, ctx.saved(0), g[0])};
  });
  if (node) {
    autograd::set_history(out, node);
    node->save(idx);
  }
  return out;
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  LOOM_CHECK(weight.dim() == 2, "embedding: expected a 2-D weight (num_embeddings, embedding_dim), got shape ",
             shape_str(weight.sizes()));
  LOOM_CHECK(indices.dtype() == kInt64 || indices.dtype() == kInt32,
             "embedding: expected indices of an integer dtype (int64 or int32), got ", dtype_name(indices.dtype()));
  Shape out = indices.sizes();
  out.push_back(weight.sizes()[1]);
  // indices (...) -> rows (N, D) -> (..., D)
  Tensor rows;
  try {
    rows = index_select(weight, 0, indices.reshape({-1}));
  } catch (const Error& e) {
    LOOM_ERROR("embedding: weight of shape ", shape_str(weight.sizes()), ": ", e.what());
  }
  return rows.reshape(out);
}

Tensor one_hot(const Tensor& indices, int64_t num_classes) {
  check_int64_index("one_hot", indices);
  LOOM_CHECK(num_classes >= -1, "one_hot: num_classes must be -1 (infer) or non-negative, got ", num_classes);
  int64_t classes = num_classes;
  if (indices.numel() > 0) {
    const int64_t lo = amin(indices).item<int64_t>();
    const int64_t hi = amax(indices).item<int64_t>();
    LOOM_CHECK(lo >= 0, "one_hot: class values must be non-negative, got ", lo);
    if (classes == -1) classes = hi + 1;
    LOOM_CHECK(hi < classes, "one_hot: class values must be smaller than num_classes (", classes, "), got ", hi);
  } else {
    LOOM_CHECK(classes != -1, "one_hot: cannot infer the number of classes from an empty tensor of shape ",
               shape_str(indices.sizes()), "; pass num_classes");
  }
  // (..., 1) == (classes,) -> (..., classes)
  return eq(indices.unsqueeze(-1), arange(classes, int64_on(indices.device()))).to(kInt64);
}

// ---- triangles ----

namespace {
// Keeps x[..., i, j] where (j - i) <= diagonal (lower) or >= diagonal (upper).
Tensor triangle(const char* op, const Tensor& x, int64_t diagonal, bool lower) {
  LOOM_CHECK(x.dim() >= 2, op, ": input tensor must have at least 2 dims, got shape ", shape_str(x.sizes()));
  const int64_t n = x.sizes()[x.dim() - 2], m = x.sizes()[x.dim() - 1];
  Tensor rows = arange(n, int64_on(x.device())).unsqueeze(1);  // (n, 1)
  Tensor cols = arange(m, int64_on(x.device())).unsqueeze(0);  // (1, m)
  Tensor offset = sub(cols, rows);                              // (n, m): j - i
  Tensor keep = lower ? offset <= Scalar(diagonal) : offset >= Scalar(diagonal);
  return where(keep, x, zeros({}, like(x)));
}
}  // namespace

Tensor tril(const Tensor& x, int64_t diagonal) { return triangle("tril", x, diagonal, true); }
Tensor triu(const Tensor& x, int64_t diagonal) { return triangle("triu", x, diagonal, false); }

// ---- flip / pad ----

Tensor flip(const Tensor& x, IntArrayRef dims) {
  if (dims.empty()) return x.clone();
  std::vector<int64_t> nd = ops::normalize_dims(dims, x.dim(), "flip");
  Tensor r = x;
  for (int64_t d : nd) {
    const int64_t n = x.sizes()[d];
    if (n <= 1) continue;
    // Reversed positions n-1, ..., 0 along d.
    r = index_select(r, d, sub(ops::wrap_scalar(n - 1, x.device()), arange(n, int64_on(x.device()))));
  }
  return r.is_same(x) ? x.clone() : r;
}

Tensor pad(const Tensor& x, IntArrayRef amounts, Scalar value) {
  const int64_t pairs = static_cast<int64_t>(amounts.size()) / 2;
  LOOM_CHECK(amounts.size() % 2 == 0, "pad: padding length must be divisible by 2, got ", amounts.size(), " values ",
             shape_str(amounts.vec()));
  LOOM_CHECK(pairs <= x.dim(), "pad: padding ", shape_str(amounts.vec()), " has ", pairs,
             " pairs but the input of shape ", shape_str(x.sizes()), " has only ", x.dim(), " dims");
  Tensor r = x;
  for (int64_t p = 0; p < pairs; ++p) {
    // Pairs run from the last dim backwards: {left, right} of dim -1 first.
    const int64_t d = x.dim() - 1 - p;
    const int64_t before = amounts[2 * p], after = amounts[2 * p + 1];
    const int64_t n = x.sizes()[d];
    const int64_t start = before < 0 ? -before : 0;
    const int64_t stop = after < 0 ? n + after : n;
    LOOM_CHECK(n + before + after >= 0 && stop - start >= 0, "pad: the input size ", n, " at dim ", d,
               " with padding ", before, " and ", after, " gives a negative size (input shape ", shape_str(x.sizes()),
               ", padding ", shape_str(amounts.vec()), ")");
    if (start > 0 || stop < n) r = r.narrow(d, start, stop - start);
    if (before <= 0 && after <= 0) continue;
    std::vector<Tensor> parts;
    Shape block = r.sizes();
    if (before > 0) {
      block[d] = before;
      parts.push_back(full(block, value, like(x)));
    }
    parts.push_back(r);
    if (after > 0) {
      block[d] = after;
      parts.push_back(full(block, value, like(x)));
    }
    r = cat(parts, d);
  }
  return r.is_same(x) ? x.clone() : r;
}

}  // namespace loom
