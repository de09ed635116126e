// loom::Tensor: a handle to strided data plus its autograd history.
//
// Copying a Tensor copies the handle (like libtorch / PyTorch): both names
// see the same data. Views (view, permute, narrow, index with slices, ...)
// share storage with their base, so a write through a view is seen by the base.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "loom/device.h"
#include "loom/dtype.h"
#include "loom/error.h"
#include "loom/generator.h"

namespace loom {

struct TensorImpl;
class Tensor;

// A list of sizes or dims: accepts `{2, 3}`, a std::vector, or a single int.
class IntArrayRef {
 public:
  IntArrayRef() = default;
  IntArrayRef(int64_t v) : v_{v} {}                                   // NOLINT
  IntArrayRef(int v) : v_{v} {}                                       // NOLINT
  IntArrayRef(std::initializer_list<int64_t> l) : v_(l) {}            // NOLINT
  IntArrayRef(const std::vector<int64_t>& v) : v_(v) {}               // NOLINT
  IntArrayRef(std::vector<int64_t>&& v) : v_(std::move(v)) {}         // NOLINT
  size_t size() const { return v_.size(); }
  bool empty() const { return v_.empty(); }
  int64_t operator[](size_t i) const { return v_[i]; }
  auto begin() const { return v_.begin(); }
  auto end() const { return v_.end(); }
  const std::vector<int64_t>& vec() const { return v_; }
  operator const std::vector<int64_t>&() const { return v_; }  // NOLINT

 private:
  std::vector<int64_t> v_;
};

class TensorOptions {
 public:
  TensorOptions() = default;
  TensorOptions(DType d) : dtype_(d) {}     // NOLINT: zeros({2}, kInt64)
  TensorOptions(Device d) : device_(d) {}   // NOLINT
  TensorOptions dtype(DType d) const { auto o = *this; o.dtype_ = d; return o; }
  TensorOptions device(Device d) const { auto o = *this; o.device_ = d; return o; }
  TensorOptions requires_grad(bool r) const { auto o = *this; o.requires_grad_ = r; return o; }
  DType dtype() const { return dtype_.value_or(kFloat32); }
  bool has_dtype() const { return dtype_.has_value(); }
  Device device() const { return device_; }
  bool requires_grad() const { return requires_grad_; }

 private:
  std::optional<DType> dtype_;
  Device device_ = Device::cpu();
  bool requires_grad_ = false;
};
inline TensorOptions dtype(DType d) { return TensorOptions().dtype(d); }

// libtorch-style indexing: x.index({Slice(0, 2), 1}), x.index({"...", None}).
namespace indexing {
struct NoneType {
  constexpr NoneType() = default;
};
inline constexpr NoneType None;
struct EllipsisType {
  constexpr EllipsisType() = default;
};
inline constexpr EllipsisType Ellipsis;

// One end of a slice: an int, or None for "from the start / to the end".
struct SliceBound {
  std::optional<int64_t> v;
  SliceBound(NoneType) {}                // NOLINT
  SliceBound(int64_t x) : v(x) {}        // NOLINT
  SliceBound(int x) : v(x) {}            // NOLINT
};
struct Slice {
  std::optional<int64_t> start, stop;
  int64_t step = 1;
  Slice(SliceBound a = None, SliceBound b = None, int64_t s = 1) : start(a.v), stop(b.v), step(s) {}
};

class TensorIndex {
 public:
  TensorIndex(int64_t i) : v_(i) {}                  // NOLINT
  TensorIndex(int i) : v_(int64_t{i}) {}             // NOLINT
  TensorIndex(Slice s) : v_(s) {}                    // NOLINT
  TensorIndex(NoneType n) : v_(n) {}                 // NOLINT
  TensorIndex(EllipsisType e) : v_(e) {}             // NOLINT
  TensorIndex(const char* s);                        // NOLINT: "..." means Ellipsis
  TensorIndex(const Tensor& t);                      // NOLINT: integer or bool index tensor
  TensorIndex(const TensorIndex&);
  TensorIndex& operator=(const TensorIndex&);
  ~TensorIndex();
  bool is_int() const { return v_.index() == 0; }
  bool is_slice() const { return v_.index() == 1; }
  bool is_none() const { return v_.index() == 2; }
  bool is_ellipsis() const { return v_.index() == 3; }
  bool is_tensor() const { return v_.index() == 4; }
  int64_t integer() const { return std::get<0>(v_); }
  const Slice& slice() const { return std::get<1>(v_); }
  const Tensor& tensor() const;

