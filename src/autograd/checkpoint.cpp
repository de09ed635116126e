// loom::checkpoint: activation checkpointing in the eager autograd.
//
// Note [Activation checkpointing]
// A checkpointed region records its autograd graph as any other code does;
// what it changes is which tensors that graph keeps. While fn runs in the
// forward pass, a SavedTensorSink (src/autograd/node.h) takes every tensor
// the region's ops save for backward and hands the node a deferred save
// instead: an index into the region's CheckpointFrame and a watch on the
// tensor's storage version, but no data. Intermediate activations are then
// owned by nothing and freed as soon as the forward pass moves on; the frame
// keeps only fn, the inputs and the random-number state.
//
// In backward, the first node of the region to unpack a saved tensor makes
// the frame recompute: fn runs again on detached copies of the inputs (each
// requiring grad where the original did), with grad mode on, so every op
// makes the same nodes and the same saves in the same order; a second sink
// collects those saves. Their data is what the original nodes unpack, by
// index. The recomputation's own graph is thrown away, so backward runs the
// ORIGINAL graph: the same nodes in the same order, edges to the same
// parameters' AccumulateGrad, gradients summed in the same order. That is
// why the gradients equal those without checkpointing bit for bit, also for
// a parameter used inside and outside the region and for autograd::grad
// (unlike PyTorch's reentrant form, which runs a nested backward).
//
// RNG replay rule: the frame stores the global generator's state
// (get_rng_state) before fn's forward, and, for each explicit Generator fn
// draws from, its state at the first draw (an RngWatcher sees every
// reservation while the forward runs); the recomputation sets them all, runs
// fn, and puts back the states backward found, so dropout inside fn draws
// the same masks and every stream after backward is the same as without
// checkpointing.
//
// Early stop (as PyTorch's non-reentrant checkpoint): the recomputation
// ends at its last save (the Collector throws, recompute catches), so what
// fn computes after that never runs. Ops save their inputs before their
// kernel where it is cheap to (Linear), so a region ending in a projection,
// as both halves of a GPT block do, skips that GEMM. Saves that are the
// region's output itself (a final ReLU saves its output) are kept from the
// output instead (hold_output), so the recomputation stops before the op
// that made it: a checkpoint_sequential segment of Linear + ReLU layers
// recomputes all but its last layer.
//
// A recomputed tensor is freed when the node that saved it releases its
// saves (after its backward, unless retain_graph), so the peak in backward
// is one region's activations at a time. Saves of inputs and parameters are
// dropped too: they stay alive anyway, and one rule for every save keeps the
// indices of the two passes aligned.
#include "loom/checkpoint.h"

#include <memory>

#include "autograd/node.h"
#include "core/autocast.h"
#include "core/generator.h"
#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom {

namespace {
thread_local bool tl_recomputing = false;
}  // namespace

bool checkpoint_recomputing() { return tl_recomputing; }

namespace {

using autograd::Node;
using autograd::SavedTensor;

class CheckpointFrame : public autograd::Recomputer {
 public:
  CheckpointFrame(CheckpointFn fn, const std::vector<Tensor>& inputs)
      : fn_(std::move(fn)), inputs_(inputs), rng_(get_rng_state()), autocast_(autocast::state()) {
    input_versions_.reserve(inputs_.size());
    for (const Tensor& t : inputs_) input_versions_.push_back(t.defined() ? t._version() : 0);
  }

  // The forward pass: every save becomes a deferred one with the next index.
  class Dropper : public autograd::SavedTensorSink {
   public:
    explicit Dropper(std::shared_ptr<CheckpointFrame> frame) : frame_(std::move(frame)) {}
    SavedTensor on_save(const Tensor& t, bool is_output) override {
      const TensorImpl* impl = t.unsafe_impl();
      const autograd::AutogradMeta* meta = autograd::autograd_meta_if(t);
      frame_->forward_saves_.push_back({impl->sizes, impl->dtype, is_output, impl->storage, impl->strides, impl->offset,
                                        t._version(), meta ? meta->output_nr : 0, t.requires_grad()});
      return SavedTensor::deferred(t, frame_, frame_->forward_saves_.size() - 1);
    }

   private:
    std::shared_ptr<CheckpointFrame> frame_;
  };

