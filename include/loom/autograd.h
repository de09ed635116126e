// Autograd controls: grad mode guards and loom::autograd::grad.
#pragma once

#include <functional>
#include <vector>

#include "loom/tensor.h"

namespace loom {

// Is the graph being recorded on this thread?
bool is_grad_enabled();
void set_grad_enabled(bool enabled);

// Turns recording off for its scope (torch.no_grad()).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool prev_;
};

// Turns recording on or off for its scope (torch.set_grad_enabled).
class AutoGradMode {
 public:
  explicit AutoGradMode(bool enabled);
  ~AutoGradMode();
  AutoGradMode(const AutoGradMode&) = delete;
  AutoGradMode& operator=(const AutoGradMode&) = delete;

 private:
  bool prev_;
};

namespace autograd {

// Gradients of `outputs` w.r.t. `inputs` (torch.autograd.grad). Unlike
// backward(), nothing is accumulated into .grad(). With create_graph the
// result is itself differentiable. An input that `outputs` do not depend on
// gives an undefined Tensor when allow_unused, else an Error.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const std::vector<Tensor>& grad_outputs = {},
                         std::optional<bool> retain_graph = std::nullopt, bool create_graph = false,
                         bool allow_unused = false);

// Runs backward from several roots at once (torch.autograd.backward).
void backward(const std::vector<Tensor>& outputs, const std::vector<Tensor>& grad_outputs = {},
              bool retain_graph = false, bool create_graph = false);

// Runs fn once the backward pass now running on this thread has finished
// (PyTorch's Variable._execution_engine.queue_callback): after every
// gradient is accumulated, before backward() returns. Callbacks run in the
// order queued; one queued outside a backward pass is an error.
// DistributedDataParallel waits for its gradient all-reduces here.
void queue_callback(std::function<void()> fn);

}  // namespace autograd
}  // namespace loom
