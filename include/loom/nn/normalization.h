// LayerNorm, RMSNorm, BatchNorm1d and BatchNorm2d.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "loom/nn/module.h"

namespace loom::nn {

// Normalizes over the trailing dims normalized_shape (mean, biased
// variance), then scales by weight and shifts by bias (ones and zeros at
// first). x: (*, normalized_shape...).
class LayerNormImpl : public Module {
 public:
  LayerNormImpl(std::vector<int64_t> normalized_shape, double eps = 1e-5, bool elementwise_affine = true,
                bool bias = true);
  LayerNormImpl(int64_t normalized_shape, double eps = 1e-5, bool elementwise_affine = true, bool bias = true);
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  std::vector<int64_t> normalized_shape;
  double eps;
  bool elementwise_affine;
  Tensor weight;  // normalized_shape; undefined without elementwise_affine
  Tensor bias;    // normalized_shape; undefined without elementwise_affine or bias
};
// The holder also takes a braced shape: nn::LayerNorm({4, 8}).
class LayerNorm : public ModuleHolder<LayerNormImpl> {
 public:
  using ModuleHolder<LayerNormImpl>::ModuleHolder;
  LayerNorm() = default;
  LayerNorm(std::initializer_list<int64_t> normalized_shape, double eps = 1e-5, bool elementwise_affine = true,
            bool bias = true)
      : ModuleHolder(std::make_shared<LayerNormImpl>(std::vector<int64_t>(normalized_shape), eps,
                                                     elementwise_affine, bias)) {}
};

// x / sqrt(mean(x^2 over normalized_shape) + eps) * weight. Without eps, the
// machine epsilon of the input's dtype (as PyTorch).
class RMSNormImpl : public Module {
 public:
  RMSNormImpl(std::vector<int64_t> normalized_shape, std::optional<double> eps = std::nullopt,
              bool elementwise_affine = true);
  RMSNormImpl(int64_t normalized_shape, std::optional<double> eps = std::nullopt, bool elementwise_affine = true);
  Tensor forward(const Tensor& input) override;
  void reset_parameters();
  std::string extra_repr() const override;

  std::vector<int64_t> normalized_shape;
  std::optional<double> eps;
  bool elementwise_affine;
  Tensor weight;  // normalized_shape; undefined without elementwise_affine
};
class RMSNorm : public ModuleHolder<RMSNormImpl> {
 public:
  using ModuleHolder<RMSNormImpl>::ModuleHolder;
  RMSNorm() = default;
  RMSNorm(std::initializer_list<int64_t> normalized_shape, std::optional<double> eps = std::nullopt,
          bool elementwise_affine = true)
      : ModuleHolder(std::make_shared<RMSNormImpl>(std::vector<int64_t>(normalized_shape), eps, elementwise_affine)) {}
};

// Batch normalization per channel C (dim 1), the state and rules that
// BatchNorm1d and BatchNorm2d share (PyTorch's _BatchNorm). Training:
// normalizes with the batch's mean and biased variance (one fused op,
// loom::batch_norm_with_stats), and (with track_running_stats) updates
// running_mean / running_var with
// running = (1 - momentum) * running + momentum * batch, using the unbiased
// variance; momentum = nullopt gives the cumulative average over all batches
// seen (factor 1 / num_batches_tracked). Eval: normalizes with the running
// statistics.
class BatchNormImplBase : public Module {
 public:
  Tensor forward(const Tensor& input) override;
  void reset_running_stats();
  void reset_parameters();  // also resets the running statistics
  std::string extra_repr() const override;

  int64_t num_features;
  double eps;
  std::optional<double> momentum;
  bool affine;
  bool track_running_stats;
  Tensor weight;               // (C), ones at first; undefined without affine
  Tensor bias;                 // (C), zeros at first; undefined without affine
  Tensor running_mean;         // (C) buffer, zeros; undefined without track_running_stats
  Tensor running_var;          // (C) buffer, ones
  Tensor num_batches_tracked;  // int64 0-dim buffer

 protected:
  BatchNormImplBase(const char* name, int64_t num_features, double eps, std::optional<double> momentum, bool affine,
                    bool track_running_stats);
  // Throws unless input has the ranks this module takes.
  virtual void check_input_dim(const Tensor& input) const = 0;
};

// Batch normalization over (N, C) or (N, C, L) input.
class BatchNorm1dImpl : public BatchNormImplBase {
 public:
  BatchNorm1dImpl(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1, bool affine = true,
                  bool track_running_stats = true)
      : BatchNormImplBase("BatchNorm1d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input_dim(const Tensor& input) const override;
};
LOOM_MODULE(BatchNorm1d);

// Batch normalization over (N, C, H, W) input: statistics per channel over N, H and W.
class BatchNorm2dImpl : public BatchNormImplBase {
 public:
  BatchNorm2dImpl(int64_t num_features, double eps = 1e-5, std::optional<double> momentum = 0.1, bool affine = true,
                  bool track_running_stats = true)
      : BatchNormImplBase("BatchNorm2d", num_features, eps, momentum, affine, track_running_stats) {}

 protected:
  void check_input_dim(const Tensor& input) const override;
};
LOOM_MODULE(BatchNorm2d);

}  // namespace loom::nn
