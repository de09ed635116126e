// Tensor's member functions: metadata, data access, autograd state, and the
// method forms of the free-function ops.
#include <limits>

#include "autograd/node.h"
#include "core/capture.h"
#include "core/tensor_impl.h"
#include "loom/autograd.h"
#include "loom/ops.h"
#include "ops/op_utils.h"

namespace loom {

namespace {
const Tensor& undefined_tensor() {
  static const Tensor t;
  return t;
}
void check_defined(const Tensor& t, const char* what) {
  LOOM_CHECK(t.defined(), what, ": called on an undefined tensor");
}
}  // namespace

// ---- handles over fresh or shared storage (declared in core/tensor_impl.h) ----

Tensor make_tensor(const Shape& sizes, DType dtype, Device device) {
  for (int64_t s : sizes) LOOM_CHECK(s >= 0, "negative dimension in shape ", shape_str(sizes));
  auto impl = std::make_shared<TensorImpl>();
  int64_t n = shape_numel(sizes);
  LOOM_CHECK(n <= std::numeric_limits<int64_t>::max() / 16, "shape ", shape_str(sizes), " is too large");
  impl->storage = allocate_storage(static_cast<size_t>(n) * element_size(dtype), device);
  impl->sizes = sizes;
  impl->strides = contiguous_strides(sizes);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor make_alias(const Tensor& base, const Shape& sizes, const Shape& strides, int64_t offset) {
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = base.unsafe_impl()->storage;
  impl->sizes = sizes;
  impl->strides = strides;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

// ---- metadata ----

const std::vector<int64_t>& Tensor::sizes() const { check_defined(*this, "sizes"); return impl_->sizes; }
const std::vector<int64_t>& Tensor::strides() const { check_defined(*this, "strides"); return impl_->strides; }
int64_t Tensor::size(int64_t d) const { return sizes()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }
int64_t Tensor::dim() const { check_defined(*this, "dim"); return impl_->dim(); }
int64_t Tensor::numel() const { check_defined(*this, "numel"); return impl_->numel(); }
int64_t Tensor::storage_offset() const { check_defined(*this, "storage_offset"); return impl_->offset; }
DType Tensor::dtype() const { check_defined(*this, "dtype"); return impl_->dtype; }
Device Tensor::device() const { check_defined(*this, "device"); return impl_->device(); }
TensorOptions Tensor::options() const { return TensorOptions().dtype(dtype()).device(device()); }
bool Tensor::is_contiguous() const { check_defined(*this, "is_contiguous"); return impl_->is_contiguous(); }
uint64_t Tensor::_version() const { check_defined(*this, "_version"); return impl_->storage->version.load(); }

void* Tensor::raw_data_ptr() const {
  check_defined(*this, "data_ptr");
  if (capture::Recorder* r = capture::active()) r->on_host_access(*impl_, "data_ptr");
  return impl_->data();
}

void Tensor::check_data_ptr_type(DType requested) const {
  check_defined(*this, "data_ptr");
  LOOM_CHECK(requested == dtype(), "data_ptr: expected the C++ type for ", dtype_name(dtype()),
             " but the requested type is for ", dtype_name(requested));
  LOOM_CHECK(device().is_cpu(), "data_ptr: the tensor is on ", device().str(), "; copy it to the cpu first");
}

Scalar Tensor::item() const {
  LOOM_CHECK(numel() == 1, "item: a tensor with ", numel(), " elements (shape ", shape_str(sizes()),
             ") cannot be converted to a scalar");
  if (capture::Recorder* r = capture::active()) r->on_host_access(*impl_, "item");
  Tensor c = to(Device::cpu());
  NoGradGuard ng;
  if (loom::is_floating_point(dtype())) return Scalar(c.to(kFloat64).contiguous().data_ptr<double>()[0]);
  if (dtype() == kBool) return Scalar(c.contiguous().data_ptr<bool>()[0]);
  return Scalar(c.to(kInt64).contiguous().data_ptr<int64_t>()[0]);
}

// ---- autograd state ----

bool Tensor::requires_grad() const {
  const auto* m = autograd::autograd_meta_if(*this);
  return m && (m->requires_grad || m->grad_fn);
}

Tensor& Tensor::requires_grad_(bool r) {
  check_defined(*this, "requires_grad_");
  LOOM_CHECK(!r || loom::is_floating_point(dtype()), "requires_grad_: only floating point tensors can require gradients, got ",
             dtype_name(dtype()));
  if (!r && !impl_->autograd) return *this;
  auto& m = autograd::autograd_meta(*this);
  LOOM_CHECK(r || !m.grad_fn, "requires_grad_: you can only change requires_grad of leaf tensors; use detach() for a "
             "non-leaf (it has grad_fn ", m.grad_fn ? m.grad_fn->name() : "", ")");
  m.requires_grad = r;
  return *this;
}

const Tensor& Tensor::grad() const {
  const auto* m = autograd::autograd_meta_if(*this);
  return m ? m->grad : undefined_tensor();
}

Tensor& Tensor::mutable_grad() { return autograd::autograd_meta(*this).grad; }

void Tensor::set_grad(const Tensor& g) {
  if (g.defined())
    LOOM_CHECK(g.sizes() == sizes(), "set_grad: gradient of shape ", shape_str(g.sizes()),
               " does not match the tensor's shape ", shape_str(sizes()));
  autograd::autograd_meta(*this).grad = g;
}

std::shared_ptr<autograd::Node> Tensor::grad_fn() const {
  const auto* m = autograd::autograd_meta_if(*this);
  return m ? m->grad_fn : nullptr;
}

bool Tensor::is_leaf() const { return grad_fn() == nullptr; }

void Tensor::retain_grad() const {
  LOOM_CHECK(requires_grad(), "retain_grad: can't retain_grad on a tensor that has requires_grad=false");
  if (is_leaf()) return;  // leaves keep their gradient anyway
  auto& m = autograd::autograd_meta(*this);
  if (m.retains_grad) return;
  m.retains_grad = true;
  std::weak_ptr<TensorImpl> weak = impl_;
  register_hook([weak](const Tensor& g) {
    if (auto impl = weak.lock()) {
      auto& mm = autograd::autograd_meta(Tensor(impl));
      mm.grad = mm.grad.defined() ? mm.grad + g.detach() : g.detach().clone();
    }
    return Tensor();
  });
}

bool Tensor::retains_grad() const {
  const auto* m = autograd::autograd_meta_if(*this);
  return m && m->retains_grad;
}

void Tensor::set_data(const Tensor& data) {
  check_defined(*this, "set_data");
  LOOM_CHECK(data.defined(), "set_data: the new data is an undefined tensor");
  const TensorImpl* src = data.unsafe_impl();
  bool same_meta = src->sizes == impl_->sizes && src->dtype == impl_->dtype && src->device() == impl_->device();
  impl_->storage = src->storage;
  impl_->sizes = src->sizes;
  impl_->strides = src->strides;
  impl_->offset = src->offset;
  impl_->dtype = src->dtype;
  if (!same_meta && impl_->autograd) {
    impl_->autograd->grad = Tensor();
    impl_->autograd->grad_accumulator.reset();
  }
}

void Tensor::backward(const Tensor& gradient, bool retain_graph, bool create_graph) const {
  check_defined(*this, "backward");
  autograd::run_backward({*this}, {gradient}, retain_graph || create_graph, create_graph, {}, false);
}

namespace {
int64_t next_hook_handle() {
  static std::atomic<int64_t> next{1};
  return next.fetch_add(1);
}
}  // namespace

int64_t Tensor::register_hook(std::function<Tensor(const Tensor&)> hook) const {
  LOOM_CHECK(requires_grad(), "register_hook: cannot register a hook on a tensor that doesn't require gradient");
  int64_t handle = next_hook_handle();
  auto& m = autograd::autograd_meta(*this);
  if (m.grad_fn) {
    auto& hooks = m.grad_fn->pre_hooks;
    if (hooks.size() <= m.output_nr) hooks.resize(m.output_nr + 1);
    hooks[m.output_nr].push_back({handle, std::move(hook)});
  } else {
    m.leaf_hooks.push_back({handle, std::move(hook)});
  }
  return handle;
}

int64_t Tensor::register_post_accumulate_grad_hook(std::function<void(const Tensor&)> hook) const {
  LOOM_CHECK(requires_grad() && is_leaf(), "register_post_accumulate_grad_hook: the tensor must be a leaf that "
             "requires grad (shape ", shape_str(sizes()), ")");
  const int64_t handle = next_hook_handle();
  autograd::autograd_meta(*this).post_accumulate_hooks.push_back({handle, std::move(hook)});
  return handle;
}

void Tensor::remove_hook(int64_t handle) const {
  auto* m = impl_ ? impl_->autograd.get() : nullptr;
  if (!m) return;
  auto drop = [handle](std::vector<std::pair<int64_t, autograd::Hook>>& v) {
    std::erase_if(v, [handle](const auto& p) { return p.first == handle; });
  };
  drop(m->leaf_hooks);
  std::erase_if(m->post_accumulate_hooks, [handle](const auto& p) { return p.first == handle; });
  if (m->grad_fn)
    for (auto& v : m->grad_fn->pre_hooks) drop(v);
}

// ---- method forms ----

Tensor Tensor::add(const Tensor& o, Scalar alpha) const { return loom::add(*this, o, alpha); }
Tensor Tensor::sub(const Tensor& o, Scalar alpha) const { return loom::sub(*this, o, alpha); }
Tensor Tensor::mul(const Tensor& o) const { return loom::mul(*this, o); }
Tensor Tensor::div(const Tensor& o) const { return loom::div(*this, o); }
Tensor Tensor::pow(const Tensor& e) const { return loom::pow(*this, e); }
Tensor Tensor::pow(Scalar e) const { return loom::pow(*this, e); }
Tensor Tensor::neg() const { return loom::neg(*this); }
Tensor Tensor::exp() const { return loom::exp(*this); }
Tensor Tensor::log() const { return loom::log(*this); }
Tensor Tensor::log1p() const { return loom::log1p(*this); }
Tensor Tensor::sqrt() const { return loom::sqrt(*this); }
Tensor Tensor::rsqrt() const { return loom::rsqrt(*this); }
Tensor Tensor::abs() const { return loom::abs(*this); }
Tensor Tensor::sign() const { return loom::sign(*this); }
Tensor Tensor::sin() const { return loom::sin(*this); }
Tensor Tensor::cos() const { return loom::cos(*this); }
Tensor Tensor::tanh() const { return loom::tanh(*this); }
Tensor Tensor::sigmoid() const { return loom::sigmoid(*this); }
Tensor Tensor::relu() const { return loom::relu(*this); }
Tensor Tensor::square() const { return loom::square(*this); }
Tensor Tensor::reciprocal() const { return loom::reciprocal(*this); }
Tensor Tensor::maximum(const Tensor& o) const { return loom::maximum(*this, o); }
Tensor Tensor::minimum(const Tensor& o) const { return loom::minimum(*this, o); }
Tensor Tensor::clamp(std::optional<Scalar> lo, std::optional<Scalar> hi) const { return loom::clamp(*this, lo, hi); }
Tensor Tensor::eq(const Tensor& o) const { return loom::eq(*this, o); }
Tensor Tensor::ne(const Tensor& o) const { return loom::ne(*this, o); }
Tensor Tensor::lt(const Tensor& o) const { return loom::lt(*this, o); }
Tensor Tensor::le(const Tensor& o) const { return loom::le(*this, o); }
Tensor Tensor::gt(const Tensor& o) const { return loom::gt(*this, o); }
Tensor Tensor::ge(const Tensor& o) const { return loom::ge(*this, o); }
Tensor Tensor::eq(Scalar o) const { return *this == o; }
Tensor Tensor::ne(Scalar o) const { return *this != o; }
Tensor Tensor::lt(Scalar o) const { return *this < o; }
Tensor Tensor::le(Scalar o) const { return *this <= o; }
Tensor Tensor::gt(Scalar o) const { return *this > o; }
Tensor Tensor::ge(Scalar o) const { return *this >= o; }
Tensor Tensor::logical_not() const { return loom::logical_not(*this); }
Tensor Tensor::logical_and(const Tensor& o) const { return loom::logical_and(*this, o); }
Tensor Tensor::logical_or(const Tensor& o) const { return loom::logical_or(*this, o); }
Tensor Tensor::where(const Tensor& cond, const Tensor& other) const { return loom::where(cond, *this, other); }

Tensor Tensor::sum() const { return loom::sum(*this); }
Tensor Tensor::sum(IntArrayRef dims, bool keepdim) const { return loom::sum(*this, dims, keepdim); }
Tensor Tensor::mean() const { return loom::mean(*this); }
Tensor Tensor::mean(IntArrayRef dims, bool keepdim) const { return loom::mean(*this, dims, keepdim); }
Tensor Tensor::prod() const { return loom::prod(*this); }
Tensor Tensor::prod(int64_t d, bool keepdim) const { return loom::prod(*this, d, keepdim); }
Tensor Tensor::max() const { return loom::max(*this); }
std::pair<Tensor, Tensor> Tensor::max(int64_t d, bool keepdim) const { return loom::max(*this, d, keepdim); }
Tensor Tensor::min() const { return loom::min(*this); }
std::pair<Tensor, Tensor> Tensor::min(int64_t d, bool keepdim) const { return loom::min(*this, d, keepdim); }
Tensor Tensor::amax(IntArrayRef dims, bool keepdim) const { return loom::amax(*this, dims, keepdim); }
Tensor Tensor::amin(IntArrayRef dims, bool keepdim) const { return loom::amin(*this, dims, keepdim); }
Tensor Tensor::argmax() const { return loom::argmax(*this); }
Tensor Tensor::argmax(int64_t d, bool keepdim) const { return loom::argmax(*this, d, keepdim); }
Tensor Tensor::argmin() const { return loom::argmin(*this); }
Tensor Tensor::argmin(int64_t d, bool keepdim) const { return loom::argmin(*this, d, keepdim); }
Tensor Tensor::var(IntArrayRef dims, int64_t correction, bool keepdim) const { return loom::var(*this, dims, correction, keepdim); }
Tensor Tensor::std(IntArrayRef dims, int64_t correction, bool keepdim) const { return loom::std(*this, dims, correction, keepdim); }
Tensor Tensor::norm(double p, IntArrayRef dims, bool keepdim) const { return loom::norm(*this, p, dims, keepdim); }
Tensor Tensor::logsumexp(IntArrayRef dims, bool keepdim) const { return loom::logsumexp(*this, dims, keepdim); }
Tensor Tensor::cumsum(int64_t d) const { return loom::cumsum(*this, d); }
Tensor Tensor::softmax(int64_t d) const { return loom::softmax(*this, d); }
Tensor Tensor::log_softmax(int64_t d) const { return loom::log_softmax(*this, d); }
Tensor Tensor::matmul(const Tensor& o) const { return loom::matmul(*this, o); }
Tensor Tensor::mm(const Tensor& o) const { return loom::mm(*this, o); }
Tensor Tensor::bmm(const Tensor& o) const { return loom::bmm(*this, o); }
Tensor Tensor::gather(int64_t d, const Tensor& index) const { return loom::gather(*this, d, index); }
Tensor Tensor::scatter_add(int64_t d, const Tensor& index, const Tensor& src) const { return loom::scatter_add(*this, d, index, src); }
Tensor Tensor::index_select(int64_t d, const Tensor& index) const { return loom::index_select(*this, d, index); }
Tensor Tensor::tril(int64_t diagonal) const { return loom::tril(*this, diagonal); }
Tensor Tensor::triu(int64_t diagonal) const { return loom::triu(*this, diagonal); }
Tensor Tensor::flip(IntArrayRef dims) const { return loom::flip(*this, dims); }
std::vector<Tensor> Tensor::split(int64_t split_size, int64_t d) const { return loom::split(*this, split_size, d); }
std::vector<Tensor> Tensor::split(const std::vector<int64_t>& sizes, int64_t d) const { return loom::split(*this, sizes, d); }
std::vector<Tensor> Tensor::chunk(int64_t chunks, int64_t d) const { return loom::chunk(*this, chunks, d); }
bool Tensor::allclose(const Tensor& o, double rtol, double atol, bool equal_nan) const {
  return loom::allclose(*this, o, rtol, atol, equal_nan);
}
bool Tensor::equal(const Tensor& o) const { return loom::equal(*this, o); }

}  // namespace loom
