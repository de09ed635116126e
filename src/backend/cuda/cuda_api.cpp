// include/loom/cuda.h in a CUDA build: devices, streams, events, the device
// and pinned-host caching allocators (Note [CUDA caching allocator] in
// src/backend/caching_allocator.h), and copies between devices.
#include <cuda_runtime_api.h>

#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "backend/caching_allocator.h"
#include "backend/cuda/cuda_runtime.h"
#include "core/allocator.h"
#include "core/tensor_impl.h"
#include "loom/cuda.h"
#include "loom/error.h"

namespace loom {

namespace cuda_detail {
namespace {

// `device`, or the current one for -1; an error naming the cause when there is none.
int resolve(int device) {
  check_device(device < 0 ? 0 : device);
  return device < 0 ? current_device() : device;
}

// A new event recorded on `stream` (on the current device).
void* record_new_event(void* stream) {
  cudaEvent_t e = nullptr;
  LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  LOOM_CUDA_CHECK(cudaEventRecord(e, static_cast<cudaStream_t>(stream)));
  return e;
}

// Has the work before `e` completed? (Not ready is no error.)
bool event_completed(void* e) {
  const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(e));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  LOOM_CUDA_CHECK(err);
  return true;
}

// The driver's memory and events for one device.
class DeviceOps final : public DeviceMemoryOps {
 public:
  explicit DeviceOps(int device) : device_(device) {}
  void* raw_alloc(size_t bytes) override {
    DeviceGuard g(device_);
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    LOOM_CUDA_CHECK(err);
    return p;
  }
  void raw_free(void* p) override {
    DeviceGuard g(device_);
    LOOM_CUDA_CHECK(cudaFree(p));
  }
  void* record_event(void* stream) override {
    DeviceGuard g(device_);
    return record_new_event(stream);
  }
  bool event_done(void* e) override { return event_completed(e); }
  void destroy_event(void* e) override { (void)cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
  void synchronize() override {
    DeviceGuard g(device_);
    LOOM_CUDA_CHECK(cudaDeviceSynchronize());
  }
  std::string name() const override { return "cuda:" + std::to_string(device_); }

 private:
  int device_;
};

// Page-locked host memory: events on whichever device's stream used it.
class PinnedOps final : public DeviceMemoryOps {
 public:
  void* raw_alloc(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t err = cudaHostAlloc(&p, bytes, cudaHostAllocPortable);
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();
      return nullptr;
    }
    LOOM_CUDA_CHECK(err);
    return p;
  }
  void raw_free(void* p) override { LOOM_CUDA_CHECK(cudaFreeHost(p)); }
  void* record_event(void* stream) override { return record_new_event(stream); }
  bool event_done(void* e) override { return event_completed(e); }
  void destroy_event(void* e) override { (void)cudaEventDestroy(static_cast<cudaEvent_t>(e)); }
  void synchronize() override {
    for (int d = 0; d < device_count(); ++d) {
      DeviceGuard g(d);
      LOOM_CUDA_CHECK(cudaDeviceSynchronize());
    }
  }
  std::string name() const override { return "pinned host memory"; }
};

struct DeviceCache {
  std::unique_ptr<DeviceOps> ops;
  std::unique_ptr<CachingAllocator> cache;
};

// One cache per device, made at first use. Never destroyed: tensors in
// static storage may be freed after main returns.
CachingAllocator& device_cache(int device) {
  check_device(device);
  static std::mutex mu;
  static auto* caches = new std::vector<DeviceCache>(static_cast<size_t>(device_count()));
  std::lock_guard<std::mutex> lock(mu);
  DeviceCache& c = (*caches)[static_cast<size_t>(device)];
  if (!c.cache) {
    c.ops = std::make_unique<DeviceOps>(device);
    c.cache = std::make_unique<CachingAllocator>(*c.ops);
  }
  return *c.cache;
}

CachingAllocator& pinned_cache() {
  static auto* ops = new PinnedOps();
  static auto* cache = new CachingAllocator(*ops);
  return *cache;
}

// loom's Allocator for DeviceType::CUDA: the device's cache, on the
// current stream of that device.
class CudaAllocator final : public Allocator {
 public:
  MemoryBlock allocate(size_t nbytes) override { return allocate_on(Device::cuda(current_device()), nbytes); }
  MemoryBlock allocate_on(Device device, size_t nbytes) override {
    CachingAllocator& c = device_cache(device.index);
    void* p = c.allocate(nbytes, current_stream(device.index));
    return {p, c.block_size(p)};
  }
  void free(MemoryBlock block) override {
    for (int d = 0; d < device_count(); ++d) {
      CachingAllocator& c = device_cache(d);
      if (c.block_size(block.ptr) > 0) return c.free(block.ptr);
    }
    LOOM_ASSERT(false, "CUDA allocator: freeing ", block.ptr, ", which no device's cache gave");
  }
};

}  // namespace

Allocator& cuda_allocator() {
  static auto* a = new CudaAllocator();
  return *a;
}

// A contiguous CPU tensor in pinned memory (uninitialized).
Tensor pinned_empty(const Shape& sizes, DType dtype) {
  const size_t nbytes = static_cast<size_t>(shape_numel(sizes)) * element_size(dtype);
  CachingAllocator& c = pinned_cache();
  auto s = std::make_shared<Storage>();
  s->data = c.allocate(nbytes, nullptr);
  s->nbytes = nbytes;
  s->device = Device::cpu();
  s->deleter = [](void* p) { pinned_cache().free(p); };
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::move(s);
  impl->sizes = sizes;
  impl->strides = contiguous_strides(sizes);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

bool pinned(const void* p) {
  if (device_count() == 0) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

// Note [Copies between devices]
// `src` goes to `dst` as a new contiguous tensor of the same dtype. A CUDA
// source is first made contiguous on its device (the Copy kernel). The
// copy runs on the current stream of the CUDA side (for GPU to GPU, the
// destination's, after the source's stream has finished its work so far).
// It is asynchronous only with non_blocking and pinned host memory: from
// pinned memory to the GPU (the block is marked in use on the stream, so
// the pinned cache does not hand it out before the copy is done), and from
// the GPU into a new pinned tensor, which the caller must not read before
// synchronizing. Otherwise the host waits for the copy, so the result can
// be read (and the source freed) at once.
Tensor copy_across_devices(const Tensor& src, Device dst, bool non_blocking) {
  const Tensor c = src.contiguous();
  const size_t nbytes = static_cast<size_t>(c.numel()) * element_size(c.dtype());
  const void* from = c.unsafe_impl()->data();
  if (src.device().is_cpu() && dst.is_cuda()) {
    DeviceGuard g(dst.index);
    Tensor out = make_tensor(c.sizes(), c.dtype(), dst);
    cudaStream_t s = current_stream(dst.index);
    if (nbytes == 0) return out;
    LOOM_CUDA_CHECK(cudaMemcpyAsync(out.unsafe_impl()->data(), from, nbytes, cudaMemcpyHostToDevice, s));
    const bool async = non_blocking && pinned_cache().block_size(c.unsafe_impl()->storage->data) > 0;
    if (async) pinned_cache().record_stream(c.unsafe_impl()->storage->data, s);
    else LOOM_CUDA_CHECK(cudaStreamSynchronize(s));
    return out;
  }
  if (src.device().is_cuda() && dst.is_cpu()) {
    DeviceGuard g(src.device().index);
    Tensor out = non_blocking ? pinned_empty(c.sizes(), c.dtype()) : make_tensor(c.sizes(), c.dtype(), dst);
    cudaStream_t s = current_stream(src.device().index);
    if (nbytes == 0) return out;
    LOOM_CUDA_CHECK(cudaMemcpyAsync(out.unsafe_impl()->data(), from, nbytes, cudaMemcpyDeviceToHost, s));
    if (non_blocking) pinned_cache().record_stream(out.unsafe_impl()->storage->data, s);
    else LOOM_CUDA_CHECK(cudaStreamSynchronize(s));
    return out;
  }
  LOOM_CHECK(src.device().is_cuda() && dst.is_cuda(), "to: cannot copy from ", src.device().str(), " to ", dst.str());
  {
    DeviceGuard g(src.device().index);
    LOOM_CUDA_CHECK(cudaStreamSynchronize(current_stream(src.device().index)));
  }
  DeviceGuard g(dst.index);
  Tensor out = make_tensor(c.sizes(), c.dtype(), dst);
  cudaStream_t s = current_stream(dst.index);
  if (nbytes == 0) return out;
  LOOM_CUDA_CHECK(cudaMemcpyPeerAsync(out.unsafe_impl()->data(), dst.index, from, src.device().index, nbytes, s));
  if (!non_blocking) LOOM_CUDA_CHECK(cudaStreamSynchronize(s));
  return out;
}

}  // namespace cuda_detail

namespace cuda {

using cuda_detail::check_device;
using cuda_detail::DeviceGuard;
using cuda_detail::resolve;

bool is_built() { return true; }
bool is_available() { return cuda_detail::device_count() > 0; }
int device_count() { return cuda_detail::device_count(); }
int current_device() {
  check_device(0);
  return cuda_detail::current_device();
}
void set_device(int index) {
  check_device(index);
  LOOM_CUDA_CHECK(cudaSetDevice(index));
}
void synchronize(int device) {
  DeviceGuard g(resolve(device));
  LOOM_CUDA_CHECK(cudaDeviceSynchronize());
}

struct Stream::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  ~State() {
    if (stream != nullptr) {
      int prev = 0;
      (void)cudaGetDevice(&prev);
      (void)cudaSetDevice(device);
      (void)cudaStreamDestroy(stream);
      (void)cudaSetDevice(prev);
    }
  }
};

Stream::Stream() : device_(cuda_detail::device_count() > 0 ? cuda_detail::current_device() : 0) {}

Stream Stream::create(int device, int priority) {
  const int d = resolve(device);
  DeviceGuard g(d);
  auto st = std::make_shared<State>();
  st->device = d;
  LOOM_CUDA_CHECK(cudaStreamCreateWithPriority(&st->stream, cudaStreamNonBlocking, priority));
  return Stream(d, std::move(st));
}

Stream Stream::default_stream(int device) {
  const int d = resolve(device);
  check_device(d);
  return Stream(d, nullptr);
}

void* Stream::handle() const { return state_ ? static_cast<void*>(state_->stream) : nullptr; }

void Stream::synchronize() const {
  DeviceGuard g(device_);
  LOOM_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(handle())));
}

