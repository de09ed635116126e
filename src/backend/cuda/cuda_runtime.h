// The CUDA backend's runtime layer: errors, devices, the current stream of
// each device, and where a kernel call launches. Included by every file of
// src/backend/cuda (C++ and CUDA alike); nothing outside that directory
// includes it, the rest of loom reaches CUDA through include/loom/cuda.h.
//
// Note [CUDA streams]
// Every device has a current stream per host thread, as in PyTorch: the
// device's default (legacy) stream until set_current_stream or a
// StreamGuard names another. A kernel call launches on the current stream
// of its tensors' device (launch_of), asynchronously: the host goes on at
// once, and work on one stream runs in the order it was issued, so a
// tensor written by one kernel and read by the next on the same stream
// needs no synchronization. The host waits only where it reads device
// memory (a copy to the CPU that is not non_blocking, item(), printing) or
// where asked (cuda::synchronize, Stream::synchronize, Event::synchronize).
// Memory freed while a stream may still use it is the caching allocator's
// concern (Note [CUDA caching allocator]).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "backend/backend.h"

namespace loom::cuda_detail {

// Throws loom::Error naming the failed call, its source line and CUDA's
// message; sticky errors (an illegal address in a kernel) say that the
// context is lost.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line);

#define LOOM_CUDA_CHECK(expr)                                                    \
  do {                                                                           \
    const cudaError_t loom_cuda_err_ = (expr);                                   \
    if (loom_cuda_err_ != cudaSuccess)                                           \
      ::loom::cuda_detail::throw_cuda_error(loom_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: a bad configuration is reported at launch.
#define LOOM_CUDA_CHECK_LAUNCH() LOOM_CUDA_CHECK(cudaGetLastError())

// Devices present (0 without a driver or a GPU; never throws).
int device_count();
// Throws a loom::Error naming the device when `index` is not one.
void check_device(int index);
int current_device();

// Makes `index` current for the scope, then restores the previous device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// The calling thread's current stream on `device` (Note [CUDA streams]).
cudaStream_t current_stream(int device);
void set_current_stream(int device, cudaStream_t stream);

// Where a kernel call runs: its device (made current by the caller's
// DeviceGuard) and that device's current stream.
struct Launch {
  int device = 0;
  cudaStream_t stream = nullptr;
};
Launch launch_of(const KernelCall& call);

// Threads per block for elementwise launches, and the grid that covers n
// items with them (capped; kernels loop with a grid stride).
constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n, int threads = kThreads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65535 * 8 ? 65535 * 8 : blocks));
}

// Kernel registration, one function per family of ops (each in its own
// file); supported() records which dtypes a kernel takes.
void register_elementwise(Backend& b);
void register_reduce(Backend& b);
void register_blas(Backend& b);
void register_conv(Backend& b);
void register_attention(Backend& b);
void register_paged(Backend& b);
void register_quant(Backend& b);
void set_supported(OpKind op, std::initializer_list<DType> dtypes);

}  // namespace loom::cuda_detail
