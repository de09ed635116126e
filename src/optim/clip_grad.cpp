#include "loom/optim/clip_grad.h"

#include <cmath>
#include <limits>

#include "core/capture.h"
#include "loom/autograd.h"
#include "loom/ops.h"

namespace loom::nn::utils {

Tensor clip_grad_norm_tensor_(const std::vector<Tensor>& parameters, double max_norm, double norm_type,
                              bool error_if_nonfinite) {
  LOOM_CHECK(!std::isnan(norm_type) && (norm_type > 0 || std::isinf(norm_type)),
             "clip_grad_norm_: norm_type must be positive or inf, got ", norm_type);
  NoGradGuard no_grad;
  std::vector<Tensor> grads;
  for (const Tensor& p : parameters)
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return zeros({}, kFloat64);

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
  Tensor total = norm(stack(norms), inf_norm ? INFINITY : norm_type);
  if (error_if_nonfinite)
    capture::host_check({total}, [norm_type](const std::vector<Tensor>& v) {
      LOOM_CHECK(std::isfinite(v[0].item<double>()), "clip_grad_norm_: The total norm of order ", norm_type,
                 " for gradients from `parameters` is non-finite, so it cannot be clipped. To disable this error and "
                 "scale the gradients by the non-finite norm anyway, set `error_if_nonfinite=false`");
    });
  // min(max_norm / (total + 1e-6), 1), in float64 as PyTorch computes it; the
  // Minimum kernel lets a nan coefficient (nan norm) through, so it is
  // applied, as PyTorch applies it.
  Tensor coef = minimum(full({}, max_norm, kFloat64) / (total + 1e-6), ones({}, kFloat64));
  for (Tensor& g : grads) g.mul_(coef);
  return total;
}

double clip_grad_norm_(const std::vector<Tensor>& parameters, double max_norm, double norm_type,
                       bool error_if_nonfinite) {
  return clip_grad_norm_tensor_(parameters, max_norm, norm_type, error_if_nonfinite).item<double>();
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
