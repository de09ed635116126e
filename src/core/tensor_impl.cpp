#include "core/tensor_impl.h"

#include <limits>

#include "core/allocator.h"
#include "core/capture.h"

namespace loom {

std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device) {
  // The device's allocator (Note [Allocators per device]); the block goes
  // back to it when the last view dies.
  Allocator& a = allocator_for(device);
  auto s = std::make_shared<Storage>();
  s->device = device;
  s->nbytes = nbytes;
  const MemoryBlock b = a.allocate_on(device, nbytes);
  s->data = b.ptr;
  // Two words of capture: std::function keeps them inline, no allocation.
  s->deleter = [a = &a, size = b.size](void* q) { a->free({q, size}); };
  if (capture::Recorder* r = capture::active()) r->on_alloc(s);
  return s;
}

int64_t shape_numel(const Shape& sizes) {
  int64_t n = 1;
  for (int64_t s : sizes) n *= s;
  return n;
}

int64_t TensorImpl::numel() const { return shape_numel(sizes); }

bool TensorImpl::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t d = dim() - 1; d >= 0; --d) {
    if (sizes[d] == 1) continue;
    if (strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

Shape contiguous_strides(const Shape& sizes) {
  Shape st(sizes.size());
  int64_t acc = 1;
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    st[d] = acc;
    acc *= std::max<int64_t>(sizes[d], 1);
  }
  return st;
}

int64_t wrap_dim(int64_t d, int64_t ndim, const char* op) {
  int64_t n = std::max<int64_t>(ndim, 1);  // a 0-dim tensor accepts dim 0 and -1
  LOOM_CHECK(d >= -n && d < n, op, ": dim ", d, " is out of range for a tensor with ", ndim,
             " dims (expected in [", -n, ", ", n - 1, "])");
  return d < 0 ? d + n : d;
}

}  // namespace loom
