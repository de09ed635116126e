// When optimizers take the fused multi-tensor step (Note [Fused optimizer
// steps] in src/ops/fused_optim.cpp).
#pragma once

#include <optional>

#include "loom/optim/optimizer.h"

namespace loom::optim {

// The fused kernels take contiguous float32 tensors on a device whose backend
// has them.
inline bool fusable(const Tensor& t) {
  return t.defined() && t.dtype() == kFloat32 && t.is_contiguous() && _fused_optim_supported(t.device());
}

// The parameters of `group` that have a gradient, and those gradients. When
// some tensor cannot be fused (`state_ok` says for a parameter's existing
// state), returns false, or throws when `fused` is true.
template <typename StateOk>
bool collect_fusable(const char* name, std::optional<bool> fused, ParamGroup& group, std::vector<Tensor>& params,
                     std::vector<Tensor>& grads, StateOk state_ok) {
  for (Tensor& p : group.params()) {
    const Tensor& g = p.grad();
    if (!g.defined()) continue;
    const bool ok = fusable(p) && fusable(g) && state_ok(p);
    if (!ok) {
      LOOM_CHECK(!fused.value_or(false), name, ": fused=true needs contiguous float32 cpu parameters, gradients and "
                 "state, but a parameter of shape ", shape_str(p.sizes()), " (dtype ", p.dtype(), ", gradient dtype ",
                 g.dtype(), ") does not qualify");
      return false;
    }
    params.push_back(p);
    grads.push_back(g);
  }
  return true;
}

}  // namespace loom::optim