  // The forward pass: the first state of each explicit generator fn draws from.
  class GeneratorWatcher : public RngWatcher {
   public:
    explicit GeneratorWatcher(CheckpointFrame& frame) : frame_(frame) {}
    void on_reserve(const Generator* g, const RngState& before) override {
      if (g == nullptr || *g == default_generator()) return;  // the global stream: rng_
      for (const auto& seen : frame_.generators_)
        if (seen.first == *g) return;
      frame_.generators_.emplace_back(*g, before);
    }

   private:
    CheckpointFrame& frame_;
  };

  Tensor run_forward() { return fn_(inputs_); }

  // After the forward pass: the saves that are fn's output itself (the same
  // storage, geometry and version; `out` may be a view of the saved tensor,
  // as a reshape to the same shape returns) are kept from `out` rather than
  // recomputed. The frame then holds the output, which whatever follows the
  // region usually holds anyway (checkpoint_sequential's next segment).
  void hold_output(const Tensor& out) {
    const TensorImpl* o = out.unsafe_impl();
    held_.assign(forward_saves_.size(), SavedTensor());
    is_held_.assign(forward_saves_.size(), false);
    for (size_t k = 0; k < forward_saves_.size(); ++k) {
      const ForwardSave& f = forward_saves_[k];
      if (f.storage.lock() != o->storage || f.shape != o->sizes || f.strides != o->strides || f.offset != o->offset ||
          f.version != out._version())
        continue;
      // An input save is detached, as the Collector's: no cycle through the node.
      held_[k] = f.is_output ? SavedTensor::output_as(out, f.output_nr, f.requires_grad) : SavedTensor(out.detach(), false);
      is_held_[k] = true;
    }
  }

  Tensor unpack(size_t index, const std::shared_ptr<Node>& owner, const std::string& owner_name) override {
    LOOM_CHECK(!is_grad_enabled(), "checkpoint: ", owner_name,
               " is inside a checkpointed region, and backward with create_graph=true cannot go through "
               "one: its recomputed activations carry no history back to the region's inputs; run that "
               "region without loom::checkpoint to take higher-order gradients");
    if (index < is_held_.size() && is_held_[index] && !recomputed_) return held_[index].unpack(owner, owner_name);
    if (!recomputed_) recompute();
    LOOM_ASSERT(index < saves_.size(), "checkpoint: save ", index, " of ", saves_.size());
    return saves_[index].unpack(owner, owner_name);
  }

  void release(size_t index) override {
    if (index < saves_.size()) saves_[index].release();
    if (index < held_.size()) held_[index].release();
  }

 private:
  // What the forward pass saved: its geometry (checked against the
  // recomputation's) and its identity (for hold_output).
  struct ForwardSave {
    Shape shape;
    DType dtype;
    bool is_output;
    std::weak_ptr<Storage> storage;  // weak: a dead save's storage never matches
    Shape strides;
    int64_t offset;
    uint64_t version;
    uint32_t output_nr;  // an output's number and requires_grad, for output_as
    bool requires_grad;
  };

  // Thrown by the Collector once it holds every save: ends fn early.
  struct StopRecomputation {};

  // The backward pass: keeps what the recomputation's ops save, in order,
  // and stops fn at the last one (early stop).
  class Collector : public autograd::SavedTensorSink {
   public:
    Collector(std::vector<SavedTensor>& out, const std::vector<ForwardSave>& expected, size_t stop)
        : out_(out), expected_(expected), stop_(stop) {}
    SavedTensor on_save(const Tensor& t, bool is_output) override {
      const size_t k = out_.size();
      const ForwardSave& e = expected_[k];
      LOOM_CHECK(t.sizes() == e.shape && t.dtype() == e.dtype, "checkpoint: recomputing fn in backward saved ",
                 dtype_name(t.dtype()), shape_str(t.sizes()), " as save ", k, " for backward, where its forward pass saved ",
                 dtype_name(e.dtype), shape_str(e.shape),
                 "; fn must run the same ops on every call (no branching on values or on the call count)");
      // Outputs are kept without history already; an input is detached so
      // the recomputation's graph behind it can be freed.
      out_.emplace_back(is_output ? t : t.detach(), is_output);
      if (out_.size() == stop_) throw StopRecomputation{};
      return SavedTensor();
    }

   private:
    std::vector<SavedTensor>& out_;
    const std::vector<ForwardSave>& expected_;
    size_t stop_;
  };

