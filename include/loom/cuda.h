// CUDA devices, streams, events and memory: loom's torch.cuda.
//
// Every function here exists in every build. In a build without CUDA,
// is_built() and is_available() are false, device_count() is 0, and the
// rest throw loom::Error("loom was built without CUDA support ..."). In a
// CUDA build on a machine without a GPU, is_available() is false and the
// rest throw an error saying that no device is present.
//
// Tensors move with .to(Device::cuda(i)) / .cuda() / .cpu() (and
// .to(device, {.non_blocking = true}) from pinned memory); kernels run
// asynchronously on the current stream of their device (Note [CUDA streams]
// in src/backend/cuda/cuda_runtime.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "loom/device.h"
#include "loom/tensor.h"

namespace loom::cuda {

bool is_built();      // compiled with the CUDA backend
bool is_available();  // is_built() and at least one GPU present
int device_count();   // 0 when none
int current_device();
void set_device(int index);
// Waits for all work on `device` (-1: the current device).
void synchronize(int device = -1);

class Event;

// A CUDA stream of one device. Copies share the stream; the last copy of a
// stream made by create() destroys it.
class Stream {
 public:
  // The legacy default stream of the current device.
  Stream();
  // A new stream on `device` (-1: current) that does not synchronize with
  // the default stream; `priority` as cudaStreamCreateWithPriority (lower is higher).
  static Stream create(int device = -1, int priority = 0);
  static Stream default_stream(int device = -1);

  int device() const { return device_; }
  void* handle() const;  // the cudaStream_t
  // Blocks until the stream's work has finished.
  void synchronize() const;
  // True when all its work has finished.
  bool query() const;
  // Work issued to this stream from now on waits for `e`.
  void wait(const Event& e) const;
  bool operator==(const Stream& o) const { return device_ == o.device_ && handle() == o.handle(); }
  bool operator!=(const Stream& o) const { return !(*this == o); }

  struct State;

 private:
  Stream(int device, std::shared_ptr<State> state) : device_(device), state_(std::move(state)) {}
  int device_ = 0;
  std::shared_ptr<State> state_;  // null: the default stream
  friend Stream current_stream(int device);
  friend void set_current_stream(const Stream& s);
};

// The calling thread's current stream on `device` (-1: current device).
Stream current_stream(int device = -1);
// Makes `s` the calling thread's current stream of its device.
void set_current_stream(const Stream& s);

// Makes a stream current for a scope (and its device current too).
class StreamGuard {
 public:
  explicit StreamGuard(const Stream& s);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream previous_;
  int previous_device_ = 0;
};

// A CUDA event: a point in a stream's work.
class Event {
 public:
  explicit Event(bool enable_timing = false);
  // Records the event on `s` (default: the current stream).
  void record();
  void record(const Stream& s);
  void synchronize() const;
  bool query() const;
  // Milliseconds from this event to `end`; both recorded, with timing.
  float elapsed_ms(const Event& end) const;
  void* handle() const;  // the cudaEvent_t

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// The tensor's memory is in use on `s` as well as on the stream it was
// allocated on: the caching allocator does not hand it out again until
// the work issued to `s` before the tensor is freed has finished.
void record_stream(const Tensor& t, const Stream& s);

struct MemoryStats {
  size_t allocated_bytes = 0;       // in tensors (and kernel workspaces)
  size_t reserved_bytes = 0;        // taken from the device: allocated + cached
  size_t peak_allocated_bytes = 0;
  size_t peak_reserved_bytes = 0;
  int64_t allocations = 0;
  int64_t cache_hits = 0;
  int64_t device_allocations = 0;   // cudaMalloc calls
  int64_t device_frees = 0;         // cudaFree calls
  int64_t ooms = 0;                 // times cudaMalloc failed and the cache was flushed
};
MemoryStats memory_stats(int device = -1);
void reset_peak_memory_stats(int device = -1);
// Returns the cached, unused blocks of every device to the driver.
void empty_cache();

// A copy of the CPU tensor `t` in page-locked (pinned) host memory, from
// which copies to the GPU can be asynchronous.
Tensor pin_memory(const Tensor& t);
bool is_pinned(const Tensor& t);

}  // namespace loom::cuda
