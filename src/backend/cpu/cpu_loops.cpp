// The N-d run iterator behind for_each_offset (cpu_dispatch.h).
#include <vector>

#include "backend/cpu/cpu_dispatch.h"

namespace loom::cpu {

void for_each_run(const std::vector<int64_t>& sizes, const std::vector<int64_t>* strides, int n_operands,
                  int64_t begin, int64_t end, RunCallback callback) {
  if (begin >= end) return;
  LOOM_ASSERT(n_operands >= 1 && n_operands <= kMaxLoopOperands, "for_each_run: ", n_operands, " operands");
  int64_t off[kMaxLoopOperands] = {};
  const int nd = static_cast<int>(sizes.size());
  if (nd == 0) {  // one element: a 0-dim tensor, or every size 1
    callback.fn(callback.ctx, off, 1);
    return;
  }
  if (nd == 1) {  // one strided run: the common case once dims are merged
    for (int k = 0; k < n_operands; ++k) off[k] = begin * strides[k][0];
    callback.fn(callback.ctx, off, end - begin);
    return;
  }
  // idx: the multi-index of element `pos`; off: its offsets.
  std::vector<int64_t> idx(nd);
  int64_t rem = begin;
  for (int d = nd - 1; d >= 0; --d) {
    idx[d] = rem % sizes[d];
    rem /= sizes[d];
    for (int k = 0; k < n_operands; ++k) off[k] += idx[d] * strides[k][d];
  }
  const int inner = nd - 1;
  for (int64_t pos = begin; pos < end;) {
    const int64_t run = std::min(end - pos, sizes[inner] - idx[inner]);
    callback.fn(callback.ctx, off, run);
    pos += run;
    idx[inner] += run;
    for (int k = 0; k < n_operands; ++k) off[k] += run * strides[k][inner];
    // Carry into outer dims: step dim d-1 and rewind dim d.
    for (int d = inner; d > 0 && idx[d] == sizes[d]; --d) {
      idx[d] = 0;
      ++idx[d - 1];
      for (int k = 0; k < n_operands; ++k) off[k] += strides[k][d - 1] - sizes[d] * strides[k][d];
    }
  }
}

}  // namespace loom::cpu
