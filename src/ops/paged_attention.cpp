// paged_attention: attention over a paged KV cache, for serving (primitive
// PagedAttention; kernel in src/backend/cpu/cpu_paged_attention.cpp, Note
// [Paged attention]). Inference only: it records no backward.
//
// This layer checks what shapes and dtypes tell; the index values (sequence
// ids, positions, block ids) are data the kernel reads, so the kernel checks
// them, before it computes anything. The caches are passed where they are,
// never copied: a pool may be a view (one layer of a larger pool, the key
// half of a combined one) as long as each head's row is contiguous.
#include <cmath>
#include <optional>
#include <string>

#include "ops/op_utils.h"

namespace loom {

namespace {

constexpr const char* kOp = "paged_attention";

std::string shapes_of(const Tensor& q, const Tensor& k, const Tensor& v) {
  return std::string("query ") + shape_str(q.sizes()) + ", key_cache " + shape_str(k.sizes()) + ", value_cache " +
         shape_str(v.sizes());
}

void check_rank(const char* what, const Tensor& t, int64_t dims, const char* layout) {
  LOOM_CHECK(t.defined(), kOp, ": ", what, " is an undefined tensor");
  LOOM_CHECK(t.dim() == dims, kOp, ": expected ", what, " of shape ", layout, ", got shape ", shape_str(t.sizes()));
}

// The cache as the kernel reads it: a unit stride along the head dim.
Tensor rows_contiguous(const Tensor& cache) {
  return cache.size(3) <= 1 || cache.stride(3) == 1 ? cache : cache.contiguous();
}

}  // namespace

Tensor paged_attention(const Tensor& query, const Tensor& key_cache, const Tensor& value_cache,
                       const Tensor& block_tables, const Tensor& seq_index, const Tensor& positions,
                       std::optional<double> scale) {
  check_rank("query", query, 3, "(T, H, D)");
  check_rank("key_cache", key_cache, 4, "(NB, B, H, D)");
  check_rank("value_cache", value_cache, 4, "(NB, B, H, Dv)");
  check_rank("block_tables", block_tables, 2, "(S, MB)");
  check_rank("seq_index", seq_index, 1, "(T)");
  check_rank("positions", positions, 1, "(T)");
  LOOM_CHECK(is_floating_point(query.dtype()), kOp, ": expected a floating point query, got ",
             dtype_name(query.dtype()));
  LOOM_CHECK(key_cache.dtype() == query.dtype() && value_cache.dtype() == query.dtype(), kOp,
             ": expected query, key_cache and value_cache of one dtype, got ", dtype_name(query.dtype()), ", ",
             dtype_name(key_cache.dtype()), " and ", dtype_name(value_cache.dtype()));
  LOOM_CHECK(block_tables.dtype() == kInt32 || block_tables.dtype() == kInt64, kOp,
             ": expected block_tables of dtype int32 or int64, got ", dtype_name(block_tables.dtype()));
  LOOM_CHECK(seq_index.dtype() == kInt64 && positions.dtype() == kInt64, kOp,
             ": expected seq_index and positions of dtype int64, got ", dtype_name(seq_index.dtype()), " and ",
             dtype_name(positions.dtype()));
  ops::check_same_device(kOp, {query, key_cache, value_cache, block_tables, seq_index, positions});

  const int64_t t = query.size(0), h = query.size(1), d = query.size(2);
  const Shape &ks = key_cache.sizes(), &vs = value_cache.sizes();
  LOOM_CHECK(ks[2] == h && ks[3] == d, kOp, ": key_cache must have query's heads H and head size D, got ",
             shapes_of(query, key_cache, value_cache));
  LOOM_CHECK(vs[0] == ks[0] && vs[1] == ks[1] && vs[2] == ks[2], kOp,
             ": key_cache and value_cache must have the same blocks, block size and heads, got ",
             shapes_of(query, key_cache, value_cache));
  LOOM_CHECK(ks[1] >= 1, kOp, ": the block size B (key_cache dim 1) must be at least 1, got ",
             shapes_of(query, key_cache, value_cache));
  LOOM_CHECK(seq_index.size(0) == t && positions.size(0) == t, kOp, ": expected seq_index and positions of shape [",
             t, "] (one per query token), got ", shape_str(seq_index.sizes()), " and ", shape_str(positions.sizes()));
  for (const Tensor* x : {&query, &key_cache, &value_cache})
    LOOM_CHECK(!(x->requires_grad() && is_grad_enabled()), kOp,
               " is inference only (no autograd), but an input requires grad: call it under NoGradGuard or pass "
               "tensors that do not require grad");

  const double sc = scale.value_or(1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(d, 1))));
  Tensor out = make_tensor({t, h, value_cache.size(3)}, query.dtype(), query.device());
  if (t == 0) return out;
  const Tensor q = query.contiguous();
  const Tensor kc = rows_contiguous(key_cache), vc = rows_contiguous(value_cache);
  const Tensor tables = block_tables.contiguous(), seqs = seq_index.contiguous(), pos = positions.contiguous();
  ops::launch(OpKind::PagedAttention, {&q, &kc, &vc, &tables, &seqs, &pos}, out, {sc});
  return out;
}

}  // namespace loom
