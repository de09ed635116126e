// In-place ops: write into a tensor's storage, bump its version counter, and
// rebase its autograd history.
//
// Note [In-place ops and autograd]
// Without recording, an in-place op computes its result and writes it into
// self. While recording, `op(self.clone(), ...)` is computed with autograd
// (the clone keeps the old value for backward formulas that need it), the
// result is written into self, and self's grad_fn becomes the result's. The
// version bump makes any backward that saved the old value fail loudly.
// When self is a view of a tensor `base`, base's history is rebased too: its
// new grad_fn (CopySlices) sends the gradient of the written region to the
// op's result and the rest to base's old history; self becomes a region view
// of the new base.
#include "ops/op_utils.h"

namespace loom {

using autograd::FunctionNode;
using autograd::TensorList;

namespace {

bool shares_storage(const Tensor& a, const Tensor& b) {
  return a.unsafe_impl()->storage == b.unsafe_impl()->storage;
}

// Raw copy of r (broadcast to self's shape, any dtype) into self's memory.
void write_into(Tensor& self, Tensor r, const char* name) {
  Shape s = ops::broadcast_shape(self.sizes(), r.sizes(), name);
  LOOM_CHECK(s == self.sizes(), name, ": output with shape ", shape_str(self.sizes()),
             " doesn't match the broadcast shape ", shape_str(s));
  if (shares_storage(self, r) && !(r.sizes() == self.sizes() && r.strides() == self.strides() &&
                                   r.storage_offset() == self.storage_offset())) {
    Tensor tmp = make_tensor(r.sizes(), r.dtype(), r.device());
    ops::launch(OpKind::Copy, {&r}, tmp);
    r = tmp;
  }
  Tensor src = ops::expand_raw(r, self.sizes());
  ops::launch(OpKind::Copy, {&src}, self);
  self.unsafe_impl()->storage->bump_version();
}

void check_result_dtype(const Tensor& self, DType result, const char* name) {
  bool ok = self.dtype() == result || is_floating_point(self.dtype()) ||
            (is_integral(self.dtype(), false) && !is_floating_point(result)) || (self.dtype() == kBool && result == kBool);
  LOOM_CHECK(ok, name, ": result type ", dtype_name(result), " can't be cast to the desired output type ",
             dtype_name(self.dtype()));
}

Tensor& apply_inplace(Tensor& self, const char* name, const std::vector<Tensor>& others,
                      const std::function<Tensor(const Tensor&)>& compute) {
  LOOM_CHECK(self.defined(), name, ": called on an undefined tensor");
  std::vector<Tensor> all = others;
  all.push_back(self);
  const bool recording = autograd::compute_requires_grad(all);
  if (!recording) {
    Tensor r;
    {
      NoGradGuard ng;
      r = compute(self);
    }
    check_result_dtype(self, r.dtype(), name);
    write_into(self, r, name);
    return self;
  }

  auto* meta = self.unsafe_impl()->autograd.get();
  LOOM_CHECK(!(self.is_leaf() && self.requires_grad()), name,
             ": a leaf tensor that requires grad is being used in an in-place operation; wrap the update in "
             "NoGradGuard or work on a clone()");
  Tensor base = meta && meta->view_base ? Tensor(meta->view_base) : Tensor();
  if (base.defined())
    LOOM_CHECK(!(base.is_leaf() && base.requires_grad()), name,
               ": a view of a leaf tensor that requires grad is being used in an in-place operation");

  Tensor r = compute(self.clone());
  check_result_dtype(self, r.dtype(), name);
  if (r.sizes() != self.sizes()) r = r.expand(self.sizes());
  if (r.dtype() != self.dtype()) r = r.to(self.dtype());
  if (!r.grad_fn() || shares_storage(self, r)) r = r.clone();
  write_into(self, r, name);

  if (!base.defined()) {
    auto& m = autograd::autograd_meta(self);
    m.grad_fn = r.grad_fn();
    m.output_nr = r.grad_fn() ? autograd::autograd_meta(r).output_nr : 0;
    return self;
  }

  // self is a view of base: rebase base (CopySlices), then make self a region of it.
  LOOM_CHECK(base.is_contiguous(), name, ": in-place on a view needs a contiguous base for autograd (base strides ",
             shape_str(base.strides()), ")");
  ops::Region rel{self.sizes(), self.strides(), self.storage_offset() - base.storage_offset()};
  auto node = autograd::make_node("CopySlices", {base, r}, [rel](FunctionNode& ctx, const TensorList& g) {
    TensorList out(2);
    if (ctx.needs_input_grad(0)) out[0] = ops::region_scatter(g[0], zeros(rel.sizes, g[0].options()), rel);
    if (ctx.needs_input_grad(1)) out[1] = ops::region_view(g[0].contiguous(), rel);
    return out;
  });
  if (node) {
    autograd::set_history(base, node);
    Tensor fresh = ops::region_view(base, rel);
    auto& m = autograd::autograd_meta(self);
    m.grad_fn = fresh.grad_fn();
    m.output_nr = 0;
  }
  return self;
}

}  // namespace

Tensor& Tensor::add_(const Tensor& o, Scalar alpha) {
  return apply_inplace(*this, "add_", {o}, [&](const Tensor& t) { return loom::add(t, o, alpha); });
}
Tensor& Tensor::add_(Scalar o) { return add_(ops::wrap_scalar(o, device())); }
Tensor& Tensor::sub_(const Tensor& o, Scalar alpha) {
  return apply_inplace(*this, "sub_", {o}, [&](const Tensor& t) { return loom::sub(t, o, alpha); });
}
Tensor& Tensor::sub_(Scalar o) { return sub_(ops::wrap_scalar(o, device())); }
Tensor& Tensor::mul_(const Tensor& o) {
  return apply_inplace(*this, "mul_", {o}, [&](const Tensor& t) { return loom::mul(t, o); });
}
Tensor& Tensor::mul_(Scalar o) { return mul_(ops::wrap_scalar(o, device())); }
Tensor& Tensor::div_(const Tensor& o) {
  return apply_inplace(*this, "div_", {o}, [&](const Tensor& t) { return loom::div(t, o); });
}
Tensor& Tensor::div_(Scalar o) { return div_(ops::wrap_scalar(o, device())); }
Tensor& Tensor::zero_() { return fill_(0); }
Tensor& Tensor::fill_(Scalar v) {
  return apply_inplace(*this, "fill_", {}, [&](const Tensor& t) { return full({}, v, TensorOptions().dtype(t.dtype()).device(t.device())); });
}
Tensor& Tensor::copy_(const Tensor& src) {
  LOOM_CHECK(src.defined(), "copy_: the source is an undefined tensor");
  // From another device, as PyTorch's copy_: the source comes here first.
  const Tensor here = src.device() == device() ? src : src.to(device());
  return apply_inplace(*this, "copy_", {here}, [&](const Tensor& t) {
    Shape s = ops::broadcast_shape(t.sizes(), here.sizes(), "copy_");
    LOOM_CHECK(s == t.sizes(), "copy_: source of shape ", shape_str(here.sizes()),
               " cannot be broadcast to the destination shape ", shape_str(t.sizes()));
    return here.to(t.dtype());
  });
}
Tensor& Tensor::masked_fill_(const Tensor& mask, Scalar v) {
  return apply_inplace(*this, "masked_fill_", {}, [&](const Tensor& t) { return loom::masked_fill(t, mask, v); });
}
Tensor& Tensor::clamp_(std::optional<Scalar> lo, std::optional<Scalar> hi) {
  return apply_inplace(*this, "clamp_", {}, [&](const Tensor& t) { return loom::clamp(t, lo, hi); });
}
Tensor& Tensor::uniform_(double from, double to, std::optional<Generator> generator) {
  LOOM_CHECK(loom::is_floating_point(dtype()), "uniform_: expects a floating point tensor, got ", dtype_name(dtype()));
  LOOM_CHECK(from <= to, "uniform_: expects from <= to, got from=", from, " to=", to);
  return apply_inplace(*this, "uniform_", {}, [&](const Tensor& t) {
    return loom::rand(t.sizes(), TensorOptions().dtype(t.dtype()).device(t.device()), generator)
        .mul_(to - from)
        .add_(from);
  });
}
Tensor& Tensor::normal_(double mean, double std, std::optional<Generator> generator) {
  LOOM_CHECK(loom::is_floating_point(dtype()), "normal_: expects a floating point tensor, got ", dtype_name(dtype()));
  LOOM_CHECK(std >= 0, "normal_: expects std >= 0, got ", std);
  return apply_inplace(*this, "normal_", {}, [&](const Tensor& t) {
    return loom::randn(t.sizes(), TensorOptions().dtype(t.dtype()).device(t.device()), generator).mul_(std).add_(mean);
  });
}

}  // namespace loom
