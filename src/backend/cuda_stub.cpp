// include/loom/cuda.h in a build without the CUDA backend: nothing is
// available, and every call that needs a device says why.
#ifndef LOOM_WITH_CUDA

#include "loom/cuda.h"
#include "loom/error.h"

namespace loom::cuda {

namespace {
[[noreturn]] void unavailable(const char* what) {
  LOOM_ERROR("loom was built without CUDA support: cannot call cuda::", what,
             " (rebuild with nvcc available and -DLOOM_CUDA=ON to enable CUDA)");
}
}  // namespace

struct Stream::State {};
struct Event::State {};

bool is_built() { return false; }
bool is_available() { return false; }
int device_count() { return 0; }
int current_device() { unavailable("current_device"); }
void set_device(int) { unavailable("set_device"); }
void synchronize(int) { unavailable("synchronize"); }

Stream::Stream() = default;
Stream Stream::create(int, int) { unavailable("Stream::create"); }
Stream Stream::default_stream(int) { unavailable("Stream::default_stream"); }
void* Stream::handle() const { return nullptr; }
void Stream::synchronize() const { unavailable("Stream::synchronize"); }
bool Stream::query() const { unavailable("Stream::query"); }
void Stream::wait(const Event&) const { unavailable("Stream::wait"); }
Stream current_stream(int) { unavailable("current_stream"); }
void set_current_stream(const Stream&) { unavailable("set_current_stream"); }
StreamGuard::StreamGuard(const Stream&) { unavailable("StreamGuard"); }
StreamGuard::~StreamGuard() = default;

Event::Event(bool) { unavailable("Event"); }
void Event::record() { unavailable("Event::record"); }
void Event::record(const Stream&) { unavailable("Event::record"); }
void Event::synchronize() const { unavailable("Event::synchronize"); }
bool Event::query() const { unavailable("Event::query"); }
float Event::elapsed_ms(const Event&) const { unavailable("Event::elapsed_ms"); }
void* Event::handle() const { return nullptr; }

void record_stream(const Tensor&, const Stream&) { unavailable("record_stream"); }
MemoryStats memory_stats(int) { unavailable("memory_stats"); }
void reset_peak_memory_stats(int) { unavailable("reset_peak_memory_stats"); }
void empty_cache() {}
Tensor pin_memory(const Tensor&) { unavailable("pin_memory"); }
bool is_pinned(const Tensor&) { return false; }

}  // namespace loom::cuda

#endif  // LOOM_WITH_CUDA