bool Stream::query() const {
  DeviceGuard g(device_);
  const cudaError_t err = cudaStreamQuery(static_cast<cudaStream_t>(handle()));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  LOOM_CUDA_CHECK(err);
  return true;
}

void Stream::wait(const Event& e) const {
  DeviceGuard g(device_);
  LOOM_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(handle()), static_cast<cudaEvent_t>(e.handle()), 0));
}

namespace {
// The streams made current (per thread, per device), kept alive while current.
thread_local std::array<std::shared_ptr<Stream::State>, 64> t_current_state;
}  // namespace

Stream current_stream(int device) {
  const int d = resolve(device);
  check_device(d);
  const std::shared_ptr<Stream::State>& st = t_current_state[static_cast<size_t>(d)];
  if (st && st->stream == cuda_detail::current_stream(d)) return Stream(d, st);
  return Stream(d, nullptr);
}

void set_current_stream(const Stream& s) {
  check_device(s.device());
  cuda_detail::set_current_stream(s.device(), static_cast<cudaStream_t>(s.handle()));
  t_current_state[static_cast<size_t>(s.device())] = s.state_;
}

StreamGuard::StreamGuard(const Stream& s)
    : previous_(current_stream(s.device())), previous_device_(cuda_detail::current_device()) {
  LOOM_CUDA_CHECK(cudaSetDevice(s.device()));
  set_current_stream(s);
}

