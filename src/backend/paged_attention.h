// PagedAttention's call geometry and index checks, shared by the CPU and
// CUDA kernels (cpu_paged_attention.cpp, cuda_paged.cu), so both accept the
// same calls and reject bad indices with the same words (ops.def; Note
// [Paged attention] in cpu_paged_attention.cpp).
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "loom/error.h"

namespace loom {

// One call's geometry (ops.def): tokens, heads, head sizes, the pool's
// blocks and block size, the table's sequences and width, and the element
// strides of each cache's (block, row, head) dims.
struct PagedShape {
  int64_t t, h, d, dv, nb, bs, s, mb;
  int64_t ks0, ks1, ks2, vs0, vs1, vs2;
};

inline PagedShape paged_shape_of(const KernelCall& c) {
  const TensorImpl *q = c.in[0], *k = c.in[1], *v = c.in[2], *tables = c.in[3];
  LOOM_ASSERT(q->dim() == 3 && k->dim() == 4 && v->dim() == 4 && tables->dim() == 2,
              "PagedAttention: expected q (T, H, D), caches (NB, B, H, D) and tables (S, MB)");
  PagedShape g{};
  g.t = q->sizes[0], g.h = q->sizes[1], g.d = q->sizes[2], g.dv = v->sizes[3];
  g.nb = k->sizes[0], g.bs = k->sizes[1], g.s = tables->sizes[0], g.mb = tables->sizes[1];
  g.ks0 = k->strides[0], g.ks1 = k->strides[1], g.ks2 = k->strides[2];
  g.vs0 = v->strides[0], g.vs1 = v->strides[1], g.vs2 = v->strides[2];
  LOOM_ASSERT(k->sizes[2] == g.h && k->sizes[3] == g.d && v->sizes[0] == g.nb && v->sizes[1] == g.bs &&
                  v->sizes[2] == g.h && g.bs >= 1,
              "PagedAttention: mismatched cache shapes ", shape_str(k->sizes), " and ", shape_str(v->sizes));
  LOOM_ASSERT((g.d <= 1 || k->strides[3] == 1) && (g.dv <= 1 || v->strides[3] == 1),
              "PagedAttention: the caches' last dim must have a unit stride");
  LOOM_ASSERT(c.out[0]->is_contiguous() && q->is_contiguous() && tables->is_contiguous() &&
                  c.in[4]->is_contiguous() && c.in[5]->is_contiguous(),
              "PagedAttention: q, the index tensors and the output must be contiguous");
  LOOM_ASSERT(c.in[4]->numel() == g.t && c.in[5]->numel() == g.t && c.out[0]->numel() == g.t * g.h * g.dv,
              "PagedAttention: seq_index, positions and the output must have T = ", g.t, " rows");
  LOOM_ASSERT(tables->dtype == kInt32 || tables->dtype == kInt64, "PagedAttention: block tables of dtype ",
              dtype_name(tables->dtype));
  return g;
}

// Token t's indices: seq_index s, position p, and `block_id(b)` the table's
// entry for block b of sequence s (asked only once s is in range). Throws
// the error naming the first index out of range.
template <class BlockId>
void check_paged_token(const PagedShape& g, int64_t t, int64_t s, int64_t p, BlockId block_id) {
  constexpr const char* kOp = "paged_attention";
  LOOM_CHECK(s >= 0 && s < g.s, kOp, ": token ", t, ": seq_index ", s, " is out of range for block_tables of ", g.s,
             " sequences");
  LOOM_CHECK(p >= 0, kOp, ": token ", t, " (sequence ", s, "): position ", p, " is negative");
  LOOM_CHECK(p / g.bs < g.mb, kOp, ": token ", t, " (sequence ", s, "): position ", p,
             " is beyond the block table: it is in block ", p / g.bs, " (block size ", g.bs,
             ") but block_tables has ", g.mb, " blocks per sequence");
  for (int64_t b = 0; b <= p / g.bs; ++b) {
    const int64_t id = block_id(b);
    LOOM_CHECK(id >= 0 && id < g.nb, kOp, ": token ", t, " (sequence ", s, ", position ", p, "): block id ", id,
               " at block_tables[", s, "][", b, "] is out of range for a cache of ", g.nb, " blocks");
  }
}

}  // namespace loom
