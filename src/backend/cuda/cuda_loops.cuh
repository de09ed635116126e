// The elementwise launcher of the CUDA kernels: one thread per element of
// an output, each operand read or written at its own strided offset.
// Included by the .cu files of src/backend/cuda only.
//
// Note [CUDA elementwise loops]
// launch_elementwise runs a functor once per element k (row-major over the
// output's shape) of N operands of one shape (ops.def: inputs already
// expanded to the output's), passing each operand's element offset. Each
// operand has its own Strided geometry (strided_of: size-1 dims dropped,
// dims that walk memory as one merged), so a contiguous operand, or a
// broadcast scalar (stride 0), is one dim and costs a multiply, and only a
// permuted or sliced operand pays a division per dim. When every operand is
// contiguous the offsets are k itself. Sizes above 2^32 - 1 elements take
// 64-bit divisions; smaller ones (nearly all) 32-bit ones. The kernel is a
// grid-stride loop (grid_for caps the grid) with 64-bit element numbers.
//
// The functor is a plain struct holding typed pointers and parameters,
// with `__device__ void operator()(const int64_t* offsets) const`:
// offsets[j] is operand j's element offset (operand 0 is the output by
// convention). It is passed to the kernel by value.
#pragma once

#include <array>
#include <cstdint>

#include "backend/cuda/cuda_tensor.cuh"

namespace loom::cuda_detail {

template <int N>
struct OperandGeometry {
  Strided g[N];
};

// The 64-bit path of element_offset, out of line: only tensors of 2^32
// elements or more take it. `g` by value: a reference would make every
// thread copy the kernel's geometry parameter to local memory.
static __device__ __noinline__ int64_t element_offset64(Strided g, int64_t k) { return g.offset(k); }

// Element offset of the k-th element (row-major) of an operand with
// geometry `g`; `index32` when k and every size fit in 32 bits.
__device__ __forceinline__ int64_t element_offset(const Strided& g, int64_t k, bool index32) {
  if (g.dims == 1) return k * g.strides[0];  // contiguous, strided or broadcast: one dim
  if (!index32) return element_offset64(g, k);
  // Static indices (the unrolled loop skips dims >= g.dims) keep the
  // geometry in the kernel's parameter space, not in local memory.
  int64_t off = 0;
  uint32_t rest = static_cast<uint32_t>(k);
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d >= g.dims) continue;
    const uint32_t size = static_cast<uint32_t>(g.sizes[d]);
    const uint32_t q = rest / size;
    off += static_cast<int64_t>(rest - q * size) * g.strides[d];
    rest = q;
  }
  return off;
}

// One loop for both layouts, so that f's body is compiled once per kernel.
template <int N, typename F>
__global__ void __launch_bounds__(kThreads)
    elementwise_kernel(int64_t n, bool contiguous, bool index32, OperandGeometry<N> geo, F f) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += step) {
    int64_t offsets[N];
#pragma unroll
    for (int j = 0; j < N; ++j) offsets[j] = contiguous ? k : element_offset(geo.g[j], k, index32);
    f(offsets);
  }
}

// Runs f over the elements of `operands` (operand 0 the output, the others
// of its shape) on `stream`; the caller holds a DeviceGuard on their device.
// Nothing is launched for an empty output.
template <int N, typename F>
void launch_elementwise(cudaStream_t stream, const std::array<const TensorImpl*, N>& operands, const F& f) {
  static_assert(N >= 1 && N <= 4, "elementwise operands: the output and up to three inputs");
  const int64_t n = operands[0]->numel();
  if (n == 0) return;
  bool contiguous = true;
  for (const TensorImpl* t : operands) {
    LOOM_ASSERT(t->sizes == operands[0]->sizes, "CUDA elementwise: operand of shape ", shape_str(t->sizes),
                " not expanded to the output's ", shape_str(operands[0]->sizes));
    contiguous = contiguous && t->is_contiguous();
  }
  OperandGeometry<N> geo;
  if (!contiguous)
    for (int j = 0; j < N; ++j) geo.g[j] = strided_of(operands[j]);
  const bool index32 = n <= static_cast<int64_t>(UINT32_MAX);
  elementwise_kernel<N, F><<<grid_for(n), kThreads, 0, stream>>>(n, contiguous, index32, geo, f);
  LOOM_CUDA_CHECK_LAUNCH();
}

}  // namespace loom::cuda_detail
