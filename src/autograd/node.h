// The autograd graph: nodes, edges, saved tensors.
//
// Every differentiable op that runs while grad mode is on and some input
// requires grad creates one FunctionNode whose edges point at the nodes that
// produced its inputs (their grad_fn, or an AccumulateGrad for a leaf).
// backward() walks the nodes in dependency order (engine.cpp).
//
// Note [Backward formulas are loom ops]
// A FunctionNode's backward is a lambda written with loom ops. The engine runs
// it with grad mode on only when create_graph is set, so the same formula gives
// first-order gradients cheaply and higher-order ones when asked. The lambda
// must capture only plain values (dims, scalars, shapes): tensors it needs are
// saved with save()/save_output() so they can be version-checked and released.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor_impl.h"
#include "loom/autograd.h"

namespace loom::autograd {

struct Node;
using TensorList = std::vector<Tensor>;
using Hook = std::function<Tensor(const Tensor&)>;

struct Edge {
  std::shared_ptr<Node> fn;  // null: the input needs no gradient
  uint32_t input_nr = 0;     // which of fn's forward outputs this is
  bool valid() const { return fn != nullptr; }
};

// What the engine needs to make a zero gradient for an output nobody used.
struct OutputMeta {
  Shape sizes;
  DType dtype = kFloat32;
  Device device;
};

struct Node : std::enable_shared_from_this<Node> {
  Node();
  virtual ~Node() = default;
  virtual std::string name() const = 0;
  // grads[i] is the gradient w.r.t. forward output i (never undefined: the
  // engine fills zeros). Returns one gradient per edge in `next` (undefined
  // where next[k] is invalid or the input gets no gradient).
  virtual TensorList apply(TensorList&& grads) = 0;
  // Frees saved tensors once backward has used them (unless retain_graph).
  virtual void release_saved() {}

  std::vector<Edge> next;
  std::vector<OutputMeta> outputs;
  // pre_hooks[i]: hooks on the gradient of forward output i (Tensor::register_hook).
  std::vector<std::vector<std::pair<int64_t, Hook>>> pre_hooks;
  uint64_t sequence_nr;  // creation order: later nodes run first among ready ones
};

// Gives back, in backward, the tensors a checkpointed region dropped in its
// forward pass (loom::checkpoint, Note [Activation checkpointing] in
// src/autograd/checkpoint.cpp). `index` numbers the region's saves in order.
class Recomputer {
 public:
  virtual ~Recomputer() = default;
  virtual Tensor unpack(size_t index, const std::shared_ptr<Node>& owner, const std::string& owner_name) = 0;
  virtual void release(size_t index) = 0;
};

// A tensor saved for backward. Saving an op's own output would make a cycle
// (output -> grad_fn -> saved output), so outputs are saved without history
// and re-attached to the node when unpacked.
class SavedTensor {
 public:
  SavedTensor() = default;
  SavedTensor(const Tensor& t, bool is_output);
  // A save that keeps no data: `recomputer` gives it back on unpack. The
  // version of t's storage is still checked, so an in-place write to a
  // tensor that is alive fails as it would without checkpointing.
  static SavedTensor deferred(const Tensor& t, std::shared_ptr<Recomputer> recomputer, size_t index);
  // An op's saved output, kept as `data` (the same values, another tensor:
  // a view of it with the same geometry) for output `output_nr` of its node.
  static SavedTensor output_as(const Tensor& data, uint32_t output_nr, bool requires_grad);
  // Throws if the tensor was modified in place since it was saved, or if it
  // was released by an earlier backward.
  Tensor unpack(const std::shared_ptr<Node>& owner, const std::string& owner_name) const;
  void release();
  bool defined() const { return data_.defined() || released_ || recomputer_ != nullptr; }

 private:
  Tensor data_;
  uint64_t version_ = 0;
  bool is_output_ = false;
  bool released_ = false;
  uint32_t output_nr_ = 0;
  bool requires_grad_ = false;
  // Deferred saves only: the storage is watched, not kept.
  std::shared_ptr<Recomputer> recomputer_;
  size_t recompute_index_ = 0;
  std::weak_ptr<Storage> watched_storage_;
};

// Where FunctionNode::save and save_output send defined tensors while a sink
// is installed on this thread (loom::checkpoint's regions); the sink returns
// what the node keeps instead.
class SavedTensorSink {
 public:
  virtual ~SavedTensorSink() = default;
  virtual SavedTensor on_save(const Tensor& t, bool is_output) = 0;
};

// Installs a sink for its scope; sinks nest, the innermost takes the saves.
class SavedTensorSinkGuard {
 public:
  explicit SavedTensorSinkGuard(SavedTensorSink* sink);
  ~SavedTensorSinkGuard();
  SavedTensorSinkGuard(const SavedTensorSinkGuard&) = delete;
  SavedTensorSinkGuard& operator=(const SavedTensorSinkGuard&) = delete;