 private:
  std::variant<int64_t, Slice, NoneType, EllipsisType, std::shared_ptr<Tensor>> v_;
};
}  // namespace indexing

namespace autograd {
struct Node;
}

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- metadata ---
  bool defined() const { return impl_ != nullptr; }
  const std::vector<int64_t>& sizes() const;
  const std::vector<int64_t>& strides() const;
  std::vector<int64_t> shape() const { return sizes(); }
  int64_t size(int64_t dim) const;
  int64_t stride(int64_t dim) const;
  int64_t dim() const;
  int64_t ndimension() const { return dim(); }
  int64_t numel() const;
  int64_t storage_offset() const;
  DType dtype() const;
  DType scalar_type() const { return dtype(); }
  Device device() const;
  TensorOptions options() const;
  bool is_contiguous() const;
  bool is_floating_point() const { return loom::is_floating_point(dtype()); }
  size_t element_size() const { return loom::element_size(dtype()); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * element_size(); }
  bool is_same(const Tensor& o) const { return impl_ == o.impl_; }
  // Number of writes seen by this tensor's storage (bumped by in-place ops).
  uint64_t _version() const;
  TensorImpl* unsafe_impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

  // --- data access ---
  template <typename T>
  T* data_ptr() const {
    check_data_ptr_type(dtype_of<T>());
    return static_cast<T*>(raw_data_ptr());
  }
  void* raw_data_ptr() const;  // first element (storage base + offset)
  Scalar item() const;
  template <typename T>
  T item() const;
  // Flattened values converted to T (copies; handy in tests and tools).
  template <typename T>
  std::vector<T> to_vector() const;

