// cuBLAS for the CUDA kernels that multiply matrices (cuda_blas.cu, where
// these are defined, and cuda_conv.cu): errors, and one handle per device
// per host thread (cuBLAS handles are not for sharing between threads), set
// to the call's stream and workspace at each use. Note [CUDA GEMM] in
// cuda_blas.cu says how the handles compute (no TF32 for float32).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>

namespace loom::cuda_detail {

[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line);

#define LOOM_CUBLAS_CHECK(expr)                                                            \
  do {                                                                                     \
    const cublasStatus_t loom_cublas_status_ = (expr);                                     \
    if (loom_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::loom::cuda_detail::throw_cublas_error(loom_cublas_status_, #expr, __FILE__, __LINE__); \
  } while (0)

// The calling thread's handle of `device` (made current by the caller's
// DeviceGuard), set to run on `stream` with `workspace` (kCublasAlign-aligned).
cublasHandle_t cublas_handle(int device, cudaStream_t stream, void* workspace, size_t workspace_bytes);
// The workspace NVIDIA recommends for `device`: 32 MiB on Hopper and later, 4 MiB before.
size_t cublas_workspace_bytes(int device);
constexpr size_t kCublasAlign = 256;  // cublasSetWorkspace's alignment

}  // namespace loom::cuda_detail
