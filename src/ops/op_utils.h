// Helpers shared by the op families in src/ops.
#pragma once

#include <string>
#include <vector>

#include "autograd/node.h"
#include "backend/backend.h"
#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::ops {

using autograd::FunctionNode;
using autograd::TensorList;

// Shape of broadcasting a with b; errors name `op` and both shapes.
Shape broadcast_shape(const Shape& a, const Shape& b, const char* op);
// A stride-0 view of t as `sizes` (no autograd; kernels' input prep).
Tensor expand_raw(const Tensor& t, const Shape& sizes);
// t converted to `dtype` (no autograd; returns t itself if already that dtype).
Tensor cast_raw(const Tensor& t, DType dtype);
// All tensors on one device, else an Error naming op and devices.
void check_same_device(const char* op, const std::vector<Tensor>& ts);
// A 0-dim wrapped-number tensor for a C++ scalar.
Tensor wrap_scalar(Scalar s, Device device);
// grad * gelu'(x) (the tanh form's when tanh_form): the backward of gelu and
// of linear(..., Gelu). One GeluBackward kernel when not recording, loom ops
// under create_graph (Note [GELU's derivative] in src/ops/elementwise.cpp).
Tensor gelu_backward(const Tensor& grad, const Tensor& x, bool tanh_form);
// Sum `grad` down to `shape` (undoing broadcasting): the backward of expand.
Tensor sum_to(const Tensor& grad, const Shape& shape);
// Normalizes a dim list (negative dims, duplicates) for `op`; empty = all dims.
std::vector<int64_t> normalize_dims(const std::vector<int64_t>& dims, int64_t ndim, const char* op);
// A region of a tensor's contiguous layout: sizes, strides, offset (elements).
struct Region {
  Shape sizes, strides;
  int64_t offset = 0;
};
// `base` with `region` (of base's contiguous layout) replaced by `src`
// (differentiable in both; see Note [View backward through regions]).
Tensor region_scatter(const Tensor& base, const Tensor& src, const Region& region);
// `region` of contiguous `x` as a differentiable view.
Tensor region_view(const Tensor& x, const Region& region);
// Runs a kernel: inputs (an undefined tensor is an absent optional input, a
// null slot), outputs, the scalar parameters f[] / i[] and the typed ones
// (ops.def gives their meaning per op).
void launch(OpKind op, std::initializer_list<const Tensor*> ins, std::initializer_list<const Tensor*> outs,
            std::initializer_list<double> f = {}, std::initializer_list<int64_t> i = {}, KernelParams params = {});
// The same with a single output.
inline void launch(OpKind op, std::initializer_list<const Tensor*> ins, const Tensor& out,
                   std::initializer_list<double> f = {}, std::initializer_list<int64_t> i = {},
                   KernelParams params = {}) {
  launch(op, ins, {&out}, f, i, std::move(params));
}

}  // namespace loom::ops
