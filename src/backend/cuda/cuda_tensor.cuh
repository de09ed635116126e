// What CUDA kernels share: dtype dispatch to device types, and a strided
// view of a tensor that kernels index by a linear element number.
// Included by the .cu files of src/backend/cuda only.
//
// Note [CUDA kernel conventions]
// A kernel entry point (KernelFn) runs on the host: it takes a DeviceGuard
// on the call's device, reads the current stream (launch_of), and launches
// with LOOM_CUDA_CHECK_LAUNCH() after; it never synchronizes, except where
// ops.def asks it to report bad input (an index out of range), which it
// checks on the device and reads back (Note [CUDA index errors]). Each
// element is computed as the CPU kernel computes it (ops.def's calling
// conventions, the same parameters f[] / i[]), in the same compute type:
// float for float16 and bfloat16 (storage types, converted on load and
// rounded once on store), double for float64. Sums accumulate in double for
// float dtypes and int64 for integers, as on the CPU, so results match the
// CPU's to rounding; where the CPU is exact (copies, casts, comparisons,
// max, integer ops) the GPU gives the same bits.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/cuda_runtime.h"
#include "core/tensor_impl.h"

namespace loom::cuda_detail {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the device storage type of `dt`: float,
// double, __half, __nv_bfloat16, int32_t, int64_t, uint8_t, bool, int8_t.
template <typename F>
void dispatch_all(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(TypeTag<float>{}); return;
    case DType::Float64: f(TypeTag<double>{}); return;
    case DType::Float16: f(TypeTag<__half>{}); return;
    case DType::BFloat16: f(TypeTag<__nv_bfloat16>{}); return;
    case DType::Int32: f(TypeTag<int32_t>{}); return;
    case DType::Int64: f(TypeTag<int64_t>{}); return;
    case DType::UInt8: f(TypeTag<uint8_t>{}); return;
    case DType::Bool: f(TypeTag<bool>{}); return;
    case DType::Int8: f(TypeTag<int8_t>{}); return;
  }
  LOOM_ASSERT(false, "unknown dtype ", static_cast<int>(dt));
}

// The four floating dtypes.
template <typename F>
void dispatch_float(DType dt, F&& f) {
  switch (dt) {
    case DType::Float32: f(TypeTag<float>{}); return;
    case DType::Float64: f(TypeTag<double>{}); return;
    case DType::Float16: f(TypeTag<__half>{}); return;
    case DType::BFloat16: f(TypeTag<__nv_bfloat16>{}); return;
    default: break;
  }
  LOOM_ASSERT(false, "CUDA float kernel called with dtype ", dtype_name(dt));
}

// Calls f(TypeTag<U>{}) with U the unsigned integer of `bytes` bytes: kernels
// that only move elements need one instantiation per element size.
template <typename F>
void dispatch_bytes(size_t bytes, F&& f) {
  switch (bytes) {
    case 1: f(TypeTag<uint8_t>{}); return;
    case 2: f(TypeTag<uint16_t>{}); return;
    case 4: f(TypeTag<uint32_t>{}); return;
    case 8: f(TypeTag<uint64_t>{}); return;
    default: break;
  }
  LOOM_ASSERT(false, "CUDA: no element type of ", bytes, " bytes");
}

// The type arithmetic runs in: float for the 16-bit floats, else T.
template <typename T>
struct ComputeType {
  using type = T;
};
template <>
struct ComputeType<__half> {
  using type = float;
};
template <>
struct ComputeType<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using compute_t = typename ComputeType<T>::type;

template <typename T>
__device__ __forceinline__ compute_t<T> load_as(const T* p) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(*p);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(*p);
  else return *p;
}

// Rounds once to T (nearest even for the 16-bit floats, as the CPU's Half
// and BFloat16 do).
template <typename T, typename C>
__device__ __forceinline__ T store_as(C v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(static_cast<float>(v));
  else return static_cast<T>(v);
}

constexpr int kMaxDims = 8;

// A tensor's geometry for the device: element offset of the k-th element
// (row-major over `sizes`) from `strides`. Passed to kernels by value.
struct Strided {
  int dims = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};

  __host__ __device__ int64_t offset(int64_t k) const {
    int64_t off = 0;
    for (int d = dims - 1; d >= 0; --d) {
      const int64_t i = k % sizes[d];
      k /= sizes[d];
      off += i * strides[d];
    }
    return off;
  }
};

// `t`'s geometry over `sizes` (t already expanded to them: ops.def). Throws
// for more than kMaxDims dims after merging dimensions that are contiguous
// with each other.
Strided strided_of(const TensorImpl* t);

template <typename T>
T* data_of(const TensorImpl* t) {
  return reinterpret_cast<T*>(t->data());
}

}  // namespace loom::cuda_detail