  // Sets the generators to the forward's states, and puts back the states
  // found even when fn throws (or stops early).
  struct RngReplay {
    explicit RngReplay(const CheckpointFrame& frame) : global(get_rng_state()) {
      set_rng_state(frame.rng_);
      for (const auto& [g, state] : frame.generators_) {
        found.emplace_back(g, g.get_state());
        Generator(g).set_state(state);
      }
    }
    ~RngReplay() {
      set_rng_state(global);
      for (auto& [g, state] : found) g.set_state(state);
    }
    RngState global;
    std::vector<std::pair<Generator, RngState>> found;
  };

  // Marks the recomputation for checkpoint_recomputing() (restored on throw).
  struct Recomputing {
    bool before = tl_recomputing;
    Recomputing() { tl_recomputing = true; }
    ~Recomputing() { tl_recomputing = before; }
  };

  void recompute() {
    std::vector<Tensor> detached;
    detached.reserve(inputs_.size());
    for (size_t k = 0; k < inputs_.size(); ++k) {
      const Tensor& x = inputs_[k];
      if (!x.defined()) {
        detached.push_back(x);
        continue;
      }
      LOOM_CHECK(x._version() == input_versions_[k], "checkpoint: input ", k, " (shape ",
                 shape_str(x.sizes()), ") was modified by an inplace operation after the forward pass "
                 "(version ", x._version(), ", expected ", input_versions_[k],
                 "); the recomputation in backward needs its original values");
      Tensor d = x.detach();
      if (x.requires_grad()) d.requires_grad_(true);
      detached.push_back(std::move(d));
    }
    // The recomputation stops after the last save that is not held.
    size_t stop = forward_saves_.size();
    while (stop > 0 && is_held_[stop - 1]) --stop;
    std::vector<SavedTensor> saves;
    if (stop > 0) {
      RngReplay replay(*this);
      autocast::Restore autocast(autocast_);  // the forward's autocast, though backward runs with it off
      Recomputing recomputing;
      Collector collector(saves, forward_saves_, stop);
      autograd::SavedTensorSinkGuard sink(&collector);
      AutoGradMode grad_on(true);
      try {
        fn_(detached);
      } catch (const StopRecomputation&) {
      }
    }
    LOOM_CHECK(saves.size() == stop, "checkpoint: recomputing fn in backward saved ", saves.size(),
               " tensors for backward, but its forward pass saved ", forward_saves_.size(),
               "; fn must run the same ops on every call (no branching on values or on the call count)");
    // Held saves replace their recomputed twins, which are freed now.
    saves.resize(forward_saves_.size());
    for (size_t k = 0; k < saves.size(); ++k)
      if (is_held_[k]) saves[k] = std::move(held_[k]);
    saves_ = std::move(saves);
    recomputed_ = true;
  }

  CheckpointFn fn_;
  std::vector<Tensor> inputs_;
  std::vector<uint64_t> input_versions_;
  RngState rng_;  // the global generator when the forward pass began
  autocast::State autocast_;  // the autocast state the forward pass ran under
  std::vector<std::pair<Generator, RngState>> generators_;  // explicit ones: state at their first draw
  std::vector<ForwardSave> forward_saves_;  // what the forward pass saved, in order
  std::vector<SavedTensor> held_;  // by index: the saves hold_output kept
  std::vector<bool> is_held_;
  bool recomputed_ = false;
  std::vector<SavedTensor> saves_;  // the recomputation's, by forward index
};

}  // namespace

Tensor checkpoint(CheckpointFn fn, const std::vector<Tensor>& inputs) {
  LOOM_CHECK(fn != nullptr, "checkpoint: fn is empty");
  // Nothing would be saved: no graph is recorded.
  if (!is_grad_enabled()) return fn(inputs);
  auto frame = std::make_shared<CheckpointFrame>(std::move(fn), inputs);
  CheckpointFrame::Dropper dropper(frame);
  autograd::SavedTensorSinkGuard sink(&dropper);
  CheckpointFrame::GeneratorWatcher watcher(*frame);
  RngWatchGuard watch(&watcher);
  Tensor out = frame->run_forward();
  LOOM_CHECK(out.defined(), "checkpoint: fn returned an undefined tensor");
  frame->hold_output(out);
  return out;
}

Tensor checkpoint(std::function<Tensor(const Tensor&)> fn, const Tensor& input) {
  LOOM_CHECK(fn != nullptr, "checkpoint: fn is empty");
  return checkpoint(CheckpointFn([fn = std::move(fn)](const std::vector<Tensor>& xs) { return fn(xs[0]); }),
                    std::vector<Tensor>{input});
}

}  // namespace loom
