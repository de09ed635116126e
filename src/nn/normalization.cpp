#include "loom/nn/normalization.h"

#include "loom/autograd.h"
#include "loom/checkpoint.h"
#include "loom/nn/functional.h"
#include "loom/nn/init.h"
#include "loom/ops.h"
#include "nn/repr.h"

namespace loom::nn {

namespace {
void check_shape(const char* module, const std::vector<int64_t>& shape) {
  LOOM_CHECK(!shape.empty(), module, ": normalized_shape must have at least one dim");
  for (int64_t s : shape)
    LOOM_CHECK(s >= 0, module, ": normalized_shape must have non-negative sizes, got ", shape_str(shape));
}
}  // namespace

// ---- LayerNorm ----

LayerNormImpl::LayerNormImpl(std::vector<int64_t> shape, double epsilon, bool affine, bool with_bias)
    : Module("LayerNorm"), normalized_shape(std::move(shape)), eps(epsilon), elementwise_affine(affine) {
  check_shape("LayerNorm", normalized_shape);
  if (elementwise_affine) {
    weight = register_parameter("weight", loom::empty(normalized_shape));
    if (with_bias) bias = register_parameter("bias", loom::empty(normalized_shape));
  }
  reset_parameters();
}

LayerNormImpl::LayerNormImpl(int64_t shape, double epsilon, bool affine, bool with_bias)
    : LayerNormImpl(std::vector<int64_t>{shape}, epsilon, affine, with_bias) {}

void LayerNormImpl::reset_parameters() {
  if (weight.defined()) init::ones_(weight);
  if (bias.defined()) init::zeros_(bias);
}

Tensor LayerNormImpl::forward(const Tensor& input) {
  return functional::layer_norm(input, normalized_shape, weight, bias, eps);
}

std::string LayerNormImpl::extra_repr() const {
  return detail::py_tuple(normalized_shape) + ", eps=" + detail::py_float(eps) +
         ", elementwise_affine=" + detail::py_bool(elementwise_affine);
}

// ---- RMSNorm ----

RMSNormImpl::RMSNormImpl(std::vector<int64_t> shape, std::optional<double> epsilon, bool affine)
    : Module("RMSNorm"), normalized_shape(std::move(shape)), eps(epsilon), elementwise_affine(affine) {
  check_shape("RMSNorm", normalized_shape);
  if (eps) LOOM_CHECK(*eps >= 0, "RMSNorm: eps must be non-negative, got ", *eps);
  if (elementwise_affine) weight = register_parameter("weight", loom::empty(normalized_shape));
  reset_parameters();
}

RMSNormImpl::RMSNormImpl(int64_t shape, std::optional<double> epsilon, bool affine)
    : RMSNormImpl(std::vector<int64_t>{shape}, epsilon, affine) {}

void RMSNormImpl::reset_parameters() {
  if (weight.defined()) init::ones_(weight);
}

Tensor RMSNormImpl::forward(const Tensor& input) {
  return functional::rms_norm(input, normalized_shape, weight, eps);
}

std::string RMSNormImpl::extra_repr() const {
  return detail::py_tuple(normalized_shape) + ", eps=" + detail::py_optional_float(eps) +
         ", elementwise_affine=" + detail::py_bool(elementwise_affine);
}

// ---- BatchNorm1d, BatchNorm2d ----

BatchNormImplBase::BatchNormImplBase(const char* name, int64_t features, double epsilon,
                                     std::optional<double> momentum_factor, bool with_affine, bool track)
    : Module(name),
      num_features(features),
      eps(epsilon),
      momentum(momentum_factor),
      affine(with_affine),
      track_running_stats(track) {
  LOOM_CHECK(features >= 0, name, ": num_features must be non-negative, got ", features);
  if (affine) {
    weight = register_parameter("weight", loom::empty({features}));
    bias = register_parameter("bias", loom::empty({features}));
  }
  if (track_running_stats) {
    running_mean = register_buffer("running_mean", zeros({features}));
    running_var = register_buffer("running_var", ones({features}));
    num_batches_tracked = register_buffer("num_batches_tracked", zeros({}, kInt64));
  }
  reset_parameters();
}

void BatchNormImplBase::reset_running_stats() {
  if (!track_running_stats) return;
  init::zeros_(running_mean);
  init::ones_(running_var);
  init::zeros_(num_batches_tracked);
}

void BatchNormImplBase::reset_parameters() {
  reset_running_stats();
  if (affine) {
    init::ones_(weight);
    init::zeros_(bias);
  }
}

Tensor BatchNormImplBase::forward(const Tensor& input) {
  LOOM_CHECK(input.defined(), type_name(), ": input is an undefined tensor");
  check_input_dim(input);
  LOOM_CHECK(input.sizes()[1] == num_features, type_name(), ": expected input with ", num_features,
             " channels at dim 1 (num_features), got shape ", shape_str(input.sizes()));
  // The update factor: momentum, or 1/k on the k-th batch for a cumulative average.
  double factor = 0.0;
  // A checkpointed region's recomputation (loom::checkpoint) normalizes with
  // the batch's statistics again but leaves the running ones alone: the
  // forward updated them already.
  const bool recomputing = checkpoint_recomputing();
  if (is_training() && track_running_stats && !recomputing) {
    {
      NoGradGuard ng;
      num_batches_tracked.add_(1);
    }
    factor = momentum ? *momentum : 1.0 / static_cast<double>(num_batches_tracked.item<int64_t>());
  }
  // Batch statistics in training; running ones in eval when they are tracked.
  if (is_training() && recomputing) return functional::batch_norm(input, Tensor(), Tensor(), weight, bias, true, 0.0, eps);
  return functional::batch_norm(input, running_mean, running_var, weight, bias,
                                is_training() || !track_running_stats, factor, eps);
}

std::string BatchNormImplBase::extra_repr() const {
  return std::to_string(num_features) + ", eps=" + detail::py_float(eps) +
         ", momentum=" + detail::py_optional_float(momentum) + ", affine=" + detail::py_bool(affine) +
         ", track_running_stats=" + detail::py_bool(track_running_stats);
}

void BatchNorm1dImpl::check_input_dim(const Tensor& input) const {
  LOOM_CHECK(input.dim() == 2 || input.dim() == 3, "BatchNorm1d: expected 2D (N, C) or 3D (N, C, L) input, got ",
             input.dim(), "D input of shape ", shape_str(input.sizes()));
}

void BatchNorm2dImpl::check_input_dim(const Tensor& input) const {
  LOOM_CHECK(input.dim() == 4, "BatchNorm2d: expected 4D (N, C, H, W) input, got ", input.dim(), "D input of shape ",
             shape_str(input.sizes()));
}

}  // namespace loom::nn
