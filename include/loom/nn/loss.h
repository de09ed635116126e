// Loss modules: each holds the options of its nn::functional loss and calls
// it in forward(input, target). A class weight (and BCEWithLogitsLoss's
// pos_weight) is registered as a buffer, as PyTorch does, so it follows
// to(device) and appears in state_dict.
//
//   nn::CrossEntropyLoss criterion(F::CrossEntropyOptions{.label_smoothing = 0.1});
//   Tensor loss = criterion(logits, labels);
#pragma once

#include "loom/nn/functional.h"
#include "loom/nn/module.h"

namespace loom::nn {

class CrossEntropyLossImpl : public Module {
 public:
  explicit CrossEntropyLossImpl(functional::CrossEntropyOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::CrossEntropyOptions options;
};
LOOM_MODULE(CrossEntropyLoss);

class NLLLossImpl : public Module {
 public:
  explicit NLLLossImpl(functional::NLLLossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::NLLLossOptions options;
};
LOOM_MODULE(NLLLoss);

class MSELossImpl : public Module {
 public:
  explicit MSELossImpl(functional::MSELossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::MSELossOptions options;
};
LOOM_MODULE(MSELoss);

class L1LossImpl : public Module {
 public:
  explicit L1LossImpl(functional::L1LossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::L1LossOptions options;
};
LOOM_MODULE(L1Loss);

class SmoothL1LossImpl : public Module {
 public:
  explicit SmoothL1LossImpl(functional::SmoothL1LossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::SmoothL1LossOptions options;
};
LOOM_MODULE(SmoothL1Loss);

class BCELossImpl : public Module {
 public:
  explicit BCELossImpl(functional::BCELossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::BCELossOptions options;
};
LOOM_MODULE(BCELoss);

class BCEWithLogitsLossImpl : public Module {
 public:
  explicit BCEWithLogitsLossImpl(functional::BCEWithLogitsLossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::BCEWithLogitsLossOptions options;
};
LOOM_MODULE(BCEWithLogitsLoss);

class KLDivLossImpl : public Module {
 public:
  explicit KLDivLossImpl(functional::KLDivLossOptions options = {});
  using Module::forward;
  Tensor forward(const Tensor& input, const Tensor& target);
  functional::KLDivLossOptions options;
};
LOOM_MODULE(KLDivLoss);

}  // namespace loom::nn