  // --- autograd ---
  bool requires_grad() const;
  Tensor& requires_grad_(bool r = true);
  Tensor& set_requires_grad(bool r) { return requires_grad_(r); }
  const Tensor& grad() const;
  Tensor& mutable_grad();
  void set_grad(const Tensor& g);
  std::shared_ptr<autograd::Node> grad_fn() const;
  bool is_leaf() const;
  void retain_grad() const;
  bool retains_grad() const;
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false,
                bool create_graph = false) const;
  Tensor detach() const;
  Tensor& detach_();
  // Points this tensor (and every handle to it) at `data`'s storage, shape and
  // dtype, keeping its autograd identity (PyTorch's `p.data = ...`). Used by
  // Module::to and optimizers; the gradient is dropped if the shape or dtype
  // changes.
  void set_data(const Tensor& data);
  // A hook runs on the gradient w.r.t. this tensor when it is computed; it may
  // return a replacement (defined) or nothing (undefined Tensor). Returns a
  // handle for remove_hook.
  int64_t register_hook(std::function<Tensor(const Tensor&)> hook) const;
  // A hook on a leaf that runs after its gradient has been accumulated into
  // .grad(), with the leaf itself (PyTorch's register_post_accumulate_grad_hook):
  // how DistributedDataParallel learns that a parameter's gradient is ready.
  // remove_hook takes its handle too.
  int64_t register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const;
  void remove_hook(int64_t handle) const;

  // --- conversion ---
  Tensor to(DType t, bool copy = false) const;
  Tensor to(Device d, bool copy = false) const;
  // .to(Device::cuda(), {.non_blocking = true}): from pinned memory the copy
  // is asynchronous on the current stream (loom/cuda.h).
  struct ToOptions {
    bool copy = false;
    bool non_blocking = false;
  };
  Tensor to(Device d, ToOptions o) const;
  Tensor to(const TensorOptions& o, bool copy = false) const;
  Tensor cpu() const { return to(Device::cpu()); }
  Tensor cuda() const { return to(Device::cuda()); }
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor type_as(const Tensor& o) const { return to(o.dtype()); }
  Tensor float_() const { return to(kFloat32); }

  // --- views ---
  Tensor view(IntArrayRef sizes) const;
  Tensor reshape(IntArrayRef sizes) const;
  Tensor view_as(const Tensor& o) const { return view(o.sizes()); }
  Tensor reshape_as(const Tensor& o) const { return reshape(o.sizes()); }
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor unflatten(int64_t dim, IntArrayRef sizes) const;
  Tensor permute(IntArrayRef dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor t() const;
  Tensor mT() const { return transpose(-2, -1); }
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(IntArrayRef sizes) const;
  Tensor expand_as(const Tensor& o) const { return expand(o.sizes()); }
  Tensor broadcast_to(IntArrayRef sizes) const { return expand(sizes); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor slice(int64_t dim, std::optional<int64_t> start, std::optional<int64_t> stop,
               int64_t step = 1) const;
  Tensor as_strided(IntArrayRef sizes, IntArrayRef strides, std::optional<int64_t> offset = {}) const;
  Tensor index(std::initializer_list<indexing::TensorIndex> idx) const;
  Tensor index(const std::vector<indexing::TensorIndex>& idx) const;
  Tensor operator[](int64_t i) const { return select(0, i); }
  Tensor& index_put_(const std::vector<indexing::TensorIndex>& idx, const Tensor& value);
  Tensor& index_put_(const std::vector<indexing::TensorIndex>& idx, Scalar value);
  Tensor flip(IntArrayRef dims) const;
  std::vector<Tensor> split(int64_t split_size, int64_t dim = 0) const;
  std::vector<Tensor> split(const std::vector<int64_t>& sizes, int64_t dim = 0) const;
  std::vector<Tensor> chunk(int64_t chunks, int64_t dim = 0) const;
  std::vector<Tensor> unbind(int64_t dim = 0) const;

  // --- in-place (bump the version counter) ---
  Tensor& add_(const Tensor& o, Scalar alpha = 1);
  Tensor& add_(Scalar o);
  Tensor& sub_(const Tensor& o, Scalar alpha = 1);
  Tensor& sub_(Scalar o);
  Tensor& mul_(const Tensor& o);
  Tensor& mul_(Scalar o);
  Tensor& div_(const Tensor& o);
  Tensor& div_(Scalar o);
  Tensor& zero_();
  Tensor& fill_(Scalar v);
  Tensor& copy_(const Tensor& src);
  Tensor& masked_fill_(const Tensor& mask, Scalar v);
  Tensor& clamp_(std::optional<Scalar> lo, std::optional<Scalar> hi);
  // Random fills from `generator`, or the global stream when left out.
  Tensor& uniform_(double from = 0, double to = 1, std::optional<Generator> generator = std::nullopt);
  Tensor& normal_(double mean = 0, double std = 1, std::optional<Generator> generator = std::nullopt);

  // --- math (method forms of the free functions in ops.h) ---
  Tensor add(const Tensor& o, Scalar alpha = 1) const;
  Tensor sub(const Tensor& o, Scalar alpha = 1) const;
  Tensor mul(const Tensor& o) const;
  Tensor div(const Tensor& o) const;
  Tensor pow(const Tensor& e) const;
  Tensor pow(Scalar e) const;
  Tensor neg() const;
  Tensor exp() const;
  Tensor log() const;
  Tensor log1p() const;
  Tensor sqrt() const;
  Tensor rsqrt() const;
  Tensor abs() const;
  Tensor sign() const;
  Tensor sin() const;
  Tensor cos() const;
  Tensor tanh() const;
  Tensor sigmoid() const;
  Tensor relu() const;
  Tensor square() const;
  Tensor reciprocal() const;
  Tensor maximum(const Tensor& o) const;
  Tensor minimum(const Tensor& o) const;
  Tensor clamp(std::optional<Scalar> lo, std::optional<Scalar> hi) const;
  Tensor clamp_min(Scalar lo) const { return clamp(lo, std::nullopt); }
  Tensor clamp_max(Scalar hi) const { return clamp(std::nullopt, hi); }
  Tensor eq(const Tensor& o) const;
  Tensor ne(const Tensor& o) const;
  Tensor lt(const Tensor& o) const;
  Tensor le(const Tensor& o) const;
  Tensor gt(const Tensor& o) const;
  Tensor ge(const Tensor& o) const;
  Tensor eq(Scalar o) const;
  Tensor ne(Scalar o) const;
  Tensor lt(Scalar o) const;
  Tensor le(Scalar o) const;
  Tensor gt(Scalar o) const;
  Tensor ge(Scalar o) const;
  Tensor logical_not() const;
  Tensor logical_and(const Tensor& o) const;
  Tensor logical_or(const Tensor& o) const;
  Tensor masked_fill(const Tensor& mask, Scalar v) const;
  Tensor masked_fill(const Tensor& mask, const Tensor& v) const;
  Tensor where(const Tensor& cond, const Tensor& other) const;  // cond ? *this : other

  Tensor sum() const;
  Tensor sum(IntArrayRef dims, bool keepdim = false) const;
  Tensor mean() const;
  Tensor mean(IntArrayRef dims, bool keepdim = false) const;
  Tensor prod() const;
  Tensor prod(int64_t dim, bool keepdim = false) const;
  Tensor max() const;
  std::pair<Tensor, Tensor> max(int64_t dim, bool keepdim = false) const;
  Tensor min() const;
  std::pair<Tensor, Tensor> min(int64_t dim, bool keepdim = false) const;
  Tensor amax(IntArrayRef dims = {}, bool keepdim = false) const;
  Tensor amin(IntArrayRef dims = {}, bool keepdim = false) const;
  Tensor argmax() const;
  Tensor argmax(int64_t dim, bool keepdim = false) const;
  Tensor argmin() const;
  Tensor argmin(int64_t dim, bool keepdim = false) const;
  Tensor var(IntArrayRef dims = {}, int64_t correction = 1, bool keepdim = false) const;
  Tensor std(IntArrayRef dims = {}, int64_t correction = 1, bool keepdim = false) const;
  Tensor norm(double p = 2, IntArrayRef dims = {}, bool keepdim = false) const;
  Tensor logsumexp(IntArrayRef dims, bool keepdim = false) const;
  Tensor cumsum(int64_t dim) const;
  Tensor softmax(int64_t dim) const;
  Tensor log_softmax(int64_t dim) const;
  Tensor matmul(const Tensor& o) const;
  Tensor mm(const Tensor& o) const;
  Tensor bmm(const Tensor& o) const;
  Tensor gather(int64_t dim, const Tensor& index) const;
  Tensor scatter_add(int64_t dim, const Tensor& index, const Tensor& src) const;
  Tensor index_select(int64_t dim, const Tensor& index) const;
  Tensor tril(int64_t diagonal = 0) const;
  Tensor triu(int64_t diagonal = 0) const;
  bool allclose(const Tensor& o, double rtol = 1e-5, double atol = 1e-8, bool equal_nan = false) const;
  bool equal(const Tensor& o) const;

  // --- operators ---
  Tensor operator-() const { return neg(); }
  Tensor& operator+=(const Tensor& o) { return add_(o); }
  Tensor& operator-=(const Tensor& o) { return sub_(o); }
  Tensor& operator*=(const Tensor& o) { return mul_(o); }
  Tensor& operator/=(const Tensor& o) { return div_(o); }
  Tensor& operator+=(Scalar o) { return add_(o); }
  Tensor& operator-=(Scalar o) { return sub_(o); }
  Tensor& operator*=(Scalar o) { return mul_(o); }
  Tensor& operator/=(Scalar o) { return div_(o); }

  // The C++ type for a dtype and back.
  template <typename T>
  static constexpr DType dtype_of();

 private:
  void check_data_ptr_type(DType requested) const;
  std::shared_ptr<TensorImpl> impl_;
};

template <typename T>
constexpr DType Tensor::dtype_of() {
  if constexpr (std::is_same_v<T, float>) return kFloat32;
  else if constexpr (std::is_same_v<T, double>) return kFloat64;
  else if constexpr (std::is_same_v<T, Half>) return kFloat16;
  else if constexpr (std::is_same_v<T, BFloat16>) return kBFloat16;
  else if constexpr (std::is_same_v<T, int32_t>) return kInt32;
  else if constexpr (std::is_same_v<T, int64_t>) return kInt64;
  else if constexpr (std::is_same_v<T, uint8_t>) return kUInt8;
  else if constexpr (std::is_same_v<T, int8_t>) return kInt8;
  else if constexpr (std::is_same_v<T, bool>) return kBool;
  else static_assert(sizeof(T) == 0, "no loom dtype for this C++ type");
}

template <typename T>
T Tensor::item() const {
  Scalar s = item();
  if constexpr (std::is_same_v<T, bool>) return s.to_bool();
  else if constexpr (std::is_integral_v<T>) return static_cast<T>(s.is_floating_point() ? static_cast<int64_t>(s.to_double()) : s.to_long());
  else return static_cast<T>(s.to_double());
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor c = to(Device::cpu()).to(dtype_of<T>()).contiguous();
  const T* p = c.data_ptr<T>();
  return std::vector<T>(p, p + c.numel());
}

// Prints like PyTorch: tensor([[1., 2.], [3., 4.]], dtype=...).
std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Operators on tensors and scalars.
Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator+(const Tensor& a, Scalar b);
Tensor operator-(const Tensor& a, Scalar b);
Tensor operator*(const Tensor& a, Scalar b);
Tensor operator/(const Tensor& a, Scalar b);
Tensor operator+(Scalar a, const Tensor& b);
Tensor operator-(Scalar a, const Tensor& b);
Tensor operator*(Scalar a, const Tensor& b);
Tensor operator/(Scalar a, const Tensor& b);
Tensor operator==(const Tensor& a, const Tensor& b);
Tensor operator!=(const Tensor& a, const Tensor& b);
Tensor operator<(const Tensor& a, const Tensor& b);
Tensor operator<=(const Tensor& a, const Tensor& b);
Tensor operator>(const Tensor& a, const Tensor& b);
Tensor operator>=(const Tensor& a, const Tensor& b);
Tensor operator==(const Tensor& a, Scalar b);
Tensor operator!=(const Tensor& a, Scalar b);
Tensor operator<(const Tensor& a, Scalar b);
Tensor operator<=(const Tensor& a, Scalar b);
Tensor operator>(const Tensor& a, Scalar b);
Tensor operator>=(const Tensor& a, Scalar b);
Tensor operator!(const Tensor& a);
Tensor operator&&(const Tensor& a, const Tensor& b) = delete;  // use logical_and

}  // namespace loom
