// Activation checkpointing (torch.utils.checkpoint with use_reentrant=False):
// trade compute for memory by dropping a region's activations after the
// forward pass and recomputing them in backward.
//
//   Tensor h = loom::checkpoint([&](const Tensor& x) { return block(x); }, x);
//   loss(h).backward();  // block's forward runs again here, then its backward
//
// The region's autograd graph is recorded as usual, so its gradients reach the
// inputs and every parameter fn uses (accumulated into .grad exactly as
// without checkpointing, bit for bit); only the tensors its backward formulas
// would keep are dropped. Backward recomputes them by running fn again on the
// same inputs with the random-number state of the forward pass (the global
// stream's, and that of every Generator fn draws from explicitly), so
// dropout draws the same masks; each stream then continues where it was.
// The recomputation stops at the last tensor backward needs (early stop).
// Note [Activation checkpointing] in src/autograd/checkpoint.cpp.
//
// fn must run the same ops on every call with the same inputs: it may not
// branch on values or on how often it was called. It returns one tensor.
// Inputs are kept (they are what the recomputation starts from); writing to
// one in place before backward is an error. Under NoGradGuard, fn simply runs.
// backward(create_graph=true) through a checkpointed region is an Error: the
// recomputed tensors carry no history back to the inputs.
#pragma once

#include <functional>
#include <type_traits>
#include <utility>
#include <vector>

#include "loom/tensor.h"

namespace loom {

using CheckpointFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs fn(inputs) as a checkpointed region and returns its output.
Tensor checkpoint(CheckpointFn fn, const std::vector<Tensor>& inputs);

// True while a checkpointed region's fn runs again in backward. Code with
// side effects beyond its output skips them then, so that a checkpointed
// step has them once: BatchNorm updates its running statistics (and its
// batch count) in the forward only, not in the recomputation.
bool checkpoint_recomputing();

// One input: checkpoint(f, x).
Tensor checkpoint(std::function<Tensor(const Tensor&)> fn, const Tensor& input);

// Any number of inputs passed one by one: checkpoint(f, x, mask) calls
// f(x, mask).
template <typename Fn, typename... Ts>
  requires(sizeof...(Ts) >= 2 && (std::is_convertible_v<const Ts&, const Tensor&> && ...))
Tensor checkpoint(Fn fn, const Ts&... inputs) {
  return checkpoint(
      CheckpointFn([fn = std::move(fn)](const std::vector<Tensor>& xs) {
        return [&]<size_t... I>(std::index_sequence<I...>) { return fn(xs[I]...); }(
            std::index_sequence_for<Ts...>{});
      }),
      std::vector<Tensor>{Tensor(inputs)...});
}

}  // namespace loom
