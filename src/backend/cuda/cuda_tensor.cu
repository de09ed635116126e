// Tensor geometry for CUDA kernels (cuda_tensor.cuh).
#include "backend/cuda/cuda_tensor.cuh"

namespace loom::cuda_detail {

Strided strided_of(const TensorImpl* t) {
  // Merge a dim into the one before it when the pair walks memory as one
  // dim would: the row-major element order, hence offset(k), is unchanged.
  int64_t sizes[64], strides[64];
  int n = 0;
  for (size_t d = 0; d < t->sizes.size(); ++d) {
    const int64_t s = t->sizes[d], st = t->strides[d];
    if (s == 1) continue;  // contributes nothing to any offset
    if (n > 0 && strides[n - 1] == st * s) {
      sizes[n - 1] *= s;
      strides[n - 1] = st;
      continue;
    }
    LOOM_CHECK(n < 64, "CUDA: tensor of more than 64 dims");
    sizes[n] = s;
    strides[n] = st;
    ++n;
  }
  LOOM_CHECK(n <= kMaxDims, "CUDA kernels take tensors of up to ", kMaxDims,
             " dims that cannot be merged; this one has ", n, " (shape ", t->sizes.size(), " dims)");
  Strided g;
  g.dims = n;
  for (int d = 0; d < n; ++d) {
    g.sizes[d] = sizes[d];
    g.strides[d] = strides[d];
  }
  return g;
}

}  // namespace loom::cuda_detail