StreamGuard::~StreamGuard() {
  set_current_stream(previous_);
  (void)cudaSetDevice(previous_device_);
}

struct Event::State {
  cudaEvent_t event = nullptr;
  int device = -1;  // where it was last recorded
  bool recorded = false;
  ~State() {
    if (event != nullptr) (void)cudaEventDestroy(event);
  }
};

Event::Event(bool enable_timing) : state_(std::make_shared<State>()) {
  check_device(0);
  LOOM_CUDA_CHECK(cudaEventCreateWithFlags(&state_->event, enable_timing ? cudaEventDefault : cudaEventDisableTiming));
}

void Event::record() { record(current_stream()); }

void Event::record(const Stream& s) {
  DeviceGuard g(s.device());
  LOOM_CUDA_CHECK(cudaEventRecord(state_->event, static_cast<cudaStream_t>(s.handle())));
  state_->device = s.device();
  state_->recorded = true;
}

void Event::synchronize() const { LOOM_CUDA_CHECK(cudaEventSynchronize(state_->event)); }

bool Event::query() const { return cuda_detail::event_completed(state_->event); }

float Event::elapsed_ms(const Event& end) const {
  LOOM_CHECK(state_->recorded && end.state_->recorded, "Event::elapsed_ms: both events must have been recorded");
  float ms = 0;
  LOOM_CUDA_CHECK(cudaEventElapsedTime(&ms, state_->event, end.state_->event));
  return ms;
}

