// Gradient clipping (torch.nn.utils.clip_grad_norm_ / clip_grad_value_).
// They live in loom::nn::utils, as in PyTorch, and are declared here with
// the optimizers they are used beside.
#pragma once

#include <vector>

#include "loom/tensor.h"

namespace loom::nn::utils {

// Scales the gradients of `parameters` in place so that their total norm
// (the norm of all gradients concatenated into one vector) is at most
// max_norm: each gradient is multiplied by max_norm / (total_norm + 1e-6)
// when that is below 1. norm_type is p of the p-norm, or INFINITY for the
// max-abs norm. Parameters without a gradient are skipped. Returns the total
// norm before clipping (0 when no parameter has a gradient). With
// error_if_nonfinite, a nan or inf total norm is an Error and nothing is scaled.
double clip_grad_norm_(const std::vector<Tensor>& parameters, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);
double clip_grad_norm_(const Tensor& parameter, double max_norm, double norm_type = 2.0,
                       bool error_if_nonfinite = false);
// The same, returning the total norm as a 0-dim float64 tensor, as
// PyTorch's does: nothing is read on the host, so a captured training step
// (loom::compile) can clip. The scale min(max_norm / (total + 1e-6), 1) is
// applied as a tensor (a factor of 1 leaves every value as it is).
Tensor clip_grad_norm_tensor_(const std::vector<Tensor>& parameters, double max_norm, double norm_type = 2.0,
                              bool error_if_nonfinite = false);

// Clamps every gradient element of `parameters` into [-clip_value, clip_value]
// in place. Parameters without a gradient are skipped.
void clip_grad_value_(const std::vector<Tensor>& parameters, double clip_value);
void clip_grad_value_(const Tensor& parameter, double clip_value);

}  // namespace loom::nn::utils
