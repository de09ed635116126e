// Errors, devices and current streams (Note [CUDA streams]), and the CUDA
// kernel table.
#include "backend/cuda/cuda_runtime.h"

#include <array>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "loom/error.h"

namespace loom::cuda_detail {

void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  // A sticky error leaves the context unusable; later calls fail the same way.
  const bool sticky = err == cudaErrorIllegalAddress || err == cudaErrorLaunchFailure ||
                      err == cudaErrorIllegalInstruction || err == cudaErrorMisalignedAddress ||
                      err == cudaErrorHardwareStackError;
  LOOM_ERROR("CUDA error: ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ") in ", expr, " at ", file, ":",
             line, sticky ? "; a kernel faulted and the CUDA context is lost, so every later CUDA call fails too" : "");
}

int device_count() {
  static const int n = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      (void)cudaGetLastError();  // no driver or no device: not an error to keep
      return 0;
    }
    return count;
  }();
  return n;
}

void check_device(int index) {
  const int n = device_count();
  LOOM_CHECK(n > 0, "CUDA: no CUDA device is available (loom was built with CUDA, but cudaGetDeviceCount found no GPU "
             "or no driver), so cuda:", index, " cannot be used");
  LOOM_CHECK(index >= 0 && index < n, "CUDA: device cuda:", index, " does not exist (", n, " device", n == 1 ? "" : "s",
             " present)");
}

int current_device() {
  int d = 0;
  LOOM_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

DeviceGuard::DeviceGuard(int index) : previous_(-1) {
  check_device(index);
  LOOM_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != index) LOOM_CUDA_CHECK(cudaSetDevice(index));
}

DeviceGuard::~DeviceGuard() {
  int now = -1;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_ && previous_ >= 0) (void)cudaSetDevice(previous_);
}

namespace {

// Per thread, per device: the current stream (null: the legacy default).
constexpr int kMaxDevices = 64;
thread_local std::array<cudaStream_t, kMaxDevices> t_current{};

}  // namespace

cudaStream_t current_stream(int device) {
  LOOM_CHECK(device >= 0 && device < kMaxDevices, "CUDA: device index ", device, " out of range");
  return t_current[static_cast<size_t>(device)];
}

void set_current_stream(int device, cudaStream_t stream) {
  LOOM_CHECK(device >= 0 && device < kMaxDevices, "CUDA: device index ", device, " out of range");
  t_current[static_cast<size_t>(device)] = stream;
}

Launch launch_of(const KernelCall& call) {
  const TensorImpl* first = !call.out.empty() ? call.out[0] : nullptr;
  for (int k = 0; first == nullptr && k < call.in.size(); ++k) first = call.in[k];
  LOOM_ASSERT(first != nullptr, op_name(call.op), ": CUDA kernel call without tensors");
  const int d = first->device().index;
  return {d, current_stream(d)};
}

namespace {

// Per op, a bit per dtype the CUDA kernel takes.
std::array<uint16_t, kOpCount>& support_table() {
  static std::array<uint16_t, kOpCount> t{};
  return t;
}

bool supports(OpKind op, DType dtype) {
  return (support_table()[static_cast<size_t>(op)] >> static_cast<int>(dtype)) & 1u;
}

}  // namespace

void set_supported(OpKind op, std::initializer_list<DType> dtypes) {
  uint16_t& m = support_table()[static_cast<size_t>(op)];
  for (DType d : dtypes) m = static_cast<uint16_t>(m | (1u << static_cast<int>(d)));
}

}  // namespace loom::cuda_detail

namespace loom {

bool cuda_is_available() { return cuda_detail::device_count() > 0; }

void cuda_register_kernels(Backend& b) {
  b.name = "cuda";
  b.supports = cuda_detail::supports;
  cuda_detail::register_elementwise(b);
  cuda_detail::register_reduce(b);
  cuda_detail::register_blas(b);
  cuda_detail::register_conv(b);
  cuda_detail::register_attention(b);
  cuda_detail::register_paged(b);
  cuda_detail::register_quant(b);
}

}  // namespace loom
