#include "autograd/node.h"

#include <atomic>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::autograd {

namespace {
std::atomic<uint64_t> g_next_sequence_nr{0};
thread_local SavedTensorSink* t_saved_tensor_sink = nullptr;

[[noreturn]] void throw_modified_in_place(const Tensor& t, uint64_t now, uint64_t expected,
                                          const std::string& owner_name) {
  LOOM_ERROR("one of the tensors needed for gradient computation has been modified by an inplace "
             "operation: a tensor of shape ", shape_str(t.sizes()), " and dtype ", dtype_name(t.dtype()),
             " saved by ", owner_name, " is at version ", now, "; expected version ", expected, " instead");
}
}  // namespace

SavedTensorSinkGuard::SavedTensorSinkGuard(SavedTensorSink* sink) : prev_(t_saved_tensor_sink) {
  t_saved_tensor_sink = sink;
}
SavedTensorSinkGuard::~SavedTensorSinkGuard() { t_saved_tensor_sink = prev_; }

Node::Node() : sequence_nr(g_next_sequence_nr.fetch_add(1, std::memory_order_relaxed)) {}

// ---- saved tensors ----

SavedTensor::SavedTensor(const Tensor& t, bool is_output) {
  if (!t.defined()) return;
  version_ = t._version();
  is_output_ = is_output;
  if (is_output) {
    // Keep the data, drop the history (it is re-attached on unpack).
    const TensorImpl* src = t.unsafe_impl();
    data_ = make_alias(t, src->sizes, src->strides, src->offset);
    const AutogradMeta* m = autograd_meta_if(t);
    output_nr_ = m ? m->output_nr : 0;
    requires_grad_ = t.requires_grad();
  } else {
    data_ = t;
  }
}

SavedTensor SavedTensor::deferred(const Tensor& t, std::shared_ptr<Recomputer> recomputer, size_t index) {
  SavedTensor s;
  s.version_ = t._version();
  s.recomputer_ = std::move(recomputer);
  s.recompute_index_ = index;
  s.watched_storage_ = t.unsafe_impl()->storage;
  return s;
}

SavedTensor SavedTensor::output_as(const Tensor& data, uint32_t output_nr, bool requires_grad) {
  SavedTensor s(data, true);
  s.output_nr_ = output_nr;
  s.requires_grad_ = requires_grad;
  return s;
}

void SavedTensor::release() {
  if (recomputer_ && !released_) recomputer_->release(recompute_index_);
  data_ = Tensor();
  recomputer_ = nullptr;
  released_ = true;
}

Tensor SavedTensor::unpack(const std::shared_ptr<Node>& owner, const std::string& owner_name) const {
  LOOM_CHECK(!released_, owner_name,
             ": trying to backward through the graph a second time (or to use saved tensors after they "
             "were freed). Saved tensors are freed after backward; pass retain_graph=true to the first "
             "backward if you need to run it again.");
  if (recomputer_) {
    Tensor t = recomputer_->unpack(recompute_index_, owner, owner_name);
    // A tensor that died after the forward pass cannot have been written since.
    if (std::shared_ptr<Storage> s = watched_storage_.lock()) {
      const uint64_t now = s->version.load(std::memory_order_relaxed);
      if (now != version_) throw_modified_in_place(t, now, version_, owner_name);
    }
    return t;
  }
  if (!data_.defined()) return Tensor();
  if (data_._version() != version_) throw_modified_in_place(data_, data_._version(), version_, owner_name);
  if (!is_output_) return data_;
  const TensorImpl* src = data_.unsafe_impl();
  Tensor t = make_alias(data_, src->sizes, src->strides, src->offset);
  if (requires_grad_) {
    auto& m = autograd_meta(t);
    m.grad_fn = owner;
    m.output_nr = output_nr_;
  }
  return t;
}

// ---- FunctionNode ----

size_t FunctionNode::save(const Tensor& t) {
  if (t_saved_tensor_sink && t.defined()) saved_.push_back(t_saved_tensor_sink->on_save(t, false));
  else saved_.emplace_back(t, false);
  return saved_.size() - 1;
}

size_t FunctionNode::save_output(const Tensor& t) {
  if (t_saved_tensor_sink && t.defined()) saved_.push_back(t_saved_tensor_sink->on_save(t, true));
  else saved_.emplace_back(t, true);
  return saved_.size() - 1;
}

Tensor FunctionNode::saved(size_t i) {
  LOOM_ASSERT(i < saved_.size(), name_, " has no saved tensor ", i);
  return saved_[i].unpack(shared_from_this(), name_);
}

TensorList FunctionNode::apply(TensorList&& grads) { return fn_(*this, grads); }

