#include "loom/nn/checkpoint.h"

namespace loom::nn {

Tensor checkpoint_sequential(const Sequential& module, int64_t segments, const Tensor& input) {
  LOOM_CHECK(!module.is_empty(), "checkpoint_sequential: the Sequential is an empty holder");
  const std::shared_ptr<SequentialImpl>& seq = module.ptr();
  const int64_t n = static_cast<int64_t>(seq->size());
  LOOM_CHECK(segments >= 1 && segments <= n, "checkpoint_sequential: segments must be in [1, ", n,
             "] for a Sequential of ", n, " children, got ", segments);
  // As PyTorch: runs of n / segments children, the remainder in the last.
  const size_t run = static_cast<size_t>(n / segments);
  Tensor x = input;
  size_t begin = 0;
  for (int64_t s = 0; s + 1 < segments; ++s, begin += run) {
    // The region holds the module by shared_ptr: backward may run after the
    // caller's holder is gone.
    x = checkpoint([seq, begin, end = begin + run](const Tensor& h) { return seq->forward_range(h, begin, end); },
                   x);
  }
  return seq->forward_range(x, begin, seq->size());
}

}  // namespace loom::nn
