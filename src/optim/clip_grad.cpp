#include "loom/optim/clip_grad.h"

#include <cmath>
#include <limits>

#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::nn::utils {

double clip_grad_norm_(const std::vector<Tensor>& parameters, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  LOOM_CHECK(!std::isnan(norm_type) && (norm_type > 0 || std::isinf(norm_type)),
             "clip_grad_norm_: norm_type must be positive or inf, got ", norm_type);
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : parameters)
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;

  // The norm of the per-gradient norms is the norm of the concatenation;
  // the per-gradient norms are gathered in float64 so that gradients of
  // different dtypes meet.
  std::vector<Tensor> norms;
  const bool inf_norm = std::isinf(norm_type);
  for (const Tensor& g : grads) {
    LOOM_CHECK(g.is_floating_point(), "clip_grad_norm_: gradients must be floating point, got ", g.dtype(),
               " for shape ", shape_str(g.sizes()));
    Tensor n = g.numel() == 0 ? zeros({}, g.dtype()) : norm(g, inf_norm ? INFINITY : norm_type);
    norms.push_back(n.to(kFloat64));
  }
  const double total = norm(stack(norms), inf_norm ? INFINITY : norm_type).item<double>();
  LOOM_CHECK(!error_if_nonfinite || std::isfinite(total), "clip_grad_norm_: The total norm of order ", norm_type,
             " for gradients from `parameters` is non-finite, so it cannot be clipped. To disable this error and "
             "scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=false`");
  const double clip_coef = max_norm / (total + 1e-6);
  // PyTorch multiplies by min(clip_coef, 1) unconditionally; a factor of 1
  // leaves the values as they are, so only a factor below 1 is applied. A
  // nan coefficient (nan norm) is applied, as PyTorch does.
  if (clip_coef < 1.0 || std::isnan(clip_coef))
    for (Tensor& g : grads) g.mul_(clip_coef);
  return total;
}

double clip_grad_norm_(const Tensor& parameter, double max_norm, double norm_type, bool error_if_nonfinite) {
  return clip_grad_norm_(std::vector<Tensor>{parameter}, max_norm, norm_type, error_if_nonfinite);
}

void clip_grad_value_(const std::vector<Tensor>& parameters, double clip_value) {
  NoGradGuard no_grad;
  for (const Tensor& p : parameters)
    if (p.defined() && p.grad().defined()) {
      Tensor g = p.grad();
      g.clamp_(-clip_value, clip_value);
    }
}

void clip_grad_value_(const Tensor& parameter, double clip_value) {
  clip_grad_value_(std::vector<Tensor>{parameter}, clip_value);
}

}  // namespace loom::nn::utils