void FunctionNode::release_saved() {
  for (auto& s : saved_) s.release();
}

// ---- AccumulateGrad ----

AccumulateGrad::AccumulateGrad(std::shared_ptr<TensorImpl> l) : leaf(std::move(l)) {
  outputs.push_back({leaf->sizes, leaf->dtype, leaf->device()});
  pre_hooks.resize(1);
}

TensorList AccumulateGrad::apply(TensorList&& grads) {
  Tensor g = grads[0];
  Tensor self(leaf);
  auto& m = autograd_meta(self);
  if (is_grad_enabled()) {
    // create_graph: keep the gradient differentiable.
    m.grad = m.grad.defined() ? m.grad + g : g;
  } else if (!m.grad.defined()) {
    // Own the buffer: g may be shared with other gradients (add's backward
    // hands the same tensor to both inputs).
    m.grad = g.detach().clone();
  } else if (m.grad.requires_grad()) {
    m.grad = m.grad.detach() + g;
  } else {
    m.grad.add_(g);
  }
  // A hook may add another; iterate over the ones present now.
  const auto hooks = m.post_accumulate_hooks;
  for (const auto& [handle, hook] : hooks) {
    (void)handle;
    hook(self);
  }
  return {};
}

// ---- meta helpers ----

AutogradMeta& autograd_meta(const Tensor& t) {
  LOOM_ASSERT(t.defined());
  TensorImpl* impl = t.unsafe_impl();
  if (!impl->autograd) impl->autograd = std::make_shared<AutogradMeta>();
  return *impl->autograd;
}

const AutogradMeta* autograd_meta_if(const Tensor& t) {
  return t.defined() ? t.unsafe_impl()->autograd.get() : nullptr;
}

Edge gradient_edge(const Tensor& t) {
  AutogradMeta* m = t.defined() ? t.unsafe_impl()->autograd.get() : nullptr;
  if (!m) return {};
  if (m->grad_fn) return {m->grad_fn, m->output_nr};
  if (!m->requires_grad) return {};
  std::shared_ptr<Node> acc = m->grad_accumulator.lock();
  if (!acc) {
    acc = std::make_shared<AccumulateGrad>(t.impl_ptr());
    m->grad_accumulator = acc;
  }
  return {acc, 0};
}

bool compute_requires_grad(std::initializer_list<const Tensor*> ts) {
  if (!is_grad_enabled()) return false;
  for (const Tensor* t : ts)
    if (t->defined() && t->requires_grad()) return true;
  return false;
}

bool compute_requires_grad(const std::vector<Tensor>& ts) {
  if (!is_grad_enabled()) return false;
  for (const Tensor& t : ts)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

std::shared_ptr<FunctionNode> make_node(const char* name, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!compute_requires_grad(inputs)) return nullptr;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) node->next.push_back(gradient_edge(t));
  return node;
}

std::shared_ptr<FunctionNode> make_node_from(const char* name, const Tensor* const* inputs, size_t n, BackwardFn fn) {
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  node->next.reserve(n);
  for (size_t k = 0; k < n; ++k) node->next.push_back(gradient_edge(*inputs[k]));
  return node;
}

namespace {
// pre_hooks stays empty until register_hook sizes it: the engine reads it
// only where it is long enough.
void record_output(Tensor* out, size_t i, Node& node, const std::shared_ptr<Node>& owner) {
  if (!out || !out->defined()) return;
  const TensorImpl* impl = out->unsafe_impl();
  node.outputs[i] = {impl->sizes, impl->dtype, impl->device()};
  if (!is_floating_point(impl->dtype)) return;
  auto& m = autograd_meta(*out);
  m.grad_fn = owner;
  m.output_nr = static_cast<uint32_t>(i);
}
}  // namespace

void set_history(const std::vector<Tensor*>& outputs, const std::shared_ptr<Node>& node) {
  if (!node) return;
  node->outputs.resize(outputs.size());
  for (size_t i = 0; i < outputs.size(); ++i) record_output(outputs[i], i, *node, node);
}

void set_history(Tensor& out, const std::shared_ptr<Node>& node) {
  if (!node) return;
  node->outputs.resize(1);
  record_output(&out, 0, *node, node);
}

void set_view_base(Tensor& view, const Tensor& base) {
  if (!is_grad_enabled()) return;
  const AutogradMeta* bm = autograd_meta_if(base);
  std::shared_ptr<TensorImpl> root = (bm && bm->view_base) ? bm->view_base : base.impl_ptr();
  autograd_meta(view).view_base = std::move(root);
}

}  // namespace loom::autograd