void* Event::handle() const { return state_->event; }

void record_stream(const Tensor& t, const Stream& s) {
  LOOM_CHECK(t.device().is_cuda(), "record_stream: expected a CUDA tensor, got one on ", t.device().str());
  LOOM_CHECK(t.device().index == s.device(), "record_stream: the tensor is on ", t.device().str(),
             " but the stream on cuda:", s.device());
  cuda_detail::device_cache(s.device()).record_stream(t.unsafe_impl()->storage->data, s.handle());
}

MemoryStats memory_stats(int device) {
  const CachingAllocatorStats c = cuda_detail::device_cache(resolve(device)).stats();
  MemoryStats m;
  m.allocated_bytes = c.allocated_bytes;
  m.reserved_bytes = c.reserved_bytes;
  m.peak_allocated_bytes = c.peak_allocated_bytes;
  m.peak_reserved_bytes = c.peak_reserved_bytes;
  m.allocations = c.allocations;
  m.cache_hits = c.cache_hits;
  m.device_allocations = c.device_allocations;
  m.device_frees = c.device_frees;
  m.ooms = c.ooms;
  return m;
}

void reset_peak_memory_stats(int device) { cuda_detail::device_cache(resolve(device)).reset_peak(); }

void empty_cache() {
  for (int d = 0; d < cuda_detail::device_count(); ++d) cuda_detail::device_cache(d).empty_cache();
  if (cuda_detail::device_count() > 0) cuda_detail::pinned_cache().empty_cache();
}

Tensor pin_memory(const Tensor& t) {
  LOOM_CHECK(t.device().is_cpu(), "pin_memory: expected a CPU tensor, got one on ", t.device().str());
  check_device(0);
  const Tensor c = t.contiguous();
  Tensor out = cuda_detail::pinned_empty(c.sizes(), c.dtype());
  std::memcpy(out.unsafe_impl()->data(), c.unsafe_impl()->data(),
              static_cast<size_t>(c.numel()) * element_size(c.dtype()));
  return out;
}

bool is_pinned(const Tensor& t) { return t.device().is_cpu() && cuda_detail::pinned(t.unsafe_impl()->storage->data); }

}  // namespace cuda
}  // namespace loom
