// Functions whose backward the caller writes (torch.autograd.Function), and
// a look at the recorded graph (grad_fn names and edges). The Python
// package's loom.autograd.Function is built on custom_function.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "loom/tensor.h"

namespace loom::autograd {

struct Node;

// backward(saved, grads): `saved` are the tensors passed as `to_save`, in
// order (checked against in-place writes since the forward, as an op's saved
// tensors are); grads[i] is the gradient w.r.t. output i (zeros for an output
// that nothing used). It returns one gradient per input: undefined where an
// input gets none. A defined gradient must have its input's shape.
using CustomBackward =
    std::function<std::vector<Tensor>(const std::vector<Tensor>& saved, const std::vector<Tensor>& grads)>;

// Gives `outputs`, computed from `inputs` without recording, the history of
// one node named `name` whose backward is `backward`. Returns the outputs as
// new tensors (aliases of the same data) that carry the history; an output
// marked in `non_differentiable` (by index), or of an integer or bool dtype,
// gets none. When grad mode is off or no input requires grad, the aliases
// come back without history and `backward` is dropped. A `to_save` entry that
// is one of `outputs` (the same tensor) is saved as that output.
std::vector<Tensor> custom_function(const std::string& name, const std::vector<Tensor>& inputs,
                                    const std::vector<Tensor>& outputs, const std::vector<Tensor>& to_save,
                                    CustomBackward backward, const std::vector<size_t>& non_differentiable = {});

// The name of a node (Tensor::grad_fn()): "MulBackward", "AccumulateGrad", ...
std::string node_name(const Node& node);
// Where a node's gradients go, one entry per input of its op: the next node
// and which of its outputs the gradient belongs to (null where the input
// needs no gradient), as PyTorch's grad_fn.next_functions.
std::vector<std::pair<std::shared_ptr<Node>, uint32_t>> next_functions(const Node& node);

}  // namespace loom::autograd
