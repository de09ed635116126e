// TensorImpl and Storage: the data behind a Tensor handle.
//
// Core knows nothing of autograd beyond the opaque AutogradMeta pointer that
// the autograd layer fills in, and nothing of ops: it includes only the
// core-level public headers (device, dtype, errors), and names the Tensor
// handle (loom/tensor.h, whose methods are the op API) only in declarations.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "loom/device.h"
#include "loom/dtype.h"
#include "loom/error.h"

namespace loom {

class Tensor;

namespace autograd {
struct AutogradMeta;
}

using Shape = std::vector<int64_t>;

// A block of device memory shared by a tensor and all its views. The version
// counter lives here so that every view sees writes made through any other.
struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::cpu();
  std::function<void(void*)> deleter;  // empty for from_blob without a deleter
  std::atomic<uint64_t> version{0};

  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage() {
    if (deleter) deleter(data);
  }
  void bump_version() { version.fetch_add(1, std::memory_order_relaxed); }
};

// Allocates `nbytes` of fresh storage on `device` (64-byte aligned on CPU).
std::shared_ptr<Storage> allocate_storage(size_t nbytes, Device device);

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape sizes;
  Shape strides;  // in elements
  int64_t offset = 0;  // in elements
  DType dtype = kFloat32;
  // A 0-dim tensor made from a C++ number (x + 2): it counts less in type
  // promotion, as PyTorch's wrapped numbers do.
  bool wrapped_number = false;
  std::shared_ptr<autograd::AutogradMeta> autograd;

  int64_t numel() const;
  int64_t dim() const { return static_cast<int64_t>(sizes.size()); }
  bool is_contiguous() const;
  Device device() const { return storage->device; }
  char* data() const {
    return static_cast<char*>(storage->data) + offset * static_cast<int64_t>(element_size(dtype));
  }
};

// Row-major strides for `sizes`.
Shape contiguous_strides(const Shape& sizes);
int64_t shape_numel(const Shape& sizes);
// Wraps `d` (which may be negative) into [0, ndim); errors name `op`.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* op);

// Handles over TensorImpls, defined with the Tensor class in src/ops/tensor.cpp.
// A fresh contiguous tensor (no autograd).
Tensor make_tensor(const Shape& sizes, DType dtype, Device device);
// A new impl sharing `base`'s storage with other geometry (no autograd).
Tensor make_alias(const Tensor& base, const Shape& sizes, const Shape& strides, int64_t offset);

}  // namespace loom
