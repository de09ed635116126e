// Matrix products: bmm is the primitive; mm and matmul are written with it
// and with views, so they differentiate through bmm's backward.
#include <algorithm>

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

}  // namespace

// a: (B, M, K), b: (B, K, N) -> (B, M, N)
Tensor bmm(const Tensor& a, const Tensor& b) {
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
  const int64_t nbatch = shape_numel(batch);
  Tensor r = bmm(a3.expand(ea).reshape({nbatch, m, k}), b3.expand(eb).reshape({nbatch, k, n}));  // (B, M, N)
  Shape out = batch;
  if (na > 1) out.push_back(m);
  if (nb > 1) out.push_back(n);
  return r.reshape(out);
}

}  // namespace loom