 private:
  SavedTensorSink* prev_;
};

class FunctionNode;
using BackwardFn = std::function<TensorList(FunctionNode& ctx, const TensorList& grads)>;

// The node type every op uses (see Note [Backward formulas are loom ops]).
class FunctionNode : public Node {
 public:
  FunctionNode(std::string name, BackwardFn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string name() const override { return name_; }
  TensorList apply(TensorList&& grads) override;
  void release_saved() override;

  // Save an input (or any tensor that is not an output of this node).
  size_t save(const Tensor& t);
  // Save one of this node's outputs (after set_history).
  size_t save_output(const Tensor& t);
  Tensor saved(size_t i);
  // Does input k need a gradient? Lets a formula skip work.
  bool needs_input_grad(size_t k) const { return k < next.size() && next[k].valid(); }

 private:
  std::string name_;
  BackwardFn fn_;
  std::vector<SavedTensor> saved_;
};

// Accumulates into a leaf's .grad(); runs the leaf's hooks first.
class AccumulateGrad : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf);
  std::string name() const override { return "AccumulateGrad"; }
  TensorList apply(TensorList&& grads) override;
  std::shared_ptr<TensorImpl> leaf;
};

// Per-tensor autograd state (TensorImpl::autograd).
struct AutogradMeta {
  bool requires_grad = false;
  Tensor grad;
  std::shared_ptr<Node> grad_fn;
  uint32_t output_nr = 0;
  bool retains_grad = false;
  std::weak_ptr<Node> grad_accumulator;  // leaves: the one AccumulateGrad
  std::vector<std::pair<int64_t, Hook>> leaf_hooks;  // leaves' hooks
  // Leaves: run after AccumulateGrad has updated .grad().
  std::vector<std::pair<int64_t, std::function<void(const Tensor&)>>> post_accumulate_hooks;
  // For a view made while recording: the tensor it is a view of (the root,
  // never itself a view). In-place ops on the view rebase the root's history.
  std::shared_ptr<TensorImpl> view_base;
};

AutogradMeta& autograd_meta(const Tensor& t);          // creates on demand
const AutogradMeta* autograd_meta_if(const Tensor& t);  // null if none

// The edge that a gradient for `t` should flow along (invalid when t needs none).
Edge gradient_edge(const Tensor& t);

// True when recording is on and some tensor requires grad.
bool compute_requires_grad(std::initializer_list<const Tensor*> ts);
bool compute_requires_grad(const std::vector<Tensor>& ts);

// Makes a node with one edge per input (invalid edges for inputs that need no
// grad). Returns null when nothing needs recording; callers then skip it.
std::shared_ptr<FunctionNode> make_node(const char* name, const std::vector<Tensor>& inputs,
                                        BackwardFn fn);
// The same for a braced list of inputs (make_node("ExpBackward", {x}, ...)):
// when nothing needs recording it returns before building the BackwardFn or
// copying the inputs, so the no-grad path of an op pays only the check.
std::shared_ptr<FunctionNode> make_node_from(const char* name, const Tensor* const* inputs, size_t n, BackwardFn fn);
template <typename Fn>
std::shared_ptr<FunctionNode> make_node(const char* name, std::initializer_list<Tensor> inputs, Fn&& fn) {
  if (!is_grad_enabled()) return nullptr;
  const Tensor* ptrs[8];
  size_t n = 0;
  bool any = false;
  for (const Tensor& t : inputs) {
    if (n == 8) return make_node(name, std::vector<Tensor>(inputs), BackwardFn(std::forward<Fn>(fn)));
    ptrs[n++] = &t;
    any = any || (t.defined() && t.requires_grad());
  }
  if (!any) return nullptr;
  return make_node_from(name, ptrs, n, BackwardFn(std::forward<Fn>(fn)));
}
// Marks `outputs` as produced by `node` (output_nr = position) and records
// their metadata. Integer / bool outputs never require grad and are skipped.
void set_history(const std::vector<Tensor*>& outputs, const std::shared_ptr<Node>& node);
void set_history(Tensor& out, const std::shared_ptr<Node>& node);

// For view ops: marks `view` as a view of `base` (for in-place rebasing).
void set_view_base(Tensor& view, const Tensor& base);

// Runs the graph from `roots` (engine.cpp). When `inputs` is non-empty,
// returns the gradients w.r.t. them instead of accumulating into leaves.
TensorList run_backward(const TensorList& roots, const TensorList& root_grads, bool keep_graph,
                        bool create_graph, const TensorList& inputs, bool allow_unused);

}  // namespace loom::autograd
